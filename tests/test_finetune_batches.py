"""fine-tuning reads the batches analyze reads, and shows progress per batch."""

from __future__ import annotations

import torch
from torch import nn

import fairfx


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def _pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(3)
    ]


def test_dict_batches_train_exactly_like_pairs() -> None:
    pairs = _pairs()
    dicts = [{"image": x, "label": y} for x, y in pairs]
    a = fairfx.finetune(_model(), pairs, epochs=2, lr=0.1, val_data=pairs, progress=False)
    b = fairfx.finetune(_model(), dicts, epochs=2, lr=0.1, val_data=dicts, progress=False)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert a.finetune_history.train_loss == b.finetune_history.train_loss
    assert a.finetune_history.val_accuracy == b.finetune_history.val_accuracy
    # Both are the same data analyze accepts.
    analysis = fairfx.analyze(_model(), pairs[0][0], dicts, samples_per_class=2, progress=False)
    assert analysis.record["samples"] > 0


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 3), nn.Linear(2, 3)

    def forward(self, image, extra):
        return self.a(image) + self.b(extra)


def test_dict_batches_with_several_inputs_pass_them_by_name() -> None:
    batches = [{"image": x, "extra": x[:, :2], "targets": y} for x, y in _pairs()]
    model = fairfx.finetune(_TwoInputs(), batches, epochs=1, progress=False)
    assert len(model.finetune_history.train_loss) == 1


def test_progress_moves_per_batch(capsys) -> None:
    fairfx.finetune(_model(), _pairs(), epochs=2, progress=True)
    err = capsys.readouterr().err
    assert "6/6" in err and "batch" in err  # 3 batches x 2 epochs, one tick per batch
    assert "epoch=2/2" in err
