"""Coverage sweep over the torchvision classification zoo (random weights).

Each model is captured, pruned with a random plan keeping about half of every prunable group,
checked against the masked-execution oracle, exported with ``torch.export`` and compared with the
export. The real FAIR path runs too: ``analyze`` on a few synthetic labelled batches,
``plan_for(params=0.5)``, ``compress``, the oracle and the export again. A model that cannot be
handled is reported with its reason, never skipped.

Run ``python -m fairfx.apps.zoo`` for the whole zoo (minutes), or name models:
``python -m fairfx.apps.zoo resnet18 vit_b_16``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..engine.coverage import unlisted_parameters
from ..engine.groups import build
from ..engine.oracle import verify
from ..engine.rewrite import count_params
from ..method.fair import analyze

# Models whose architecture fixes or bounds the input size; the rest run at 64x64.
INPUT_SIZE = {"inception_v3": 96, "googlenet": 64}
for _name in ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14", "maxvit_t"):
    INPUT_SIZE[_name] = 224
for _name in ("swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b"):
    INPUT_SIZE[_name] = 224


@dataclass
class ZooResult:
    name: str
    groups: int = 0
    prunable: int = 0
    params_before: int = 0
    params_after: int = 0
    handled: bool = False
    oracle_exact: bool = False
    oracle_diff: float = float("nan")
    inexact_groups: int = 0
    unlisted: tuple[str, ...] = ()  # parameters in no channel group (must be empty)
    exported: bool = False
    seconds: float = 0.0
    error: str = ""
    fair_done: bool = False
    fair_params_after: int = 0
    fair_exact: bool = False
    fair_exported: bool = False
    fair_seconds: float = 0.0
    fair_error: str = ""


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
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]


def _exports(pruned: torch.nn.Module, x: torch.Tensor) -> bool:
    """Export the pruned graph and compare the exported program's output with it."""
    ep = torch.export.export(pruned.eval(), (x,))
    with torch.no_grad():
        want, got = pruned(x), ep.module()(x)
    return bool(torch.allclose(want, got, rtol=1e-4, atol=1e-6 * want.abs().max()))


def check_fair(res: ZooResult, model: torch.nn.Module, x: torch.Tensor) -> None:
    """The FAIR path on synthetic labelled data: analyze, plan for half the parameters, compress,
    verify, export. Fills the ``fair_*`` fields of ``res``."""
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
        res.fair_params_after = count_params(pruned)
        res.fair_exact = verify(model, pruned, x).passed
        res.fair_done = True
        res.fair_exported = _exports(pruned, x)
    except Exception as exc:  # the sweep reports every failure by name
        res.fair_error = _describe_error(exc)
    res.fair_seconds = time.perf_counter() - start


def check_model(name: str, *, export: bool = True, fair: bool = False, seed: int = 0) -> ZooResult:
    import torchvision

    res = ZooResult(name)
    start = time.perf_counter()
    try:
        torch.manual_seed(seed)
        model = torchvision.models.get_model(name, weights=None).eval()
        x = example_input(name)
        graph = build(model, x)
        res.groups = len(graph.groups)
        res.prunable = sum(g.prunable for g in graph.groups)
        res.unlisted = tuple(unlisted_parameters(graph.analysis.gm, graph.groups))
        pruned = graph.rewrite(random_plan(graph, seed))
        res.params_before, res.params_after = count_params(model), count_params(pruned)
        report = verify(model, pruned, x)
        res.handled = True
        res.oracle_exact, res.oracle_diff = report.passed, report.max_abs_diff
        res.inexact_groups = len(report.inexact_groups)
        if export:
            res.exported = _exports(pruned, x)
    except Exception as exc:  # the sweep reports every failure by name
        res.error = _describe_error(exc)
    res.seconds = time.perf_counter() - start
    if fair and res.handled:
        check_fair(res, model, x)
    return res


def format_table(results: list[ZooResult]) -> str:
    fair = any(r.fair_done or r.fair_error for r in results)
    head = "| model | groups (prunable) | random half: params before -> after | oracle | export |"
    rule = "|---|---|---|---|---|"
    if fair:
        head += " FAIR plan_for(params=0.5): params after | oracle | export |"
        rule += "---|---|---|"
    lines = [head + " s | note |", rule + "---|---|"]
    for r in results:
        oracle = "exact" if r.oracle_exact else ("FAIL" if r.handled else "-")
        if r.inexact_groups:
            oracle += f" ({r.inexact_groups} LN groups renormalized)"
        row = (
            f"| {r.name} | {r.groups} ({r.prunable}) | {r.params_before / 1e6:.2f}M -> "
            f"{r.params_after / 1e6:.2f}M | {oracle} | {'yes' if r.exported else 'no'} |"
        )
        if fair:
            kept = r.fair_params_after / r.params_before if r.params_before else 0.0
            fair_oracle = "exact" if r.fair_exact else ("FAIL" if r.fair_done else "-")
            row += (
                f" {r.fair_params_after / 1e6:.2f}M ({kept:.0%}) | {fair_oracle} | "
                f"{'yes' if r.fair_exported else 'no'} |"
            )
        note = "; ".join(e for e in (r.error, r.fair_error and f"FAIR: {r.fair_error}") if e)
        lines.append(f"{row} {r.seconds + r.fair_seconds:.1f} | {note} |")
    n = len(results)
    summary = (
        f"\nrandom half: handled {sum(r.handled for r in results)}/{n}, exported "
        f"{sum(r.exported for r in results)}/{n}, oracle-exact "
        f"{sum(r.oracle_exact for r in results)}/{n}"
    )
    if fair:
        summary += (
            f"; FAIR: compressed {sum(r.fair_done for r in results)}/{n}, oracle-exact "
            f"{sum(r.fair_exact for r in results)}/{n}, exported "
            f"{sum(r.fair_exported for r in results)}/{n}"
        )
    lines.append(summary)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model names (default: the whole zoo)")
    parser.add_argument("--no-export", action="store_true")
    parser.add_argument("--no-fair", action="store_true", help="random plans only (faster)")
    args = parser.parse_args(argv)
    names = args.models or torchvision.models.list_models(module=torchvision.models)
    results = []
    for name in names:
        r = check_model(name, export=not args.no_export, fair=not args.no_fair)
        print(
            f"{name}: handled={r.handled} exact={r.oracle_exact} export={r.exported} "
            f"fair={r.fair_done} fair_exact={r.fair_exact} fair_export={r.fair_exported} "
            f"params={r.params_before} random_after={r.params_after} "
            f"fair_after={r.fair_params_after} "
            f"{r.seconds + r.fair_seconds:.1f}s {r.error} {r.fair_error}",
            flush=True,
        )
        results.append(r)
    print(format_table(results))


if __name__ == "__main__":
    main()
