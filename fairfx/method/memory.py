"""How much memory scoring will take, known before any data is read.

Three terms, all from the captured graph's shapes (per sample: the example batch's sizes divided
by its batch size):

- the calibration state at capacity, the formula of :mod:`fairfx.method.stats`:
  ``classes x samples_per_class x (sum over points of row_bytes(C, min(S, P)) + 4 sum C_prod)``;
- autograd of one scoring chunk: every node's output is kept for the backward and about as much
  again is live in gradients, so ``2 x 4 bytes x sum of per-sample output sizes x batch``. The
  chunk (``batch_size``) is chosen so this term stays near :data:`ACTIVATION_BUDGET`;
- the pair loop's workspace at finalize, fixed by its channel chunk (:mod:`fairfx.method.finalize`).

The parameters are not counted: the model is already in memory when scoring starts. ``analyze``
compares the sum to the memory the system reports available and refuses up front, with the
numbers and the fixes, when it will not fit.

``state_dtype="auto"`` (the default) picks the codec from these numbers: the most precise of
:data:`AUTO_ORDER` whose whole estimate fits in :data:`AUTO_SHARE` of the memory available,
else the smallest. Every codec gives U within Spearman 0.99 of the exact one on the nets
measured (docs/decisions.md), while float16 to int4 is a 3.2x smaller state (ResNet-50, 100
classes: 13.9 GB to 4.3 GB), so memory decides and the share leaves room for the data loader,
the model's copies while pruning, and whatever else runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ..engine.group_graph import GroupGraph, build
from ..errors import CalibrationError
from .codec import CODECS, check_codec, row_bytes
from .finalize import WORKSPACE_BYTES
from .scoring import logit_count, observation_points, producer_outputs

AUTO_ORDER = ("float32", "float16", "uint8", "int4")  # most precise first (bfloat16: same
# bytes as float16 with 3 fewer mantissa bits, only worth choosing for its range, by hand)
AUTO_SHARE = 1 / 3  # of the available memory, for state_dtype="auto"
ACTIVATION_BUDGET = 1 << 30  # bytes of autograd per scoring chunk when batch_size is chosen
MAX_BATCH = 64


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes that scoring needs, term by term (see the module docstring)."""

    classes: int
    samples_per_class: int
    state_dtype: str
    state_bytes: int
    sample_bytes: int
    activation_bytes: int
    batch_size: int
    workspace_bytes: int
    available_bytes: int | None
    state_bytes_by_dtype: dict[str, int] = field(default_factory=dict)
    chosen: str = ""  # why state_dtype, when "auto" picked it

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes + self.workspace_bytes

    @property
    def fits(self) -> bool:
        return self.available_bytes is None or self.total_bytes <= self.available_bytes

    def line(self) -> str:
        """One line for a log: the total, its terms and what is available."""
        avail = "unknown" if self.available_bytes is None else _gb(self.available_bytes)
        return (
            f"scoring needs about {_gb(self.total_bytes)} (state {_gb(self.state_bytes)} = "
            f"{self.classes} classes x {self.samples_per_class} samples x "
            f"{_gb(self.sample_bytes, 'MB')} in {self.state_dtype}{self.chosen}; autograd "
            f"{_gb(self.activation_bytes)} at batch {self.batch_size}; pair loop "
            f"{_gb(self.workspace_bytes)}); available {avail}"
        )

    def refusal(self) -> str:
        smaller = [
            f'state_dtype="{d}" ({_gb(b)})'
            for d, b in self.state_bytes_by_dtype.items()
            if b < self.state_bytes
        ]
        fixes = ", ".join([*smaller[-2:], "fewer max_classes or samples_per_class"])
        return (
            f"{self.line()}: it will not fit. Use {fixes}, or pass memory_check=False "
            "(--no-memory-check) to try anyway"
        )


def _gb(n: float, unit: str = "GB") -> str:
    return f"{n / 1e9:.2f} GB" if unit == "GB" else f"{n / 1e6:.2f} MB"


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo (bytes), or None where the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _per_sample(shape: Any) -> int | None:
    if not isinstance(shape, tuple) or not shape or not all(isinstance(d, int) for d in shape):
        return None
    return math.prod(shape[1:]) if shape[0] else None


def point_sizes(graph: GroupGraph, observe: str, projections: int) -> dict[str, tuple[int, int]]:
    """Channels C and stored values per channel V = min(S, P) of every observation point."""
    shapes = graph.node_shapes()
    dims: dict[str, tuple[int, int]] = {}
    for p in observation_points(graph, observe):
        shape = shapes[p.node]
        channels = shape[p.dim]
        per = _per_sample(shape) or channels
        dims[p.node] = (channels, min(max(1, per // channels), projections))
    return dims


def check_state_dtype(state_dtype: str) -> str:
    """A codec name or ``"auto"``."""
    return state_dtype if state_dtype == "auto" else check_codec(state_dtype)


def auto_dtype(total_by_dtype: dict[str, int], available: int | None) -> tuple[str, str]:
    """The codec ``state_dtype="auto"`` picks from each codec's whole estimate, and why."""
    if available is None:
        return "float16", " (auto: available memory unknown)"
    budget = AUTO_SHARE * available
    for dtype in AUTO_ORDER:
        if total_by_dtype[dtype] <= budget:
            return dtype, f" (auto: the most precise within 1/3 of {_gb(available)} available)"
    return AUTO_ORDER[-1], f" (auto: the smallest; none fits in 1/3 of {_gb(available)})"


def estimate_for_graph(
    graph: GroupGraph,
    *,
    classes: int,
    samples_per_class: int = 32,
    projections: int = 128,
    observe: str = "consumer",
    state_dtype: str = "auto",
    batch_size: int | None = None,
) -> MemoryEstimate:
    """:func:`estimate_memory` on an already captured graph."""
    check_state_dtype(state_dtype)
    shapes = graph.node_shapes()
    dims = point_sizes(graph, observe, projections)
    taylor = sum(4 * shapes[n][d] for n, (_, _, d, _) in producer_outputs(graph).items())

    def sample(dtype: str) -> int:
        return sum(row_bytes(c, v, dtype) for c, v in dims.values()) + taylor

    kept = classes * samples_per_class
    carried = set(graph.channel_tensors())
    act = 8 * sum(_per_sample(s) or 0 for n, s in shapes.items() if n in carried)
    if batch_size is None:
        batch_size = max(1, min(MAX_BATCH, ACTIVATION_BUDGET // max(act, 1)))
    available = available_memory()
    by_dtype = {d: kept * sample(d) for d in CODECS}
    chosen = ""
    if state_dtype == "auto":
        others = act * batch_size + WORKSPACE_BYTES
        state_dtype, chosen = auto_dtype({d: b + others for d, b in by_dtype.items()}, available)
    return MemoryEstimate(
        classes=classes,
        samples_per_class=samples_per_class,
        state_dtype=state_dtype,
        state_bytes=by_dtype[state_dtype],
        sample_bytes=sample(state_dtype),
        activation_bytes=act * batch_size,
        batch_size=batch_size,
        workspace_bytes=WORKSPACE_BYTES,
        available_bytes=available,
        state_bytes_by_dtype=by_dtype,
        chosen=chosen,
    )


def class_hint(graph: GroupGraph, data: Any, max_classes: int) -> int:
    """Classes ``analyze`` will use at most: ``max_classes``, fewer when the model has fewer
    outputs or the data says how many classes it holds (an ImageFolder's ``classes``, a
    TensorDataset's labels)."""
    n = min(max_classes, logit_count(graph) or max_classes)
    ds = getattr(data, "dataset", data)
    if isinstance(getattr(ds, "classes", None), (list, tuple)):
        return max(2, min(n, len(ds.classes)))
    tensors = getattr(ds, "tensors", None)
    if isinstance(tensors, tuple) and len(tensors) == 2 and not tensors[1].is_floating_point():
        return max(2, min(n, int(torch.unique(tensors[1]).numel())))
    return max(2, n)


def estimate_memory(
    model: torch.nn.Module,
    example_input: Any,
    *,
    classes: int | None = None,
    samples_per_class: int = 32,
    projections: int = 128,
    observe: str = "consumer",
    state_dtype: str = "auto",
    batch_size: int | None = None,
) -> MemoryEstimate:
    """What ``fairfx.analyze`` with these options will need, before any data is read.

    ``classes`` defaults to the number ``analyze`` would use at most: ``min(100, logits)``.
    Print ``estimate.line()``; ``estimate.fits`` compares with the memory available now;
    ``estimate.state_dtype`` is the codec, the one ``"auto"`` picks when so asked.
    """
    graph = build(model, example_input)
    if classes is None:
        classes = min(100, logit_count(graph) or 100)
    if classes < 2 or samples_per_class < 1:
        raise CalibrationError(
            f"classes must be >= 2 and samples_per_class >= 1, got {classes}, {samples_per_class}"
        )
    return estimate_for_graph(
        graph,
        classes=classes,
        samples_per_class=samples_per_class,
        projections=projections,
        observe=observe,
        state_dtype=state_dtype,
        batch_size=batch_size,
    )
