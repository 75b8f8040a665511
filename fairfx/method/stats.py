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
forward and dropped). The projections dominate: for ResNet-50 (about 26,500 observed channels),
10 classes, K = 32 and P = 128 they take about 4.3 GB; halve P or K to halve it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CalibrationError, FairfxError
from ..files import load_payload, plain, save_payload

_FORMAT = "fairfx.state/2"  # /1 pickled numpy arrays: a safe load refuses it
_STATE_FIX = "save one with Analysis.state.save(path) from this fairfx version"


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
    """The kept samples of one class, in fixed-capacity rows (unsorted; see ``ordered``).

    A new sample overwrites the row of the largest key once the class is full, so inserting
    costs one row copy, whatever the order of arrival, and the final set is the bottom-k keys.
    """

    keys: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    proj: dict[str, torch.Tensor] = field(default_factory=dict)
    taylor: dict[str, torch.Tensor] = field(default_factory=dict)

    def insert(
        self,
        key: int,
        proj: dict[str, torch.Tensor],
        taylor: dict[str, torch.Tensor],
        capacity: int,
    ) -> None:
        if key in self.keys:
            return  # the same sample seen again (two shards, a resumed run): keep one copy
        n = len(self.keys)
        if n < capacity:
            row = n
            self.keys = np.append(self.keys, np.int64(key))
            for store, values in ((self.proj, proj), (self.taylor, taylor)):
                for name, v in values.items():
                    if name not in store:
                        store[name] = v.new_empty((capacity, *v.shape))
                    store[name][row] = v
            return
        row = int(np.argmax(self.keys))
        if key >= self.keys[row]:
            return
        self.keys[row] = key
        for store, values in ((self.proj, proj), (self.taylor, taylor)):
            for name, v in values.items():
                store[name][row] = v

    def ordered(self) -> ClassStats:
        """The filled rows sorted by key: the order every sum is taken in (reproducible)."""
        order = np.argsort(self.keys, kind="stable")
        idx = torch.as_tensor(order)
        n = len(self.keys)
        return ClassStats(
            self.keys[order],
            {k: v[:n][idx] for k, v in self.proj.items()},
            {k: v[:n][idx] for k, v in self.taylor.items()},
        )

    def rows(self):
        """(key, proj, taylor) of every filled row, for merging."""
        for i, key in enumerate(self.keys.tolist()):
            yield (
                key,
                {k: v[i] for k, v in self.proj.items()},
                {k: v[i] for k, v in self.taylor.items()},
            )


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
        return int(st.keys.max())

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
        """Insert samples (rows of ``proj``/``taylor``) keeping the bottom-k keys per class."""
        for i, (key, c) in enumerate(zip(keys.tolist(), labels.tolist(), strict=True)):
            st = self.per_class.setdefault(c, ClassStats())
            st.insert(
                key,
                {k: v[i] for k, v in proj.items()},
                {k: v[i] for k, v in taylor.items()},
                self.samples_per_class,
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
        for source in (self, other):
            for c, st in sorted(source.per_class.items()):
                target = out.per_class.setdefault(c, ClassStats())
                for key, proj, taylor in st.rows():
                    target.insert(key, proj, taylor, self.samples_per_class)
        return out

    def sample_count(self) -> int:
        return sum(len(s.keys) for s in self.per_class.values())

    def save(self, path: str | Path) -> None:
        """Write the state atomically as tensors and plain values (loadable without pickle
        code: ``torch.load(weights_only=True)``)."""
        state = {
            f.name: plain(getattr(self, f.name)) for f in fields(self) if f.name != "per_class"
        }
        state["per_class"] = {
            int(c): {"keys": torch.from_numpy(st.keys.copy()), "proj": st.proj, "taylor": st.taylor}
            for c, st in self.per_class.items()
        }
        save_payload({"format": _FORMAT, "state": state}, path)

    @classmethod
    def load(cls, path: str | Path) -> CalibrationState:
        """Read a state saved by :meth:`save`; a file of another kind is refused unread."""
        try:
            payload = load_payload(path, _FORMAT, "a fairfx calibration state", _STATE_FIX)
            state = dict(payload["state"])
            state["per_class"] = {
                int(c): ClassStats(v["keys"].numpy().astype(np.int64), v["proj"], v["taylor"])
                for c, v in state["per_class"].items()
            }
            return cls(**state)
        except FairfxError as exc:
            raise CalibrationError(str(exc)) from None
        except (KeyError, TypeError, AttributeError) as exc:
            raise CalibrationError(
                f"{path} is a damaged fairfx calibration state ({type(exc).__name__}: {exc}); "
                f"{_STATE_FIX}"
            ) from None

    def ordered(self, c: int) -> ClassStats:
        """Class ``c``'s samples in key order."""
        return self.per_class[c].ordered()


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
