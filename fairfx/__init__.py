"""fairfx: FAIR-Pruner structural pruning as a torch.fx graph transformation.

Public entry points:

- :func:`channel_groups` — which channels are coupled, who produces and reads them, what
  blocks them.
- :func:`prune` — physically remove channels for a given plan; returns a smaller GraphModule.
- :func:`verify` — the masked-execution oracle: prove a pruned graph against the original.
"""

from .errors import CalibrationError, CaptureError, FairfxError, PlanError
from .groups import ChannelGroup, channel_groups
from .oracle import VerifyReport, verify
from .rewrite import prune

__all__ = [
    "CalibrationError",
    "CaptureError",
    "ChannelGroup",
    "FairfxError",
    "PlanError",
    "VerifyReport",
    "channel_groups",
    "prune",
    "verify",
]
