"""Calibration at scale: wall time and peak RSS of ``fairfx.analyze`` on ResNet-50 at 224x224.

Each size runs in a fresh process so peak RSS is its own. The data is synthetic (random images
with 10 random labels): it measures time and memory, not quality. Also times the U-score pair
loop (``max_pairwise_w1``) for 10 and 100 classes x 2,048 channels x 32 samples x 128 projections.

    python benchmarks/bench_calibration.py                  # 320, 640, 1280 images
    python benchmarks/bench_calibration.py --images 320 --batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(images: int, batch: int, threads: int) -> None:
    import torch
    import torchvision

    import fairfx

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=10).eval()
    g = torch.Generator().manual_seed(0)

    def data():
        for i in range(0, images, batch):
            n = min(batch, images - i)
            yield torch.randn(n, 3, 224, 224, generator=g), torch.randint(0, 10, (n,), generator=g)

    base = _rss_mb()
    start = time.perf_counter()
    an = fairfx.analyze(model, torch.randn(1, 3, 224, 224), data(), progress=False)
    wall = time.perf_counter() - start
    print(
        json.dumps(
            {
                "images": images,
                "wall_s": wall,
                "scoring_s": an.record["scoring_seconds"],
                "kept_samples": an.record["samples"],
                "rss_model_mb": base,
                "peak_rss_mb": _rss_mb(),
            }
        )
    )


def pair_loop(threads: int) -> list[tuple[int, float]]:
    import torch

    from fairfx.method.wasserstein import max_pairwise_w1

    torch.set_num_threads(threads)
    out = []
    for k in (10, 100):
        g = torch.Generator().manual_seed(0)
        per_class = [torch.randn(32, 2048, 128, generator=g) for _ in range(k)]
        start = time.perf_counter()
        max_pairwise_w1(per_class)
        out.append((k, time.perf_counter() - start))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, nargs="*", default=[320, 640, 1280])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--skip-pairs", action="store_true")
    args = p.parse_args()
    if args.child:
        child(args.child, args.batch, args.threads)
        return
    if not args.skip_pairs:  # quick, so first: a long run still reports it
        print("| classes | channels | samples/class | projections | pair loop s |")
        print("|---|---|---|---|---|", flush=True)
        for k, s in pair_loop(args.threads):
            print(f"| {k} | 2048 | 32 | 128 | {s:.1f} |", flush=True)
    rows = []
    for n in args.images:
        cmd = [sys.executable, __file__, "--child", str(n), "--batch", str(args.batch)]
        cmd += ["--threads", str(args.threads)]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    print("\n| images | kept samples | wall s | peak RSS MB | RSS after model MB |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['images']} | {r['kept_samples']} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} "
            f"| {r['rss_model_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
