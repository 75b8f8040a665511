"""Bake reparametrized weights into plain parameters of the captured copy.

``torch.nn.utils.parametrizations`` (``weight_norm``, ``spectral_norm``, any
``register_parametrization``) and the older hook-based ``torch.nn.utils.weight_norm`` /
``spectral_norm`` compute a module's weight from other tensors at every call. The channel rules
slice a module's ``weight``; a computed weight is recomputed whole from the unsliced originals,
so a conv under ``weight_norm`` kept its full weight while its bias was sliced. In eval mode the
computed weight is a fixed tensor, so capture replaces it by a plain parameter holding that value
(in the copy only: the user's module, its class and its tensors are untouched). The captured
graph then computes exactly what the original computes in eval mode, the oracle stays exact, and
the conv prunes like any other. The pruned model trains the plain weight: the reparametrization
is not carried over (docs/decisions.md).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.spectral_norm import (
    SpectralNorm,
    SpectralNormLoadStateDictPreHook,
    SpectralNormStateDictHook,
)
from torch.nn.utils.weight_norm import WeightNorm


@torch.no_grad()
def bake_weights(root: nn.Module) -> list[str]:
    """Replace every reparametrized tensor of ``root`` (a copy, in eval mode) by a plain
    parameter holding its current value; returns the qualified names baked."""
    if root.training:
        raise ValueError("bake_weights needs eval mode (spectral_norm updates its state in train)")
    baked = []
    for prefix, m in root.named_modules():
        for name in _bake_parametrizations(m) + _bake_hooks(m):
            baked.append(f"{prefix}.{name}" if prefix else name)
    return baked


def _bake_parametrizations(m: nn.Module) -> list[str]:
    if not parametrize.is_parametrized(m):
        return []
    names = list(m.parametrizations.keys())
    values = {}
    for name in names:
        plist = m.parametrizations[name]
        originals = (
            [plist.original]
            if hasattr(plist, "original")
            else [getattr(plist, f"original{i}") for i in range(plist.ntensors)]
        )
        kind = nn.Parameter if isinstance(originals[0], nn.Parameter) else None
        grad = any(getattr(t, "requires_grad", False) for t in originals)
        values[name] = (getattr(m, name).detach().clone(), kind, grad)
    # The parametrized class is shared with the user's module: switch this copy back to the
    # original class instead of deleting the class's properties.
    m.__class__ = m.__class__.__bases__[0]
    del m._modules["parametrizations"]
    for name, (value, kind, grad) in values.items():
        if kind is nn.Parameter:
            m.register_parameter(name, nn.Parameter(value, requires_grad=grad))
        else:
            m.register_buffer(name, value)
    return names


def _bake_hooks(m: nn.Module) -> list[str]:
    names = []
    for key, hook in list(m._forward_pre_hooks.items()):
        if isinstance(hook, WeightNorm):
            value = hook.compute_weight(m)
            extra = (f"{hook.name}_g", f"{hook.name}_v")
        elif isinstance(hook, SpectralNorm):
            value = hook.compute_weight(m, do_power_iteration=False)
            extra = (f"{hook.name}_orig", f"{hook.name}_u", f"{hook.name}_v")
        else:
            continue
        grad = any(
            m._parameters[e].requires_grad for e in extra if m._parameters.get(e) is not None
        )
        for e in extra:
            m._parameters.pop(e, None)
            m._buffers.pop(e, None)
        m.__dict__.pop(hook.name, None)
        del m._forward_pre_hooks[key]
        m.register_parameter(hook.name, nn.Parameter(value.detach().clone(), requires_grad=grad))
        names.append(hook.name)
    if names:
        hooks = (SpectralNormStateDictHook, SpectralNormLoadStateDictPreHook)
        for table in (m._state_dict_hooks, m._load_state_dict_pre_hooks):
            for key, hook in list(table.items()):
                if isinstance(getattr(hook, "hook", hook), hooks):
                    del table[key]
    return names
