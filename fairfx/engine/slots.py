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
    """Allocates slots, remembers who made them and keeps the union-find over them."""

    def __init__(self) -> None:
        self._parent: list[int] = []
        self.owner: list[int] = []  # producer index of each slot, -1 for untracked channels

    def __len__(self) -> int:
        return len(self._parent)

    def new(self, n: int, owner: int) -> np.ndarray:
        start = len(self._parent)
        self._parent.extend(range(start, start + n))
        self.owner.extend([owner] * n)
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, s: int) -> int:
        parent = self._parent
        root = s
        while parent[root] != root:
            root = parent[root]
        while parent[s] != root:  # path compression
            parent[s], s = root, parent[s]
        return root

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Union slot a[i] with b[i] for every i; the smaller root wins (determinism)."""
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                lo, hi = (rx, ry) if rx < ry else (ry, rx)
                self._parent[hi] = lo

    def roots(self) -> np.ndarray:
        """The class (root slot) of every slot (pointer jumping over the whole table at once)."""
        parent = np.asarray(self._parent, dtype=np.int64)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent
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
