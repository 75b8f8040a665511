"""Coverage sweep over the torchvision classification zoo (random weights).

Each model is captured, pruned with a random plan keeping about half of every prunable group,
checked against the masked-execution oracle, exported with ``torch.export`` and compared with the
export. The real FAIR path runs too: ``analyze`` on a few synthetic labelled batches,
``plan_for(params=0.5)``, ``compress``, the oracle and the export again. A model that cannot be
handled is reported with its reason, never skipped.

Run ``python -m fairfx.apps.zoo`` for the whole zoo, or name models:
``python -m fairfx.apps.zoo resnet18 vit_b_16``. Each model runs in a worker process of its own
(:mod:`fairfx.apps.zoo_sweep`); ``--out FILE`` appends each finished row to a JSON-lines file and
``--resume`` skips the models already there, so a long sweep on a busy machine can be stopped and
continued.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import numpy as np
import torch

from ..engine.coverage import unlisted_parameters
from ..engine.group_graph import build
from ..engine.oracle import verify
from ..engine.rewrite import count_params
from ..errors import first_line
from ..method.fair import analyze
from .zoo_results import ZooResult, format_table, summary
from .zoo_sweep import emit, sweep

__all__ = ["ZooResult", "check_model", "example_input", "random_plan", "synthetic_batches"]

# Models whose architecture fixes or bounds the input size; the rest run at 64x64.
INPUT_SIZE = {"inception_v3": 96, "googlenet": 64}
for _name in ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14", "maxvit_t"):
    INPUT_SIZE[_name] = 224
for _name in ("swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b"):
    INPUT_SIZE[_name] = 224


def example_input(name: str) -> torch.Tensor:
    size = INPUT_SIZE.get(name, 64)
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def random_plan(graph, seed: int = 0, fraction: float = 0.5) -> dict[int, np.ndarray]:
    """Keep a random ``fraction`` (at least one) of every prunable group's units."""
    rng = np.random.default_rng(seed)
    units = {}
    for g in graph.groups:
        if g.prunable:
            k = max(1, round(g.size * fraction))
            units[g.id] = np.sort(rng.choice(g.size, k, replace=False))
    return graph.restore_empty(units)


def synthetic_batches(
    x: torch.Tensor, batches: int = 2, per_batch: int = 4, classes: int = 2, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A few labelled batches of random inputs shaped like ``x`` (classes 0..classes-1)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (per_batch, *x.shape[1:])
    labels = torch.arange(per_batch) % classes
    return [(torch.randn(shape, generator=gen), labels) for _ in range(batches)]


def _describe_error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"[:300]


def _exports(pruned: torch.nn.Module, x: torch.Tensor) -> str:
    """Export the pruned graph and compare the exported program's output with it: "" when they
    agree, else the reason."""
    ep = torch.export.export(pruned.eval(), (x,))
    with torch.no_grad():
        want, got = pruned(x), ep.module()(x)
    if torch.allclose(want, got, rtol=1e-4, atol=1e-6 * want.abs().max()):
        return ""
    return f"the exported program's output differs (max |diff| {(want - got).abs().max():.3g})"


def check_fair(res: ZooResult, model: torch.nn.Module, x: torch.Tensor) -> None:
    """The FAIR path on synthetic labelled data: analyze, plan for half the parameters, compress,
    verify, export. Fills the ``fair_*`` fields of ``res``."""
    res.fair_run = True
    start = time.perf_counter()
    try:
        data = synthetic_batches(x)
        # Two classes seen, so two are compared; float32 state: random-init activations can
        # exceed float16's range (inception_v3).
        analysis = analyze(
            model, x, data, samples_per_class=4, max_classes=2, projections=16,
            state_dtype="float32", progress=False,
        )  # fmt: skip
        pruned = analysis.compress(analysis.plan_for(params=0.5))
        del analysis  # its graph and statistics: memory the export below can use
        res.fair_params_after = count_params(pruned)
        report = verify(model, pruned, x)
        res.fair_exact = report.passed
        res.fair_done = True
        if not report.passed:
            res.fair_error = f"oracle max |diff| {report.max_abs_diff:.3g}"
        differs = _exports(pruned, x)
        res.fair_exported = not differs
        res.fair_error = res.fair_error or differs
    except Exception as exc:  # the sweep reports every failure by name
        res.fair_error = _describe_error(exc)
    res.fair_seconds = time.perf_counter() - start


def _check_random(
    res: ZooResult, model: torch.nn.Module, x: torch.Tensor, *, export: bool, seed: int
) -> None:
    """Capture, a random half plan, the oracle and the export; fills the random-column fields."""
    start = time.perf_counter()
    try:
        graph = build(model, x)
        res.groups = len(graph.groups)
        res.prunable = sum(g.prunable for g in graph.groups)
        res.unlisted = tuple(unlisted_parameters(graph.captured, graph.groups))
        pruned = graph.prune(random_plan(graph, seed))
        del graph
        res.params_before, res.params_after = count_params(model), count_params(pruned)
        report = verify(model, pruned, x)
        res.handled = True
        res.oracle_exact, res.oracle_diff = report.passed, report.max_abs_diff
        res.inexact_groups = len(report.inexact_groups)
        if export:
            differs = _exports(pruned, x)
            res.exported, res.error = not differs, differs
    except Exception as exc:  # the sweep reports every failure by name
        res.error = _describe_error(exc)
    res.seconds = time.perf_counter() - start


def check_model(
    name: str,
    *,
    export: bool = True,
    fair: bool = False,
    seed: int = 0,
    on_stage: Callable[[ZooResult], None] | None = None,
) -> ZooResult:
    """Both columns for one torchvision model (random weights); ``on_stage`` sees the row after
    the random column (a worker prints it, so a FAIR path that dies still leaves that column)."""
    import torchvision

    res = ZooResult(name)
    try:
        torch.manual_seed(seed)
        model = torchvision.models.get_model(name, weights=None).eval()
    except Exception as exc:
        res.error = _describe_error(exc)
        return res
    x = example_input(name)
    _check_random(res, model, x, export=export, seed=seed)
    if fair and res.handled:
        if on_stage is not None:
            on_stage(res)
        check_fair(res, model, x)
    return res


def _run_model(name: str, *, export: bool, fair: bool) -> None:
    """One model in a sweep worker: both columns, the row handed over after each."""
    emit(check_model(name, export=export, fair=fair, on_stage=emit))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="*", help="model names (default: the whole zoo)")
    p.add_argument("--no-export", action="store_true")
    p.add_argument("--no-fair", action="store_true", help="random plans only (faster)")
    p.add_argument("--out", help="append one JSON line per finished model to this file")
    p.add_argument("--resume", action="store_true", help="skip the models already in --out")
    p.add_argument("--retry", action="store_true", help="with --resume: rerun failed rows")
    p.add_argument("--jobs", type=int, default=1, help="models run at once (default 1)")
    p.add_argument("--timeout", type=float, default=3600, help="wall seconds per model")
    p.add_argument("--cpu-limit", type=int, default=3600, help="CPU seconds per model")
    p.add_argument(
        "--min-free-gb", type=float, default=1.5,
        help="stop a model when the machine's available memory falls below this",
    )  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> None:
    import torchvision

    args = parser().parse_args(argv)
    if args.resume and not args.out:
        raise SystemExit("--resume needs --out FILE (the rows of the earlier run)")
    names = args.models or torchvision.models.list_models(module=torchvision.models)
    work = functools.partial(_run_model, export=not args.no_export, fair=not args.no_fair)
    results = sweep(
        names, work, out=args.out, resume=args.resume, retry=args.retry, jobs=args.jobs,
        timeout=args.timeout, cpu_limit=args.cpu_limit, min_free_gb=args.min_free_gb,
        fair=not args.no_fair,
    )  # fmt: skip
    print(format_table(results))
    print("\n" + summary(results))


if __name__ == "__main__":
    main()
