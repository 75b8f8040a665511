"""Channel rounding on torchvision resnet50: ``round_to=8`` against unrounded, same budget.

Users of pruners report that inference is not faster after pruning (Torch-Pruning #149, #33,
#382): kept counts such as 42 or 51 channels fall off the fast paths of vectorised kernels. This
script scores resnet50 (random weights; latency does not depend on the weights' values) on
synthetic calibration batches, plans ``plan_for(params=b)`` with and without ``round_to=8``,
checks that every kept count of the rounded plan is a multiple of 8, and times the original and
both pruned models eagerly (and with ``torch.compile`` unless ``--no-compile``), alternating the
three models within every repeat so that a shared machine's load hits them alike.

    python benchmarks/bench_round_to.py --threads 2 --repeats 15
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torchvision

import fairfx
from fairfx.apps.report import table


def synthetic(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(0, n, 10):
        yield torch.randn(10, 3, 224, 224, generator=g), torch.randint(0, 10, (10,), generator=g)


@torch.no_grad()
def alternating_ms(models: dict[str, torch.nn.Module], x, repeats: int) -> dict[str, float]:
    """Median milliseconds per forward of each model, the models taking turns every repeat."""
    for m in models.values():
        for _ in range(2):
            m(x)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(repeats):
        for k, m in models.items():
            t = time.perf_counter()
            m(x)
            times[k].append(1e3 * (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet50")
    p.add_argument("--params", type=float, default=0.5)
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--samples", type=int, default=40)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, num_classes=10).eval()
    x1 = torch.randn(1, 3, 224, 224)
    t = time.perf_counter()
    an = fairfx.analyze(
        model, x1, synthetic(args.samples), samples_per_class=4, projections=16, progress=False
    )
    print(f"analyze: {time.perf_counter() - t:.1f}s", flush=True)
    plans = {
        "unrounded": an.plan_for(params=args.params),
        f"round_to={args.round_to}": an.plan_for(params=args.params, round_to=args.round_to),
    }
    rounded = plans[f"round_to={args.round_to}"]
    groups = an.graph.groups
    kept = {g: len(u) for g, u in rounded.units.items()}
    bad = {groups[g].producers[0]: k for g, k in kept.items() if k % args.round_to}
    pruned_groups = sum(1 for g, k in kept.items() if k < groups[g].size)
    print(
        f"round_to={args.round_to}: {len(kept)} prunable groups, {pruned_groups} pruned, kept "
        f"counts not a multiple of {args.round_to}: {bad or 'none'}"
    )
    print("kept counts (rounded):", sorted(set(kept.values())))
    print(
        "kept counts (unrounded), not multiples:",
        sorted({len(u) for u in plans["unrounded"].units.values()} - set(range(0, 4096, 8)))[:20],
    )
    models = {"original": model}
    for name, plan in plans.items():
        models[name] = an.compress(plan).eval()
        assert fairfx.verify(model, models[name], x1).passed
    variants = [("eager", models)]
    if not args.no_compile:
        variants.append(("compile", {k: torch.compile(m) for k, m in models.items()}))
    rows = []
    for mode, ms in variants:
        for batch in (1, 8):
            x = torch.randn(batch, 3, 224, 224)
            lat = alternating_ms(ms, x, args.repeats)
            for name, plan in plans.items():
                rows.append(
                    [
                        mode,
                        str(batch),
                        name,
                        f"{plan.params_kept:.3f}",
                        f"{plan.macs_kept:.3f}",
                        f"{lat['original']:.1f}",
                        f"{lat[name]:.1f}",
                        f"{lat['original'] / lat[name]:.2f}x",
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
    print()
    header = ["mode", "batch", "plan", "params kept", "MACs kept", "original ms", "pruned ms"]
    print(table([*header, "speedup"], rows))
    print(
        f"\n{args.model}, threads={args.threads}, medians of {args.repeats} alternating runs, "
        f"torch {torch.__version__}"
    )


if __name__ == "__main__":
    main()
