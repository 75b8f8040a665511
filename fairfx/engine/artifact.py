"""Saved pruned models: a ``torch.export`` program that carries its plan, and the way back.

``torch.save(pruned)`` pickles the GraphModule (its generated code included), so loading it needs
a full unpickling load, which runs whatever the file holds; and the plan in ``pruned.meta`` is
lost on the way. :func:`save_pruned` writes a ``.pt2`` program instead (``torch.export``, dynamic
batch where the model allows it), which ``torch.export.load`` rebuilds from its serialized graph
and tensors without executing code from the file, and stores ``pruned.meta["fairfx"]`` (keep
lists, kept units per group, the plan's summary, fine-tuning history) as JSON inside it.

:func:`load_pruned` gives back either the exported module as is (no original class needed;
inference only, as ``torch.export`` modules are), or, given the original model and an example
input, the trainable GraphModule rebuilt from the keep lists with :func:`~fairfx.prune` and
loaded with the saved weights (fine-tuned ones included).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from ..errors import FairfxError, PlanError, first_line
from ..files import atomic_path, json_default
from .capture import as_inputs
from .deploy import deployment_form
from .group_graph import prune

META_FILE = "fairfx.json"
FORMAT = "fairfx.pruned/1"
# The deployment form save_pruned writes by default (measured in docs/latency.md).
DEPLOY = {"fold_bn": True, "channels_last": True}


def export_program(
    module: nn.Module, example_input: Any
) -> tuple[torch.export.ExportedProgram, str]:
    """``torch.export`` with a dynamic batch dimension on every tensor input; when the model
    fixes its batch size, a static export. Returns the program and a note (empty when the
    batch is dynamic).

    torch.export specializes a dimension of size 1, so a batch-1 example is exported at batch 2
    (the sample repeated): the program then runs at any batch size, not at 1 only."""
    inputs = _batch_two(as_inputs(example_input))
    batch = torch.export.Dim("batch", min=1)
    dynamic = tuple({0: batch} if isinstance(x, torch.Tensor) and x.dim() else None for x in inputs)
    module.eval()
    try:
        return torch.export.export(module, inputs, dynamic_shapes=dynamic), ""
    except Exception as exc:  # a model may fix its batch size; export statically then
        first = first_line(exc)
        inputs = as_inputs(example_input)
        n = len(inputs[0]) if isinstance(inputs[0], torch.Tensor) and inputs[0].dim() else 1
        return torch.export.export(module, inputs), f"batch size fixed at {n}: {first}"[:300]


def _batch_two(inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    """Tensor inputs whose leading (batch) size is 1 repeated to 2; others as they are."""
    return tuple(
        torch.cat([x, x]) if isinstance(x, torch.Tensor) and x.dim() and len(x) == 1 else x
        for x in inputs
    )


def write_program(program: torch.export.ExportedProgram, path: Path, extra: dict[str, str]) -> None:
    """``torch.export.save`` into memory, then one Python write to ``path``: a full disk is an
    OSError here (torch's own file writer aborts the process on one)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # torch calls every non-contiguous weight (the deployment form's channels_last convs)
        # "not complete" and saves the first tensor of its storage group; each of those weights
        # owns its whole storage, so that tensor is the weight itself (the CLI reloads and
        # compares every program it writes).
        warnings.filterwarnings("ignore", "No complete tensor found", UserWarning)
        torch.export.save(program, buffer, extra_files=extra)
    with path.open("wb") as f:
        f.write(buffer.getbuffer())


def metadata_json(pruned: nn.Module, **more: Any) -> str:
    """``pruned.meta["fairfx"]`` (plus ``more``) as the JSON text stored in the program."""
    info = dict(getattr(pruned, "meta", {}).get("fairfx") or {})
    if "keep" not in info:
        raise FairfxError(
            "this module carries no fairfx plan (meta['fairfx']['keep']); save the GraphModule "
            "that fairfx.compress, Analysis.compress or fairfx.prune returned"
        )
    info.update(more)
    info["format"] = FORMAT
    return json.dumps(info, default=json_default)


def save_pruned(
    path: str | Path, pruned: fx.GraphModule, example_input: Any, *, deploy: bool = True
) -> dict[str, Any]:
    """Save ``pruned`` (from ``compress``/``prune``, fine-tuned or not) as a ``.pt2`` program
    holding its plan; reload with :func:`load_pruned`.

    Args:
        path: the file to write (``.pt2``). Written to a temporary file and renamed: an
            interrupted save leaves any previous file intact.
        pruned: the pruned GraphModule; its ``meta["fairfx"]`` is saved with it.
        example_input: a batch of the model's input (a batch of 1 is exported at 2, so the
            batch dimension stays dynamic and the program runs at any batch size; a model that
            fixes its batch size is saved at that size, with a warning).
        deploy: save the deployment form (:func:`fairfx.engine.deploy.deployment_form` with
            ``DEPLOY``: BatchNorm folded into the preceding conv, channels_last weights;
            docs/latency.md), which runs
            faster on CPU and computes the same outputs; False saves the module as it is (keep
            it when the way back should still have its BatchNorm layers to fine-tune).

    Returns:
        ``{"path", "dynamic_batch", "note"}``: whether the batch stayed dynamic, and why not.
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise FairfxError(
            f"save_pruned: folder {target.parent} does not exist; create it first ({target})"
        )
    metadata_json(pruned)  # a module without a plan is refused before any work
    if deploy and isinstance(pruned, fx.GraphModule):
        pruned = deployment_form(pruned, **DEPLOY)
    meta = metadata_json(pruned)
    program, note = export_program(pruned, example_input)
    if note:
        warnings.warn(
            f"save_pruned: {note[:160]}; the saved program runs at that batch size only",
            stacklevel=2,
        )
    try:
        with atomic_path(target) as tmp:
            write_program(program, tmp, {META_FILE: meta})
    except OSError as exc:
        raise FairfxError(
            f"cannot write {target}: {exc.strerror or exc}; free space or choose another folder "
            "(no partial file was left)"
        ) from None
    return {"path": str(path), "dynamic_batch": not note, "note": note}


def read_metadata(path: str | Path) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    """The exported program of a saved file and its fairfx metadata. The archive is checked
    member by member before torch reads it (:mod:`fairfx.engine.pt2_check`): nothing in the
    file can run code."""
    p = Path(path)
    if not p.is_file():
        raise FairfxError(f"{p} does not exist; fairfx.save_pruned writes these files")
    from .pt2_check import checked_archive  # torch.export's archive code imports triton

    archive = checked_archive(p)
    extra = {META_FILE: ""}
    try:
        program = torch.export.load(archive, extra_files=extra)
    except Exception as exc:
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise FairfxError(f"cannot read {p} as a torch.export program: {text}") from None
    try:
        info = json.loads(extra[META_FILE]) if extra[META_FILE] else {}
    except json.JSONDecodeError:
        info = None
    if not isinstance(info, dict) or "keep" not in info:
        raise FairfxError(
            f"{p} is a torch.export program without a fairfx plan; it was not written by "
            "fairfx.save_pruned or fairfx compress (load it with torch.export.load)"
        )
    return program, _checked_plan(p, info)


def _index_lists(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(v, list) and all(type(i) is int and i >= 0 for i in v) for v in value.values()
    )


def _checked_plan(path: Path, info: dict[str, Any]) -> dict[str, Any]:
    """The stored plan with its format and shape checked: a file from a newer fairfx or an
    edited plan is refused rather than read as something else."""
    if info.get("format") != FORMAT:
        raise FairfxError(
            f"{path} holds a fairfx plan in format {info.get('format')!r}, this fairfx reads "
            f"{FORMAT!r}; load it with the fairfx version that wrote it"
        )
    units = info.get("units", {})
    if not _index_lists(info["keep"]) or not _index_lists(units):
        raise FairfxError(
            f"{path} has a malformed fairfx plan ('keep' and 'units' must map names to lists "
            "of channel indices); the file was edited or damaged: save the model again"
        )
    if not all(str(g).isdigit() for g in units):
        raise FairfxError(
            f"{path} has a malformed fairfx plan (group ids in 'units' must be integers); the "
            "file was edited or damaged: save the model again"
        )
    info["units"] = {int(g): u for g, u in units.items()}
    return info


def load_pruned(
    path: str | Path, model: nn.Module | None = None, example_input: Any = None
) -> fx.GraphModule:
    """Load a file written by :func:`save_pruned` (or ``fairfx compress --out``).

    Without ``model``: the exported program's module, for inference (``torch.export`` modules do
    not switch to train mode), with the plan on ``.meta["fairfx"]``; no original class needed.

    With the original ``model`` and ``example_input``: the way back from the keep lists,
    ``fairfx.prune(model, example_input, meta["fairfx"]["keep"])``, then the saved weights
    (fine-tuned ones included) loaded strictly into it: a GraphModule that trains, switches
    modes and can be pruned again. ``model`` is not modified. A file saved in the deployment
    form comes back in that form (BatchNorm folded into the convs), the structure its weights
    fit.
    """
    program, info = read_metadata(path)
    if model is None:
        module = program.module()
    else:
        if example_input is None:
            raise FairfxError("load_pruned(path, model, example_input): give the example input")
        try:
            module = prune(model, example_input, info["keep"])
        except PlanError as exc:
            raise FairfxError(
                f"the keep lists in {path} do not fit this model ({exc}); pass the model it was "
                "pruned from"
            ) from None
        deploy = info.get("deploy")
        if deploy:
            module = deployment_form(
                module,
                fold_bn=bool(deploy.get("fold_bn")),
                channels_last=bool(deploy.get("channels_last")),
            )
        state = dict(program.state_dict)
        state.update({k: v for k, v in program.constants.items() if isinstance(v, torch.Tensor)})
        own = module.state_dict()
        wrong = sorted(k for k in own if k not in state or state[k].shape != own[k].shape)
        if wrong:
            raise FairfxError(
                f"{path} does not fit this model after pruning it with the saved keep lists "
                f"({len(wrong)} tensors differ, e.g. {wrong[0]!r}); pass the model it was "
                "pruned from"
            )
        module.load_state_dict({k: state[k] for k in own})
        module.eval()
    module.meta["fairfx"] = info
    return module
