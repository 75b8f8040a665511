"""``fairfx compress`` / ``fairfx plan`` planning flags -> one :class:`~fairfx.PlanOptions`.

The options are checked by ``PlanOptions`` itself (the one place every entry point shares); this
module only maps flags to fields and rewords its errors with the flag names a CLI user typed.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from torch import nn

from ..errors import PlanError
from ..method.plan_options import PlanOptions
from ..method.selection import check_module_names
from .cli_inputs import UserError

# PlanOptions field (or pipeline keyword) -> the flag a CLI user gives it with.
FLAGS = {
    "params": "--params",
    "flops": "--flops",
    "alpha": "--alpha",
    "round_to": "--round-to",
    "allocation": "--allocation",
    "rounds": "--rounds",
    "ignored_layers": "--ignore",
    "latency_mode": "--latency-mode",
    "batch_size": "--latency-batch",
    "latency": "--latency",
    "latency_deploy": "--no-deploy",
}
_NAMES = re.compile(r"\b(" + "|".join(FLAGS) + r")\b=?")


def flag_error(exc: PlanError) -> UserError:
    """A planning error with option names replaced by the CLI's flags."""
    return UserError(_NAMES.sub(lambda m: FLAGS[m.group(1)], str(exc)))


def plan_options(args: argparse.Namespace, **target: Any) -> PlanOptions:
    """The PlanOptions of the flags (``target``: ``alpha=``, ``params=`` or ``flops=``, for
    ``fairfx plan``'s rows; by default the single target of ``fairfx compress``)."""
    if not target:
        target = {k: getattr(args, k, None) for k in ("alpha", "params", "flops", "latency")}
    # Passed whenever given, so PlanOptions refuses them without --latency.
    if getattr(args, "latency_batch", None) is not None:
        target["batch_size"] = args.latency_batch
    if getattr(args, "latency_mode", "eager") != "eager":
        target["latency_mode"] = args.latency_mode
    # The latency is measured in the form the export ships: undeployed under --no-deploy.
    if getattr(args, "no_deploy", False) and target.get("latency") is not None:
        target["latency_deploy"] = False
    rounds = getattr(args, "rounds", 1)
    fields = {
        "allocation": getattr(args, "allocation", None),
        "round_to": args.round_to,
        "ignored_layers": args.ignore or None,
        **target,
    }
    try:
        if rounds < 1:
            raise PlanError(f"rounds must be at least 1, got {rounds}")
        if rounds > 1 and getattr(args, "analysis", None):
            raise PlanError("--rounds re-scores the model every round; it cannot reuse --analysis")
        return PlanOptions(**fields)
    except PlanError as exc:
        raise flag_error(exc) from None


def check_ignored(model: nn.Module, names: list[str]) -> None:
    """``--ignore`` names checked on the user's model before any data is read."""
    try:
        check_module_names(model, names, "--ignore")
    except PlanError as exc:
        raise UserError(str(exc)) from None


def recal_line(recal: dict) -> str:
    return (
        f"recalibrate    BatchNorm statistics of {recal['modules']} layer(s) re-estimated on "
        f"{recal['samples']} samples (--no-recalibrate skips it)"
    )
