"""Where a latency table is kept, and what it is valid for.

A table is worth keeping (measuring costs seconds to minutes) but only for the conditions it was
measured under: the machine (CPU model), the torch version, the model's structure and shapes
(not its weights: pruning and fine-tuning change weights, not speed), the input shape, the
batch size, the thread count and the mode. Those make the table's key; a cached table whose key
differs in anything is measured again, never reused.

Tables are JSON (a format that cannot carry code), written to a temporary file and renamed, and
read back through a schema check: a damaged or foreign file counts as a miss, with the reason
kept in the new table's note.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx

from ..files import atomic_path

FORMAT = "fairfx.latency/1"


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    return f"{platform.system()} {platform.machine()} | {cpu_model()}"


def fingerprint(gm: fx.GraphModule) -> str:
    """A hash of the captured graph's structure and recorded shapes, weights excluded."""
    h = hashlib.sha256()
    for node in gm.graph.nodes:
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            what = f"{type(mod).__name__}({mod.extra_repr()})"
        else:
            what = str(node.target) if node.op != "get_attr" else "attr"
        args = [a.name if isinstance(a, fx.Node) else repr(a) for a in node.all_input_nodes]
        h.update(f"{node.op}|{what}|{args}|{node.meta.get('fairfx_shape')}\n".encode())
    return h.hexdigest()[:24]


def table_key(
    gm: fx.GraphModule,
    inputs: tuple[Any, ...],
    *,
    batch: int,
    threads: int,
    mode: str,
    deploy: bool = True,
) -> dict[str, Any]:
    shapes = [list(x.shape) for x in inputs if isinstance(x, torch.Tensor)]
    return {
        "machine": machine(),
        "torch": torch.__version__,
        "model": fingerprint(gm),
        "input_shapes": shapes,
        "batch": int(batch),
        "threads": int(threads),
        "mode": mode,
        "deploy": bool(deploy),
    }


def default_path(key: dict[str, Any]) -> Path:
    """``$FAIRFX_CACHE`` (default ``~/.cache/fairfx``) ``/latency/<hash of the key>.json``."""
    root = Path(os.environ.get("FAIRFX_CACHE", Path.home() / ".cache" / "fairfx"))
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return root / "latency" / f"{digest}.json"


def write(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({**payload, "format": FORMAT}, indent=1, sort_keys=True))


def read(path: Path, key: dict[str, Any], *, any_machine: bool = False) -> tuple[dict | None, str]:
    """The payload at ``path`` if it is a table for ``key`` (machine aside when
    ``any_machine``: a table measured on the deployment device and copied here), else
    ``(None, why not)``."""
    if not path.is_file():
        return None, ""
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{path} unreadable ({type(exc).__name__}); measured again"
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        return None, f"{path} is not a fairfx latency table; measured again"
    stored = payload.get("key")
    if not isinstance(stored, dict) or not isinstance(payload.get("layers"), dict):
        return None, f"{path} has no valid key or layers; measured again"
    differ = sorted(
        k for k in key if stored.get(k) != key[k] and not (any_machine and k == "machine")
    )
    if differ:
        return None, f"cached table measured for another {', '.join(differ)}; measured again"
    return payload, ""


__all__ = ["FORMAT", "default_path", "fingerprint", "machine", "read", "table_key", "write"]
