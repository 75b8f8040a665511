"""Calibration at scale: wall time and peak RSS of ``fairfx.analyze`` on ResNet-50 at 224x224.

Every measurement runs in a fresh process so its peak RSS is its own, next to a plain
forward+backward pass (batch 32, summed cross-entropy, weight gradients) over the same images in
the same run. The data is synthetic (seeded random images and labels): it measures cost, not
quality.

- ``--images N``: a real run, N images of 10 classes (32 kept per class at N = 320), next to a
  forward+backward pass over the same images.
- ``--prefilled CLASSES:OUTPUTS:REAL:DTYPE``: the state of CLASSES x 32 samples at full size
  without hours of real passes on a shared 2-core machine: the state is first filled with
  synthetic rows in the exact shapes (same bytes, same pair-loop work), then ``analyze``
  continues from it over REAL real images and finalizes every class. The peak RSS is that of a
  full CLASSES x 32 run (full state, real autograd chunks, the whole pair loop); the time of
  CLASSES x 32 real images is the per-image rate measured here times the image count plus the
  measured pair loop, compared with a forward+backward pass over the same REAL images.
  ``10:10:16:float16`` is issue 12's 320-image case, ``100:1000:16:int4`` issue 14's 3,200.
- ``--real CLASSES:OUTPUTS``: the whole run, CLASSES x 32 real images (each class exactly 32,
  so every image is kept), generated batch by batch (never all in memory), through ``analyze``
  with ``--state-dtype`` (``auto`` by default: the dtype the shipped default picks on this
  machine), and a forward+backward pass over the same images in a second process started at
  the same time: on a shared machine both see the same load. ``100:1000`` is issue 14's
  3,200-image case. Progress goes to stderr.
- ``--pairs-gloo K``: the pair loop of K classes over every channel of every observation
  point of ``--model`` at 224x224 (``--per-point N``: only the first N channels of each), on
  synthetic sorted sketches (32 values x 128 directions, as finalize builds them), split across
  2 gloo ranks by the split ``finalize`` uses, with a 1-rank group started at the same time (same
  load) over the same sketches; every rank gathers every U, and the 2-rank U must equal the
  1-rank U. ``--sigma``: the spread of class gains (0: every class the same distribution, the
  worst case for pruning, where every pair is visited).

    python benchmarks/bench_calibration.py --images 320
    python benchmarks/bench_calibration.py --prefilled 10:10:16:float16 100:1000:16:int4
    python benchmarks/bench_calibration.py --real 100:1000
    python benchmarks/bench_calibration.py --pairs-gloo 1000 --model resnet50 --sigma 0.1
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import types

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


def _stream(n: int, classes: int, batch: int, what: str):
    """``n`` seeded images labelled ``i % classes`` (each class equally often), one batch at a
    time: the same images on every call, never all in memory (3,200 images are 1.9 GB)."""
    import torch

    start, cpu = time.perf_counter(), _cpu_s()
    for b, i in enumerate(range(0, n, batch)):
        m = min(batch, n - i)
        g = torch.Generator().manual_seed(1000 + b)
        yield torch.randn(m, 3, 224, 224, generator=g), torch.arange(i, i + m) % classes
        if (b + 1) % 10 == 0 or i + m == n:
            print(
                f"{what}: {i + m}/{n} images, {time.perf_counter() - start:.0f} s wall, "
                f"{_cpu_s() - cpu:.0f} s CPU, peak RSS {_rss_mb() / 1024:.2f} GB",
                file=sys.stderr,
                flush=True,
            )


def _model(classes: int):
    import torch
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet50(num_classes=classes).eval()


def child_fb(images: int, outputs: int, batch: int, label_classes: int | None) -> dict:
    import torch
    import torch.nn.functional as F

    model = _model(outputs)
    labels = torch.arange(images) % label_classes if label_classes else None
    data = _images(images, outputs, batch, seed=2 if label_classes else 0, labels=labels)
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
    options = {} if dtype == "default" else {"state_dtype": dtype}  # "default": analyze's own
    an = fairfx.analyze(model, torch.randn(1, 3, 224, 224), data, progress=False, **options)
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


def _time_pair_loop(fair_module: types.ModuleType, log: bool = False) -> dict[str, float]:
    """Wrap ``analyze``'s finalize (the class-pair loop) so its own wall and CPU time land in the
    returned dict (``finalize_s``, ``finalize_cpu_s``) once it has run."""
    timed: dict[str, float] = {}
    real_finalize = fair_module.finalize

    def finalize(*a, **kw):
        w, c = time.perf_counter(), _cpu_s()
        out = real_finalize(*a, **kw)
        timed["finalize_s"] = time.perf_counter() - w
        timed["finalize_cpu_s"] = _cpu_s() - c
        if log:
            print(f"pair loop: {timed}", file=sys.stderr, flush=True)
        return out

    fair_module.finalize = finalize
    return timed


def child_real_fb(classes: int, outputs: int, batch: int) -> dict:
    import torch.nn.functional as F

    model = _model(outputs)
    start, cpu = time.perf_counter(), _cpu_s()
    for x, y in _stream(classes * 32, classes, batch, "forward+backward"):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y, reduction="sum").backward()
    return {
        "what": "forward+backward",
        "images": classes * 32,
        "wall_s": time.perf_counter() - start,
        "cpu_s": _cpu_s() - cpu,
    }


def child_real(classes: int, outputs: int, batch: int, dtype: str) -> dict:
    import torch

    import fairfx
    import fairfx.method.fair as fair_module

    timed = _time_pair_loop(fair_module, log=True)
    model = _model(outputs)
    data = _stream(classes * 32, classes, batch, "analyze")
    start, cpu = time.perf_counter(), _cpu_s()
    an = fairfx.analyze(
        model,
        torch.randn(1, 3, 224, 224),
        data,
        max_classes=classes,
        progress=False,
        **({} if dtype == "default" else {"state_dtype": dtype}),
    )
    rec = an.record
    return {
        "what": f"analyze {classes}x32",
        "images": classes * 32,
        "wall_s": time.perf_counter() - start,
        "cpu_s": _cpu_s() - cpu,
        **timed,
        "kept": rec["samples"],
        "classes": len(rec["classes"]),
        "chunk": rec["memory"]["batch_size"],
        "state_dtype": rec["state_dtype"],
        "memory_line": rec["memory"]["line"],
        "estimate_gb": rec["memory"]["estimate_bytes"] / 1e9,
        "state_gb": rec["memory"]["state_bytes"] / 1e9,
    }


def child_prefilled(classes: int, outputs: int, real: int, dtype: str, batch: int) -> dict:
    """``classes`` x 32 state: synthetic rows in the exact shapes, then ``real`` real images."""
    import numpy as np
    import torch

    import fairfx
    import fairfx.method.fair as fair_module
    from fairfx.engine.group_graph import build
    from fairfx.method.codec import encode
    from fairfx.method.memory import point_sizes
    from fairfx.method.scoring import new_state, producer_outputs

    k = 32
    model = _model(outputs)
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
    prods = {n: graph.channel_pass.layouts[n].slots.shape[0] for n in producer_outputs(graph)}
    g = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(1)
    labels = torch.arange(real) % classes
    start = time.perf_counter()
    # One block of random rows, encoded once and inserted for every class under new keys: the
    # bytes and the pair loop's work are those of real rows (its cost does not depend on values).
    proj = {p: encode(torch.randn(k, ch, v, generator=g), dtype) for p, (ch, v) in sizes.items()}
    taylor = {p: torch.randn(k, ch, generator=g) for p, ch in prods.items()}
    values = {p: v for p, (_, v) in sizes.items()}
    for c in range(classes):
        n = k - int((labels == c).sum())
        keys = rng.integers(1, 2**62, n, dtype=np.int64)
        rows = {p: t[:n] for p, t in proj.items()}
        state.add(keys, np.full(n, c), rows, {p: t[:n] for p, t in taylor.items()}, values)
    del proj, taylor
    fill = time.perf_counter() - start
    data = _images(real, outputs, batch, seed=2, labels=labels)

    timed = _time_pair_loop(fair_module)
    start, cpu = time.perf_counter(), _cpu_s()
    an = fairfx.analyze(
        model, example, data, max_classes=classes, state=state, state_dtype=dtype, progress=False
    )
    wall = time.perf_counter() - start
    rec = an.record
    return {
        "what": f"analyze {classes}x{k}",
        "fill_s": fill,
        "real_images": real,
        "wall_s": wall,
        "cpu_s": _cpu_s() - cpu,
        **timed,
        "kept": rec["samples"],
        "classes": len(rec["classes"]),
        "chunk": rec["memory"]["batch_size"],
        "estimate_gb": rec["memory"]["estimate_bytes"] / 1e9,
        "state_gb": rec["memory"]["state_bytes"] / 1e9,
    }


def _pool(classes: int, width: int, seed: int):
    """Eight channels of sorted synthetic sketches (32 values per direction) that every channel
    of a point draws from: a shared per-direction shift plus each class's own noise."""
    import torch

    from fairfx.method.wasserstein import sort_inplace

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 1, 1, width, generator=g) + torch.randn(8, classes, 32, width, generator=g)
    sort_inplace(x, 2)
    return x.view(8, classes, 32 * width)


def _chunk(pool, start: int, stop: int, sigma: float, seed: int):
    """Channels ``start:stop``: a pool channel each, every class scaled by its own gain
    ``exp(sigma z)`` (a positive scale keeps each sketch sorted). ``sigma`` 0: every class the
    same distribution, as with random labels."""
    import torch

    idx = torch.arange(start, stop) % pool.shape[0]
    x = pool[idx]
    if sigma:
        g = torch.Generator().manual_seed(seed)
        x = x * torch.randn(len(idx), pool.shape[1], 1, generator=g).mul_(sigma).exp_()
    return x


def _pair_rank(rank, world, port, model, classes, sigma, per_point, q) -> None:
    import resource

    import numpy as np
    import torch
    import torch.distributed as dist

    from fairfx.engine.group_graph import build
    from fairfx.method.diameter import l1_diameter
    from fairfx.method.finalize import balanced_split
    from fairfx.method.memory import point_sizes

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    net = getattr(__import__("torchvision").models, model)(num_classes=1000).eval()
    sizes = point_sizes(build(net, torch.randn(1, 3, 224, 224)), "consumer", 128)
    names = sorted(sizes)
    widths = {n: 1 if v == 1 else 128 for n, (_, v) in sizes.items()}
    owner = balanced_split([sizes[n][0] * widths[n] for n in names], world)
    wall = cpu = gen = 0.0
    stats: dict[str, int] = {}
    mine: dict[str, np.ndarray] = {}
    for p, (n, r) in enumerate(zip(names, owner, strict=True)):
        if r != rank:
            continue
        ch, width = sizes[n][0], widths[n]
        ch = min(ch, per_point) if per_point else ch
        c0 = time.process_time()
        pool = _pool(classes, width, seed=p)
        gen += time.process_time() - c0
        u = np.empty(ch)
        for s in range(0, ch, 8):
            c0 = time.process_time()
            x = _chunk(pool, s, min(s + 8, ch), sigma, seed=p * 100_000 + s)
            gen += time.process_time() - c0
            w0, c0 = time.perf_counter(), time.process_time()
            u[s : s + len(x)] = l1_diameter(x, stats=stats).double().numpy()
            wall += time.perf_counter() - w0
            cpu += time.process_time() - c0
        mine[n] = u
    w0 = time.perf_counter()
    parts: list[dict] = [{} for _ in range(world)]
    dist.all_gather_object(parts, mine)  # as finalize does: every rank ends with every U
    merged = {k: v for part in parts for k, v in part.items()}
    q.put(
        {
            "world": world,
            "rank": rank,
            "points": len(mine),
            "channels": sum(len(v) for v in mine.values()),
            "pair_wall_s": wall,
            "pair_cpu_s": cpu,
            "gen_cpu_s": gen,
            "gather_s": time.perf_counter() - w0,
            "checked_share": stats.get("checked", 0) / max(1, stats.get("pairs", 1)),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "u": {k: v.tolist() for k, v in sorted(merged.items())} if rank == 0 else None,
        }
    )
    dist.destroy_process_group()


def pairs_gloo(model: str, classes: int, sigma: float, per_point: int) -> list[dict]:
    """A 2-rank group and a 1-rank group started together (same load), each over every point."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = []
    for world in (2, 1):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs += [
            ctx.Process(
                target=_pair_rank, args=(r, world, port, model, classes, sigma, per_point, q)
            )
            for r in range(world)
        ]
    for p in procs:
        p.start()
    rows = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return sorted(rows, key=lambda r: (-r["world"], r["rank"]))


def _run(args_list: list[str]) -> dict:
    res = subprocess.run(
        [sys.executable, __file__, *args_list], stdout=subprocess.PIPE, text=True, check=True
    )
    row = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def _run_side_by_side(*arg_lists: list[str]) -> list[dict]:
    """Children started together, so on a shared machine they see the same load (each its own
    process: its peak RSS is its own)."""
    procs = [
        subprocess.Popen([sys.executable, __file__, *a], stdout=subprocess.PIPE, text=True)
        for a in arg_lists
    ]
    rows = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"child {proc.args} failed with exit code {proc.returncode}")
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, nargs="*", default=[])
    p.add_argument(
        "--prefilled",
        nargs="*",
        default=[],
        help="CLASSES:OUTPUTS:REAL:DTYPE, e.g. 100:1000:16:int4 (state filled, REAL real images)",
    )
    p.add_argument("--real", nargs="*", default=[], help="CLASSES:OUTPUTS, e.g. 100:1000")
    p.add_argument("--pairs-gloo", type=int)
    p.add_argument("--per-point", type=int, default=0, help="channels per point (0: all)")
    p.add_argument("--model", default="resnet50", help="torchvision model for --pairs-gloo")
    p.add_argument("--sigma", type=float, default=0.1, help="class gain spread (--pairs-gloo)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--state-dtype", default="float16", help='a codec, or "default" (analyze\'s)')
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        kind, *rest = args.child.split(":")
        if kind == "fb":
            row = child_fb(int(rest[0]), 10, args.batch, None)
        elif kind == "fbp":
            row = child_fb(int(rest[0]), int(rest[1]), args.batch, int(rest[2]))
        elif kind == "realfb":
            row = child_real_fb(int(rest[0]), int(rest[1]), args.batch)
        elif kind == "real":
            row = child_real(int(rest[0]), int(rest[1]), args.batch, args.state_dtype)
        elif kind == "analyze":
            row = child_analyze(int(rest[0]), 10, args.batch, args.state_dtype)
        else:
            c, o, r, d = rest
            row = child_prefilled(int(c), int(o), int(r), d, args.batch)
        row["peak_rss_gb"] = _rss_mb() / 1024
        print(json.dumps(row))
        return
    common = ["--batch", str(args.batch), "--threads", str(args.threads)]
    for n in args.images:
        fb = _run(["--child", f"fb:{n}", *common])
        an = _run(["--child", f"analyze:{n}", *common, "--state-dtype", args.state_dtype])
        print(
            f"\n| ResNet-50 224, {n} images | peak RSS GB | wall s | CPU s |\n|---|---|---|---|\n"
            f"| forward+backward (batch {args.batch}) | {fb['peak_rss_gb']:.2f} | "
            f"{fb['wall_s']:.0f} | {fb['cpu_s']:.0f} |\n| analyze ({an['classes']} classes, "
            f"{args.state_dtype}, chunk {an['chunk']}) | {an['peak_rss_gb']:.2f} | "
            f"{an['wall_s']:.0f} (pair loop {an['finalize_s']:.0f}) | {an['cpu_s']:.0f} |\n"
            f"ratio analyze / forward+backward: wall {an['wall_s'] / fb['wall_s']:.2f}, CPU "
            f"{an['cpu_s'] / fb['cpu_s']:.2f}; estimate {an['estimate_gb']:.2f} GB",
            flush=True,
        )
    for spec in args.real:
        classes, outputs = spec.split(":")
        fb, an = _run_side_by_side(
            ["--child", f"realfb:{spec}", *common],
            ["--child", f"real:{spec}", *common, "--state-dtype", args.state_dtype],
        )
        print(
            f"\n| ResNet-50 224, {classes} classes x 32 ({an['images']} images) | peak RSS GB | "
            f"wall s | CPU s |\n|---|---|---|---|\n"
            f"| forward+backward (batch {args.batch}) | {fb['peak_rss_gb']:.2f} | "
            f"{fb['wall_s']:.0f} | {fb['cpu_s']:.0f} |\n| analyze ({an['classes']} classes, "
            f"{an['kept']} kept, {an['state_dtype']}, chunk {an['chunk']}) | "
            f"{an['peak_rss_gb']:.2f} | {an['wall_s']:.0f} (pair loop {an['finalize_s']:.0f}) | "
            f"{an['cpu_s']:.0f} (pair loop {an['finalize_cpu_s']:.0f}) |\n"
            f"ratio analyze / forward+backward: wall {an['wall_s'] / fb['wall_s']:.2f}, CPU "
            f"{an['cpu_s'] / fb['cpu_s']:.2f}; {an['memory_line']}",
            flush=True,
        )
    for spec in args.prefilled:
        classes, outputs, real, dtype = spec.split(":")
        fb = _run(["--child", f"fbp:{real}:{outputs}:{classes}", *common])
        h = _run(["--child", f"prefilled:{spec}", *common])
        n, total_images = int(real), int(classes) * 32
        fb_wall, fb_cpu = fb["wall_s"] / n, fb["cpu_s"] / n
        an_wall = (h["wall_s"] - h["finalize_s"]) / n
        an_cpu = (h["cpu_s"] - h["finalize_cpu_s"]) / n
        wall = an_wall * total_images + h["finalize_s"]
        cpu = an_cpu * total_images + h["finalize_cpu_s"]
        print(
            f"\n| ResNet-50 224, {classes} classes x 32 ({total_images} images), {dtype} | "
            f"value |\n|---|---|\n"
            f"| peak RSS (full state + {n} real images + pair loop) | {h['peak_rss_gb']:.2f} GB |\n"
            f"| forward+backward per image (batch {args.batch}), wall / CPU | {fb_wall:.2f} s / "
            f"{fb_cpu:.2f} s |\n"
            f"| analyze per image (chunk {h['chunk']}), wall / CPU | {an_wall:.2f} s / "
            f"{an_cpu:.2f} s |\n"
            f"| pair loop, {classes} classes, wall / CPU | {h['finalize_s']:.0f} s / "
            f"{h['finalize_cpu_s']:.0f} s |\n"
            f"| {total_images} images: analyze / forward+backward (per-image rates x "
            f"{total_images} + pair loop), wall / CPU | {wall / (fb_wall * total_images):.2f} / "
            f"{cpu / (fb_cpu * total_images):.2f} |\n"
            f"estimate {h['estimate_gb']:.2f} GB (state {h['state_gb']:.2f} GB)",
            flush=True,
        )
    if args.pairs_gloo:
        rows = pairs_gloo(args.model, args.pairs_gloo, args.sigma, args.per_point)
        u = [r.pop("u") for r in rows if r["u"] is not None]
        for r in rows:
            print(json.dumps(r), flush=True)
        print(
            f"\n| {args.model} 224, {args.pairs_gloo} classes, sigma {args.sigma} | channels | "
            "pair loop wall s | CPU s | sketches CPU s | pairs visited | peak RSS GB |\n"
            "|---|---|---|---|---|---|---|"
        )
        for r in rows:
            print(
                f"| {r['world']} rank(s), rank {r['rank']} | {r['channels']} | "
                f"{r['pair_wall_s']:.0f} | {r['pair_cpu_s']:.0f} | {r['gen_cpu_s']:.0f} | "
                f"{100 * r['checked_share']:.2f}% | {r['peak_rss_gb']:.2f} |"
            )
        print(f"2-rank U equal to 1-rank U: {u[0] == u[1]}", flush=True)


if __name__ == "__main__":
    main()
