"""Channel slots and their equivalence classes.

Every output channel of a producer (conv, linear, ...) gets a unique integer *slot*. A tensor's
channel axis is described by the slot of each position (a :class:`Layout`). Ops that force two
positions to be kept or removed together (a residual add, a shared module, a grouped conv's
columns) *union* their slots. An equivalence class of slots is one prunable unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    """Which slot sits at each position of one axis (``dim``) of a tensor."""

    dim: int
    slots: np.ndarray

    def __post_init__(self) -> None:
        self.slots.setflags(write=False)

    @property
    def size(self) -> int:
        return int(self.slots.shape[0])


class SlotTable:
    """Allocates slots, remembers who made them and collects the unions between them.

    Rules only add unions during the channel pass and nobody asks for a class before it ends,
    so a union is recorded as an edge list and the classes are computed once, vectorised, in
    :meth:`roots` (a per-element union-find in Python cost a third of ViT-B/16's channel pass:
    its head splits tie 64 channels per head).
    """

    def __init__(self) -> None:
        self._size = 0
        self.owner: list[int] = []  # producer index of each slot, -1 for untracked channels
        self._edges: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return self._size

    def new(self, n: int, owner: int) -> np.ndarray:
        start = self._size
        self._size += n
        self.owner.extend([owner] * n)
        return np.arange(start, start + n, dtype=np.int64)

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Put slot a[i] and b[i] in one class for every i."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        if a.shape != b.shape:
            raise ValueError(f"union of {a.shape} and {b.shape} slots: the shapes must match")
        if a.size:
            self._edges.append((a.reshape(-1), b.reshape(-1)))

    def roots(self) -> np.ndarray:
        """The class of every slot, named by its smallest slot (so the result is deterministic).

        Hook-and-jump connected components: every root of an edge whose ends disagree points to
        the smaller of the two roots, then pointer jumping flattens the trees; repeated until
        every edge's ends share a root. Parents only ever decrease, so no cycle can form, and a
        class ends at its smallest member.
        """
        parent = np.arange(self._size, dtype=np.int64)
        if not self._edges:
            return parent
        u = np.concatenate([e[0] for e in self._edges])
        v = np.concatenate([e[1] for e in self._edges])
        while True:
            ru, rv = parent[u], parent[v]
            differ = ru != rv
            if not differ.any():
                return parent
            u, v, ru, rv = u[differ], v[differ], ru[differ], rv[differ]
            np.minimum.at(parent, np.maximum(ru, rv), np.minimum(ru, rv))
            while True:
                grand = parent[parent]
                if np.array_equal(grand, parent):
                    break
                parent = grand


def unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of an integer array (``np.unique`` without its options).

    By sorting: numpy 2.4's hash-based ``np.unique`` for integers measured 12x slower on this
    project's machine (5,000 slots: 2.8 ms against 0.23 ms), and the channel graph calls it
    for every group and consumer.
    """
    ordered = np.sort(values)
    if len(ordered) < 2:
        return ordered
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


def common(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sorted values present in both integer arrays (``np.intersect1d``, by sorting: see
    :func:`unique`)."""
    ua, ub = unique(a), unique(b)
    if not len(ua) or not len(ub):
        return ua[:0]
    pos = np.clip(np.searchsorted(ub, ua), 0, len(ub) - 1)
    return ua[ub[pos] == ua]


def unique_first(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values of a non-negative integer array and the index of each one's first
    occurrence, as ``np.unique(values, return_index=True)`` (whose stable argsort is as slow).

    Sorts ``value * n + index`` once, which orders by value and then by position.
    """
    n = len(values)
    if n == 0:
        return values.astype(np.int64), np.zeros(0, dtype=np.int64)
    key = np.sort(values.astype(np.int64) * n + np.arange(n, dtype=np.int64))
    value, index = np.divmod(key, n)
    first = np.concatenate(([True], value[1:] != value[:-1]))
    return value[first], index[first]
