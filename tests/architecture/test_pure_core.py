"""The core (model, engine, render) performs no I/O: it imports no module that could."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import septum

CORE = ("model", "engine", "render")
FORBIDDEN = {
    "os", "subprocess", "socket", "shutil", "pathlib", "io", "urllib", "http", "requests",
    "httpx", "sqlite3", "sqlalchemy", "asyncio", "time", "random", "tempfile", "glob",
    "septum.sources", "septum.cli", "septum.agent", "septum.server",
}
PACKAGE = Path(septum.__file__).parent
CORE_FILES = sorted(f for part in CORE for f in (PACKAGE / part).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_core_has_files() -> None:
    assert len(CORE_FILES) >= 5


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_module_imports_no_io(path: Path) -> None:
    bad = {
        name for name in _imports(path)
        if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
    }
    assert not bad, f"{path.name} imports I/O modules {sorted(bad)}"


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_module_calls_no_clock_or_open(path: Path) -> None:
    source = path.read_text()
    for call in ("open(", "datetime.now(", "datetime.utcnow(", "date.today(", "environ"):
        assert call not in source.replace("def open(", ""), f"{path.name} calls {call}"
