"""Edits: what the rewrite changes, recorded by the channel pass for any plan.

Every edit kind follows one protocol (:class:`Edit`): a ``phase`` (``"graph"``: node arguments,
changed on the copied graph before its GraphModule exists; ``"tensors"``: weights, changed on the
new GraphModule), a ``key`` (one edit per key is applied), the ``slots`` it slices, the
``weights`` it owns (parameters it accounts for) and ``apply(site, kept_slot)``, which returns the
name of the module or node it changed (None when the plan keeps everything, or when only a tensor
changed).

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
from typing import Any, Protocol

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
class EditSite:
    """What an edit changes: the copied graph's nodes by name (phase ``graph``) and the new
    GraphModule (phase ``tensors``)."""

    nodes: dict[str, Any]
    gm: fx.GraphModule | None = None


class Edit(Protocol):
    phase: str

    def key(self) -> tuple[str, str]: ...

    def slots(self) -> list[np.ndarray]: ...

    @property
    def weights(self) -> str | None: ...

    def apply(self, site: EditSite, kept_slot: np.ndarray) -> str | None: ...


@dataclass
class ModuleEdit:
    """Shrink a module's input and/or output channels; ``shrink`` builds the smaller module."""

    target: str
    shrink: Callable[[nn.Module, np.ndarray | None, np.ndarray | None], nn.Module]
    in_slots: np.ndarray | None
    out_slots: np.ndarray | None
    phase = "tensors"

    def key(self) -> tuple[str, str]:
        return ("module", self.target)

    def slots(self) -> list[np.ndarray]:
        return [s for s in (self.in_slots, self.out_slots) if s is not None]

    @property
    def weights(self) -> str:
        return self.target

    def apply(self, site: EditSite, kept_slot: np.ndarray) -> str | None:
        """Replace the module by its smaller copy; None when the plan keeps all its channels."""
        in_keep, out_keep = _mask(kept_slot, self.in_slots), _mask(kept_slot, self.out_slots)
        if all(m is None or bool(m.all()) for m in (in_keep, out_keep)):
            return None
        gm = site.gm
        parent, _, leaf = self.target.rpartition(".")
        owner = gm.get_submodule(parent) if parent else gm
        old = owner._modules[leaf]
        new = self.shrink(old, in_keep, out_keep)
        if new.training != old.training:  # copies keep the flags; a module built anew may not
            new.train(old.training)
        owner._modules[leaf] = new  # a module replacing a module: nn.Module's checks are moot
        return self.target


@dataclass
class ParamEdit:
    """Slice a parameter or buffer read through ``get_attr`` along ``dim``."""

    target: str
    dim: int
    channel_slots: np.ndarray
    phase = "tensors"

    def key(self) -> tuple[str, str]:
        return ("param", f"{self.target}:{self.dim}")

    def slots(self) -> list[np.ndarray]:
        return [self.channel_slots]

    @property
    def weights(self) -> str:
        return self.target

    def apply(self, site: EditSite, kept_slot: np.ndarray) -> str | None:
        """Slice the tensor; None either way (a tensor, not a module or node, changed)."""
        keep = kept_slot[self.channel_slots]
        if bool(keep.all()):
            return None
        parent, _, leaf = self.target.rpartition(".")
        owner = site.gm.get_submodule(parent) if parent else site.gm
        replace_tensor(owner, leaf, select(getattr(owner, leaf), self.dim, keep))
        return None


@dataclass
class ArgEdit:
    """Rewrite a node's arguments (shape constants, split sizes, slice bounds)."""

    node: str
    rewrite: Callable[[fx.Node, np.ndarray], None]
    phase = "graph"
    weights = None

    def key(self) -> tuple[str, str]:
        return ("node", self.node)

    def slots(self) -> list[np.ndarray]:
        return []

    def apply(self, site: EditSite, kept_slot: np.ndarray) -> str | None:
        """Rewrite the node in ``site.nodes`` (a copy of the captured graph's nodes, by name)."""
        self.rewrite(site.nodes[self.node], kept_slot)
        return self.node
