"""Calibration at scale: wall time and peak RSS of ``fairfx.analyze`` on ResNet-50 at 224x224.

Every measurement runs in a fresh process so its peak RSS is its own, next to a plain
forward+backward pass (batch 32, summed cross-entropy, weight gradients) over the same images in
the same run. The data is synthetic (seeded random images and labels): it measures cost, not
quality.

- ``--images N``: issue 12's case, N images of 10 classes (32 kept per class at N = 320), the
  default ``state_dtype`` (float16).
- ``--hundred``: issue 14's case, 100 classes x 32 samples. A real 3,200-image pass takes hours
  on a shared 2-core machine, so the state is first filled with 31 synthetic rows per class in
  the exact shapes (same bytes, same pair-loop work), then ``analyze`` continues from it over
  100 real images (one per class) and finalizes all 100 classes: the peak RSS is that of a full
  100 x 32 run; the time of 3,200 real images is extrapolated from the per-image scoring rate
  measured here plus the measured pair loop.
- ``--pairs-gloo K``: the pair loop of K classes split across 2 gloo ranks by the same balanced
  split ``analyze`` uses, on synthetic sketches with ResNet-50's points (channels, values); each
  rank times a few channels per point and extrapolates by its channel count (the loop's work is
  linear in channels).

    python benchmarks/bench_calibration.py --images 320
    python benchmarks/bench_calibration.py --hundred --state-dtype int4
    python benchmarks/bench_calibration.py --pairs-gloo 1000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    """CPU seconds of this process: on a shared, oversubscribed machine a steadier measure of
    work than wall time (reported next to it)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _images(n: int, classes: int, batch: int, seed: int = 0, labels=None):
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch):
        m = min(batch, n - i)
        x = torch.randn(m, 3, 224, 224, generator=g)
        y = torch.randint(0, classes, (m,), generator=g) if labels is None else labels[i : i + m]
        out.append((x, y))
    return out


def _model(classes: int):
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet50(num_classes=classes).eval()


def child_fb(images: int, classes: int, batch: int, labels_per_class: bool) -> dict:
    import torch
    import torch.nn.functional as F

    model = _model(classes)
    labels = torch.arange(images) % classes if labels_per_class else None
    data = _images(images, classes, batch, labels=labels)
    start, cpu = time.perf_counter(), _cpu_s()
    for x, y in data:
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y, reduction="sum").backward()
    return {
        "what": "forward+backward",
        "images": images,
        "wall_s": time.perf_counter() - start,
        "cpu_s": _cpu_s() - cpu,
    }


def child_analyze(images: int, classes: int, batch: int, dtype: str) -> dict:
    import torch

    import fairfx

    model = _model(classes)
    data = _images(images, classes, batch)
    start, cpu = time.perf_counter(), _cpu_s()
    an = fairfx.analyze(model, torch.randn(1, 3, 224, 224), data, progress=False, state_dtype=dtype)
    rec = an.record
    return {
        "what": "analyze",
        "images": images,
        "wall_s": time.perf_counter() - start,
        "cpu_s": _cpu_s() - cpu,
        "finalize_s": rec["finalize_seconds"],
        "kept": rec["samples"],
        "classes": len(rec["classes"]),
        "chunk": rec["memory"]["batch_size"],
        "estimate_gb": rec["memory"]["estimate_bytes"] / 1e9,
        "state_gb": rec["memory"]["state_bytes"] / 1e9,
    }


def child_hundred(dtype: str, batch: int) -> dict:
    import numpy as np
    import torch

    import fairfx
    from fairfx.engine.groups import build
    from fairfx.method.codec import encode
    from fairfx.method.memory import point_sizes
    from fairfx.method.scoring import new_state, producer_outputs

    classes, k = 100, 32
    model = _model(1000)
    example = torch.randn(1, 3, 224, 224)
    graph = build(model, example)
    state = new_state(
        graph,
        samples_per_class=k,
        max_classes=classes,
        projections=128,
        observe="post_act",
        seed=0,
        loss_fn=None,
        state_dtype=dtype,
    )
    sizes = point_sizes(graph, "post_act", 128)
    prods = {n: graph.analysis.layouts[n].slots.shape[0] for n in producer_outputs(graph)}
    g = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    for c in range(classes):  # 31 synthetic rows per class, real-sized
        n = k - 1
        proj = {
            p: encode(torch.randn(n, ch, v, generator=g), dtype) for p, (ch, v) in sizes.items()
        }
        taylor = {p: torch.randn(n, ch, generator=g) for p, ch in prods.items()}
        keys = rng.integers(1, 2**62, n, dtype=np.int64)
        state.add(keys, np.full(n, c), proj, taylor, {p: v for p, (_, v) in sizes.items()})
    fill = time.perf_counter() - start
    data = _images(classes, 1000, batch, seed=2, labels=torch.arange(classes))
    import fairfx.method.fair as fair_module

    timed: dict[str, float] = {}
    real_finalize = fair_module.finalize

    def finalize(*a, **kw):  # the pair loop's own CPU time
        c = _cpu_s()
        out = real_finalize(*a, **kw)
        timed["finalize_cpu_s"] = _cpu_s() - c
        return out

    fair_module.finalize = finalize
    start, cpu = time.perf_counter(), _cpu_s()
    an = fairfx.analyze(
        model, example, data, max_classes=classes, state=state, state_dtype=dtype, progress=False
    )
    wall = time.perf_counter() - start
    rec = an.record
    return {
        "what": "analyze 100x32",
        "fill_s": fill,
        "real_images": classes,
        "wall_s": wall,
        "cpu_s": _cpu_s() - cpu,
        **timed,
        "finalize_s": rec["finalize_seconds"],
        "kept": rec["samples"],
        "classes": len(rec["classes"]),
        "chunk": rec["memory"]["batch_size"],
        "estimate_gb": rec["memory"]["estimate_bytes"] / 1e9,
        "state_gb": rec["memory"]["state_bytes"] / 1e9,
    }


def _pair_rank(rank: int, world: int, port: int, classes: int, per_point: int, q) -> None:
    import torch
    import torch.distributed as dist

    from fairfx.engine.groups import build
    from fairfx.method.finalize import balanced_split
    from fairfx.method.memory import point_sizes
    from fairfx.method.wasserstein import max_pairwise_w1

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    sizes = point_sizes(build(_model(1000), torch.randn(1, 3, 224, 224)), "post_act", 128)
    names = sorted(sizes)
    owner = balanced_split([sizes[n][0] * sizes[n][1] for n in names], world)
    g = torch.Generator().manual_seed(rank)
    measured, extrapolated, channels = 0.0, 0.0, 0
    for n, r in zip(names, owner, strict=True):
        if r != rank:
            continue
        ch, v = sizes[n]
        width = 128 if v > 1 else 1
        sketches = [
            torch.randn(32, per_point, width, generator=g).sort(0).values for _ in range(classes)
        ]
        start = time.perf_counter()
        max_pairwise_w1(sketches)
        took = time.perf_counter() - start
        measured += took
        extrapolated += took * ch / per_point
        channels += ch
    dist.barrier()
    q.put(
        {"rank": rank, "channels": channels, "measured_s": measured, "extrapolated_s": extrapolated}
    )
    dist.destroy_process_group()


def pairs_gloo(classes: int, per_point: int) -> list[dict]:
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [
        ctx.Process(target=_pair_rank, args=(r, 2, port, classes, per_point, q)) for r in range(2)
    ]
    for p in procs:
        p.start()
    rows = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return sorted(rows, key=lambda r: r["rank"])


def _run(args_list: list[str]) -> dict:
    res = subprocess.run(
        [sys.executable, __file__, *args_list], capture_output=True, text=True, check=True
    )
    row = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, nargs="*", default=[])
    p.add_argument("--hundred", action="store_true")
    p.add_argument("--pairs-gloo", type=int)
    p.add_argument("--per-point", type=int, default=2, help="channels timed per point (gloo)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--state-dtype", default="float16")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        kind, n = args.child.split(":")
        if kind == "fb":
            row = child_fb(int(n), 10, args.batch, False)
        elif kind == "fb100":
            row = child_fb(int(n), 1000, args.batch, True)
        elif kind == "analyze":
            row = child_analyze(int(n), 10, args.batch, args.state_dtype)
        else:
            row = child_hundred(args.state_dtype, args.batch)
        row["peak_rss_gb"] = _rss_mb() / 1024
        print(json.dumps(row))
        return
    common = ["--batch", str(args.batch), "--threads", str(args.threads)]
    common += ["--state-dtype", args.state_dtype]
    for n in args.images:
        fb = _run(["--child", f"fb:{n}", *common])
        an = _run(["--child", f"analyze:{n}", *common])
        print(
            f"\n| ResNet-50 224, {n} images | peak RSS GB | wall s | CPU s |\n|---|---|---|---|\n"
            f"| forward+backward (batch {args.batch}) | {fb['peak_rss_gb']:.2f} | "
            f"{fb['wall_s']:.0f} | {fb['cpu_s']:.0f} |\n| analyze ({an['classes']} classes x "
            f"{an['kept'] // an['classes']}"
            f", {args.state_dtype}, chunk {an['chunk']}) | {an['peak_rss_gb']:.2f} | "
            f"{an['wall_s']:.0f} (pair loop {an['finalize_s']:.0f}) | {an['cpu_s']:.0f} |\n"
            f"ratio analyze / forward+backward: wall {an['wall_s'] / fb['wall_s']:.2f}, CPU "
            f"{an['cpu_s'] / fb['cpu_s']:.2f}; "
            f"estimate {an['estimate_gb']:.2f} GB (state {an['state_gb']:.2f} GB)",
            flush=True,
        )
    if args.hundred:
        fb = _run(["--child", "fb100:100", *common])
        h = _run(["--child", "hundred:0", *common])
        per_image_fb = fb["wall_s"] / 100
        per_image_scoring = (h["wall_s"] - h["finalize_s"]) / h["real_images"]
        total = per_image_scoring * 3200 + h["finalize_s"]
        cpu_fb = fb["cpu_s"] / 100
        cpu_per_image = (h["cpu_s"] - h["finalize_cpu_s"]) / h["real_images"]
        cpu_total = cpu_per_image * 3200 + h["finalize_cpu_s"]
        print(
            f"\n| ResNet-50 224, 100 classes x 32 | value |\n|---|---|\n"
            f"| peak RSS (full 100 x 32 state, {args.state_dtype}) | {h['peak_rss_gb']:.2f} GB |\n"
            f"| forward+backward per image | {per_image_fb:.2f} s |\n"
            f"| analyze per real image (chunk {h['chunk']}) | {per_image_scoring:.2f} s |\n"
            f"| pair loop, 100 classes | {h['finalize_s']:.0f} s |\n"
            f"| 3,200 images: analyze (extrapolated) / forward+backward, wall | "
            f"{total / (per_image_fb * 3200):.2f} |\n"
            f"| same, CPU | {cpu_total / (cpu_fb * 3200):.2f} |\n"
            f"estimate {h['estimate_gb']:.2f} GB (state {h['state_gb']:.2f} GB)",
            flush=True,
        )
    if args.pairs_gloo:
        rows = pairs_gloo(args.pairs_gloo, args.per_point)
        for r in rows:
            print(json.dumps(r), flush=True)
        worst = max(r["extrapolated_s"] for r in rows)
        one = sum(r["extrapolated_s"] for r in rows)
        print(
            f"\n{args.pairs_gloo} classes, 2 gloo ranks: channels per rank "
            f"{[r['channels'] for r in rows]}; timed {args.per_point} channels per point "
            f"({sum(r['measured_s'] for r in rows):.0f} s measured); extrapolated pair loop "
            f"{worst / 3600:.2f} h on 2 ranks vs {one / 3600:.2f} h on one",
            flush=True,
        )


if __name__ == "__main__":
    main()
