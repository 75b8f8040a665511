"""The main job: train on real digits, compress with FAIR-Pruner, fine-tune, export, report.

Run ``make demo`` (or ``python -m fairfx.apps.demo``). On a 2-core CPU it takes about two
minutes (most of it ``torch.compile``; ``--no-compile`` skips that part):

1. trains a VGG-style CNN (plain conv stacks, BatchNorm, a flatten -> Linear classifier) on
   scikit-learn's handwritten digits upsampled to 32x32 (cached after the first run under
   ``artifacts/demo``). The 8x8 originals make a model whose latency is all per-op overhead, so
   pruning could not make it faster; at 32x32 the convolutions dominate and it does;
2. scores it with :func:`fairfx.analyze` (U and R from 32 samples per class of the training split)
   and compresses it to a MAC budget (``--flops``, the plan bisects alpha) or at ``--alpha``;
3. fine-tunes the pruned graph with the paper's recipe (SGD, lr 1e-3, momentum 0.9, weight decay
   1e-4), keeping the best state on the validation split;
4. exports it with ``torch.export`` to a ``.pt2`` file, reloads it and checks its outputs;
5. measures latency of the original and the pruned model, both in the deployment form the export
   ships (BatchNorm folded, channels_last), eager and ``torch.compile``, at batch 1 and 8 (the
   two alternating, medians), and prints a table (accuracy on the held-out test
   split, parameters, MACs, latency, times), writes ``report.json`` and a PNG of the kept
   channels per layer;
6. plans for the latency the MAC-budget plan reached (eager, batch 1) with a latency plan
   (``docs/latency.md``) and reports the two one-shot, side by side.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

import fairfx
from fairfx.apps import digits
from fairfx.apps.report import export_and_check, group_rows, paired_latency_ms, plot_kept, table
from fairfx.engine.artifact import DEPLOY, META_FILE, metadata_json
from fairfx.engine.deploy import deployment_form
from fairfx.engine.latency import graph_table
from fairfx.files import save_payload, write_text
from fairfx.method.latency_plan import plan_for_latency
from fairfx.method.plan_options import PlanOptions


def _trained(split: digits.Split, cache: Path, args: argparse.Namespace):
    spec = f"vgg-{args.width}-{args.size}-{args.epochs}-{args.seed}"
    key = hashlib.sha1(spec.encode()).hexdigest()[:10]
    path = cache / f"vgg_digits_{key}.pt"
    model = digits.VGGStyle(width=args.width, size=args.size)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval(), 0.0, True
    start = time.perf_counter()
    digits.train(model, split, epochs=args.epochs, seed=args.seed)
    cache.mkdir(parents=True, exist_ok=True)
    save_payload(model.state_dict(), path)
    return model.eval(), time.perf_counter() - start, False


def _latency(model: torch.nn.Module, pruned: torch.nn.Module, split, compile_too: bool):
    """``{mode_b{batch}: (original ms, pruned ms)}``, eager and compiled, batch 1 and 8, both
    models in the deployment form the export ships (the latency plan measures that form too)."""
    model, pruned = (deployment_form(m, **DEPLOY) for m in (model, pruned))
    variants = [("eager", model, pruned)]
    if compile_too:
        variants.append(("compile", torch.compile(model), torch.compile(pruned)))
    out = {}
    for mode, a, b in variants:
        for batch in (1, 8):
            out[f"{mode}_b{batch}"] = paired_latency_ms(a, b, split.x_test[:batch])
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = digits.load(seed=args.seed, size=args.size)
    model, train_s, cached = _trained(split, out, args)
    print(
        f"model: VGG-style CNN, width {args.width}, {args.size}x{args.size} digits, "
        f"{'loaded from cache' if cached else f'trained {train_s:.1f}s'}"
    )

    calib = list(digits.batches(split.x_train, split.y_train, 128))
    example = split.x_test[:8]
    t0 = time.perf_counter()
    analysis = fairfx.analyze(model, example, calib, samples_per_class=32, seed=args.seed)
    t1 = time.perf_counter()
    plan = (
        analysis.plan(args.alpha) if args.alpha is not None else analysis.plan_for(flops=args.flops)
    )
    pruned = analysis.compress(plan)
    t2 = time.perf_counter()
    report = fairfx.verify(model, pruned, example)
    print(f"oracle: {report}")

    one_shot = digits.accuracy(pruned, split.x_test, split.y_test)
    train_data = list(digits.batches(split.x_train, split.y_train, 64, seed=args.seed))
    val_data = list(digits.batches(split.x_val, split.y_val, 256))
    t3 = time.perf_counter()
    tuned = fairfx.finetune(pruned, train_data, epochs=args.finetune_epochs, val_data=val_data)
    t4 = time.perf_counter()

    # The plan travels inside the program: fairfx.load_pruned(path) gives it back.
    meta = {META_FILE: metadata_json(tuned)}
    export = export_and_check(tuned, example, out / "pruned.pt2", extra=meta)
    acc = {
        "original": digits.accuracy(model, split.x_test, split.y_test),
        "one_shot": one_shot,
        "fine_tuned": digits.accuracy(tuned, split.x_test, split.y_test),
    }
    t5 = time.perf_counter()
    latency = _latency(analysis.graph.captured, tuned, split, not args.no_compile)
    t6 = time.perf_counter()
    side = _latency_plan(analysis, latency["eager_b1"], split, out)
    s = plan.summary()
    rows = group_rows(analysis, plan)
    how = f"alpha={args.alpha}" if args.alpha is not None else f"MACs kept {plan.macs_kept:.2f}"
    plot_kept(rows, out / "kept_channels.png", f"digits VGG-style 32x32, {how}")
    result = {
        "alpha": plan.alpha,
        "model": {"arch": "vgg", "width": args.width, "size": args.size},
        "accuracy_test": acc,
        "params": [s["params_before"], s["params_after"]],
        "macs": [s["macs_before"], s["macs_after"]],
        "latency_ms": {k: {"original": a, "pruned": b} for k, (a, b) in latency.items()},
        "seconds": {
            "train": train_s,
            "analyze": t1 - t0,
            "plan_and_rewrite": t2 - t1,
            "finetune": t4 - t3,
            "latency": t6 - t5,
        },
        "oracle": {"passed": report.passed, "max_abs_diff": report.max_abs_diff},
        "export": export,
        "groups": rows,
        "calibration": analysis.record,
        "latency_plan": side,
    }
    write_text(out / "report.json", json.dumps(result, indent=2, default=str))
    print()
    print(
        table(
            ["", "original", "pruned (one-shot)", "pruned + fine-tuned"],
            [
                [
                    "test accuracy",
                    f"{acc['original']:.3f}",
                    f"{one_shot:.3f}",
                    f"{acc['fine_tuned']:.3f}",
                ],
                [
                    "parameters",
                    f"{s['params_before']:,}",
                    f"{s['params_after']:,}",
                    f"{s['params_after']:,}",
                ],
                ["MACs", f"{s['macs_before']:,}", f"{s['macs_after']:,}", f"{s['macs_after']:,}"],
                *(
                    [
                        f"latency {k.replace('_b', ' b=')} (ms)",
                        f"{a:.3f}",
                        "",
                        f"{b:.3f} ({a / b:.2f}x)",
                    ]
                    for k, (a, b) in latency.items()
                ),
            ],
        )
    )
    print(
        f"\nanalyze {t1 - t0:.1f}s, plan+rewrite {t2 - t1:.2f}s, fine-tune {t4 - t3:.1f}s, "
        f"latency {t6 - t5:.1f}s ({args.threads} threads, the two models alternating, medians); "
        f"export {'round-trips' if export['equal'] else 'DIFFERS'} "
        f"(max diff {export['max_abs_diff']:.2g}, batches {export['batches']})"
    )
    print(
        f"\nlatency plan at the same target ({side['target']:.2f} of the eager batch-1 "
        f"latency; docs/latency.md): {side['note']}"
    )
    print(
        table(
            ["one-shot, batch 1 eager", "plan", "MACs kept", "latency kept", "test accuracy"],
            [
                [
                    "MAC budget",
                    how,
                    f"{plan.macs_kept:.2f}",
                    f"{side['target']:.2f}",
                    f"{one_shot:.3f}",
                ],
                [
                    "latency plan",
                    f"latency={side['target']:.2f}",
                    f"{side['macs_kept']:.2f}",
                    "-" if side["achieved"] is None else f"{side['achieved']:.2f}",
                    f"{side['accuracy']:.3f}",
                ],
            ],
        )
    )
    print(f"wrote {out / 'report.json'}, {out / 'kept_channels.png'}, {out / 'pruned.pt2'}")
    return result


def _latency_plan(analysis, eager_b1, split, out: Path) -> dict[str, Any]:
    """A latency plan for the latency the MAC-budget plan reached (eager, batch 1): one-shot
    accuracy next to that plan's, the question being which spends the same time better."""
    target = min(1.0, eager_b1[1] / eager_b1[0])
    graph = analysis.graph
    table = graph_table(graph, batch=1, path=out / "latency_table.json", progress=False)
    options = PlanOptions(latency=target, batch_size=1)
    lat = plan_for_latency(graph, analysis.scores, options, table=table, progress=False)
    pruned = analysis.compress(lat)
    info = lat.extra["latency"]
    return {
        "target": target,
        "achieved": info["achieved"],
        "predicted": info["predicted"],
        "note": lat.note,
        "macs_kept": lat.macs_kept,
        "params_kept": lat.params_kept,
        "accuracy": digits.accuracy(pruned, split.x_test, split.y_test),
    }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="fairfx demo on scikit-learn's digits")
    p.add_argument(
        "--flops", type=float, default=0.4, help="fraction of MACs to keep (bisects alpha)"
    )
    p.add_argument("--alpha", type=float, default=None, help="Tolerance of Difference instead")
    p.add_argument("--width", type=int, default=24)
    p.add_argument("--size", type=int, default=32, help="digits are upsampled to size x size")
    p.add_argument("--epochs", type=int, default=6, help="training epochs of the original")
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--no-compile", action="store_true", help="eager latency only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="artifacts/demo")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    main()
