"""Round 3 of the models people bring (tiny configs, random weights, no download): DeBERTa-v2's
query_proj shared with the relative-position embeddings, CLIP's 1-D class embedding, HF
EfficientNet's string padding, and Torch-Pruning's Linear -> view -> ConvTranspose2d."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fairfx
from fairfx.apps.zoo import random_plan
from fairfx.engine.group_graph import build
from fairfx.engine.rewrite import count_params


@pytest.fixture(scope="module")
def hf():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


BLOCKS = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


def _tokens() -> torch.Tensor:
    return torch.randint(1, 100, (2, 8), generator=torch.Generator().manual_seed(0))


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _prune(model: nn.Module, x: torch.Tensor):
    model.eval()
    graph = build(model, x)
    units = random_plan(graph)
    cost = graph.cost(units)  # the cost pass runs the same rewrite on meta tensors
    pruned = graph.prune(units)
    assert cost.params == count_params(pruned)
    report = fairfx.verify(model, pruned, x)
    assert report.passed, str(report)
    return graph, pruned, report


def test_deberta_v2_query_proj_on_relative_positions_is_blocked_with_the_cause(hf) -> None:
    torch.manual_seed(0)
    cfg = hf.DebertaV2Config(
        **BLOCKS, vocab_size=100, pad_token_id=0, num_labels=3, relative_attention=True,
        pos_att_type=["p2c", "c2p"], share_att_key=True, position_buckets=-1,
        max_relative_positions=16,
    )  # fmt: skip
    model = hf.DebertaV2ForSequenceClassification(cfg)
    graph, pruned, _ = _prune(model, _tokens())
    residual = next(g for g in graph.groups if "deberta.embeddings.word_embeddings" in g.producers)
    assert not residual.prunable
    assert "query_proj.weight is also applied at node" in residual.reason
    assert "tensor without tracked channels" in residual.reason
    assert count_params(pruned) < 0.9 * count_params(model)  # the MLP widths still prune


@pytest.mark.parametrize("head", ["CLIPForImageClassification", "CLIPVisionModelWithProjection"])
def test_clip_vision_class_embedding_prunes_exactly(hf, head: str) -> None:
    torch.manual_seed(0)
    vision = dict(**BLOCKS, image_size=32, patch_size=8)
    if head == "CLIPForImageClassification":
        cfg = hf.CLIPConfig(
            vision_config=vision, text_config=dict(**BLOCKS, vocab_size=100), num_labels=3
        )
    else:
        cfg = hf.CLIPVisionConfig(**vision, projection_dim=32)
    model = getattr(hf, head)(cfg)
    graph, pruned, _ = _prune(model, _images())
    assert count_params(pruned) < 0.8 * count_params(model)
    if head == "CLIPForImageClassification":  # the residual stream, class embedding included
        stream = next(g for g in graph.groups if any("patch_embedding" in p for p in g.producers))
        assert stream.prunable
        assert pruned.get_parameter("vision_model.embeddings.class_embedding").shape[0] < 64


def test_hf_efficientnet_same_padding_convs_prune_exactly(hf) -> None:
    torch.manual_seed(0)
    cfg = hf.EfficientNetConfig(
        image_size=32, width_coefficient=0.25, depth_coefficient=0.2, hidden_dim=320,
        num_labels=3,
    )  # fmt: skip
    model = hf.EfficientNetForImageClassification(cfg)
    graph, pruned, report = _prune(model, _images())
    assert all(g.prunable for g in graph.groups if g.producers != ("classifier",))
    assert count_params(pruned) < 0.5 * count_params(model)
    assert (
        report.intermediates_compared > 20
    )  # its classifier starts at zero: outputs prove nothing
    x = _images()
    with torch.no_grad():
        assert torch.equal(torch.export.export(pruned, (x,)).module()(x), pruned(x))


class Generator(nn.Module):
    """Torch-Pruning's DCGAN-style test model: Linear -> view(-1, C, 4, 4) -> ConvTranspose2d."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 16 * 4 * 4)
        self.bn = nn.BatchNorm2d(16)
        self.up = nn.ConvTranspose2d(16, 8, 4, 2, 1)
        self.out = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, z):
        x = self.fc(z).view(-1, 16, 4, 4)
        return self.out(torch.relu(self.up(torch.relu(self.bn(x)))))


def test_linear_view_to_channels_prunes_whole_channels() -> None:
    torch.manual_seed(0)
    model = Generator()
    graph, pruned, _ = _prune(model, torch.randn(2, 32))
    fc = next(g for g in graph.groups if g.producers == ("fc",))
    assert fc.prunable and fc.unit == "channel" and fc.size == 16
    # each kept channel keeps its 16 consecutive features
    assert pruned.fc.out_features == 16 * pruned.bn.num_features == 16 * pruned.up.in_channels


class Reductions(nn.Module):
    """Sums, p-norms and powers over the channel axis, F.normalize, a division by a norm."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        y = nn.functional.normalize(torch.relu(self.a(x)), dim=1)
        z = self.b(y)
        energy = z.pow(2).sum(1, keepdim=True)
        norm = torch.linalg.vector_norm(z, 2, dim=(2, 3), keepdim=True)
        return self.head((self.c(z / (norm + 1)) * energy).sum(dim=(2, 3)))


def test_sums_norms_and_powers_over_channels_prune_exactly() -> None:
    torch.manual_seed(0)
    graph, _, _ = _prune(Reductions(), torch.randn(2, 3, 8, 8))
    assert all(g.prunable for g in graph.groups if g.producers != ("head",))


def test_phi3_fused_qkv_slices_prune_whole_kv_groups(hf) -> None:
    torch.manual_seed(0)
    cfg = hf.Phi3Config(
        **BLOCKS, num_key_value_heads=2, vocab_size=100, pad_token_id=0, num_labels=3,
        use_cache=False,
    )  # fmt: skip
    model = hf.Phi3ForSequenceClassification(cfg)
    graph, _, _ = _prune(model, _tokens())
    qkv = [g for g in graph.groups if any("qkv_proj" in p for p in g.producers)]
    assert len(qkv) == 2 and all(g.prunable and g.unit == "head" and g.size == 2 for g in qkv)


def test_hf_regnet_grouped_convs_prune_exactly(hf) -> None:
    torch.manual_seed(0)
    cfg = hf.RegNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8, num_labels=3
    )
    graph, pruned, _ = _prune(hf.RegNetForImageClassification(cfg), _images())
    assert all(g.prunable for g in graph.groups if not g.producers[0].startswith("classifier"))
    grouped = next(g for g in graph.groups if "stages.1.layers.0.layer.0" in g.producers[0])
    assert grouped.size == 8  # 32 channels in 4 conv groups: offset j of every group is a unit
    conv = "regnet.encoder.stages.1.layers.0.layer.1.convolution.weight"
    assert pruned.get_parameter(conv).shape == (16, 4, 3, 3)  # half of each group, groups kept


def test_t5_heads_prune_with_their_relative_attention_bias(hf) -> None:
    torch.manual_seed(0)
    cfg = hf.T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=100)
    model = hf.T5EncoderModel(cfg)
    graph, pruned, _ = _prune(model, _tokens())
    # Block 0's bias is added in every block, so head h of every block goes together with it.
    (heads,) = [g for g in graph.groups if g.unit == "head"]
    assert heads.prunable and heads.size == 4
    bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias"
    assert bias in heads.producers and "encoder.block.1.layer.0.SelfAttention.q" in heads.producers
    assert pruned.get_submodule(bias).weight.shape[1] == 2


def test_hf_swin_prunes_heads_with_the_bias_table_and_its_padded_stream(hf) -> None:
    torch.manual_seed(0)
    cfg = hf.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
        window_size=4, num_labels=3,
    )  # fmt: skip
    model = hf.SwinForImageClassification(cfg)
    graph, pruned, _ = _prune(model, _images())
    assert all(g.prunable for g in graph.groups if g.producers != ("classifier",))
    assert count_params(pruned) < 0.4 * count_params(model)
