"""Deployment of a pruned GraphModule (torch.export, pickling, torch.compile) and fine-tuning."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import fairfx
from fairfx import FairfxError
from fairfx.apps import digits
from fairfx.apps.report import export_and_check
from fairfx.method.finetune import FinetuneHistory, evaluate_accuracy


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared, oversubscribed CPU two OpenMP threads spin-wait and
    make small training steps 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def setup():
    """A small residual network, pruned at alpha 0.05 on random labelled data."""
    torch.manual_seed(0)
    model = digits.ResNetStyle(width=4).eval()
    x = torch.randn(12, 1, 8, 8)
    y = torch.arange(12) % 3
    analysis = fairfx.analyze(
        model, x[:2], [(x, y)], samples_per_class=4, projections=16, progress=False
    )
    pruned = analysis.compress(0.05)
    assert pruned.meta["fairfx"]["plan"]["units_removed"] > 0
    assert fairfx.verify(model, pruned, x).passed
    return model, pruned.eval(), x


@torch.no_grad()
def _same(a, b, x, rtol=1e-5):
    want, got = a(x), b(x)
    assert got.shape == want.shape
    assert float((want - got).abs().max()) <= rtol * float(want.abs().max())


def test_export_save_load_with_dynamic_batch(setup, tmp_path) -> None:
    _, pruned, x = setup
    path = tmp_path / "pruned.pt2"
    # The CLI's helper: torch.export.export with a dynamic batch Dim, torch.export.save, reload.
    result = export_and_check(pruned, x[:2], path, extra={"note.txt": "hi"})
    assert result["equal"] and result["dynamic_batch"], result
    assert result["batches"] == [2, 1, 5]
    # Checked again here, independently of the helper.
    extra = {"note.txt": ""}
    program = torch.export.load(path, extra_files=extra)
    assert extra["note.txt"] == "hi"
    loaded = program.module()
    for n in (1, 5, 12):
        _same(pruned, loaded, x[:n])


def test_pruned_graph_module_pickles(setup, tmp_path) -> None:
    _, pruned, x = setup
    path = tmp_path / "pruned.pth"
    torch.save(pruned, path)
    loaded = torch.load(path, weights_only=False)
    assert sum(p.numel() for p in loaded.parameters()) == sum(
        p.numel() for p in pruned.parameters()
    )
    _same(pruned, loaded, x)


def test_torch_compile_aot_eager_matches_eager(setup) -> None:
    _, pruned, x = setup
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(pruned, backend="aot_eager")
        _same(pruned, compiled, x)


@pytest.mark.slow
def test_torch_compile_inductor_matches_eager(setup) -> None:
    _, pruned, x = setup
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(pruned)
        _same(pruned, compiled, x, rtol=1e-4)


# ---------------------------------------------------------------------------------- fine-tuning
def test_finetune_trains_a_pruned_module_and_records_history(setup) -> None:
    _, pruned, x = setup
    work = copy.deepcopy(pruned)
    y = torch.arange(len(x)) % 3
    data = [(x[:6], y[:6]), (x[6:], y[6:])]
    before = {k: v.clone() for k, v in work.state_dict().items()}
    out = fairfx.finetune(work, data, epochs=2, lr=0.05, progress=False)
    assert out is work and not work.training
    info = work.meta["fairfx"]["finetune"]
    assert len(info["train_loss"]) == 2 and info["val_accuracy"] == []
    assert info["best_epoch"] is None and info["lr"] == 0.05
    assert isinstance(work.finetune_history, FinetuneHistory)
    assert work.finetune_history.as_dict() == info
    assert work.meta["fairfx"]["plan"] == pruned.meta["fairfx"]["plan"]  # meta kept
    changed = [k for k, v in work.state_dict().items() if not torch.equal(v, before[k])]
    assert any("conv" in k for k in changed)
    assert all(p.grad is None for p in work.parameters())
    buffer = io.BytesIO()  # a fine-tuned GraphModule (history attribute included) still pickles
    torch.save(work, buffer)
    buffer.seek(0)
    again = torch.load(buffer, weights_only=False)
    assert again.finetune_history == work.finetune_history
    _same(work, again, x)


class _Snapshotting:
    """Validation batches that record the module's state each time they are read."""

    def __init__(self, module: nn.Module, batches) -> None:
        self.module, self.batches, self.states = module, batches, []

    def __iter__(self):
        self.states.append(copy.deepcopy(self.module.state_dict()))
        return iter(self.batches)


def test_finetune_restores_the_best_validation_epoch() -> None:
    # Separable points; training labels are the validation labels flipped, so validation
    # accuracy falls as training goes on and the best epoch is an early one.
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    train = [(x[i : i + 16], 1 - y[i : i + 16]) for i in range(0, 64, 16)]
    val = _Snapshotting(model, [(x, y)])
    fairfx.finetune(model, train, epochs=5, lr=0.2, val_data=val, progress=False)
    h = model.finetune_history
    assert len(h.val_accuracy) == 5 and len(val.states) == 6  # before training + every epoch
    seen = [h.initial_val_accuracy, *h.val_accuracy]  # epoch 0: the starting weights
    best = max(range(6), key=lambda i: (seen[i], -i))
    assert h.best_epoch == best and h.best_val_accuracy == max(seen)
    assert best < 5, h.val_accuracy  # the restore path is exercised
    final = model.state_dict()
    for k, v in val.states[best].items():  # states[e] was read right after epoch e
        assert torch.equal(final[k], v), k
    assert not all(torch.equal(final[k], v) for k, v in val.states[5].items())
    assert evaluate_accuracy(model, [(x, y)]) == h.best_val_accuracy
    assert h.initial_val_accuracy is not None
    assert not model.training


def test_finetune_keeps_the_starting_weights_when_no_epoch_beats_them() -> None:
    # Validation labels are the training labels flipped: the model starts perfect on
    # validation (trained on the flipped task first), and every fine-tuning epoch hurts it.
    torch.manual_seed(0)
    x = torch.randn(64, 2)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    fairfx.finetune(model, [(x, y)] * 20, epochs=5, lr=0.2, progress=False)
    start = copy.deepcopy(model.state_dict())
    assert evaluate_accuracy(model, [(x, y)]) > 0.9
    fairfx.finetune(model, [(x, 1 - y)] * 4, epochs=3, lr=0.2, val_data=[(x, y)], progress=False)
    h = model.finetune_history
    assert max(h.val_accuracy) < h.initial_val_accuracy, h  # every epoch was worse
    assert h.best_epoch == 0 and h.best_val_accuracy == h.initial_val_accuracy
    for k, v in start.items():  # weights and BatchNorm buffers are the starting ones
        assert torch.equal(model.state_dict()[k], v), k


def test_finetune_refuses_bad_arguments() -> None:
    model = nn.Linear(2, 2)
    data = [(torch.randn(4, 2), torch.tensor([0, 1, 0, 1]))]
    with pytest.raises(FairfxError, match="one-shot iterator"):
        fairfx.finetune(model, iter(data), epochs=1, progress=False)
    with pytest.raises(FairfxError, match="epochs"):
        fairfx.finetune(model, data, epochs=-1, progress=False)
    with pytest.raises(FairfxError, match="no batches"):
        fairfx.finetune(model, [], epochs=1, progress=False)
    before = model.weight.clone()
    fairfx.finetune(model, data, epochs=0, progress=False)
    assert torch.equal(model.weight, before) and model.finetune_history.train_loss == []
