"""Edits: what the rewrite changes, recorded by the channel pass for any plan.

An edit holds slot arrays, not indices, so one analysis serves every plan: the rewrite turns the
slots into keep masks (``kept_slot[slots]``) and applies the edit to a copy of the graph. This is
the annotate-then-convert shape of PT2E quantization: the channel pass annotates, the rewrite
converts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn


def _mask(kept_slot: np.ndarray, slots: np.ndarray | None) -> np.ndarray | None:
    return None if slots is None else kept_slot[slots]


def select(t: torch.Tensor, dim: int, keep: np.ndarray | None) -> torch.Tensor | None:
    """``t`` restricted to the positions ``keep`` marks along ``dim`` (a new contiguous tensor
    holding only the kept slices), or None when nothing along ``dim`` is removed."""
    if keep is None or bool(keep.all()):
        return None
    idx = torch.as_tensor(np.flatnonzero(keep), dtype=torch.long, device=t.device)
    return t.detach().index_select(dim, idx)


def replace_tensor(owner: nn.Module, name: str, value: torch.Tensor) -> None:
    """Swap a parameter or buffer of ``owner`` keeping its kind and ``requires_grad`` flag."""
    old = getattr(owner, name)
    if isinstance(old, nn.Parameter):
        setattr(owner, name, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        owner._buffers[name] = value


@dataclass
class ModuleEdit:
    """Shrink a module's input and/or output channels; ``shrink`` builds the smaller module."""

    target: str
    shrink: Callable[[nn.Module, np.ndarray | None, np.ndarray | None], nn.Module]
    in_slots: np.ndarray | None
    out_slots: np.ndarray | None

    def key(self) -> tuple[str, str]:
        return ("module", self.target)

    def apply(self, gm: fx.GraphModule, kept_slot: np.ndarray) -> bool:
        """Replace the module by its smaller copy; False when the plan keeps all its channels."""
        in_keep, out_keep = _mask(kept_slot, self.in_slots), _mask(kept_slot, self.out_slots)
        if all(m is None or bool(m.all()) for m in (in_keep, out_keep)):
            return False
        old = gm.get_submodule(self.target)
        new = self.shrink(old, in_keep, out_keep)
        new.train(old.training)
        parent, _, leaf = self.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, new)
        return True


@dataclass
class ParamEdit:
    """Slice a parameter or buffer read through ``get_attr`` along ``dim``."""

    target: str
    dim: int
    slots: np.ndarray

    def key(self) -> tuple[str, str]:
        return ("param", f"{self.target}:{self.dim}")

    def apply(self, gm: fx.GraphModule, kept_slot: np.ndarray) -> bool:
        keep = kept_slot[self.slots]
        if bool(keep.all()):
            return False
        parent, _, leaf = self.target.rpartition(".")
        owner = gm.get_submodule(parent) if parent else gm
        replace_tensor(owner, leaf, select(getattr(owner, leaf), self.dim, keep))
        return True


@dataclass
class ArgEdit:
    """Rewrite a node's arguments (shape constants, split sizes, slice bounds)."""

    node: str
    rewrite: Callable[[fx.Node, np.ndarray], None]

    def key(self) -> tuple[str, str]:
        return ("node", self.node)

    def apply(self, kept_slot: np.ndarray, nodes: dict[str, Any]) -> bool:
        """Rewrite the node in ``nodes`` (a copy of the captured graph's nodes, by name)."""
        self.rewrite(nodes[self.node], kept_slot)
        return True
