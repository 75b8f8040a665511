"""Mergeable calibration statistics: everything ``analyze`` accumulates, in one object.

Samples are chosen by a seeded content hash: each class keeps the ``samples_per_class`` samples
with the smallest keys (a bottom-k sketch). That choice does not depend on batch order, batch
size, or which process saw a sample, so states built on shards merge into exactly the state of
one process over all the data, and a saved state resumes where it stopped.

Per kept sample the state holds, for every observation point, the projected feature map
``[C, P]`` (for U) and, for every producer call, the signed Taylor sum ``sum z * dL/dz`` over the
sample's positions ``[C]`` (for R). Memory, with K = samples_per_class and M classes::

    bytes ~= K * M * (4 * P * sum(C over observation points) + 8 * sum(C over producer calls))

independent of the dataset's size and of the feature maps' size (maps are projected inside the
forward and dropped). Example: ResNet-50, 10 classes, K = 32, P = 128: about 4.5 GB... of which
the projections dominate; halve P or K to halve it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CalibrationError

_FORMAT = "fairfx.state/1"


def sample_keys(x: torch.Tensor, seed: int) -> np.ndarray:
    """A 63-bit key per sample: a seeded hash of its content (identical samples, same key)."""
    flat = x.detach().cpu().contiguous().view(len(x), -1)
    if flat.dtype.is_floating_point:
        flat = flat.float()
    data = flat.numpy()
    salt = int(seed).to_bytes(8, "little", signed=True)
    keys = np.empty(len(x), dtype=np.int64)
    for i in range(len(x)):
        digest = hashlib.blake2b(data[i].tobytes(), digest_size=8, salt=salt).digest()
        keys[i] = int.from_bytes(digest, "little") >> 1
    return keys


@dataclass
class ClassStats:
    """The kept samples of one class: keys and their per-sample statistics."""

    keys: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    proj: dict[str, torch.Tensor] = field(default_factory=dict)
    taylor: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class CalibrationState:
    """Bottom-k samples per class with their projections and Taylor sums; mergeable."""

    classes: list[int]
    samples_per_class: int
    projections: int
    observe: str
    seed: int
    points: list[str]
    producers: list[str]
    per_class: dict[int, ClassStats] = field(default_factory=dict)
    batches_seen: int = 0

    # ------------------------------------------------------------------ sampling
    def threshold(self, c: int) -> int | None:
        """Keys below this still enter class ``c`` (None: the class is not full yet)."""
        st = self.per_class.get(c)
        if st is None or len(st.keys) < self.samples_per_class:
            return None
        return int(st.keys[-1])

    def wanted(self, keys: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Indices of the batch's samples that may enter the state."""
        chosen = set(self.classes)
        out = []
        for i, (k, c) in enumerate(zip(keys.tolist(), labels.tolist(), strict=True)):
            if c not in chosen:
                continue
            t = self.threshold(c)
            if t is None or k < t:
                out.append(i)
        return np.asarray(out, dtype=np.int64)

    def add(
        self,
        keys: np.ndarray,
        labels: np.ndarray,
        proj: dict[str, torch.Tensor],
        taylor: dict[str, torch.Tensor],
    ) -> None:
        """Insert samples (rows of ``proj``/``taylor``) and keep the bottom-k per class."""
        for c in np.unique(labels).tolist():
            rows = np.flatnonzero(labels == c)
            idx = torch.as_tensor(rows)
            new = ClassStats(
                keys[rows],
                {k: v[idx] for k, v in proj.items()},
                {k: v[idx] for k, v in taylor.items()},
            )
            self.per_class[c] = self._trim(_concat(self.per_class.get(c), new))

    def _trim(self, st: ClassStats) -> ClassStats:
        order = np.lexsort((np.arange(len(st.keys)), st.keys))[: self.samples_per_class]
        keys = st.keys[order]
        # Drop exact duplicates of a key (the same sample seen twice, e.g. two shards).
        first = np.ones(len(keys), dtype=bool)
        first[1:] = keys[1:] != keys[:-1]
        order = order[first]
        idx = torch.as_tensor(order)
        return ClassStats(
            st.keys[order],
            {k: v[idx] for k, v in st.proj.items()},
            {k: v[idx] for k, v in st.taylor.items()},
        )

    # ------------------------------------------------------------------ merge / persist
    def compatible(self, other: CalibrationState) -> None:
        mine = (self.classes, self.samples_per_class, self.projections, self.observe, self.seed)
        theirs = (other.classes, other.samples_per_class, other.projections, other.observe)
        theirs = (*theirs, other.seed)
        if mine != theirs or self.points != other.points or self.producers != other.producers:
            raise CalibrationError(
                "calibration states differ in model, classes, samples_per_class, projections, "
                "observe or seed and cannot be merged; use the same options everywhere"
            )

    def merge(self, other: CalibrationState) -> CalibrationState:
        """The state of one run over both states' samples (order does not matter)."""
        self.compatible(other)
        out = CalibrationState(
            self.classes,
            self.samples_per_class,
            self.projections,
            self.observe,
            self.seed,
            self.points,
            self.producers,
            {},
            self.batches_seen + other.batches_seen,
        )
        for c in sorted(set(self.per_class) | set(other.per_class)):
            both = _concat(self.per_class.get(c), other.per_class.get(c))
            out.per_class[c] = out._trim(both)
        return out

    def sample_count(self) -> int:
        return sum(len(s.keys) for s in self.per_class.values())

    def save(self, path: str | Path) -> None:
        torch.save({"format": _FORMAT, "state": self.__dict__}, Path(path))

    @classmethod
    def load(cls, path: str | Path) -> CalibrationState:
        payload = torch.load(Path(path), weights_only=False)
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT:
            raise CalibrationError(f"{path} is not a fairfx calibration state ({_FORMAT})")
        return cls(**payload["state"])

    def ordered(self, c: int) -> ClassStats:
        """Class ``c``'s samples in key order (the order sums are taken in: reproducible)."""
        return self.per_class[c]


def _concat(a: ClassStats | None, b: ClassStats | None) -> ClassStats:
    if a is None or len(a.keys) == 0:
        return b if b is not None else ClassStats()
    if b is None or len(b.keys) == 0:
        return a
    keys = np.concatenate([a.keys, b.keys])
    proj = {k: torch.cat([a.proj[k], b.proj[k]]) for k in a.proj}
    taylor = {k: torch.cat([a.taylor[k], b.taylor[k]]) for k in a.taylor}
    return ClassStats(keys, proj, taylor)


def describe(state: CalibrationState) -> dict[str, Any]:
    return {
        "classes": [c for c in state.classes if c in state.per_class],
        "samples": state.sample_count(),
        "samples_per_class": state.samples_per_class,
        "projections": state.projections,
        "observe": state.observe,
        "seed": state.seed,
        "sampling": "bottom-k seeded content hash per class",
    }
