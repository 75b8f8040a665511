"""Deployment latency: original vs pruned torchvision models, eager and torch.compile.

For resnet50, mobilenet_v2 and densenet121 (random weights, 224x224), a plan keeping about half
of the parameters is made with ``Analysis.plan_for(params=0.5)`` from scores on synthetic
calibration data (random images, 10 random labels: latency does not depend on the weights'
values). Each model runs eagerly and under ``torch.compile`` (inductor) at batch 1 and 8 with the
thread count fixed; the table prints medians over repeats, the speedup and the MACs ratio next to
it (the question users ask: "is it actually faster?").

    python benchmarks/bench_latency.py --threads 2 --repeats 20
    python benchmarks/bench_latency.py --models resnet50 --no-compile
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torchvision

import fairfx
from fairfx.apps.report import latency_ms, table


def synthetic(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(0, n, 20):
        yield torch.randn(20, 3, 224, 224, generator=g), torch.randint(0, 10, (20,), generator=g)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=["resnet50", "mobilenet_v2", "densenet121"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--params", type=float, default=0.5)
    p.add_argument("--no-compile", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, num_classes=10).eval()
        x1 = torch.randn(1, 3, 224, 224)
        an = fairfx.analyze(
            model, x1, synthetic(200), samples_per_class=8, projections=16, progress=False
        )
        plan = an.plan_for(params=args.params)
        pruned = an.compress(plan).eval()
        macs_ratio = plan.cost.macs / plan.base.macs
        variants = [("eager", model, pruned)]
        if not args.no_compile:
            variants.append(("compile", torch.compile(model), torch.compile(pruned)))
        for mode, orig, small in variants:
            for batch in (1, 8):
                x = torch.randn(batch, 3, 224, 224)
                t_orig = latency_ms(orig, x, repeats=args.repeats, warmup=3)
                t_small = latency_ms(small, x, repeats=args.repeats, warmup=3)
                rows.append(
                    [
                        name,
                        mode,
                        str(batch),
                        f"{t_orig:.1f}",
                        f"{t_small:.1f}",
                        f"{t_orig / t_small:.2f}x",
                        f"{1 / macs_ratio:.2f}x",
                        f"{plan.params_kept:.2f}",
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
    print()
    header = ["model", "mode", "batch", "original ms", "pruned ms", "speedup", "MACs ratio"]
    print(table([*header, "params kept"], rows))
    print(f"\nthreads={args.threads}, medians of {args.repeats} runs, torch {torch.__version__}")


if __name__ == "__main__":
    main()
