"""Hugging Face causal LMs at hidden 64, vocab 500 (2 layers, 4 heads / 2 key-value heads, random
init): what a uniform half plan removes, the oracle's verdict, torch.export, and for the
families ``fairfx.to_hf`` knows, greedy ``generate`` with the KV cache against greedy decoding
with the pruned GraphModule.

    python benchmarks/bench_causal_lm.py

Prints a table and writes ``benchmarks/results/causal_lm.json``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import transformers as hf

import fairfx
from fairfx.engine.rewrite import count_params

RESULTS = Path(__file__).parent / "results" / "causal_lm.json"
LENGTH = 16
SIZES = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=500, use_cache=False, eos_token_id=None, pad_token_id=0,
)  # fmt: skip
GPT2 = dict(
    n_embd=64, n_layer=2, n_head=4, n_positions=32, vocab_size=500, use_cache=False,
    eos_token_id=None, pad_token_id=0,
)  # fmt: skip
MODELS = {
    "GPT2LMHeadModel (tied)": lambda: hf.GPT2LMHeadModel(hf.GPT2Config(**GPT2)),
    "LlamaForCausalLM": lambda: hf.LlamaForCausalLM(hf.LlamaConfig(**SIZES)),
    "LlamaForCausalLM (tied)": lambda: hf.LlamaForCausalLM(
        hf.LlamaConfig(**SIZES, tie_word_embeddings=True)
    ),
    "MistralForCausalLM": lambda: hf.MistralForCausalLM(hf.MistralConfig(**SIZES)),
    "Qwen2ForCausalLM": lambda: hf.Qwen2ForCausalLM(hf.Qwen2Config(**SIZES)),
    "GemmaForCausalLM (tied)": lambda: hf.GemmaForCausalLM(hf.GemmaConfig(**SIZES, head_dim=16)),
    "Phi3ForCausalLM": lambda: hf.Phi3ForCausalLM(hf.Phi3Config(**SIZES)),
}


def greedy_graph(pruned, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """Greedy decoding with the GraphModule, no cache: the whole (padded) sequence each step."""
    seq = prompt
    for _ in range(new):
        t = seq.shape[1]
        logits = pruned(torch.cat([seq, torch.zeros(1, LENGTH - t, dtype=seq.dtype)], 1))
        seq = torch.cat([seq, logits[:, t - 1].argmax(-1, keepdim=True)], 1)
    return seq


@torch.no_grad()
def measure(name: str) -> dict:
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = torch.randint(1, 500, (2, LENGTH), generator=torch.Generator().manual_seed(2))
    graph = fairfx.channel_graph(model, x)
    stream = next(g for g in graph.groups if g.size == 64)
    plan = {g.id: list(range(g.size // 2)) for g in graph.groups if g.prunable}
    pruned = graph.prune(plan)
    report = fairfx.verify(model, pruned, x)
    program = torch.export.export(pruned, (x,))
    row = {
        "model": name,
        "params": count_params(model),
        "hidden_width": "prunable" if stream.prunable else f"blocked: {stream.reason}",
        "removed_by_half_plan": round(1 - count_params(pruned) / count_params(model), 3),
        "verify": str(report).split(";")[0],
        "export_equal": bool(torch.equal(program.module()(x), pruned(x))),
    }
    try:
        out = fairfx.to_hf(model, pruned, x)
    except fairfx.FairfxError as exc:
        row["to_hf"] = f"refused: {exc}"
        return row
    prompt = x[:1, :8]
    generated = out.generate(prompt, max_new_tokens=8, do_sample=False, use_cache=True)
    row["to_hf"] = "generate(use_cache=True) == GraphModule greedy: " + str(
        bool(torch.equal(generated, greedy_graph(pruned, prompt, 8)))
    )
    return row


def main() -> None:
    hf.logging.set_verbosity_error()
    rows = [measure(name) for name in MODELS]
    for row in rows:
        print(" | ".join(str(v) for v in row.values()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=2) + "\n")
    os.replace(tmp, RESULTS)


if __name__ == "__main__":
    main()
