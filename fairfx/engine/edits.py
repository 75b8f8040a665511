"""Edits: what the rewrite changes, recorded by the channel pass for any plan.

An edit holds slot arrays, not indices, so one analysis serves every plan: the rewrite turns the
slots into keep masks (``kept_slot[slots]``) and applies the edit to a copy of the graph. This is
the annotate-then-convert shape of PT2E quantization: the channel pass annotates, the rewrite
converts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
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
    return select_axes(t, {dim: keep})


def select_axes(t: torch.Tensor, cuts: Mapping[int, np.ndarray | None]) -> torch.Tensor | None:
    """``t`` restricted along every axis of ``cuts`` (axis -> keep mask), or None when nothing
    is removed.

    The outermost axis goes first (a gather along axis 0 copies whole contiguous rows, leaving
    less to gather along the inner axes: on a [512, 256, 3, 3] conv weight halved both ways,
    0.32 ms this way against 0.80 ms inner first). Every step but the last writes into a
    scratch buffer reused across weights inside :func:`scratch_buffers`: a fresh intermediate
    costs the page faults of new memory, which on ViT-B/16's MLP weights took as long as the
    copy itself.
    """
    axes = [d for d in sorted(cuts) if cuts[d] is not None and not bool(cuts[d].all())]
    if not axes:
        return None
    cur = t.detach()
    for step, dim in enumerate(axes):
        idx = torch.as_tensor(np.flatnonzero(cuts[dim]), dtype=torch.long, device=t.device)
        if step == len(axes) - 1:
            return cur.index_select(dim, idx)
        shape = list(cur.shape)
        shape[dim] = len(idx)
        cur = torch.index_select(cur, dim, idx, out=_buffer(shape, cur, step % 2))
    raise AssertionError("unreachable: the last axis returns")


_pool: ContextVar[dict[tuple[Any, ...], torch.Tensor] | None] = ContextVar("fairfx_scratch")


@contextmanager
def scratch_buffers() -> Iterator[None]:
    """Reuse intermediate buffers for :func:`select_axes` until the block ends (then freed)."""
    token = _pool.set({})
    try:
        yield
    finally:
        _pool.reset(token)


def _buffer(shape: list[int], like: torch.Tensor, slot: int) -> torch.Tensor:
    """A tensor of ``shape`` for an intermediate: from the pool when one is open, else new.

    Two slots alternate, so a step never writes into the buffer it reads from."""
    pool = _pool.get(None)
    if pool is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    n = math.prod(shape)
    key = (like.dtype, like.device, slot)
    buf = pool.get(key)
    if buf is None or buf.numel() < n:
        buf = pool[key] = torch.empty(n, dtype=like.dtype, device=like.device)
    return buf[:n].view(shape)


def replace_tensor(owner: nn.Module, name: str, value: torch.Tensor) -> None:
    """Swap a parameter or buffer of ``owner`` keeping its kind and ``requires_grad`` flag."""
    old = getattr(owner, name)
    if isinstance(old, nn.Parameter) and name in owner._parameters:  # the dict: no checks to pay
        owner._parameters[name] = nn.Parameter(value, requires_grad=old.requires_grad)
    elif isinstance(old, nn.Parameter):
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
        parent, _, leaf = self.target.rpartition(".")
        owner = gm.get_submodule(parent) if parent else gm
        old = owner._modules[leaf]
        new = self.shrink(old, in_keep, out_keep)
        if new.training != old.training:  # copies keep the flags; a module built anew may not
            new.train(old.training)
        owner._modules[leaf] = new  # a module replacing a module: nn.Module's checks are moot
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
