"""Layering: apps -> method -> engine. The method and the apps use the engine's public names and
the graph's query API only; they never read its slots, roots, layouts or edits."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "fairfx"
# Engine internals a ChannelGraph keeps to itself (graph_queries.py answers for them).
INTERNAL = {"analysis", "roots", "slots", "edits", "unit_roots", "group_of_root", "layouts"}


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


def test_import_fairfx_leaves_torchvision_networkx_and_triton_unimported() -> None:
    """``import fairfx`` costs little over torch's own import: the heavy libraries come in
    when a graph is built (networkx), a cost is counted (flop counter -> triton) or a model
    holding torchvision ops is captured (torchvision, imported by the user's model)."""
    import subprocess
    import sys

    code = (
        "import fairfx, sys; "
        "print(sorted(m for m in ('torchvision', 'networkx', 'triton') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_torchvision_rules_are_registered_once_it_is_imported() -> None:
    import torch
    import torchvision  # noqa: F401 - the model below holds its StochasticDepth
    from torch import nn
    from torchvision.ops import StochasticDepth

    import fairfx

    model = nn.Sequential(nn.Conv2d(3, 8, 1), StochasticDepth(0.1, "row"), nn.Conv2d(8, 4, 1))
    groups = fairfx.channel_groups(model.eval(), torch.randn(2, 3, 4, 4))
    assert groups[0].prunable, groups[0].reason
