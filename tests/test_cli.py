"""The CLI: the issue's walk-through on both databases, error output, exit codes.

In-process runs (typer's CliRunner) cover behaviour; a few real subprocesses prove what a user
sees from the installed command: one line on stderr, the exit code, never a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metersync.cli import app

runner = CliRunner()


def cli(url: str, *args: str, input: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env={"METERSYNC_DATABASE_URL": url}, input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def url(database_url: str) -> str:
    code, out, _ = cli(database_url, "db", "upgrade")
    assert code == 0 and "upgraded from empty to" in out
    return database_url


def test_issue_walkthrough(url: str) -> None:
    code, _, err = cli(
        url,
        "customers",
        "create",
        "--key",
        "acme",
        "--name",
        "ACME Inc",
        "--subject",
        "department1",
        "--subject",
        "department2",
        "--currency",
        "USD",
        "--email",
        "billing@acme.test",
    )
    assert code == 0, err
    code, out, _ = cli(url, "customers", "get", "acme", "--json")
    assert code == 0
    customer = json.loads(out)
    assert customer["usageAttribution"]["subjectKeys"] == ["department1", "department2"]
    assert customer["primaryEmail"] == "billing@acme.test" and customer["currency"] == "USD"

    code, out, _ = cli(
        url, "subjects", "upsert", "department1", "--display-name", "Dept 1", "--json"
    )
    assert code == 0 and json.loads(out)["displayName"] == "Dept 1"
    code, out, _ = cli(url, "customers", "get", "acme", "--json")
    assert json.loads(out)["usageAttribution"]["subjectKeys"] == ["department1", "department2"]

    code, out, err = cli(
        url,
        "customers",
        "create",
        "--key",
        "globex",
        "--name",
        "Globex",
        "--subject",
        "department1",
    )
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "'acme'" in err and "'globex'" in err and "department1" in err
    code, _, _ = cli(url, "customers", "get", "globex")
    assert code == 2


def test_lists_as_tables_and_openmeter_json(url: str) -> None:
    cli(
        url,
        "customers",
        "create",
        "--key",
        "acme",
        "--name",
        "ACME",
        "--subject",
        "d1",
        "--country",
        "us",
        "--postal-code",
        "85001",
        "--phone",
        "+1 555",
        "--meta",
        "plan=pro",
    )
    cli(url, "subjects", "upsert", "lonely", "--display-name", "Lonely", "--meta", "a=b")
    code, out, _ = cli(url, "customers", "list")
    assert code == 0 and "acme" in out and "Lonely (auto)" in out
    code, out, _ = cli(url, "customers", "list", "--json")
    customers = {c["key"]: c for c in json.loads(out)}
    assert customers["acme"]["billingAddress"] == {
        "country": "US",
        "postalCode": "85001",
        "phoneNumber": "+1 555",
    }
    assert customers["acme"]["metadata"] == {"plan": "pro"}
    code, out, _ = cli(url, "subjects", "list", "--json")
    subjects = {s["key"]: s for s in json.loads(out)}
    assert subjects["lonely"] == {
        "id": subjects["lonely"]["id"],
        "key": "lonely",
        "displayName": "Lonely",
        "metadata": {"a": "b"},
        "createdAt": subjects["lonely"]["createdAt"],
        "updatedAt": subjects["lonely"]["updatedAt"],
    }
    code, out, _ = cli(url, "subjects", "list")
    assert code == 0 and "lonely" in out and "d1" in out


def test_update_and_delete(url: str) -> None:
    cli(
        url,
        "customers",
        "create",
        "--key",
        "acme",
        "--name",
        "ACME",
        "--subject",
        "d1",
        "--email",
        "a@acme.test",
    )
    code, out, _ = cli(
        url, "customers", "update", "acme", "--city", "Phoenix", "--subject", "d2", "--json"
    )
    updated = json.loads(out)
    assert code == 0
    assert updated["billingAddress"] == {"city": "Phoenix"}
    assert updated["usageAttribution"]["subjectKeys"] == ["d2"]
    assert updated["primaryEmail"] == "a@acme.test"
    code, out, _ = cli(url, "customers", "update", "acme", "--email", "", "--json")
    assert "primaryEmail" not in json.loads(out)
    code, _, err = cli(url, "customers", "update", "acme")
    assert code == 2 and "nothing to change" in err
    code, out, _ = cli(url, "subjects", "delete", "d2")
    assert code == 0 and "deleted" in out
    code, out, _ = cli(url, "customers", "delete", "acme")
    assert code == 0 and "deleted" in out
    code, out, _ = cli(url, "customers", "list", "--include-deleted", "--json")
    assert [c["key"] for c in json.loads(out) if "deletedAt" in c] == ["acme"]
    code, _, err = cli(url, "subjects", "delete", "nope")
    assert code == 2 and err == "error: subject 'nope' does not exist\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--email", "not-an-email"],
            "error: --email (primaryEmail): 'not-an-email' is not a valid email",
        ),
        (
            ["--currency", "XYZ"],
            "error: --currency (currency): 'XYZ' is not an ISO 4217 currency code",
        ),
        (
            ["--country", "Germany"],
            "error: --country (billingAddress.country): 'Germany' is not an ISO 3166-1",
        ),
        (["--meta", "novalue"], "'novalue' is not of the form key=value"),
    ],
)
def test_bad_input_is_one_line_naming_the_field(url: str, args: list[str], expected: str) -> None:
    code, out, err = cli(url, "customers", "create", "--key", "k", "--name", "n", *args)
    assert code == 2
    assert expected in err
    assert "Traceback" not in err + out


def test_long_key_names_the_field(url: str) -> None:
    code, _, err = cli(url, "customers", "create", "--key", "k" * 300, "--name", "n")
    assert (code, err) == (2, "error: --key (key): must be at most 256 characters, got 300\n")
    code, _, err = cli(url, "subjects", "upsert", "s" * 300)
    assert (code, err) == (2, "error: KEY (key): must be at most 256 characters, got 300\n")


def test_import_reports_each_rejected_line(url: str, tmp_path: Path) -> None:
    path = tmp_path / "catalog.ndjson"
    path.write_text(
        '{"key": "acme", "name": "ACME", "usageAttribution": {"subjectKeys": ["d1"]}}\n'
        '{"key": "oops", "name": \n'
        '{"key": "bad", "name": "Bad", "currency": "ABC"}\n'
    )
    code, out, err = cli(url, "import", str(path))
    assert code == 1
    assert err.splitlines() == [
        "rejected: line 2: record: not valid JSON at column 25: Expecting value",
        "rejected: line 3: customer 'bad': currency: 'ABC' is not an ISO 4217 currency code "
        "(such as USD, EUR)",
    ]
    assert "imported 1 of 3 records" in out
    code, out, _ = cli(url, "import", "-", "--json", input=path.read_text())
    summary = json.loads(out)
    assert code == 1
    assert summary["customers"] == {"created": 0, "updated": 0, "unchanged": 1}
    assert summary["rejected"] == 2
    code, _, err = cli(url, "import", str(tmp_path / "missing.json"))
    assert code == 2 and "does not exist" in err


def test_example_catalog_imports_cleanly(url: str) -> None:
    example = Path(__file__).parent.parent / "examples" / "catalog.json"
    code, out, err = cli(url, "import", str(example), "--json")
    assert code == 0, err
    assert json.loads(out)["rejected"] == 0
    code, out, _ = cli(url, "customers", "list", "--json")
    customers = {c["key"]: c for c in json.loads(out)}
    # Several customers with two departments each, and one subject with no customer of its own.
    assert sum(len(c["usageAttribution"]["subjectKeys"]) == 2 for c in customers.values()) >= 3
    assert customers["device-7f3a"]["usageAttribution"]["subjectKeys"] == ["device-7f3a"]


def test_config_show_masks_secrets(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["config", "show", "--json"],
        env={
            "STRIPE_API_KEY": "sk_test_supersecret",
            "METERSYNC_DATABASE_URL": "postgresql://u:pw123@h/d",
        },
    )
    assert result.exit_code == 0
    shown = json.loads(result.stdout)
    assert shown["stripe"]["api_key"] == "**********"
    assert shown["database"]["url"] == "postgresql+psycopg://u:***@h/d"
    assert "supersecret" not in result.stdout and "pw123" not in result.stdout


def test_config_show_lists_meters(tmp_path: Path) -> None:
    config = tmp_path / "metersync.toml"
    example = Path(__file__).parent.parent / "config" / "metersync.example.toml"
    config.write_text(
        example.read_text()
        + '\n[[meters]]\nslug = "calls"\nevent_type = "request"\naggregation = "COUNT"\n'
    )
    result = runner.invoke(app, ["--config", str(config), "config", "show"])
    assert result.exit_code == 0, result.output
    assert "meters[0]" in result.stdout and '"calls"' in result.stdout
    assert "usage.window" in result.stdout


# -- real subprocesses -----------------------------------------------------------------------------


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")}
    full_env.pop("STRIPE_API_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "metersync", *args],
        env=full_env | env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bad_config_exits_2_without_traceback(tmp_path: Path) -> None:
    done = run(["customers", "list"], {"METERSYNC_LOG_LEVEL": "loud"}, tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith("error: invalid setting log.level (from METERSYNC_LOG_LEVEL)")
    assert "Traceback" not in done.stderr
    assert done.stdout == "", "errors never land on stdout, where --json output goes"


def test_unreachable_database_exits_2_without_traceback(tmp_path: Path) -> None:
    done = run(
        ["customers", "list"],
        {"METERSYNC_DATABASE_URL": "postgresql://u:secretpw@127.0.0.1:1/x"},
        tmp_path,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: cannot connect to database postgresql+psycopg://u:***@")
    assert "secretpw" not in done.stderr and "Traceback" not in done.stderr


def test_new_sqlite_file_in_working_directory_and_json_logs(tmp_path: Path) -> None:
    done = run(["--log-level", "debug", "subjects", "upsert", "s1"], {}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "metersync.db").exists()
    log_lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert log_lines, "stderr is not a TTY, so log lines are JSON"
    assert all({"event", "level", "timestamp"} <= set(line) for line in log_lines)
    done = run(["subjects", "get", "s1", "--json"], {}, tmp_path)
    assert json.loads(done.stdout)["key"] == "s1"
    done = run(["--version"], {}, tmp_path)
    assert done.returncode == 0 and done.stdout.startswith("metersync ")


def test_get_of_a_deleted_record_says_so(url: str) -> None:
    cli(url, "customers", "create", "--key", "acme", "--name", "ACME")
    cli(url, "customers", "delete", "acme")
    code, _, err = cli(url, "customers", "get", "acme")
    assert code == 2
    assert err.startswith("error: customer 'acme' was deleted at ")
    assert err.endswith("(--include-deleted shows it)\n")
    code, out, _ = cli(url, "customers", "get", "acme", "--include-deleted", "--json")
    assert code == 0 and "deletedAt" in json.loads(out)


def test_database_and_revision_mistakes(tmp_path: Path) -> None:
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("just some text\n")
    code, _, err = cli(f"sqlite:///{not_a_db}", "subjects", "list")
    assert (
        code == 2
        and err.startswith("error: cannot connect to database")
        and "not a database" in err
    )
    url = f"sqlite:///{tmp_path}/ok.db"
    code, _, err = cli(url, "db", "upgrade", "--revision", "nope")
    assert code == 2 and err.startswith("error: --revision: Can't locate revision")


def test_empty_key_option_is_refused(url: str) -> None:
    code, _, err = cli(url, "customers", "create", "--key", "", "--name", "X", "--subject", "s1")
    assert code == 2 and "--key" in err and "must not be empty" in err
    assert cli(url, "customers", "list", "--json")[1].strip() == "[]"


def test_invalid_bytes_reach_no_traceback(tmp_path: Path) -> None:
    """Arguments and stdin that are not UTF-8 (Python hands them over as lone surrogates)."""
    env = {"METERSYNC_DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    for args in (
        ["subjects", "upsert", b"\xff".decode("utf-8", "surrogateescape")],
        ["customers", "get", b"a\xffb".decode("utf-8", "surrogateescape")],
    ):
        done = run(args, env, tmp_path)
        assert done.returncode == 2, done.stderr
        assert "KEY (key): is not valid Unicode text" in done.stderr
        assert "Traceback" not in done.stderr and done.stdout == ""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("METERSYNC_")} | env
    done = subprocess.run(
        [sys.executable, "-m", "metersync", "import", "-"],
        input=b"\xff\xfe{}",
        env=full_env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.decode() == (
        "error: FILE: standard input is not UTF-8 text (invalid start byte at byte 0)\n"
    )
