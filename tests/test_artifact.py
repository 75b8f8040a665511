"""Saved pruned models carry their plan, load without code or the original class, and lead back
to a trainable GraphModule from the original model and the keep lists."""

from __future__ import annotations

import copy
import zipfile

import pytest
import torch
from torch import nn

import fairfx
from fairfx import FairfxError

from .conftest import assert_same_state, state_snapshot


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(12, 12, 3, padding=1), nn.BatchNorm2d(12))
        self.head = nn.Linear(12, 4)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    model = _Net().eval()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 3, 8, 8, generator=g), torch.arange(16) % 4) for _ in range(2)]
    x = data[0][0][:4]
    pruned = fairfx.compress(model, x, 0.2, data=data, samples_per_class=8, progress=False)
    assert pruned.meta["fairfx"]["plan"]["units_removed"] > 0
    one_shot = copy.deepcopy(pruned)
    fairfx.finetune(pruned, data, epochs=1, lr=0.05, progress=False)  # weights and BN stats move
    root = tmp_path_factory.mktemp("saved")
    return model, x, data, one_shot, pruned, root


def _same_outputs(a, b, x) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=1e-5, atol=1e-6)


def test_saved_program_loads_with_its_plan_at_any_batch(setup) -> None:
    _, x, _, _, pruned, root = setup
    info = fairfx.save_pruned(root / "tuned.pt2", pruned, x)
    assert info["dynamic_batch"], info
    loaded = fairfx.load_pruned(root / "tuned.pt2")  # no original class, no code run
    meta = loaded.meta["fairfx"]
    assert meta["keep"] == pruned.meta["fairfx"]["keep"]
    assert meta["units"] == {g: list(u) for g, u in pruned.meta["fairfx"]["units"].items()}
    assert meta["plan"]["params_after"] == pruned.meta["fairfx"]["plan"]["params_after"]
    assert meta["finetune"]["epochs"] == 1
    for n in (1, 3):  # batch 1 works: the batch dimension was exported dynamic
        _same_outputs(pruned.eval(), loaded, torch.randn(n, 3, 8, 8))
    with zipfile.ZipFile(root / "tuned.pt2") as z:
        assert any(name.endswith("extra/fairfx.json") for name in z.namelist())


def test_rebuilt_from_the_original_and_keep_lists_equals_the_loaded_one(setup) -> None:
    model, x, data, one_shot, pruned, root = setup
    before = state_snapshot(model)
    # As saved (deploy=False): the way back keeps the BatchNorm layers and their weights exactly;
    # the deployment form's way back is in tests/test_latency.py.
    fairfx.save_pruned(root / "tuned2.pt2", pruned, x, deploy=False)
    rebuilt = fairfx.load_pruned(root / "tuned2.pt2", model, x)  # fine-tuned weights restored
    assert isinstance(rebuilt, torch.fx.GraphModule) and not rebuilt.training
    for k, v in pruned.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[k], v), k
    _same_outputs(pruned.eval(), rebuilt, torch.randn(5, 3, 8, 8))
    rebuilt.train()  # a real module again: trains and switches modes
    rebuilt(torch.randn(2, 3, 8, 8)).sum().backward()
    assert_same_state(model, before)

    # The documented way back by hand: the keep lists and fairfx.prune, then the BatchNorm
    # recalibration compress ran on the same data, give the one-shot model, equal to the saved
    # one-shot program.
    fairfx.save_pruned(root / "one_shot.pt2", one_shot, x)
    loaded = fairfx.load_pruned(root / "one_shot.pt2")
    assert loaded.meta["fairfx"]["recalibration"]["batches"] == 2
    by_hand = fairfx.prune(model, x, loaded.meta["fairfx"]["keep"])
    by_hand = fairfx.recalibrate(by_hand, data)
    _same_outputs(by_hand.eval(), loaded, torch.randn(4, 3, 8, 8))
    for k, v in one_shot.state_dict().items():
        assert torch.equal(by_hand.state_dict()[k], v), k


def test_load_refuses_files_and_models_it_cannot_use(setup, tmp_path) -> None:
    model, x, _, _, pruned, _ = setup
    fairfx.save_pruned(tmp_path / "p.pt2", pruned, x)
    with pytest.raises(FairfxError, match=r"keep lists in .* do not fit this model"):
        fairfx.load_pruned(tmp_path / "p.pt2", nn.Sequential(_Net()), x)
    other = _Net()
    other.head = nn.Linear(12, 5)  # same names, another shape
    with pytest.raises(FairfxError, match="does not fit this model after pruning"):
        fairfx.load_pruned(tmp_path / "p.pt2", other.eval(), x)
    with pytest.raises(FairfxError, match="does not exist"):
        fairfx.load_pruned(tmp_path / "missing.pt2")
    plain = torch.export.export(model, (x,))
    torch.export.save(plain, str(tmp_path / "plain.pt2"))
    with pytest.raises(FairfxError, match="without a fairfx plan"):
        fairfx.load_pruned(tmp_path / "plain.pt2")
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(FairfxError, match="cannot read"):
        fairfx.load_pruned(tmp_path / "junk.pt2")
    with pytest.raises(FairfxError, match="carries no fairfx plan"):
        fairfx.save_pruned(tmp_path / "m.pt2", model, x)


def test_an_interrupted_save_keeps_the_previous_file(setup, tmp_path, monkeypatch) -> None:
    _, x, _, _, pruned, _ = setup
    path = tmp_path / "p.pt2"
    fairfx.save_pruned(path, pruned, x)
    good = path.read_bytes()

    def broken(program, f, **kwargs):
        f.write(b"half")  # save_pruned serializes into memory first, then writes the file
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.export, "save", broken)
    with pytest.raises(KeyboardInterrupt):
        fairfx.save_pruned(path, pruned, x)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["p.pt2"]  # no temporary file left
