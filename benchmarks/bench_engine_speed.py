"""Engine speed: Torch-Pruning's DependencyGraph vs fairfx's channel graph + rewrite, and the floor.

Same process, same models, same input, same thread count.  For every model, one repeat runs:

* Torch-Pruning: ``copy.deepcopy`` (it prunes in place; a user keeping the original needs the
  copy), build the pruner (dependency graph) and prune 50% of every group with L1 magnitude,
  output layer ignored (``peers.tp_build_and_prune``).
* fairfx: ``fairfx.channel_graph(model, x)`` (one capture and one channel pass: what
  ``channel_groups`` returns) then ``graph.prune(keep)`` with ``keep = {g.producers[0]: first
  half of the channels (at least one)}`` for every prunable group.  fairfx never mutates its
  input, so no copy is made.  On a tree without ``channel_graph`` the column falls back to
  ``channel_groups`` + ``prune`` (two captures), as the old API did.
* floor: ``torch.fx.symbolic_trace`` of the model plus one shape pass, the cheaper of torch's
  ``ShapeProp`` on the real example input and on meta tensors: what any fx-based pruner must pay.

Medians over ``--repeats``; the repeats alternate between the three, and each timed call runs with
the cyclic garbage collector paused (as ``timeit`` does; ``--gc`` to keep it on).
``OMP_WAIT_POLICY`` defaults to PASSIVE here (see below); timings on a machine shared with other
jobs still move by 2x between runs, so compare columns of one run only.
``--profile NAME`` prints a cProfile of one fairfx build + prune of that model (top entries).
``--clock cpu`` times with the process's CPU time (all threads) instead of the wall clock: on a
machine shared with other jobs, wall time counts the waits for a core, CPU time does not (run it
with ``--threads 1``, where CPU time is the work done).

    python benchmarks/bench_engine_speed.py --repeats 3
    python benchmarks/bench_engine_speed.py --models resnet50,vit_b_16 --repeats 1
    python benchmarks/bench_engine_speed.py --models resnet50 --repeats 0 --profile resnet50
    python benchmarks/bench_engine_speed.py --repeats 5 --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import gc
import io
import os
import pstats
import statistics
import sys
import time
import traceback
import warnings

# Idle OpenMP workers sleep instead of spinning.  Both engines issue thousands of tiny tensor ops;
# with spinning workers and any other process on the cores, each op waits for a preempted thread
# (measured on a loaded 2-core machine: Torch-Pruning on mobilenet_v3_large 0.6 s passive vs
# 4-8 s spinning).  Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torchvision

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(1, os.path.dirname(_HERE))  # the repo root, so an uninstalled fairfx imports
import peers  # noqa: E402

_now = time.perf_counter  # --clock cpu: time.process_time


def _use_clock(name: str) -> None:
    """Time fairfx, the floor and (through its module's ``time``) Torch-Pruning with one clock."""
    global _now
    _now = time.process_time if name == "cpu" else time.perf_counter
    peers.time = _Clock(_now)


class _Clock:
    """Stands in for the ``time`` module inside ``peers``, whose timings call perf_counter."""

    def __init__(self, now) -> None:
        self.perf_counter = now


DEFAULT_MODELS = (
    "resnet50",
    "densenet121",
    "densenet201",
    "efficientnet_b0",
    "mobilenet_v3_large",
    "convnext_tiny",
    "vit_b_16",
)

# attribute names a fairfx channel group may use for its channel count, tried in order
_WIDTH_ATTRS = ("size", "width", "n_channels", "num_channels", "channels", "n")


def _group_width(g) -> int:
    for attr in _WIDTH_ATTRS:
        v = getattr(g, attr, None)
        if isinstance(v, int):
            return v
        if v is not None and hasattr(v, "__len__") and not isinstance(v, str):
            return len(v)
    try:
        return len(g)
    except TypeError:
        raise AttributeError(
            f"cannot tell the channel count of {type(g).__name__}; tried {_WIDTH_ATTRS} and len()"
        ) from None


def _load_fairfx():
    try:
        import fairfx
    except Exception as e:  # pragma: no cover - depends on the state of the tree
        return None, f"import fairfx failed: {type(e).__name__}: {e}"
    missing = [n for n in ("channel_groups", "prune") if not hasattr(fairfx, n)]
    if missing:
        return None, f"fairfx has no {', '.join(missing)}"
    return fairfx, ""


def _half_plan(groups) -> dict[str, list[int]]:
    keep = {}
    for g in groups:
        if not g.prunable:
            continue
        if g.unit == "channel":
            keep[g.producers[0]] = list(range(max(1, _group_width(g) // 2)))
        else:  # attention heads: the channels of the first half of the heads
            units = g.channels()
            keep[g.producers[0]] = [c for u in units[: max(1, len(units) // 2)] for c in u]
    return keep


def run_fairfx(fairfx, model, x):
    """Returns (groups_seconds, prune_seconds, pruned_model, n_prunable, n_groups)."""
    t0 = _now()
    graph = fairfx.channel_graph(model, x) if hasattr(fairfx, "channel_graph") else None
    groups = graph.groups if graph is not None else fairfx.channel_groups(model, x)
    t1 = _now()
    keep = _half_plan(groups)
    t2 = _now()
    pruned = graph.prune(keep) if graph is not None else fairfx.prune(model, x, keep)
    t3 = _now()
    # the keep-dict construction is the caller's work, counted with neither phase
    return t1 - t0, t3 - t2, pruned, len(keep), len(groups)


def run_floor(model, x):
    """One symbolic trace plus the cheaper of a real and a meta ShapeProp: (trace_s, shape_s)."""
    import torch.fx as fx
    from torch.fx.passes.shape_prop import ShapeProp

    t0 = _now()
    gm = fx.symbolic_trace(model)
    t1 = _now()
    with torch.no_grad():
        ShapeProp(gm).propagate(x)
    t2 = _now()
    meta = copy.deepcopy(gm).to("meta")  # the copy is not part of the meta pass's cost
    t3 = _now()
    with torch.no_grad():
        ShapeProp(meta).propagate(x.to("meta"))
    t4 = _now()
    return t1 - t0, min(t2 - t1, t4 - t3)


def run_shape_passes(model, x, repeats: int) -> dict[str, float]:
    """One shape pass over fairfx's captured graph, three ways (medians, alternating, seconds):
    a real forward on the example input, meta kernels only, and fairfx's meta pass (meta
    kernels plus shape rules for elementwise ops and norms)."""
    from fairfx.engine.capture import capture
    from fairfx.engine.shapes import ShapeInterpreter

    gm = capture(model, x).gm.eval()
    meta_x = x.to("meta")
    ways = {
        "real": lambda: ShapeInterpreter(gm).run(x),
        "meta_kernels": lambda: ShapeInterpreter(gm, meta=True, shape_rules=False).run(meta_x),
        "fairfx_meta": lambda: ShapeInterpreter(gm, meta=True).run(meta_x),
    }

    def seconds(fn) -> float:
        t0 = _now()
        fn()
        return _now() - t0

    times: dict[str, list[float]] = {k: [] for k in ways}
    with torch.no_grad():
        for _ in range(repeats):
            for k, fn in ways.items():
                times[k].append(_timed(False, seconds, fn))
    return {k: _median(v) for k, v in times.items()}


def profile_fairfx(fairfx, model, x, top: int = 25) -> str:
    run_fairfx(fairfx, model, x)  # warm caches (imports, dispatch tables) first
    prof = cProfile.Profile()
    gc.collect()
    gc.disable()
    try:
        prof.enable()
        run_fairfx(fairfx, model, x)
        prof.disable()
    finally:
        gc.enable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out).strip_dirs()
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def _timed(keep_gc: bool, fn, *args, **kwargs):
    """Run fn like ``timeit`` does: collect garbage first and pause the cyclic GC meanwhile.

    Both engines allocate many small objects; with the collector running, a collection can land
    in either timing and cost seconds (observed: DenseNet-121 under Torch-Pruning 5 s -> 16 s),
    which says more about the heap left by earlier models than about the engine.
    """
    gc.collect()
    if not keep_gc:
        gc.disable()
    try:
        return fn(*args, **kwargs)
    finally:
        gc.enable()


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


def _fmt(v, digits=3):
    return "n/a" if v is None or v != v else f"{v:.{digits}f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="comma-separated torchvision model names"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall clock (default) or process CPU time (for a machine shared with other jobs)",
    )
    ap.add_argument("--no-fairfx", action="store_true", help="time Torch-Pruning only")
    ap.add_argument("--no-tp", action="store_true", help="time fairfx only")
    ap.add_argument("--profile", default="", help="comma-separated models to cProfile (fairfx)")
    ap.add_argument(
        "--shape-passes",
        action="store_true",
        help="also time one shape pass: real forward vs meta kernels vs fairfx's meta pass",
    )
    ap.add_argument(
        "--gc",
        action="store_true",
        help="leave Python's cyclic garbage collector on during the timed calls",
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="run each pruned model once (outside the timings) and report param counts",
    )
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    _use_clock(args.clock)
    warnings.filterwarnings("ignore", message="Unwrapped parameters detected")

    fairfx, why = (None, "disabled by --no-fairfx") if args.no_fairfx else _load_fairfx()
    if fairfx is None:
        print(f"[fairfx column skipped] {why}", file=sys.stderr)

    print(
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"torch-pruning {_dist_version('torch-pruning')}, threads {torch.get_num_threads()}, "
        f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY')}, repeats {args.repeats}, "
        f"gc {'on' if args.gc else 'paused'} while timing, clock {args.clock}"
    )

    rows = []
    profiles = {m.strip(): "" for m in args.profile.split(",") if m.strip()}
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        n0 = peers.count_params(model)
        row = {"model": name, "params": n0}

        # Repeats alternate TP and fairfx so that both see the same machine load.
        tp_runs, ff_runs, floor_runs = [], [], []
        tp_on = not args.no_tp
        ff_on = fairfx is not None and not args.no_fairfx
        tp_pruned = ff_pruned = None
        for _ in range(args.repeats):
            if tp_on:
                try:
                    c, b, p, tp_pruned = _timed(
                        args.gc, peers.tp_build_and_prune, model, x, ratio=0.5
                    )
                    tp_runs.append((c, b, p))
                except Exception as e:
                    row["tp_error"] = f"{type(e).__name__}: {e}"
                    traceback.print_exc()
                    tp_on = False
            if ff_on:
                try:
                    g, p, ff_pruned, n_prunable, n_groups = _timed(
                        args.gc, run_fairfx, fairfx, model, x
                    )
                    ff_runs.append((g, p))
                    row.update(ff_prunable=n_prunable, ff_n_groups=n_groups)
                except Exception as e:
                    row["ff_error"] = f"{type(e).__name__}: {e}"
                    traceback.print_exc()
                    ff_on = False
            floor_runs.append(_timed(args.gc, run_floor, model, x))
        if tp_runs:
            row.update(
                tp_copy=_median([r[0] for r in tp_runs]),
                tp_build=_median([r[1] for r in tp_runs]),
                tp_prune=_median([r[2] for r in tp_runs]),
                tp_total=_median([sum(r) for r in tp_runs]),
            )
        if ff_runs:
            row.update(
                ff_groups=_median([r[0] for r in ff_runs]),
                ff_prune=_median([r[1] for r in ff_runs]),
                ff_total=_median([sum(r) for r in ff_runs]),
            )
        if floor_runs:
            row.update(
                floor_trace=_median([r[0] for r in floor_runs]),
                floor_shape=_median([r[1] for r in floor_runs]),
                floor=_median([sum(r) for r in floor_runs]),
            )
        if args.shape_passes and fairfx is not None:
            row["passes"] = run_shape_passes(model, x, max(args.repeats, 1))
        if name in profiles and fairfx is not None:
            profiles[name] = profile_fairfx(fairfx, model, x)
        if args.check:
            with torch.no_grad():
                for key, pm in (("tp_params", tp_pruned), ("ff_params", ff_pruned)):
                    if pm is not None:
                        pm(x)
                        row[key] = peers.count_params(pm)
        del tp_pruned, ff_pruned

        if args.repeats:
            rows.append(row)
        print(
            f"  done {name}: "
            + ", ".join(
                f"{k}={_fmt(v) if isinstance(v, float) else v}"
                for k, v in row.items()
                if k != "model"
            ),
            file=sys.stderr,
            flush=True,
        )

    print()
    print(
        "| model | TP copy+build+prune s | fairfx graph+prune s | fairfx vs TP "
        "| floor s | fairfx / floor |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        tp_t, ff_t, fl = r.get("tp_total"), r.get("ff_total"), r.get("floor")
        speed = f"{tp_t / ff_t:.2f}x" if tp_t and ff_t else "n/a"
        over = f"{ff_t / fl:.2f}" if ff_t and fl else "n/a"
        tp_s = _fmt(tp_t) if "tp_error" not in r else "error"
        ff_s = _fmt(ff_t) if "ff_error" not in r else "error"
        print(f"| {r['model']} | {tp_s} | {ff_s} | {speed} | {_fmt(fl)} | {over} |")

    print()
    print(
        "| model | params | TP copy s | TP build s | TP prune s | fairfx graph s | fairfx prune s "
        "| floor trace s | floor shape s | fairfx prunable/groups |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        pg = f"{r['ff_prunable']}/{r['ff_n_groups']}" if "ff_prunable" in r else "n/a"
        print(
            f"| {r['model']} | {r['params'] / 1e6:.1f}M | {_fmt(r.get('tp_copy'))} "
            f"| {_fmt(r.get('tp_build'))} | {_fmt(r.get('tp_prune'))} | {_fmt(r.get('ff_groups'))} "
            f"| {_fmt(r.get('ff_prune'))} | {_fmt(r.get('floor_trace'))} "
            f"| {_fmt(r.get('floor_shape'))} | {pg} |"
        )
    if args.shape_passes:
        print()
        print("| model | real forward s | meta kernels s | fairfx meta pass s |")
        print("|---|---:|---:|---:|")
        for r in rows:
            if "passes" in r:
                p = r["passes"]
                print(
                    f"| {r['model']} | {_fmt(p['real'])} | {_fmt(p['meta_kernels'])} "
                    f"| {_fmt(p['fairfx_meta'])} |"
                )
    for name, text in profiles.items():
        print(f"\n### cProfile: fairfx graph + prune of {name}\n")
        print(text)
    if args.check:
        print()
        for r in rows:
            print(
                f"{r['model']}: params {r['params']} -> TP {r.get('tp_params', 'n/a')}, "
                f"fairfx {r.get('ff_params', 'n/a')}"
            )
    errors = [(r["model"], k, r[k]) for r in rows for k in ("tp_error", "ff_error") if k in r]
    for m, k, e in errors:
        print(f"{m} {k}: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
