"""Hugging Face transformers (tiny configs, random weights, no download), captured through
torch.export: channel groups with attention heads, a random plan, prune, verify, export again;
FAIR compress end to end on BERT and ViT."""

from __future__ import annotations

import pytest
import torch

import fairfx
from fairfx.apps.zoo import random_plan
from fairfx.engine.group_graph import build
from fairfx.engine.rewrite import count_params


@pytest.fixture(scope="module")
def hf():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def _tokens(n: int = 2) -> torch.Tensor:
    return torch.randint(1, 100, (n, 8), generator=torch.Generator().manual_seed(n))


def _images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(n))


TEXT = dict(vocab_size=100, num_labels=3, pad_token_id=0)
BLOCKS = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


def make(hf, name: str):
    """(model, input, has attention heads) for one tiny configuration."""
    if name == "bert":
        cfg = hf.BertConfig(**BLOCKS, **TEXT)
        return hf.BertForSequenceClassification(cfg), _tokens(), True
    if name == "vit":
        cfg = hf.ViTConfig(**BLOCKS, image_size=32, patch_size=8, num_labels=3)
        return hf.ViTForImageClassification(cfg), _images(), True
    if name == "gpt2":
        cfg = hf.GPT2Config(
            n_embd=64, n_layer=2, n_head=4, n_positions=32, use_cache=False, bos_token_id=1,
            eos_token_id=1, **TEXT,
        )  # fmt: skip
        return hf.GPT2ForSequenceClassification(cfg), _tokens(), True
    if name == "llama":
        cfg = hf.LlamaConfig(**BLOCKS, num_key_value_heads=2, use_cache=False, **TEXT)
        return hf.LlamaForSequenceClassification(cfg), _tokens(), True
    if name == "resnet":
        cfg = hf.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
            num_labels=3,
        )  # fmt: skip
        return hf.ResNetForImageClassification(cfg), _images(), False
    cfg = hf.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=3)
    return hf.ConvNextForImageClassification(cfg), _images(), False


MODELS = ["bert", "vit", "gpt2", "llama", "resnet", "convnext"]


@pytest.mark.parametrize("name", MODELS)
def test_hf_prune_verify_export(hf, name: str) -> None:
    torch.manual_seed(0)
    model, x, attention = make(hf, name)
    model.eval()
    graph = build(model, x)
    assert graph.channel_pass.gm.meta["fairfx_capture"] == "torch.export"
    heads = [g for g in graph.groups if g.unit == "head"]
    if attention:
        assert len(heads) == 2 and all(g.prunable for g in heads)
    pruned = graph.prune(random_plan(graph))
    assert count_params(pruned) <= 0.7 * count_params(model)
    report = fairfx.verify(model, pruned, x)
    assert report.passed and report.tolerance > 0, str(report)
    other = _tokens(5) if x.dtype == torch.long else _images(5)
    with torch.no_grad():
        assert pruned(other).shape == (5, 3)  # the batch axis stayed dynamic
        program = torch.export.export(pruned, (x,))
        assert torch.equal(program.module()(x), pruned(x))


@pytest.mark.parametrize("name", ["bert", "vit"])
def test_hf_fair_compress_end_to_end(hf, name: str) -> None:
    torch.manual_seed(0)
    model, x, _ = make(hf, name)
    model.eval()
    inputs = _tokens(12) if name == "bert" else _images(12)
    data = [(inputs, torch.arange(12) % 3), (inputs.roll(1, 0), torch.arange(12) % 3)]
    pruned = fairfx.compress(model, x, alpha=0.3, data=data, samples_per_class=8, progress=False)
    info = pruned.meta["fairfx"]
    assert info["params_after"] < info["params_before"]
    assert fairfx.verify(model, pruned, x).passed
    fairfx.finetune(pruned, data, epochs=1, progress=False)
    assert pruned(x).shape == (2, 3)
