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
