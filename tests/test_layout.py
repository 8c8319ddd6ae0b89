"""The layout rule: only the engine imports ``targets`` and ``methods``; plugins (methods, targets)
import only the kit (``harness`` outside ``harness.engine``); the kit imports no plugin."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Top-level package paths imported anywhere in ``path`` (module level or inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _files(*parts: str) -> list[Path]:
    return sorted((ROOT.joinpath(*parts)).rglob("*.py"))


def _offenders(files: list[Path], banned: tuple[str, ...]) -> list[str]:
    return [f"{f.relative_to(ROOT)} imports {name}" for f in files for name in sorted(_imports(f))
            if any(name == b or name.startswith(b + ".") for b in banned)]


def test_plugins_import_only_the_kit():
    assert _offenders(_files("methods") + _files("targets"), ("harness.engine",)) == []


def test_the_kit_imports_no_plugin_and_no_engine():
    kit = [f for f in _files("harness") if "engine" not in f.relative_to(ROOT).parts and f.name != "__main__.py"]
    assert kit, "no kit modules found"
    assert _offenders(kit, ("methods", "targets", "harness.engine")) == []


def test_the_kit_api_is_named():
    import harness

    for name in harness.__all__:
        assert getattr(harness, name) is not None
