"""Command line: ``fairfx compress | inspect | plan`` (also ``python -m fairfx``).

``compress`` runs the whole job on a model and labelled data: score channels (or reuse saved
scores), plan for a Tolerance of Difference or a budget, rewrite, prove the rewrite with the
masked-execution oracle, optionally fine-tune, export with ``torch.export`` (dynamic batch) and
check that the saved program reloads and computes what the pruned module computes.

User errors (missing files, unknown models, bad values, unlabelled data) end with exit status 2
and one line ``fairfx: error: ...`` on stderr, as argparse does for bad command lines.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from ..errors import FairfxError
from ..files import Terminated, outputs_together
from ..method.allocation import ALLOCATIONS
from ..method.scoring import OBSERVE
from ..version import __version__
from .cli_compress import cmd_compress
from .cli_guard import OneLineParser, in_flags, terminate_as_interrupt
from .cli_inputs import (
    PROG,
    UserError,
    _one_line,
)
from .cli_inspect import DEFAULT_ALPHAS, cmd_inspect, cmd_plan


# --------------------------------------------------------------------------------------- parser
def _model_args(p: argparse.ArgumentParser, image_size: int | None, size_help: str) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="torchvision:NAME (built with weights=None) or package.module:factory",
    )
    p.add_argument("--weights", help="state_dict file (torch.save(model.state_dict(), path))")
    p.add_argument("--num-classes", type=int, help="passed to the factory as num_classes=")
    p.add_argument(
        "--model-args",
        nargs="+",
        metavar="KEY=VALUE",
        help="more factory arguments: KEY=VALUE pairs, values read as JSON (image_size=64 "
        "dropout=0.1 norm=batch), or one JSON object ('{\"image_size\": 64}')",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=image_size,
        help=size_help,
    )
    p.add_argument(
        "--channels",
        type=int,
        default=3,
        help="input channels (default 3; 1 makes ImageFolder images grey)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars or progress messages")


def _planning_args(p: argparse.ArgumentParser, allocation: bool = True) -> None:
    if allocation:
        p.add_argument(
            "--allocation",
            choices=ALLOCATIONS,
            help="how a --params/--flops budget is spread over the layers (default: "
            "the benchmark's choice, see docs/decisions.md); tod with --alpha",
        )
    p.add_argument(
        "--round-to",
        type=int,
        help="round every kept channel count to a multiple of this (e.g. 8)",
    )
    p.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="LAYER",
        help="qualified name of a layer to keep exactly as it is (repeatable)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="FAIR-Pruner structural pruning as a torch.fx pass.",
    )
    parser.add_argument(
        "--version", action="version", version=f"{PROG} {__version__} (torch {torch.__version__})"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser(
        "compress",
        help="score, prune, verify, (fine-tune,) export",
        description="Score channels on labelled data, prune, prove the rewrite, optionally "
        "fine-tune, export with torch.export and check the reloaded program.",
    )
    _model_args(
        c,
        224,
        "ImageFolder images are resized to this height and width (default 224); a .pt data "
        "file keeps its own size",
    )
    c.add_argument(
        "--data",
        required=True,
        help="labelled data: an ImageFolder directory (resized to --image-size) or a .pt file "
        "saved with torch.save((inputs, targets), path)",
    )
    target = c.add_mutually_exclusive_group(required=True)
    target.add_argument("--alpha", type=float, help="Tolerance of Difference, in [0, 1)")
    target.add_argument("--params", type=float, help="fraction of parameters to keep, (0, 1]")
    target.add_argument("--flops", type=float, help="fraction of MACs to keep, (0, 1]")
    target.add_argument(
        "--latency",
        type=float,
        help="fraction of the model's measured latency on this machine to keep, (0, 1] "
        "(docs/latency.md)",
    )
    c.add_argument(
        "--latency-batch", type=int, help="batch size --latency is measured at (default 1)"
    )
    c.add_argument(
        "--latency-mode",
        default="eager",
        help="measure --latency eagerly or under torch.compile: eager (default) or compile",
    )
    c.add_argument("--out", required=True, help="exported program (.pt2, torch.export.save)")
    c.add_argument(
        "--no-deploy",
        action="store_true",
        help="export the pruned module as it is, not its deployment form (BatchNorm folded "
        "into the convs; docs/latency.md)",
    )
    c.add_argument("--report", help="write a JSON report here")
    c.add_argument("--plot", help="write a PNG of kept channels per group (needs matplotlib)")
    c.add_argument(
        "--analysis",
        help="scores file: reused when it exists (no scoring), written after scoring otherwise",
    )
    c.add_argument(
        "--normalize",
        default="none",
        help="ImageFolder normalization after ToTensor: none (default), imagenet (torchvision's "
        "ImageNet mean/std) or MEAN/STD, e.g. 0.5,0.5,0.5/0.25,0.25,0.25",
    )
    c.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="share of --data held out, per class, by a split seeded with --seed: accuracy "
        "(original, one-shot, fine-tuned) is measured on it and fine-tuning keeps its best "
        "epoch; scoring and fine-tuning use the rest. 0: no split, no accuracy (default 0.1)",
    )
    c.add_argument(
        "--finetune-epochs",
        type=int,
        default=0,
        help="fine-tune the pruned model this many epochs with SGD (lr --lr, momentum 0.9, "
        "weight decay 1e-4) on the training split, keeping the epoch best on the validation "
        "split (see --val-fraction); default 0",
    )
    c.add_argument("--lr", type=float, default=1e-3, help="fine-tuning learning rate (1e-3)")
    c.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    c.add_argument(
        "--samples-per-class",
        type=int,
        default=32,
        help="calibration samples per class for scoring (default 32)",
    )
    c.add_argument(
        "--max-classes",
        type=int,
        default=100,
        help="classes compared at most, chosen among the labels present (default 100)",
    )
    c.add_argument(
        "--state-dtype",
        choices=("auto", "float16", "bfloat16", "float32", "uint8", "int4"),
        default="auto",
        help="storage of the kept projections: auto (default: the most precise of float32, "
        "float16, uint8, int4 whose estimate fits in a third of the memory available), or "
        "one of them (uint8/int4 are 2x/4x smaller than float16; see docs/decisions.md)",
    )
    c.add_argument(
        "--no-memory-check",
        action="store_true",
        help="score even when the memory estimate exceeds the memory available",
    )
    c.add_argument("--seed", type=int, default=0, help="seed of scoring and shuffling (0)")
    c.add_argument(
        "--observe",
        choices=OBSERVE,
        default="consumer",
        help="where U is measured (default consumer: where each layer reads the channel; "
        "post_act: after the producer's own BatchNorm and activation)",
    )
    c.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="prune in this many rounds, fine-tuning 1 epoch on --data and re-scoring between "
        "rounds (a --params/--flops budget is split geometrically); default 1",
    )
    c.add_argument(
        "--no-recalibrate",
        action="store_true",
        help="do not re-estimate BatchNorm statistics on --data after pruning",
    )
    _planning_args(c)
    c.set_defaults(func=cmd_compress)

    i = sub.add_parser(
        "inspect",
        help="print the channel groups of a model",
        description="Print every channel group: size, producers, prunable or why not.",
    )
    _model_args(i, 224, "height and width of the example input (default 224)")
    i.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "plan",
        help="kept parameters/MACs per alpha from saved scores (no data)",
        description="Plan from scores saved by `fairfx compress --analysis`: no data needed.",
    )
    _model_args(
        p, None, "height and width of the example input (default: the scored input's, else 224)"
    )
    p.add_argument("--analysis", required=True, help="scores file from compress --analysis")
    goal = p.add_mutually_exclusive_group()
    goal.add_argument(
        "--alpha",
        type=float,
        nargs="+",
        help=f"Tolerance of Difference values (default {' '.join(map(str, DEFAULT_ALPHAS))})",
    )
    goal.add_argument(
        "--params", type=float, nargs="+", help="fractions of parameters to keep, (0, 1]"
    )
    goal.add_argument("--flops", type=float, nargs="+", help="fractions of MACs to keep, (0, 1]")
    _planning_args(p)
    p.set_defaults(func=cmd_plan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The program, report and plot of one run replace the old ones together (or not at all).
    results = [getattr(args, flag, None) for flag in ("out", "report", "plot")]
    try:
        with terminate_as_interrupt(), outputs_together(results):
            return args.func(args)
    except UserError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return exc.code
    except FairfxError as exc:
        print(f"{PROG}: error: {in_flags(_one_line(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:  # unreadable images, a full disk: the system's own message
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Terminated:
        print(f"{PROG}: terminated (SIGTERM); no output was changed", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
