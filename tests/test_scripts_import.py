"""Every `metersync` name the bench scripts, the examples and the helper scripts import exists.

They import much of what they use inside functions, where a renamed module surfaces only when
that code runs (a benchmark minutes in). Read statically, every such import is checked here.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(
    p for folder in ("bench", "examples", "scripts") for p in (ROOT / folder).rglob("*.py")
)


def metersync_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name or None for `import module`) of each metersync import in `path`."""
    found: list[tuple[int, str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("metersync"):
            found += [(node.lineno, node.module or "", alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name, None) for a in node.names if a.name.startswith("metersync")
            ]
    return found


@pytest.mark.parametrize("path", SCRIPTS, ids=[str(p.relative_to(ROOT)) for p in SCRIPTS])
def test_every_metersync_import_resolves(path: Path) -> None:
    missing = []
    for line, module_name, name in metersync_imports(path):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            missing.append(f"line {line}: {module_name}: {exc}")
            continue
        if name is not None and not hasattr(module, name):
            try:
                importlib.import_module(f"{module_name}.{name}")  # a submodule
            except ImportError:
                missing.append(f"line {line}: {module_name} has no {name}")
    assert missing == []
