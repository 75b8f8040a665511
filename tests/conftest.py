"""Shared helpers: random plans checked against the oracle, digits models trained once per session,
and the CLI's one-line error check."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fairfx.apps import digits
from fairfx.apps.cli import main
from fairfx.apps.zoo import random_plan
from fairfx.engine.group_graph import build
from fairfx.engine.oracle import verify
from fairfx.engine.rewrite import count_params


def prune_and_verify(model: torch.nn.Module, x, *, seed: int = 0, fraction: float = 0.5):
    """Random plan on every prunable group; returns (graph, pruned, report)."""
    model.eval()
    graph = build(model, x)
    pruned = graph.prune(random_plan(graph, seed, fraction))
    report = verify(model, pruned, x)
    assert report.passed, str(report)
    with torch.no_grad():
        want, got = model(x), pruned(x)
    assert got.shape == want.shape
    if any(g.prunable for g in graph.groups):
        assert count_params(pruned) < count_params(model)
    return graph, pruned, report


def state_snapshot(model: torch.nn.Module):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: m.training for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
    )


def assert_same_state(model: torch.nn.Module, snap) -> None:
    tensors, modes, grads = snap
    now = model.state_dict()
    assert now.keys() == tensors.keys()
    for k, v in tensors.items():
        assert now[k].shape == v.shape and torch.equal(now[k], v), k
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def split():
    """The digits train/test split, loaded once for every test file that scores a model."""
    return digits.load()


@pytest.fixture(scope="session")
def resnet(split):
    """A ResNet-style digits net trained one epoch; shared read-only (fairfx never mutates it)."""
    torch.manual_seed(0)
    return digits.train(digits.ResNetStyle(width=8), split, epochs=1)


def cli_error(capsys, argv: list[str]) -> str:
    """Run the CLI in-process; assert it failed with exit 2 and one ``fairfx: error:`` line."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("fairfx: error: "), err
    return err


def model_folder(tmp_path, monkeypatch, module: str, source: str):
    """``tmp_path`` holding a factory module ``module`` (for ``--model module:factory``), put on
    ``sys.path`` and made the working directory: what every CLI test's folder needs."""
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return tmp_path
