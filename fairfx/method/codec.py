"""Compact storage of calibration rows: what one kept sample costs in the calibration state.

Each kept sample stores, per observation point, a ``[C, V]`` row (V projections, or the raw map
when it has fewer positions than projections; see :mod:`fairfx.method.stats`). The codec decides
how many bytes one row takes:

- ``float32``: 4 bytes per value, exact.
- ``float16`` / ``bfloat16``: 2 bytes per value (float16: 11 bits of mantissa;
  bfloat16 keeps float32's range but only 8 bits).
- ``uint8`` / ``int4``: per (sample, channel) affine quantization: the row's minimum and step in
  float32 (8 bytes), then one code per value in 8 or 4 bits. W1 averages ``|a - b|`` over
  ``samples x projections`` sorted values, so rounding errors of a few percent of a row's range
  mostly average out; the measured effect on U is in docs/decisions.md.

Rows of one value per channel (Linear units, globally pooled maps) are always kept in float32:
they cost next to nothing, and their U is then the exact 1-D W1.

Which codec ``state_dtype="auto"`` (the default) picks is decided from the memory estimate
(:mod:`fairfx.method.memory`). Decoding always gives float32; every statistic is computed in
float32 or wider.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import CalibrationError

FLOATS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
LEVELS = {"uint8": 255, "int4": 15}
CODECS = (*FLOATS, *LEVELS)
_PARAMS = 8  # bytes of the float32 (minimum, step) pair in front of each quantized row


def check_codec(codec: str) -> str:
    if codec not in CODECS:
        raise CalibrationError(f"state_dtype must be one of {', '.join(CODECS)}; got {codec!r}")
    return codec


def stored_as(codec: str, values: int) -> str:
    """The codec actually used for rows of ``values`` values per channel."""
    return "float32" if values == 1 else codec


def row_bytes(channels: int, values: int, codec: str) -> int:
    """Bytes of one sample's ``[channels, values]`` row."""
    codec = stored_as(codec, values)
    if codec in FLOATS:
        return channels * values * torch.empty((), dtype=FLOATS[codec]).element_size()
    codes = values if codec == "uint8" else (values + 1) // 2
    return channels * (codes + _PARAMS)


def encode(x: Tensor, codec: str) -> Tensor:
    """``[..., V]`` float rows in the codec's storage form (float rows, or uint8 bytes)."""
    codec = stored_as(codec, x.shape[-1])
    if codec in FLOATS:
        out = x.to(FLOATS[codec])
        if codec == "float16" and not torch.isfinite(out).all() and torch.isfinite(x).all():
            raise CalibrationError(
                "a feature projection exceeds float16's range (65504); pass "
                'state_dtype="bfloat16" (same size, float32 range) or "float32"'
            )
        return out
    levels = LEVELS[codec]
    x = x.float()
    lo = x.amin(-1, keepdim=True)
    step = (x.amax(-1, keepdim=True) - lo) / levels
    step = torch.where(step > 0, step, torch.ones_like(step))
    q = ((x - lo) / step).round_().clamp_(0, levels).to(torch.uint8)
    if codec == "int4":
        if q.shape[-1] % 2:
            q = torch.cat([q, torch.zeros_like(q[..., :1])], -1)
        q = q[..., 0::2] | (q[..., 1::2] << 4)
    params = torch.cat([lo, step], -1).contiguous().view(torch.uint8)
    return torch.cat([params, q], -1)


def decode(t: Tensor, codec: str, values: int) -> Tensor:
    """The float32 ``[..., values]`` rows back from :func:`encode`'s storage."""
    codec = stored_as(codec, values)
    if codec in FLOATS:
        return t.float()
    params = t[..., :_PARAMS].contiguous().view(torch.float32)
    q = t[..., _PARAMS:]
    if codec == "int4":
        q = torch.stack([q & 15, q >> 4], -1).flatten(-2)[..., :values]
    return params[..., :1] + q.float() * params[..., 1:2]
