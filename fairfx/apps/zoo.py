"""Coverage sweep over the torchvision classification zoo (random weights).

Each model is captured, pruned with a random plan keeping about half of every prunable group,
checked against the masked-execution oracle, exported with ``torch.export`` and compared with the
export. A model that cannot be handled is reported with its reason, never skipped.

Run ``python -m fairfx.apps.zoo`` for the whole zoo (minutes), or name models:
``python -m fairfx.apps.zoo resnet18 vit_b_16``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..engine.groups import build
from ..engine.oracle import verify
from ..engine.rewrite import apply_plan, count_params

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
    exported: bool = False
    seconds: float = 0.0
    error: str = ""


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


def check_model(name: str, *, export: bool = True, seed: int = 0) -> ZooResult:
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
        pruned = apply_plan(graph, random_plan(graph, seed))
        res.params_before, res.params_after = count_params(model), count_params(pruned)
        report = verify(model, pruned, x)
        res.handled = True
        res.oracle_exact, res.oracle_diff = report.passed, report.max_abs_diff
        res.inexact_groups = len(report.inexact_groups)
        if export:
            ep = torch.export.export(pruned.eval(), (x,))
            with torch.no_grad():
                want, got = pruned(x), ep.module()(x)
            res.exported = bool(torch.allclose(want, got, rtol=1e-4, atol=1e-6 * want.abs().max()))
    except Exception as exc:  # the sweep reports every failure by name
        res.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    res.seconds = time.perf_counter() - start
    return res


def format_table(results: list[ZooResult]) -> str:
    lines = [
        "| model | groups (prunable) | params before -> after | oracle | export | s | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        oracle = "exact" if r.oracle_exact else ("FAIL" if r.handled else "-")
        if r.inexact_groups:
            oracle += f" ({r.inexact_groups} LN groups renormalized)"
        lines.append(
            f"| {r.name} | {r.groups} ({r.prunable}) | {r.params_before / 1e6:.2f}M -> "
            f"{r.params_after / 1e6:.2f}M | {oracle} | {'yes' if r.exported else 'no'} | "
            f"{r.seconds:.1f} | {r.error} |"
        )
    n = len(results)
    lines.append(
        f"\nhandled {sum(r.handled for r in results)}/{n}, exported "
        f"{sum(r.exported for r in results)}/{n}, oracle-exact "
        f"{sum(r.oracle_exact for r in results)}/{n}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import torchvision

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="model names (default: the whole zoo)")
    parser.add_argument("--no-export", action="store_true")
    args = parser.parse_args(argv)
    names = args.models or torchvision.models.list_models(module=torchvision.models)
    results = []
    for name in names:
        r = check_model(name, export=not args.no_export)
        print(
            f"{name}: handled={r.handled} exact={r.oracle_exact} export={r.exported} "
            f"{r.seconds:.1f}s {r.error}",
            flush=True,
        )
        results.append(r)
    print(format_table(results))


if __name__ == "__main__":
    main()
