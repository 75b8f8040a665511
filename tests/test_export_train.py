"""Graphs captured through torch.export train again: dropout and BatchNorm switch with the mode,
``fairfx.finetune`` lowers the loss, eval afterwards is deterministic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fairfx
from fairfx.engine.group_graph import build


@pytest.fixture(scope="module")
def hf():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def _half(graph):
    return graph.prune({g.id: list(range(g.size // 2)) for g in graph.groups if g.prunable})


def test_pruned_bert_finetunes_with_dropout(hf) -> None:
    torch.manual_seed(0)
    cfg = hf.BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=2, pad_token_id=0, hidden_dropout_prob=0.2,
    )  # fmt: skip
    model = hf.BertForSequenceClassification(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, 60, (64, 8), generator=gen)
    labels = (tokens[:, 0] < 30).long()  # the class is in the first token
    graph = build(model, tokens[:2])
    gm = graph.channel_pass.gm
    assert gm.meta["fairfx_capture"] == "torch.export"
    drops = [n for n in gm.graph.nodes if n.op == "call_module"]
    assert drops and all(isinstance(gm.get_submodule(n.target), nn.Dropout) for n in drops)
    pruned = _half(graph)
    assert fairfx.verify(model, pruned, tokens[:2]).passed
    pruned.train()
    assert not torch.equal(pruned(tokens[:8]), pruned(tokens[:8]))  # dropout is on
    data = [(tokens[i : i + 16], labels[i : i + 16]) for i in range(0, 64, 16)]
    fairfx.finetune(pruned, data, epochs=30, lr=0.01, progress=False)
    loss = pruned.meta["fairfx"]["finetune"]["train_loss"]
    assert loss[-1] < 0.3 * loss[0], loss
    assert not pruned.training
    assert torch.equal(pruned(tokens[:8]), pruned(tokens[:8]))


def test_exported_batch_norm_updates_running_statistics(hf) -> None:
    torch.manual_seed(0)
    cfg = hf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=3)
    model = hf.ResNetForImageClassification(cfg).eval()
    x = torch.randn(4, 3, 32, 32)
    graph = build(model, x)
    assert graph.channel_pass.gm.meta["fairfx_eval_only"] == []
    pruned = _half(graph)
    assert fairfx.verify(model, pruned, x).passed
    norms = [m for m in pruned.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(norms) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    before = norms[0].running_mean.clone()
    pruned.train()
    pruned(x * 3 + 1)
    assert not torch.equal(norms[0].running_mean, before) and int(norms[0].num_batches_tracked) == 1
    pruned.eval()
    out = pruned(x)
    assert torch.equal(out, pruned(x))
    program = torch.export.export(pruned, (x,))  # and it exports again
    assert torch.allclose(program.module()(x), out, atol=1e-6)


class ExportOnly(nn.Module):
    """Symbolic tracing refuses the branch on a size; a functional dropout of unknown intent."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.drop = nn.Dropout(0.5)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        y = self.drop(self.a(x))
        if x.shape[0] > 1:
            y = F.dropout(y, 0.5, training=self.training)
        return self.b(y)


def test_dropout_of_unknown_origin_stays_eval_and_is_listed() -> None:
    model, x = ExportOnly().eval(), torch.randn(2, 6)
    graph = build(model, x)
    gm = graph.channel_pass.gm
    assert gm.meta["fairfx_capture"] == "torch.export"
    assert isinstance(gm.get_submodule("drop"), nn.Dropout)
    (frozen,) = gm.meta["fairfx_eval_only"]
    assert "dropout" in frozen and "not from a torch.nn dropout" in frozen
