"""fairfx: FAIR-Pruner structural pruning as a torch.fx graph transformation.

Public entry points:

- :func:`channel_groups` — which channels are coupled, who produces and reads them, what
  blocks them.
- :func:`channel_graph` — the analysed model (one capture, one channel pass) to plan, cost and
  prune from as often as needed (``graph.plan(PlanOptions(...), scores)``, ``graph.cost(plan)``,
  ``graph.prune(plan)``); :class:`PlanOptions` holds every planning choice.
- :func:`prune` — physically remove named channels (``channel_graph(...).prune`` in one call).
- :func:`count` — parameters and MACs of a model, by the counter budgets use.
- :func:`verify` — the masked-execution oracle: prove a pruned graph against the original.
- :func:`analyze` / :func:`compress` — FAIR-Pruner scoring, ToD planning and the rewrite.
- :func:`estimate_memory` — what scoring will need, before any data is read.
- :func:`save_pruned` / :func:`load_pruned` — a ``.pt2`` program that carries its plan, and the
  way back to a trainable GraphModule from the original model and the keep lists.
- :func:`register_rule` — describe how a custom layer's weights follow its channels.
- :func:`recalibrate` — re-estimate BatchNorm statistics of a pruned model on calibration data.
- :func:`to_hf` — a uniform plan of a Hugging Face causal LM back as that model's own class
  (``generate``, ``save_pretrained``); ``transformers`` is imported only when it is called.
"""

from .apps.hf_export import to_hf
from .engine.artifact import load_pruned, save_pruned
from .engine.cost import Cost
from .engine.custom import LayerRule, register_rule
from .engine.group_graph import channel_groups, prune
from .engine.oracle import VerifyReport, verify
from .engine.records import ChannelGroup
from .errors import CalibrationError, CaptureError, FairfxError, PlanError
from .method.fair import Analysis, analyze, load_analysis
from .method.finetune import finetune
from .method.graph import ChannelGraph, channel_graph, count
from .method.memory import MemoryEstimate, estimate_memory
from .method.pipeline import CompressResult, compress
from .method.plan_options import PlanOptions
from .method.planning import Plan
from .method.recalibrate import recalibrate
from .version import __version__

__all__ = [
    "Analysis",
    "CalibrationError",
    "CaptureError",
    "ChannelGraph",
    "ChannelGroup",
    "CompressResult",
    "Cost",
    "FairfxError",
    "LayerRule",
    "MemoryEstimate",
    "Plan",
    "PlanError",
    "PlanOptions",
    "VerifyReport",
    "__version__",
    "analyze",
    "channel_graph",
    "channel_groups",
    "compress",
    "count",
    "estimate_memory",
    "finetune",
    "load_analysis",
    "load_pruned",
    "prune",
    "recalibrate",
    "register_rule",
    "save_pruned",
    "to_hf",
    "verify",
]
