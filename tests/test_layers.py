"""Layering: apps -> method -> engine. The method and the apps use the engine's public names and
the graph's query API only; they never read its slots, roots, layouts or edits."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "fairfx"
# Engine internals a ChannelGraph keeps to itself (graph_queries.py answers for them).
INTERNAL = {"analysis", "roots", "slots", "edits", "group_classes", "group_of_root", "layouts"}


def _files(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("path", _files("method") + _files("apps"), ids=lambda p: p.name)
def test_no_private_engine_names_and_no_engine_internals(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and "engine" in node.module:
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert not private, f"{path.name}:{node.lineno} imports {private} from the engine"
        if isinstance(node, ast.Attribute) and node.attr in INTERNAL:
            base = node.value
            name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
            assert "graph" not in name, (
                f"{path.name}:{node.lineno} reads {name}.{node.attr}: use the graph's query API"
            )


def test_engine_never_imports_the_method_or_the_apps() -> None:
    for path in _files("engine"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("method", "apps")), (path.name, node.module)
                assert node.level < 2 or not node.module.startswith(("method", "apps"))
