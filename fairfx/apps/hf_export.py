"""A pruned Hugging Face causal LM back as a standard Hugging Face model.

A pruned GraphModule runs, trains and exports, but Hugging Face users need ``generate()`` with
its KV cache and ``save_pretrained``/``from_pretrained``. When a plan is *uniform* (every layer
keeps the same number of heads and the same MLP width, as Minitron prunes), the pruned weights
fit the model's own class with a smaller config: :func:`to_hf` builds that model, loads the
weights the plan kept (read from the pruned GraphModule, whose parameters carry the module
paths of the original), and checks that it computes what the GraphModule computes on the
example input. Hugging Face configs hold one width per model, so a non-uniform plan is refused
with the reason.

The weights need exact adjustments where a width is a constant of the config. The pruned graph
normalizes RMSNorm by the *original* width (what the
masked-execution oracle computes; see :mod:`fairfx.engine.rules.reductions`), while the model
class divides by its config's width. With ``r = original / kept`` hidden channels,
``x * rsqrt(sum(x**2) / n_orig + eps) * w`` equals ``x * rsqrt(mean(x**2) + eps * r) * (w *
sqrt(r))``, so the norm weights are scaled by ``sqrt(r)`` and ``rms_norm_eps`` by ``r``.
Gemma's embedding scale ``sqrt(hidden_size)`` is folded the same way (:func:`_rescaled`).

``transformers`` is imported only here, and only when :func:`to_hf` is called.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..engine.oracle import flat_tensors
from ..errors import FairfxError, PlanError

_UNIFORM_HINT = (
    "plan one ratio for every group (graph.plan(importance='l1', ratio=0.5), "
    "analysis.plan(uniform=0.5), or keep lists of one length per layer), or keep the pruned "
    "GraphModule (fairfx.save_pruned)"
)


@dataclass(frozen=True)
class _Family:
    """How one family of Hugging Face causal LMs lays out its widths."""

    config: Callable[[Any, dict[str, torch.Tensor]], dict[str, Any]]  # new config fields
    norm_scale: bool  # RMSNorm over the hidden width: fold the original-width denominator
    norm_offset: float = 0.0  # the norm multiplies by offset + weight (Gemma: 1 + weight)
    embed_scale: bool = False  # embeddings times sqrt(hidden_size), taken from the config


def _per_layer(state: dict[str, torch.Tensor], pattern: str, n_layers: int, what: str) -> int:
    """The one size every layer keeps for ``pattern`` (a key with ``{}`` for the layer)."""
    sizes = [int(state[pattern.format(i)].shape[0]) for i in range(n_layers)]
    if len(set(sizes)) > 1:
        shown = ", ".join(f"layer {i}: {s}" for i, s in enumerate(sizes[:4]))
        raise PlanError(
            f"the plan keeps different {what} per layer ({shown}); a Hugging Face config holds "
            f"one width per model, so to_hf needs a uniform plan: {_UNIFORM_HINT}"
        )
    return sizes[0]


def _llama_config(cfg: Any, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Llama, Mistral, Qwen2: q/k/v/o projections, a gated MLP, RMSNorm over the hidden width."""
    n = cfg.num_hidden_layers
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    hidden = int(state["model.embed_tokens.weight"].shape[1])
    q = _per_layer(state, "model.layers.{}.self_attn.q_proj.weight", n, "attention heads")
    kv = _per_layer(state, "model.layers.{}.self_attn.k_proj.weight", n, "key/value heads")
    mlp = _per_layer(state, "model.layers.{}.mlp.gate_proj.weight", n, "MLP widths")
    return {
        "hidden_size": hidden,
        "intermediate_size": mlp,
        "num_attention_heads": q // head_dim,
        "num_key_value_heads": kv // head_dim,
        "head_dim": head_dim,
    }


def _gpt2_config(cfg: Any, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """GPT-2: Conv1D weights are [in, out]; attention width and residual width are one n_embd."""
    n = cfg.n_layer
    head_dim = cfg.n_embd // cfg.n_head
    hidden = int(state["transformer.wpe.weight"].shape[1])
    t = {k: v.T for k, v in state.items() if k.endswith(("c_attn.weight", "c_fc.weight"))}
    qkv = _per_layer(t, "transformer.h.{}.attn.c_attn.weight", n, "attention heads")
    mlp = _per_layer(t, "transformer.h.{}.mlp.c_fc.weight", n, "MLP widths")
    if qkv != 3 * hidden:
        raise PlanError(
            f"the plan keeps {hidden} residual channels but {qkv // 3 // head_dim} attention "
            f"heads of {head_dim}; GPT-2's config has one width (n_embd) for both, so to_hf "
            f"needs heads x {head_dim} = residual width: keep {hidden // head_dim} heads per "
            "layer, or keep the pruned GraphModule (fairfx.save_pruned)"
        )
    return {"n_embd": hidden, "n_head": hidden // head_dim, "n_inner": mlp}


_FAMILIES = {
    "llama": _Family(_llama_config, norm_scale=True),
    "mistral": _Family(_llama_config, norm_scale=True),
    "qwen2": _Family(_llama_config, norm_scale=True),
    "gemma": _Family(_llama_config, norm_scale=True, norm_offset=1.0, embed_scale=True),
    "gpt2": _Family(_gpt2_config, norm_scale=False),
}


def _pruned_state(pruned: nn.Module, model: nn.Module) -> dict[str, torch.Tensor]:
    """The pruned tensors under every name the original model gives them (tied aliases too)."""
    state = dict(pruned.named_parameters())
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    for names in aliases.values():
        found = next((state[k] for k in names if k in state), None)
        if found is not None:
            state.update({k: found for k in names})
    return state


@torch.no_grad()
def to_hf(model: nn.Module, pruned: nn.Module, example_input: Any) -> nn.Module:
    """The standard Hugging Face model of a uniform plan: ``type(model)`` with a smaller config.

    Args:
        model: the original Hugging Face causal LM (``GPT2LMHeadModel``, ``LlamaForCausalLM``,
            ``MistralForCausalLM``, ``Qwen2ForCausalLM``, ``GemmaForCausalLM``); not
            modified.
        pruned: what ``fairfx.prune``/``compress`` returned for ``model``.
        example_input: token ids the result is checked on (the GraphModule's logits must come
            out of the new model).

    Returns:
        A new model of the same class, in ``model``'s train/eval mode, that ``generate()``s with
        its KV cache and round-trips through ``save_pretrained``/``from_pretrained``.

    Raises:
        PlanError: the plan keeps different widths per layer (a config holds one).
        FairfxError: an architecture without a known config layout, or a pruned module without
            a fairfx plan.
    """
    cfg = getattr(model, "config", None)
    family = _FAMILIES.get(getattr(cfg, "model_type", None))
    if family is None:
        raise FairfxError(
            f"to_hf knows the config layouts of {', '.join(sorted(_FAMILIES))}, not "
            f"{type(model).__name__}; keep the pruned GraphModule (fairfx.save_pruned)"
        )
    if "fairfx" not in getattr(pruned, "meta", {}):
        raise FairfxError("pruned has no fairfx plan; pass what fairfx.prune or compress returned")
    state = _pruned_state(pruned, model)
    fields = family.config(cfg, state)
    config = copy.deepcopy(cfg)
    for key, value in fields.items():
        setattr(config, key, value)
    ratio = cfg.hidden_size / config.hidden_size if family.norm_scale else 1.0
    if family.norm_scale:
        config.rms_norm_eps = cfg.rms_norm_eps * ratio
    first = next(model.parameters())
    out = type(model)._from_config(config).to(device=first.device, dtype=first.dtype)
    _load(out, state, _rescaled(model, out, family, ratio))
    out.generation_config = copy.deepcopy(model.generation_config)
    out.train(model.training)
    _check(out, pruned, example_input)
    return out


def _rescaled(
    model: nn.Module, out: nn.Module, family: _Family, ratio: float
) -> dict[str, tuple[float, float]]:
    """``{parameter: (factor, offset)}``: the new value is ``(offset + w) * factor - offset``.

    RMSNorm weights take ``sqrt(ratio)`` (the original-width denominator, module docstring).
    Gemma scales embeddings by ``sqrt(hidden_size)`` of the config, which shrinks with the
    width: the table takes ``sqrt(ratio)`` to keep the product, and when the output projection
    is that same table, the final norm takes ``1 / sqrt(ratio)`` to keep the logits."""
    root = math.sqrt(ratio)
    out_map: dict[str, tuple[float, float]] = {}
    if family.norm_scale:
        for path, m in out.named_modules():
            if type(m).__name__.endswith("RMSNorm"):
                out_map[f"{path}.weight"] = (root, family.norm_offset)
    if family.embed_scale and ratio != 1.0:
        table = model.get_input_embeddings().weight
        names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is table]
        out_map.update({n: (root, 0.0) for n in names})
        if model.get_output_embeddings().weight is table:
            out_map["model.norm.weight"] = (1.0, family.norm_offset)  # sqrt(r) / sqrt(r)
    return out_map


def _load(
    out: nn.Module, state: dict[str, torch.Tensor], rescale: dict[str, tuple[float, float]]
) -> None:
    """Copy every parameter of ``out`` from the pruned tensors, rescaled where ``rescale``
    says."""
    for name, p in out.named_parameters(remove_duplicate=False):
        src = state.get(name)
        if src is None or tuple(src.shape) != tuple(p.shape):
            got = "missing" if src is None else f"of shape {tuple(src.shape)}"
            raise FairfxError(
                f"internal error (a fairfx bug): the pruned weight for {name} is {got}, the "
                f"Hugging Face config needs {tuple(p.shape)}; please report this model and plan"
            )
        factor, offset = rescale.get(name, (1.0, 0.0))
        value = (src.float() + offset) * factor - offset if factor != 1.0 else src
        p.copy_(value.to(p.dtype))


def _check(out: nn.Module, pruned: nn.Module, example_input: Any) -> None:
    """The new model's logits must be the GraphModule's (same tolerance rule as verify)."""
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    was = (out.training, pruned.training)
    out.eval()
    pruned.eval()
    try:
        want = flat_tensors(pruned(*inputs))[0].float()
        got = out(*inputs, use_cache=False).logits.float()
    finally:
        out.train(was[0])
        pruned.train(was[1])
    diff = float((want - got).abs().max()) if want.shape == got.shape else float("inf")
    # the folded norm weights round once more at 16 bits: bf16 carries 8 significant bits
    rtol = 1e-4 if next(out.parameters()).element_size() >= 4 else 3e-2
    tol = rtol * float(want.abs().max())
    if not diff <= tol:
        raise FairfxError(
            f"internal error (a fairfx bug): the Hugging Face model's logits differ from the "
            f"pruned GraphModule's by {diff:.3g} (tolerance {tol:.3g}); please report this model"
        )
