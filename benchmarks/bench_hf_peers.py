"""fairfx and Torch-Pruning on tiny Hugging Face models: does each run, how much goes, is it exact?

For each model (random init, tiny configs, no download): fairfx captures it (through
``torch.export``: symbolic tracing refuses every one), keeps a seeded random half of every
prunable group (heads are units of their own groups), and its rewrite is checked by
``fairfx.verify``. Torch-Pruning 1.6 (``MetaPruner``, L1 magnitude, channel ratio 0.5, the
attention projections given as ``num_heads`` with ``prune_num_heads=True``, head ratio 0.5)
prunes a copy (once with its default ``prune_head_dims=True``, once with whole heads only); the
groups it removes are recorded and replayed on fairfx's masked-execution
oracle, so its output is compared with the original run with the same channels zeroed.

    python benchmarks/bench_hf_peers.py            # all six
    python benchmarks/bench_hf_peers.py bert vit   # some

Needs ``transformers`` and ``torch-pruning`` (benchmark only, not a fairfx dependency).
"""

from __future__ import annotations

import argparse
import copy
import signal
import time

import numpy as np
import torch
from torch import nn

import fairfx
from fairfx.apps.zoo import random_plan
from fairfx.engine.group_graph import build
from fairfx.engine.oracle import flat_tensors, masked_output
from fairfx.engine.rewrite import count_params

BLOCKS = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
TEXT = dict(vocab_size=100, num_labels=3, pad_token_id=0)
HEAD_NAMES = ("query", "key", "value", "q_proj", "k_proj", "v_proj")


def make(name: str):
    import transformers as hf

    tokens = torch.randint(1, 100, (2, 8), generator=torch.Generator().manual_seed(0))
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    if name == "bert":
        return hf.BertForSequenceClassification(hf.BertConfig(**BLOCKS, **TEXT)), tokens
    if name == "vit":
        cfg = hf.ViTConfig(**BLOCKS, image_size=32, patch_size=8, num_labels=3)
        return hf.ViTForImageClassification(cfg), images
    if name == "gpt2":
        cfg = hf.GPT2Config(
            n_embd=64, n_layer=2, n_head=4, n_positions=32, use_cache=False, bos_token_id=1,
            eos_token_id=1, **TEXT,
        )  # fmt: skip
        return hf.GPT2ForSequenceClassification(cfg), tokens
    if name == "llama":
        cfg = hf.LlamaConfig(**BLOCKS, num_key_value_heads=2, use_cache=False, **TEXT)
        return hf.LlamaForSequenceClassification(cfg), tokens
    if name == "resnet":
        cfg = hf.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
            num_labels=3,
        )  # fmt: skip
        return hf.ResNetForImageClassification(cfg), images
    cfg = hf.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=3)
    return hf.ConvNextForImageClassification(cfg), images


def logits(out) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits


def run_fairfx(model: nn.Module, x: torch.Tensor) -> dict:
    start = time.perf_counter()
    graph = build(model, x)
    units = random_plan(graph)
    pruned = graph.prune(units)
    report = fairfx.verify(model, pruned, x)
    heads = [g for g in graph.groups if g.unit == "head"]
    removed = sum(g.size - len(units[g.id]) for g in heads if g.id in units)
    with torch.no_grad():
        exported = torch.equal(torch.export.export(pruned, (x,)).module()(x), pruned(x))
    return {
        "runs": "yes",
        "removed": 1 - count_params(pruned) / count_params(model),
        "heads": f"{removed}/{sum(g.size for g in heads)}",
        "exact": f"{'yes' if report.passed else 'NO'} ({report.max_abs_diff:.1e})",
        "export": "yes" if exported else "no",
        "seconds": time.perf_counter() - start,
    }


def _give_up(signum, frame):
    raise TimeoutError(f"did not finish in {LIMIT_S} s")


LIMIT_S = 180


def run_torch_pruning(model: nn.Module, x: torch.Tensor, head_dims: bool = True) -> dict:
    """Torch-Pruning on a copy, given up after ``LIMIT_S`` seconds (it can hang on graphs)."""
    signal.signal(signal.SIGALRM, _give_up)
    signal.alarm(LIMIT_S)
    try:
        return _torch_pruning(model, x, head_dims)
    finally:
        signal.alarm(0)


def _torch_pruning(model: nn.Module, x: torch.Tensor, head_dims: bool) -> dict:
    import torch_pruning as tp

    start = time.perf_counter()
    work = copy.deepcopy(model).eval()
    names = {m: n for n, m in work.named_modules()}
    heads = {}
    for n, m in work.named_modules():
        if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in HEAD_NAMES:
            cfg = model.config
            kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
            heads[m] = kv if n.endswith(("k_proj", "v_proj")) else cfg.num_attention_heads
    last = [m for m in work.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    try:
        pruner = tp.pruner.MetaPruner(
            work, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=0.5,
            ignored_layers=[last], num_heads=heads, prune_num_heads=bool(heads),
            head_pruning_ratio=0.5, output_transform=lambda out: logits(out).sum(),
            prune_head_dims=head_dims,
        )  # fmt: skip
        removed_out: dict[str, list[int]] = {}
        producers = (
            tp.prune_linear_out_channels, tp.prune_conv_out_channels,
            tp.prune_embedding_out_channels,
        )  # fmt: skip
        for group in pruner.step(interactive=True):
            for item in group:  # every layer whose output channels the group removes
                module = item.dep.target.module
                if module in names and item.dep.handler in producers:
                    removed_out[names[module]] = [int(i) for i in item.idxs]
            group.prune()
        with torch.no_grad():
            got = logits(work(x))
    except Exception as exc:  # report, never hide, a peer's failure
        msg = str(exc).splitlines()[0][:80] if str(exc) else ""
        return {"runs": f"no: {type(exc).__name__}: {msg}", "seconds": time.perf_counter() - start}
    res = {
        "runs": "yes",
        "removed": 1 - count_params(work) / count_params(model),
        "seconds": time.perf_counter() - start,
    }
    widths = [(m.out_features, names[m]) for m in heads]
    if widths:
        first = widths[0][1]
        res["heads"] = f"{first}: {model.get_submodule(first).out_features} -> {widths[0][0]}"
    res["exact"] = _replay_exact(model, x, removed_out, got)
    return res


def _replay_exact(model, x, removed_out, got) -> str:
    """Torch-Pruning's removed output channels replayed on fairfx's masked-execution oracle."""
    graph = build(model, x)
    keep = {}
    for name, idxs in removed_out.items():
        prod = graph.channel_pass.producer_index.get(name)
        if prod is None:
            return f"not checked: {name} is no fairfx producer"
        n = len(graph.channel_pass.producers[prod].slots)
        keep[name] = sorted(set(range(n)) - set(int(i) for i in idxs))
    try:
        units = graph.units_from_keep(keep)
    except fairfx.PlanError as exc:
        return f"not checkable: {str(exc)[:70]}"
    ref = flat_tensors(
        masked_output(graph, graph.kept_slots(units), graph.channel_pass.captured.inputs)
    )
    diff = float((ref[0] - got).abs().max())
    tol = 1e-4 * float(ref[0].abs().max())
    return f"{'yes' if diff <= tol else 'NO'} ({diff:.1e})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "models", nargs="*", default=["bert", "vit", "gpt2", "llama", "resnet", "convnext"]
    )
    args = parser.parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    rows = [
        "| model | tool | runs | params removed | heads removed (fairfx) / attention width "
        "(Torch-Pruning) | exact (max diff) | export | s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in args.models:
        torch.manual_seed(0)
        np.random.seed(0)
        model, x = make(name)
        model.eval()
        tools = (
            ("fairfx", run_fairfx),
            ("Torch-Pruning", run_torch_pruning),
            ("Torch-Pruning, prune_head_dims=False", lambda m, x: run_torch_pruning(m, x, False)),
        )
        for tool, fn in tools:
            r = fn(model, x)
            removed = f"{r['removed']:.0%}" if "removed" in r else "-"
            rows.append(
                f"| {name} | {tool} | {r['runs']} | {removed} | {r.get('heads', '-')} | "
                f"{r.get('exact', '-')} | {r.get('export', '-')} | {r['seconds']:.1f} |"
            )
            print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
