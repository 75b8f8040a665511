"""fairfx: FAIR-Pruner structural pruning as a torch.fx graph transformation.

Public entry points:

- :func:`channel_groups` — which channels are coupled, who produces and reads them, what
  blocks them.
- :func:`channel_graph` — the analysed model (one capture, one channel pass) to plan, cost and
  prune from as often as needed (``graph.groups``, ``graph.prune(keep)``, ``graph.cost(units)``).
- :func:`prune` — physically remove channels for a given plan; returns a smaller GraphModule.
- :func:`verify` — the masked-execution oracle: prove a pruned graph against the original.
- :func:`analyze` / :func:`compress` — FAIR-Pruner scoring, ToD planning and the rewrite.
- :func:`estimate_memory` — what scoring will need, before any data is read.
- :func:`save_pruned` / :func:`load_pruned` — a ``.pt2`` program that carries its plan, and the
  way back to a trainable GraphModule from the original model and the keep lists.
- :func:`recalibrate` — re-estimate BatchNorm statistics of a pruned model on calibration data.
"""

from .engine.artifact import load_pruned, save_pruned
from .engine.groups import ChannelGraph, ChannelGroup, channel_groups, prune
from .engine.groups import build as channel_graph
from .engine.oracle import VerifyReport, verify
from .errors import CalibrationError, CaptureError, FairfxError, PlanError
from .method.fair import Analysis, analyze, load_analysis
from .method.finetune import finetune
from .method.memory import MemoryEstimate, estimate_memory
from .method.pipeline import compress
from .method.recalibrate import recalibrate
from .version import __version__

__all__ = [
    "Analysis",
    "CalibrationError",
    "CaptureError",
    "ChannelGraph",
    "ChannelGroup",
    "FairfxError",
    "MemoryEstimate",
    "PlanError",
    "VerifyReport",
    "__version__",
    "analyze",
    "channel_graph",
    "channel_groups",
    "compress",
    "estimate_memory",
    "finetune",
    "load_analysis",
    "load_pruned",
    "prune",
    "recalibrate",
    "save_pruned",
    "verify",
]
