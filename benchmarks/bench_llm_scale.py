"""A ~1B-parameter Llama layout (random init) through channel_graph + prune + verify: wall time
and peak RSS of the process against the model's own memory (the bound: at most 3x).

Each size runs in a fresh child process, so its peak RSS (``resource.getrusage``'s
``ru_maxrss``) belongs to that run alone. The plan keeps the first half of every prunable group
(hidden width, heads, MLP width): uniform, as Minitron prunes.

    python benchmarks/bench_llm_scale.py                    # the 1B layout, float32
    python benchmarks/bench_llm_scale.py --layers 2 --hidden 256 --intermediate 688 \
        --heads 8 --kv-heads 2 --out /tmp/small.json        # a quick look

Writes ``benchmarks/results/llm_scale.json`` (or ``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "llm_scale.json"


def _rss_gib() -> float:
    """Peak RSS of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child(args: argparse.Namespace) -> dict:
    """Build, analyse, prune and verify in this process; returns the measurements."""
    import torch
    import transformers

    import fairfx
    from fairfx.engine.rewrite import count_params

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    config = transformers.LlamaConfig(
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        vocab_size=args.vocab,
        use_cache=False,
    )
    rss_start = _rss_gib()
    t = time.perf_counter()
    model = transformers.LlamaForCausalLM._from_config(config, dtype=dtype).eval()
    build_s = time.perf_counter() - t
    params = count_params(model)
    model_gib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    rss_model = _rss_gib()
    x = torch.randint(0, args.vocab, (2, args.seq), generator=torch.Generator().manual_seed(0))
    row: dict = {
        "params": params,
        "dtype": args.dtype,
        "model_gib": round(model_gib, 3),
        "rss_before_model_gib": round(rss_start, 3),
        "rss_after_model_gib": round(rss_model, 3),
        "model_init_s": round(build_s, 2),
    }
    t = time.perf_counter()
    graph = fairfx.channel_graph(model, x)
    row["channel_graph_s"] = round(time.perf_counter() - t, 2)
    row["rss_after_channel_graph_gib"] = round(_rss_gib(), 3)
    plan = {g.id: list(range(g.size // 2)) for g in graph.groups if g.prunable}
    row["groups"] = len(graph.groups)
    row["prunable_groups"] = len(plan)
    t = time.perf_counter()
    pruned = graph.prune(plan)
    row["prune_s"] = round(time.perf_counter() - t, 2)
    row["rss_after_prune_gib"] = round(_rss_gib(), 3)
    row["params_removed"] = round(1 - count_params(pruned) / params, 4)
    del graph
    t = time.perf_counter()
    report = fairfx.verify(model, pruned, x)
    row["verify_s"] = round(time.perf_counter() - t, 2)
    row["verify"] = str(report)
    row["verify_passed"] = report.passed
    peak = _rss_gib()
    row["peak_rss_gib"] = round(peak, 3)
    row["peak_over_model"] = round(peak / model_gib, 2)
    row["within_3x"] = peak <= 3 * model_gib
    return row


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--intermediate", type=int, default=5504)
    p.add_argument("--layers", type=int, default=20)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--kv-heads", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--seq", type=int, default=16)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    if args.child:
        print(json.dumps(child(args)))
        return
    t = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, *argv, "--child"], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"the measured run failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["total_s"] = round(time.perf_counter() - t, 1)
    layout = ("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab", "seq", "threads")
    row["layout"] = {k: getattr(args, k) for k in layout}
    row["command"] = "python benchmarks/bench_llm_scale.py " + " ".join(argv)
    width = max(len(k) for k in row)
    for key, value in row.items():
        print(f"{key:<{width}}  {value}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(row, indent=2) + "\n")
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
