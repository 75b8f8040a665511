"""``PlanOptions``: every planning choice in one typed record, checked in one place.

A plan is decided by *how many* units each group loses (an allocation: the paper's Tolerance of
Difference at ``alpha``, a ``ratio`` of every group, or a budget spread over the groups), by
*which* units go (an ``importance`` ranking), and by a few constraints (``round_to``,
``ignored_layers``, ``max_ratio``, ``layer_ratios``). Every entry point that plans
(``ChannelGraph.plan``, ``Analysis.plan``/``plan_for``, :func:`fairfx.compress`, the CLI)
builds one ``PlanOptions``; its ``__post_init__`` is the only place an option is validated, so a
typo fails in milliseconds with one line naming the valid values, before any scoring pass.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PlanError
from .allocation import ALLOCATIONS

IMPORTANCE = ("fair", "l1", "random")
GROUP_RULES = ("joint", "member")
# Importances that need no calibration data: a plan can be made from the weights alone.
DATA_FREE = ("l1", "random")
# plan_for's allocation when none is given; chosen by benchmarks/bench_quality.py (docs).
DEFAULT_BUDGET_ALLOCATION = "hybrid_cost"
# Allocation of a budget when the importance needs no data (no R to weigh units by).
DATA_FREE_BUDGET_ALLOCATION = "uniform"
# How a latency target is measured: the eager module, or under torch.compile.
LATENCY_MODES = ("eager", "compile")


def is_number(value: Any) -> bool:
    """A real Python or numpy number (``np.float32(0.1)`` yes, ``True`` and ``"0.1"`` no)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def check_choice(option: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``; otherwise a one-line error naming the valid ones
    and the closest match (``group_rule="members"`` -> did you mean 'member'?)."""
    if isinstance(value, str) and value in choices:
        return value
    lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(str(value).lower(), list(lower), n=1)
    hint = f" (did you mean {lower[close[0]]!r}?)" if close else ""
    raise PlanError(f"{option} must be one of {', '.join(map(repr, choices))}; got {value!r}{hint}")


def _fraction(name: str, value: Any, *, closed_top: bool, hint: str = "") -> float:
    ok = is_number(value) and (0 < value <= 1 if closed_top else 0 <= value < 1)
    if not ok:
        span = "(0, 1]" if closed_top else "[0, 1)"
        raise PlanError(f"{name} must be a number in {span}; got {value!r}{hint}")
    return float(value)


@dataclass(frozen=True)
class PlanOptions:
    """How to plan. Give exactly one of: ``alpha`` (Tolerance of Difference per group, the
    paper), a budget (``params`` or ``flops``: the kept fraction, bisected over the cached
    scores), or ``ratio`` (the fraction of units removed from every group, or below the global
    threshold of a global ``allocation``).

    Attributes:
        alpha: ToD level in [0, 1) (0.005 is the paper's default). With a bounded allocation
            (``hybrid``, ``hybrid_cost``) it is the per-group bound instead.
        params / flops: kept fraction of parameters / MACs in (0, 1].
        ratio: fraction of units removed, in [0, 1).
        allocation: how counts are spread (:mod:`fairfx.method.allocation`); default ``tod``
            for alpha, ``uniform`` for a ratio, ``hybrid_cost`` for a budget with FAIR scores
            and ``uniform`` for a budget with a data-free importance.
        importance: which units go first: ``fair`` (lowest U), ``l1`` (lowest filter L1
            norm), ``random``, or a callable ``(graph, group) -> per-unit scores`` (lower is
            removed first) for a user's own criterion.
        group_rule: ``joint`` (score a coupled group as one tensor) or ``member`` (the
            reference package's per-producer rule).
        round_to: round every kept count to a multiple (8 suits most CPU kernels).
        ignored_layers: module names or modules whose weights must stay exactly as they are.
        max_ratio: no group loses more than this fraction of its units.
        layer_ratios: ``{module name: fraction removed}``: the groups a named layer produces
            lose exactly that fraction (overrides the allocation for them).
        seed: seeds the ``random`` importance.
        latency: kept fraction of the model's measured latency on this machine, in (0, 1]
            (:mod:`fairfx.method.latency_plan`: a measured latency table, then the pruned model
            measured and the plan corrected until within 5%).
        batch_size: the batch the latency is measured at (default: the example input's).
        latency_mode: ``eager`` or ``compile`` (measured under ``torch.compile``).
        latency_deploy: measure the original and the pruned model in the deployment form
            ``save_pruned`` writes (BatchNorm folded, channels_last: what ships, and what the
            gain is pruning's in). ``False`` measures the GraphModules as they are, for a model
            that will run undeployed (``--no-deploy``).
    """

    alpha: float | None = None
    params: float | None = None
    flops: float | None = None
    ratio: float | None = None
    allocation: str | None = None
    importance: str | Callable[..., Any] = "fair"
    group_rule: str = "joint"
    round_to: int | None = None
    ignored_layers: Any = None
    max_ratio: float | None = None
    layer_ratios: Mapping[str, float] | None = None
    seed: int = 0
    latency: float | None = None
    batch_size: int | None = None
    latency_mode: str = "eager"
    latency_deploy: bool = True

    def __post_init__(self) -> None:
        if self.params is not None and self.flops is not None:
            raise PlanError(
                "give exactly one budget: params=fraction of parameters to keep or "
                "flops=fraction of FLOPs (MACs) to keep"
            )
        for name in ("params", "flops"):
            value = getattr(self, name)
            if value is not None and not (is_number(value) and 0 < value <= 1):
                raise PlanError(
                    f"{name}= is the fraction to keep, a number in (0, 1]; got {value!r}"
                )
        if self.alpha is not None and not (is_number(self.alpha) and 0 <= self.alpha < 1):
            raise PlanError(
                f"alpha must be a number in [0, 1), got {self.alpha!r}; 0.005 is the default"
            )
        if self.ratio is not None:
            _fraction("ratio", self.ratio, closed_top=False, hint=" (the fraction removed)")
        if not callable(self.importance):
            check_choice("importance", self.importance, IMPORTANCE)
        check_choice("group_rule", self.group_rule, GROUP_RULES)
        if self.allocation is not None:
            check_choice("allocation", self.allocation, ALLOCATIONS)
        if self.round_to is not None and (
            isinstance(self.round_to, bool)
            or not isinstance(self.round_to, (int, np.integer))
            or self.round_to < 1
        ):
            raise PlanError(
                f"round_to must be at least 1 (an integer, e.g. 8), got {self.round_to!r}"
            )
        if self.max_ratio is not None:
            _fraction("max_ratio", self.max_ratio, closed_top=False)
        if self.layer_ratios is not None:
            if not isinstance(self.layer_ratios, Mapping):
                raise PlanError(
                    "layer_ratios maps module names to the fraction removed, e.g. "
                    f"{{'layer1.0.conv1': 0.5}}; got {type(self.layer_ratios).__name__}"
                )
            for name, r in self.layer_ratios.items():
                if not isinstance(name, str):
                    raise PlanError(f"layer_ratios keys are module names, got {name!r}")
                _fraction(f"layer_ratios[{name!r}]", r, closed_top=False)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise PlanError(f"seed must be an integer, got {self.seed!r}")
        if self.latency is not None:
            _fraction("latency", self.latency, closed_top=True, hint=" (the kept fraction)")
        if self.batch_size is not None and (
            isinstance(self.batch_size, bool)
            or not isinstance(self.batch_size, (int, np.integer))
            or self.batch_size < 1
        ):
            raise PlanError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        check_choice("latency_mode", self.latency_mode, LATENCY_MODES)
        if not isinstance(self.latency_deploy, bool):
            raise PlanError(f"latency_deploy must be True or False, got {self.latency_deploy!r}")
        if self.latency is None and (
            self.batch_size is not None or self.latency_mode != "eager" or not self.latency_deploy
        ):
            raise PlanError(
                "batch_size=, latency_mode= and latency_deploy= say how a latency target is "
                "measured; give latency= (the kept fraction of measured latency) with them"
            )
        self._check_knobs()

    def _check_knobs(self) -> None:
        """Exactly one way of counting, and the allocation agrees with it."""
        allocation = self.resolved_allocation
        if self.latency is not None:
            others = [n for n in ("params", "flops", "ratio") if getattr(self, n) is not None]
            if others or self.allocation not in (None, "hybrid_cost"):
                what = f"{others[0]}=" if others else f"allocation={self.allocation!r}"
                raise PlanError(
                    f"latency= is a target of its own (R per measured millisecond, bounded by "
                    f"ToD); it takes no {what}"
                )
            return
        if self.budget is not None:
            if self.ratio is not None:
                raise PlanError(
                    "give a budget (params=/flops=) or a ratio=, not both: the budget sets the "
                    "ratio by bisection"
                )
            return
        if allocation == "tod":
            if self.alpha is None:
                raise PlanError(
                    "give alpha (Tolerance of Difference, 0.005 in the paper), a budget "
                    "(params=/flops=) or ratio= (the fraction of units removed)"
                )
            return
        if self.ratio is None:
            if allocation == "uniform":
                raise PlanError("allocation='uniform' needs ratio= (the fraction removed)")
            raise PlanError(
                f"allocation {allocation!r} spreads a budget over the layers and needs one: give "
                "params or flops, not alpha (alpha sets the paper's ToD counts); or ratio= (the "
                "fraction of all units below its threshold)"
            )

    # ------------------------------------------------------------------ derived values
    @property
    def budget(self) -> tuple[str, float] | None:
        """``("params" | "flops", kept fraction)`` or None."""
        if self.params is not None:
            return "params", float(self.params)
        if self.flops is not None:
            return "flops", float(self.flops)
        return None

    @property
    def data_free(self) -> bool:
        """Whether the plan can be made from the weights alone (no calibration data)."""
        return callable(self.importance) or self.importance in DATA_FREE

    @property
    def resolved_allocation(self) -> str:
        if self.allocation is not None:
            return self.allocation
        if self.latency is not None:
            return "hybrid_cost"  # with milliseconds as the cost (fairfx.method.latency_plan)
        if self.budget is not None:
            return DATA_FREE_BUDGET_ALLOCATION if self.data_free else DEFAULT_BUDGET_ALLOCATION
        if self.ratio is not None and self.alpha is None:
            return "uniform"
        return "tod"

    def replace(self, **changes: Any) -> PlanOptions:
        """A copy with ``changes`` (checked like a new one)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_keywords(cls, *, budget: bool, uniform: Any = None, **options: Any) -> PlanOptions:
        """Options from the keyword forms of ``Analysis.plan`` (``uniform=ratio``) and
        ``Analysis.plan_for`` (``uniform=True``: bisect one ratio for every group); unknown
        keywords are refused with the closest valid name."""
        _refuse_unknown(options)
        if budget:
            if all(options.get(k) is None for k in ("params", "flops", "latency")):
                raise PlanError(
                    "give exactly one budget: params=fraction of parameters to keep or "
                    "flops=fraction of FLOPs (MACs) to keep"
                )
            if uniform is not None and not isinstance(uniform, bool):
                raise PlanError(
                    f"plan_for(uniform=...) is True or False (bisect one ratio for every group to "
                    f"meet the budget); got {uniform!r}. For a fixed ratio use "
                    f"plan(uniform={uniform!r})"
                )
            if uniform:
                options["allocation"] = "uniform"
        elif uniform is not None:
            ratio = _fraction(
                "uniform",
                uniform,
                closed_top=False,
                hint=" (uniform is the fraction of units removed from every group; to bisect "
                "one uniform ratio to a budget: plan_for(params=..., uniform=True))",
            )
            options.update(allocation="uniform", ratio=ratio)
        return cls(**options)


FIELDS = tuple(f.name for f in dataclasses.fields(PlanOptions))


def _refuse_unknown(options: Mapping[str, Any]) -> None:
    for key in options:
        if key not in FIELDS:
            close = difflib.get_close_matches(key, [*FIELDS, "uniform"], n=1)
            hint = f"; did you mean {close[0]}=?" if close else ""
            raise PlanError(
                f"unknown planning option {key}={options[key]!r}{hint} (valid: "
                f"{', '.join([*FIELDS, 'uniform'])})"
            )
