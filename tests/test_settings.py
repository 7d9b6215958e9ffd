from __future__ import annotations

from pathlib import Path

import pytest

from metersync.errors import ConfigError
from metersync.settings import LogLevel, load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "metersync.toml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_environment() -> None:
    settings = load_settings(environ={})
    assert settings.database.url == "sqlite:///./metersync.db"
    assert settings.stripe.api_key is None
    assert settings.stripe.api_base is None
    assert settings.catalog.auto_customer is True
    assert settings.log.level is LogLevel.INFO


def test_file_values_are_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[database]\nurl = "postgresql://u@db/x"\n[catalog]\nauto_customer = false\n'
        '[stripe]\napi_base = "http://127.0.0.1:12111/"\n[log]\nlevel = "DEBUG"\n',
    )
    settings = load_settings(path, environ={})
    assert settings.database.url == "postgresql+psycopg://u@db/x"
    assert settings.catalog.auto_customer is False
    assert settings.stripe.api_base == "http://127.0.0.1:12111"
    assert settings.log.level is LogLevel.DEBUG


def test_environment_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(
        tmp_path, '[database]\nurl = "sqlite:///from-file.db"\n[stripe]\napi_base = "http://a:1"\n'
    )
    monkeypatch.setenv("METERSYNC_DATABASE_URL", "sqlite:///from-env.db")
    monkeypatch.setenv("METERSYNC_STRIPE_API_BASE", "http://127.0.0.1:9")
    monkeypatch.setenv("METERSYNC_CATALOG_AUTO_CUSTOMER", "false")
    settings = load_settings(path)
    assert settings.database.url == "sqlite:///from-env.db"
    assert settings.stripe.api_base == "http://127.0.0.1:9"
    assert settings.catalog.auto_customer is False


def test_config_path_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERSYNC_CONFIG", str(write(tmp_path, "[log]\nlevel = 'error'\n")))
    assert load_settings().log.level is LogLevel.ERROR


def test_stripe_key_from_environment_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_51abcdefSECRET")
    settings = load_settings()
    assert settings.stripe.api_key is not None
    assert settings.stripe.api_key.get_secret_value() == "sk_test_51abcdefSECRET"
    assert "SECRET" not in repr(settings)
    assert "SECRET" not in str(settings.redacted())


def test_metersync_stripe_key_wins_over_stripe_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_plain")
    monkeypatch.setenv("METERSYNC_STRIPE_API_KEY", "rk_test_specific")
    key = load_settings().stripe.api_key
    assert key is not None and key.get_secret_value() == "rk_test_specific"


def test_stripe_key_from_file(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk_live_fromfile\n")
    path = write(tmp_path, f'[stripe]\napi_key_file = "{key_file}"\n')
    key = load_settings(path, environ={}).stripe.resolved_api_key()
    assert key is not None and key.get_secret_value() == "sk_live_fromfile"


def test_database_password_is_not_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERSYNC_DATABASE_URL", "postgresql://app:hunter2@db/x")
    settings = load_settings()
    assert "hunter2" not in repr(settings)
    assert settings.redacted()["database"]["url"] == "postgresql+psycopg://app:***@db/x"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"METERSYNC_LOG_LEVEL": "loud"}, "invalid setting log.level (from METERSYNC_LOG_LEVEL)"),
        (
            {"METERSYNC_DATABASE_URL": "mysql://x/y"},
            "invalid setting database.url (from METERSYNC_DATABASE_URL): database 'mysql' is not",
        ),
        ({"METERSYNC_DATABASE_URL": "not a url"}, "must be a database URL"),
        (
            {"METERSYNC_STRIPE_API_BASE": "ftp://x"},
            "stripe.api_base (from METERSYNC_STRIPE_API_BASE): must be an http",
        ),
        (
            {"STRIPE_API_KEY": "pk_test_publishable"},
            "stripe.api_key (from STRIPE_API_KEY): must be a Stripe secret",
        ),
        ({"METERSYNC_CATALOG_AUTO_CUSTOMER": "maybe"}, "catalog.auto_customer"),
        (
            {"METERSYNC_DATABASE_URLL": "x"},
            "database.urll (from METERSYNC_DATABASE_URLL): is not a known setting",
        ),
    ],
)
def test_invalid_environment_names_the_key(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert expected in str(info.value)


def test_bad_key_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "pk_live_verysecretvalue")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "verysecretvalue" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[databse]\nurl='x'\n", "unknown section 'databse'"),
        (
            "[database]\nurl = 'sqlite:///x'\npool = 3\n",
            "invalid setting database.pool: is not a known setting",
        ),
        ("[catalog]\nauto_customer = 'sometimes'\n", "invalid setting catalog.auto_customer"),
        ("database = 3\n", "'database' must be a [database] table"),
        ("[database\n", "is not valid TOML"),
    ],
)
def test_invalid_file_names_the_key(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ={})
    assert expected in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_example_config_is_valid() -> None:
    example = Path(__file__).parent.parent / "config" / "metersync.example.toml"
    settings = load_settings(example, environ={})
    assert settings.database.url == "sqlite:///./metersync.db"


def test_the_http_face_stays_on_loopback_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().http.address == ("127.0.0.1", 8888)
    monkeypatch.setenv("METERSYNC_HTTP_BIND", "0.0.0.0:8888")
    with pytest.raises(ConfigError, match=r"beyond loopback and no http\.tokens are set"):
        load_settings()
    monkeypatch.setenv("METERSYNC_HTTP_TOKENS", '["t0ken"]')
    exposed = load_settings()
    assert exposed.http.token_values() == ["t0ken"]
    assert "t0ken" not in repr(exposed) and exposed.redacted()["http"]["tokens"] == ["**********"]
