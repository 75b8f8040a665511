"""Hugging Face causal LMs in the form people use (``*ForCausalLM``, ``GPT2LMHeadModel`` with its
tied head), tiny configs and random weights: the hidden width prunes (tied embedding, RMSNorm),
a half plan removes at least 45% of the parameters, the oracle proves it and torch.export takes
it; a uniform plan comes back as a standard Hugging Face model that generates with its KV cache
and round-trips through ``save_pretrained``/``from_pretrained`` (docs/causal_lm.md)."""

from __future__ import annotations

import pytest
import torch

import fairfx
from fairfx.engine.rewrite import count_params

LENGTH = 16  # the captured sequence length (export keeps it static, the batch axis dynamic)
SIZES = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=500, use_cache=False, eos_token_id=None, pad_token_id=0,
)  # fmt: skip


@pytest.fixture(scope="module")
def hf():
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def tokens(n: int = 2) -> torch.Tensor:
    return torch.randint(1, 500, (n, LENGTH), generator=torch.Generator().manual_seed(n))


def make(hf, name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "gpt2":
        cfg = hf.GPT2Config(
            n_embd=64, n_layer=2, n_head=4, n_positions=32, vocab_size=500, use_cache=False,
            eos_token_id=None, pad_token_id=0,
        )  # fmt: skip
        return hf.GPT2LMHeadModel(cfg).eval()
    if name == "llama_tied":
        return hf.LlamaForCausalLM(hf.LlamaConfig(**SIZES, tie_word_embeddings=True)).eval()
    if name == "gemma":
        return hf.GemmaForCausalLM(hf.GemmaConfig(**SIZES, head_dim=16)).eval()
    classes = {
        "llama": (hf.LlamaConfig, hf.LlamaForCausalLM),
        "mistral": (hf.MistralConfig, hf.MistralForCausalLM),
        "qwen2": (hf.Qwen2Config, hf.Qwen2ForCausalLM),
    }
    config, model = classes[name]
    return model(config(**SIZES)).eval()


def half_plan(graph) -> dict[int, list[int]]:
    """Every prunable group keeps its first half: uniform across layers."""
    return {g.id: list(range(g.size // 2)) for g in graph.groups if g.prunable}


EMBEDDING = {"gpt2": "transformer.wte"}


@pytest.mark.parametrize("name", ["gpt2", "llama", "llama_tied", "mistral", "qwen2", "gemma"])
def test_causal_lm_hidden_width_prunes_verifies_exports(hf, name: str) -> None:
    model, x = make(hf, name), tokens()
    graph = fairfx.channel_graph(model, x)
    embedding = EMBEDDING.get(name, "model.embed_tokens")
    stream = next(g for g in graph.groups if embedding in g.producers)
    assert stream.prunable, stream.reason
    # LayerNorm (GPT-2) is checked with renormalized masking; RMSNorm is exact
    assert stream.exact == (name != "gpt2")
    head = next(g for g in graph.groups if "lm_head" in g.producers)  # the vocabulary stays
    assert not head.prunable and "model output" in head.reason
    pruned = graph.prune(half_plan(graph))
    assert count_params(pruned) <= 0.55 * count_params(model)
    report = fairfx.verify(model, pruned, x)
    assert report.passed and report.tolerance > 0, str(report)
    with torch.no_grad():
        assert not torch.allclose(pruned(x), model(x).logits, atol=1e-3)  # it did change
        program = torch.export.export(pruned, (x,))
        assert torch.equal(program.module()(x), pruned(x))


def test_tied_head_stays_one_tensor(hf) -> None:
    model, x = make(hf, "gpt2"), tokens()
    graph = fairfx.channel_graph(model, x)
    pruned = graph.prune(half_plan(graph))
    (table,) = [p for n, p in pruned.named_parameters() if n == "lm_head.weight"]
    assert table.shape == (500, 32)  # rows: the vocabulary; columns: the kept hidden width
    assert model.lm_head.weight is model.transformer.wte.weight  # the user's model untouched
    assert model.lm_head.weight.shape == (500, 64)


def test_rmsnorm_is_exact_only_with_the_mean_rescaled(hf, monkeypatch) -> None:
    """The oracle proves the rescale: without it the pruned Llama normalizes by the kept width
    and verify fails."""
    from fairfx.engine.rules import reductions

    model, x = make(hf, "llama"), tokens()
    graph = fairfx.channel_graph(model, x)
    stream = next(g for g in graph.groups if "model.embed_tokens" in g.producers)
    plan = {stream.id: list(range(0, 64, 2))}
    assert fairfx.verify(model, graph.prune(plan), x).passed
    monkeypatch.setattr(reductions, "_rescale_mean", lambda slots, n, kept_slot: None)
    graph = fairfx.channel_graph(model, x)
    report = fairfx.verify(model, graph.prune(plan), x)
    assert not report.passed and report.max_abs_diff > 100 * report.tolerance, str(report)


def greedy_graph(pruned, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """Greedy decoding without a cache: the whole sequence each step, padded to the captured
    length (causal attention: later positions do not change earlier logits)."""
    seq = prompt
    for _ in range(new):
        t = seq.shape[1]
        pad = torch.zeros(seq.shape[0], LENGTH - t, dtype=seq.dtype)
        logits = pruned(torch.cat([seq, pad], 1))
        seq = torch.cat([seq, logits[:, t - 1].argmax(-1, keepdim=True)], 1)
    return seq


@pytest.mark.parametrize("name", ["gpt2", "llama", "gemma"])
def test_uniform_plan_back_to_hugging_face(hf, name: str, tmp_path) -> None:
    model, x = make(hf, name), tokens()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = fairfx.channel_graph(model, x)
    # the library's uniform plan: half of every group by L1 norm, different units per layer
    pruned = graph.prune(graph.plan(importance="l1", ratio=0.5))
    out = fairfx.to_hf(model, pruned, x)
    assert type(out) is type(model)
    assert out.config.hidden_size == 32 and out.config.num_attention_heads == 2
    if name != "gpt2":  # Gemma: the embedding scale sqrt(hidden) folded (hf_export.py)
        assert out.config.num_key_value_heads == 1 and out.config.intermediate_size == 64
    assert count_params(out) == count_params(pruned)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        torch.testing.assert_close(out(x).logits, pruned(x), rtol=1e-4, atol=1e-5)
        prompt = x[:1, :8]
        cached = out(prompt, use_cache=True).past_key_values
        assert cached is not None  # generate below runs on the KV cache
        generated = out.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
        assert generated.shape == (1, 16)
        assert torch.equal(generated, greedy_graph(pruned, prompt, 8))
    out.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    assert back.config.hidden_size == 32
    with torch.no_grad():
        assert torch.equal(back(x).logits, out(x).logits)


def test_non_uniform_plan_is_refused_with_the_reason(hf) -> None:
    model, x = make(hf, "llama"), tokens()
    graph = fairfx.channel_graph(model, x)
    plan = half_plan(graph)
    heads = [g.id for g in graph.groups if g.unit == "head"]
    plan[heads[1]] = [0, 1]  # layer 1 keeps both key/value heads, layer 0 one
    with pytest.raises(fairfx.PlanError, match=r"different attention heads per layer.*uniform"):
        fairfx.to_hf(model, graph.prune(plan), x)


def test_gpt2_needs_heads_to_fill_the_residual_width(hf) -> None:
    model, x = make(hf, "gpt2"), tokens()
    graph = fairfx.channel_graph(model, x)
    plan = {g.id: list(range(g.size)) for g in graph.groups if g.prunable}
    plan[0] = list(range(32))  # the residual stream halves, every head stays
    with pytest.raises(fairfx.PlanError, match=r"one width \(n_embd\) for both"):
        fairfx.to_hf(model, graph.prune(plan), x)


def test_unknown_layout_is_refused(hf) -> None:
    model = hf.Phi3ForCausalLM(hf.Phi3Config(**SIZES)).eval()
    with pytest.raises(fairfx.FairfxError, match="to_hf knows the config layouts of gemma"):
        fairfx.to_hf(model, model, tokens())


class TorchRMSNorm(torch.nn.Module):
    """A residual stream through ``nn.RMSNorm`` (module) and ``F.rms_norm`` (function)."""

    def __init__(self, eps: float | None) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(8, 16)
        self.norm = torch.nn.RMSNorm(16, eps=eps)
        self.mlp = torch.nn.Linear(16, 16)
        self.scale = torch.nn.Parameter(torch.rand(16) + 0.5)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.mlp(self.norm(h))
        return self.head(torch.nn.functional.rms_norm(h, (16,), self.scale, 1e-3))


@pytest.mark.parametrize("eps", [None, 0.1])
@pytest.mark.parametrize("export", [False, True])
def test_torch_rms_norm_prunes_exactly(eps: float | None, export: bool) -> None:
    torch.manual_seed(0)
    model, x = TorchRMSNorm(eps).eval(), torch.randn(4, 8) * 0.01  # eps matters at this scale
    if export:  # the aten.rms_norm form, as torch.export captures it
        model = torch.export.export(model, (x,), strict=False).module()
    graph = fairfx.channel_graph(model, x)
    stream = next(g for g in graph.groups if "embed" in g.producers)
    assert stream.prunable and stream.exact, stream.reason
    pruned = graph.prune({stream.id: [0, 3, 4, 9, 15]})
    report = fairfx.verify(model, pruned, x)
    assert report.passed and report.tolerance > 0, str(report)
    with torch.no_grad():
        assert not torch.allclose(pruned(x), model(x), atol=1e-4)
