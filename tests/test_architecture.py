"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and each one bites.

A contract that never fails proves nothing. So each is checked against a copy of the source with
one forbidden import added on purpose: that contract, and only it, must then be broken.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

# (contract id, module that gets the import, the forbidden import)
VIOLATIONS = [
    ("layers", "sync/apply.py", "import metersync.targets.stripe"),  # engine → adapter
    ("layers", "usage/push.py", "import metersync.sync.journal"),  # usage below sync
    ("layers", "usage/aggregate.py", "import metersync.entitlements"),  # usage below them
    ("layers", "store/engine.py", "import metersync.catalog"),  # store → catalog
    ("layers", "targets/hubspot/__init__.py", "import metersync.sources.openmeter"),  # siblings
    ("layers", "mechanics/limiter.py", "import metersync.store"),  # foundation → store
    ("layers", "times.py", "import metersync.logs"),  # foundation modules are independent
    ("layers", "service/api.py", "import metersync.cli"),  # doors: the service → the CLI
    ("one-composition-root", "cli/sync.py", "import metersync.targets.hubspot"),
    ("one-composition-root", "service/daemon.py", "import metersync.sources.openmeter"),
    ("pure-planners", "sync/plan.py", "import metersync.store.links"),
    ("pure-planners", "usage/reports.py", "import sqlalchemy"),
    ("pure-planners", "entitlements/_periods.py", "import metersync.store"),
    ("emulators-stand-alone", "testing/_state.py", "import metersync.catalog"),
    ("no-test-harness-in-the-product", "pipeline/_steps.py", "import metersync.chaos.customers"),
    ("no-test-harness-in-the-product", "usage/push.py", "import metersync.testing"),
]


def contracts() -> dict[str, str]:
    """Contract id → name."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {c["id"]: c["name"] for c in config["tool"]["importlinter"]["contracts"]}


def lint_imports(root: Path) -> tuple[int, set[str]]:
    """lint-imports over the tree at `root`: its exit code and the ids of the broken contracts."""
    args = [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")]
    # The copy's package comes first on the path: import-linter reads the files it finds. Wide
    # columns keep each contract's name and verdict on one line.
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "COLUMNS": "1000"}
    done = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    broken = {cid for cid, name in contracts().items() if f"{name} BROKEN" in done.stdout}
    assert done.returncode == 0 or broken, done.stdout + done.stderr
    return done.returncode, broken


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("pristine")
    shutil.copytree(
        ROOT / "src" / "metersync",
        copy / "src" / "metersync",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy(ROOT / "pyproject.toml", copy / "pyproject.toml")
    return copy


def test_every_contract_is_tried() -> None:
    assert {contract for contract, _, _ in VIOLATIONS} == set(contracts())


def test_the_source_keeps_every_contract(pristine: Path) -> None:
    assert lint_imports(pristine) == (0, set())


@pytest.mark.parametrize(
    ("contract", "module", "line"), VIOLATIONS, ids=[f"{c}:{m}" for c, m, _ in VIOLATIONS]
)
def test_a_forbidden_import_breaks_its_contract(
    pristine: Path, tmp_path: Path, contract: str, module: str, line: str
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(pristine, copy)
    path = copy / "src" / "metersync" / module
    assert path.exists(), f"{module} is gone: point this case at another module"
    path.write_text(path.read_text() + f"\n{line}  # added on purpose\n")
    assert lint_imports(copy) == (1, {contract})
