"""Mergeable calibration statistics: everything ``analyze`` accumulates, in one object.

Which classes take part: the ``max_classes`` classes with the smallest seeded hash among the
labels *seen* (all of them when fewer are present), so a 1000-output model calibrated on a
10-class folder uses all 10. Which samples: each class keeps the ``samples_per_class`` samples
with the smallest seeded content hash (a bottom-k sketch). Neither choice depends on batch order,
batch size, or which process saw a sample, so states built on shards merge into exactly the state
of one process over all the data, and a saved state resumes where it stopped.

Per kept sample the state holds, for every observation point with C channels and S positions
per channel, a ``[C, V]`` row with ``V = min(S, P)``: the P projections of each map when
``S >= P``, else the S raw values themselves (projected at finalize: the same numbers, fewer
bytes), stored in the ``state_dtype`` codec (:mod:`fairfx.method.codec`); and, for every producer
call, the signed Taylor sum ``sum z * dL/dz`` over the sample's positions ``[C]`` in float32 (for
R). Memory, with K = samples_per_class, M classes and b(C, V) the codec's row bytes::

    bytes = K * M * (sum over points of b(C, V) + 4 * sum(C over producer calls))

independent of the dataset's size. :func:`fairfx.estimate_memory` evaluates it for a model
before any data is read.
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

_FORMAT = "fairfx.state/3"  # /1 pickled numpy arrays; /2 had a fixed class list
_STATE_FIX = "save one with Analysis.state.save(path) from this fairfx version"


def _hash(data: bytes, seed: int) -> int:
    salt = int(seed).to_bytes(8, "little", signed=True)
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, salt=salt).digest(), "little") >> 1


def class_key(label: int, seed: int) -> int:
    """A 63-bit seeded hash of a class label: the classes with the smallest keys take part."""
    return _hash(b"class" + int(label).to_bytes(8, "little", signed=True), seed)


def sample_keys(x: torch.Tensor, seed: int) -> np.ndarray:
    """A 63-bit key per sample: a seeded hash of its content (identical samples, same key)."""
    flat = x.detach().cpu().contiguous().view(len(x), -1)
    if flat.dtype.is_floating_point:
        flat = flat.float()
    data = flat.numpy()
    return np.array([_hash(data[i].tobytes(), seed) for i in range(len(x))], dtype=np.int64)


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
    """Bottom-k samples of the chosen classes with their projections and Taylor sums; mergeable.

    ``values[point]`` is V, the values stored per channel at that point (``min(S, P)``);
    ``seen[label]`` counts the samples seen per label, so a report can say what was used.
    """

    max_classes: int
    samples_per_class: int
    projections: int
    observe: str
    seed: int
    points: list[str]
    producers: list[str]
    state_dtype: str = "float16"
    values: dict[str, int] = field(default_factory=dict)
    per_class: dict[int, ClassStats] = field(default_factory=dict)
    seen: dict[int, int] = field(default_factory=dict)
    batches_seen: int = 0

    @property
    def classes(self) -> list[int]:
        """The classes taking part (so far), sorted."""
        return sorted(self.per_class)

    # ------------------------------------------------------------------ sampling
    def chosen(self, labels: set[int]) -> set[int]:
        """The classes that take part once ``labels`` are seen too: the ``max_classes`` with the
        smallest seeded key among the kept classes and the new labels."""
        candidates = set(self.per_class) | labels
        if len(candidates) <= self.max_classes:
            return candidates
        ranked = sorted(candidates, key=lambda c: (class_key(c, self.seed), c))
        return set(ranked[: self.max_classes])

    def threshold(self, c: int) -> int | None:
        """Keys below this still enter class ``c`` (None: the class is not full yet)."""
        st = self.per_class.get(c)
        if st is None or len(st.keys) < self.samples_per_class:
            return None
        return int(st.keys.max())

    def wanted(self, keys: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Indices of the batch's samples that may enter the state (and count what was seen)."""
        for c in labels.tolist():
            self.seen[c] = self.seen.get(c, 0) + 1
        chosen = self.chosen(set(labels.tolist()))
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
        values: dict[str, int] | None = None,
    ) -> None:
        """Insert samples (rows of ``proj``/``taylor``) keeping the bottom-k keys per class."""
        for name, v in (values or {}).items():
            if self.values.setdefault(name, v) != v:
                raise CalibrationError(
                    f"the feature map at {name!r} changed size between batches ({self.values[name]}"
                    f" then {v} values per channel); calibrate with one input size"
                )
        for i, (key, c) in enumerate(zip(keys.tolist(), labels.tolist(), strict=True)):
            st = self.per_class.setdefault(c, ClassStats())
            st.insert(
                key,
                {k: v[i] for k, v in proj.items()},
                {k: v[i] for k, v in taylor.items()},
                self.samples_per_class,
            )
        self._trim()

    def _trim(self) -> None:
        """Drop the classes that a smaller-keyed class pushed out of the ``max_classes``."""
        keep = self.chosen(set())
        for c in [c for c in self.per_class if c not in keep]:
            del self.per_class[c]

    # ------------------------------------------------------------------ merge / persist
    def compatible(self, other: CalibrationState) -> None:
        fields = ("max_classes", "samples_per_class", "projections", "observe", "seed")
        fields = (*fields, "state_dtype", "points", "producers")
        differ = [f for f in fields if getattr(self, f) != getattr(other, f)]
        clash = [n for n in self.values.keys() & other.values.keys()]
        if any(self.values[n] != other.values[n] for n in clash):
            differ.append("input size")
        if differ:
            raise CalibrationError(
                f"calibration states differ in {', '.join(differ)} (model, max_classes, "
                "samples_per_class, projections, observe, seed, state_dtype or input size) and "
                "cannot be merged; use the same options everywhere"
            )

    def merge(self, other: CalibrationState) -> CalibrationState:
        """The state of one run over both states' samples (order does not matter)."""
        self.compatible(other)
        out = CalibrationState(
            self.max_classes,
            self.samples_per_class,
            self.projections,
            self.observe,
            self.seed,
            self.points,
            self.producers,
            self.state_dtype,
            {**self.values, **other.values},
            {},
            {c: self.seen.get(c, 0) + other.seen.get(c, 0) for c in self.seen.keys() | other.seen},
            self.batches_seen + other.batches_seen,
        )
        for source in (self, other):
            for c, st in sorted(source.per_class.items()):
                target = out.per_class.setdefault(c, ClassStats())
                for key, proj, taylor in st.rows():
                    target.insert(key, proj, taylor, self.samples_per_class)
        out._trim()
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
            out = cls(**state)
            _check_rows(out)
            return out
        except FairfxError as exc:
            raise CalibrationError(str(exc)) from None
        except (KeyError, TypeError, AttributeError, ValueError, RuntimeError) as exc:
            raise CalibrationError(
                f"{path} is a damaged fairfx calibration state ({type(exc).__name__}: {exc}); "
                f"{_STATE_FIX}"
            ) from None

    def ordered(self, c: int) -> ClassStats:
        """Class ``c``'s samples in key order."""
        return self.per_class[c].ordered()


def _check_rows(state: CalibrationState) -> None:
    """Every class of a loaded state holds at most ``samples_per_class`` distinct keys and a
    row of every stored tensor for each (ValueError otherwise: an edited or damaged file)."""
    if not isinstance(state.samples_per_class, int) or not isinstance(state.per_class, dict):
        raise ValueError("samples_per_class or per_class has the wrong type")
    for c, st in state.per_class.items():
        n = len(st.keys)
        if st.keys.ndim != 1 or n > state.samples_per_class or len(set(st.keys.tolist())) != n:
            raise ValueError(f"class {c} keys are not up to samples_per_class distinct ints")
        for store in (st.proj, st.taylor):
            if not isinstance(store, dict) or not all(
                isinstance(t, torch.Tensor) and t.dim() >= 1 and len(t) >= n for t in store.values()
            ):
                raise ValueError(f"class {c} rows are not tensors of {n} samples")


def describe(state: CalibrationState) -> dict[str, Any]:
    """What the scores were computed from: classes and samples used, and what was seen."""
    return {
        "classes": state.classes,
        "classes_seen": len(state.seen),
        "samples": state.sample_count(),
        "samples_seen": sum(state.seen.values()),
        "state_dtype": state.state_dtype,
        "samples_per_class": state.samples_per_class,
        "projections": state.projections,
        "observe": state.observe,
        "seed": state.seed,
        "sampling": "classes: smallest seeded label hash among those seen; samples: bottom-k "
        "seeded content hash per class",
    }
