"""Refuse a ``.pt2`` file that could run code, before ``torch.export.load`` reads any of it.

``torch.export.load`` is not a safe load. Reading torch 2.14's ``torch/export/pt2_archive`` and
``torch/_export/serde``, a crafted archive runs code through:

- the sample inputs (``data/sample_inputs/<model>.pt``): torch retries a failed safe load with
  ``weights_only=False``;
- a weight or tensor constant marked ``use_pickle``: ``torch.load(weights_only=False)``;
- a legacy ``data/weights/<model>.pt`` or ``data/constants/<model>.pt``: the same retry;
- an ``opaque_obj_``/``custom_obj_`` constant: ``pickle.loads`` / the TorchScript unpickler
  (``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` does not cover these);
- ``data/aotinductor/``: compiled shared libraries that are loaded and run;
- a shape expression (``expr_str``): parsed by ``sympy.sympify``, which calls ``eval``;
- ``guards_code``: pasted into Python source that ``ExportedProgram.module()`` executes;
- a node target: resolved by ``getattr`` from ``torch``/``operator``/``math`` and called when
  the program runs (``torch.ops.load_library``, ``torch.os.system``, ...);
- the pre-2.8 layout (a top-level ``version`` member), read with the same unpickling retries.

:func:`checked_archive` opens the file as the zip archive it is, checks every member against
what ``fairfx.save_pruned`` writes (plain tensor records, JSON, aten calls, plain symbolic
sizes), and returns an in-memory copy holding only the checked members, so torch reads exactly
the bytes that were checked (no second zip parser can see a different member).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch.export.pt2_archive import constants as pt2

from ..errors import FairfxError
from ..files import refused_objects

_FIX = (
    "fairfx.save_pruned never writes this: load only .pt2 files that fairfx wrote, or re-save "
    "the pruned model with fairfx.save_pruned"
)
_MODEL = "model"
_FIXED = {
    pt2.ARCHIVE_FORMAT_PATH,
    pt2.ARCHIVE_VERSION_PATH,
    "byteorder",
    ".data/version",
    ".data/serialization_id",
    pt2.MODELS_FILENAME_FORMAT.format(_MODEL),
    pt2.SAMPLE_INPUTS_FILENAME_FORMAT.format(_MODEL),
    pt2.WEIGHTS_CONFIG_FILENAME_FORMAT.format(_MODEL),
    pt2.CONSTANTS_CONFIG_FILENAME_FORMAT.format(_MODEL),
}
# Python callables a program of a pruned model may call besides aten ops (symbolic sizes).
_PY_TARGETS = frozenset(
    [f"_operator.{n}" for n in ("getitem", "add", "sub", "mul", "floordiv", "truediv", "mod")]
    + [f"_operator.{n}" for n in ("neg", "pow", "eq", "ne", "lt", "le", "gt", "ge", "and_")]
    + [f"_operator.{n}" for n in ("or_", "not_")]
    + [f"torch.sym_{n}" for n in ("int", "float", "max", "min", "not", "ite", "sqrt", "sum")]
    + [f"math.{n}" for n in ("floor", "ceil", "trunc", "sqrt")]
)
_ATEN = re.compile(r"torch\.ops\.aten\.\w+\.\w+")
# sympy names a serialized symbolic size uses; anything else in an expression is refused.
# sympy's own classes and constants, then the torch.utils._sympy.functions that torch passes
# to sympify (torch/_export/serde/serialize.py).
_SYMPY_TEXT = """
Symbol Integer Rational Float Add Mul Pow Abs Max Min oo zoo nan True False Equality Unequality
StrictLessThan LessThan StrictGreaterThan GreaterThan Eq Ne Lt Le Gt Ge And Or Not
positive integer real nonnegative finite
FloorDiv ModularIndexing Where PythonMod Mod CleanDiv CeilToInt FloorToInt CeilDiv LShift RShift
PowByNatural FloatPow FloatTrueDiv IntTrueDiv IsNonOverlappingAndDenseIndicator TruncToFloat
TruncToInt RoundToInt RoundDecimal ToFloat Identity
"""
_SYMPY_NAMES = frozenset(_SYMPY_TEXT.split())
_EXPR_TOKEN = re.compile(
    r"\s+|'[A-Za-z_]\w*'|\d+(?:\.\d+)?(?:e[-+]?\d+)?|\*\*|//|==|!=|<=|>=|[-+*/%(),<>=]|[A-Za-z_]\w*"
)
_SYMBOL = re.compile(r"[a-z]+\d+")
_GUARD_TOKEN = re.compile(
    r"\s+|L\['\w+'\]|\[\d+\]|\.(?:size|stride|storage_offset)\(\)|\d+|==|!=|<=|>=|//|"
    r"[-+*/%()<>]|and|or|not"
)


def _refuse(path: Path, problem: str) -> FairfxError:
    return FairfxError(f"{path} is refused: {problem}; {_FIX}")


def _fully(pattern: re.Pattern[str], text: str) -> list[str] | None:
    """The tokens of ``text`` when ``pattern`` covers all of it, else None."""
    tokens, end = [], 0
    for m in pattern.finditer(text):
        if m.start() != end:
            return None
        tokens.append(m.group())
        end = m.end()
    return tokens if end == len(text) else None


def _plain_expr(text: str) -> bool:
    """A symbolic size sympy may parse: known sympy names, size symbols, numbers, operators."""
    tokens = _fully(_EXPR_TOKEN, text)
    if tokens is None:
        return False
    for tok in tokens:
        if tok[0].isalpha() or tok[0] == "_":
            if tok not in _SYMPY_NAMES and not _SYMBOL.fullmatch(tok):
                return False
        elif tok[0] == "'" and not _SYMBOL.fullmatch(tok[1:-1]):
            return False
    return True


def _walk(value: Any, key: str = ""):
    """Every (key, value) pair in a JSON document, depth first."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k, v
            yield from _walk(v, k)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v, key)


def _check_program(path: Path, program: Any) -> None:
    """Node targets, shape expressions and guard code of the serialized program."""
    if not isinstance(program, dict):
        raise _refuse(path, "its program (models/model.json) is not a JSON object")
    for key, value in _walk(program):
        if key == "expr_str" and not (isinstance(value, str) and _plain_expr(value)):
            raise _refuse(
                path,
                f"a shape expression {str(value)[:60]!r} is not a plain symbolic size "
                "(torch parses these with sympy's eval)",
            )
        if key == "nodes" and isinstance(value, list):
            for node in value:
                target = node.get("target") if isinstance(node, dict) else None
                if not isinstance(target, str) or not (
                    _ATEN.fullmatch(target) or target in _PY_TARGETS
                ):
                    raise _refuse(
                        path,
                        f"its graph calls {str(target)[:80]!r}, which is not an aten "
                        "operator (torch would call it when the program runs)",
                    )
    for guard in program.get("guards_code") or []:
        if not isinstance(guard, str) or _fully(_GUARD_TOKEN, guard) is None:
            raise _refuse(
                path,
                f"its guard code {str(guard)[:60]!r} is not a plain shape check (torch "
                "turns guards into Python source and runs it)",
            )


def _tensor_records(path: Path, config: Any, folder: str, what: str) -> set[str]:
    """The members a weights/constants config points to; pickled entries are refused."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise _refuse(path, f"its {what} config is not a JSON object with 'config'")
    records = set()
    for fqn, entry in entries.items():
        name = entry.get("path_name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or "/" in name:
            raise _refuse(path, f"{what} {fqn!r} has no plain record name")
        if entry.get("use_pickle"):
            raise _refuse(
                path,
                f"{what} {fqn!r} is stored as a pickle (use_pickle), which torch reads "
                "with a full unpickling load that can run code",
            )
        if not name.startswith(
            pt2.WEIGHT_FILENAME_PREFIX if what == "weight" else pt2.TENSOR_CONSTANT_FILENAME_PREFIX
        ):
            raise _refuse(
                path,
                f"{what} {fqn!r} is stored as {name!r}, a pickled Python object (torch "
                "reads it with pickle.loads)",
            )
        records.add(folder + name)
    return records


def _check_sample_inputs(path: Path, data: bytes) -> None:
    """torch falls back to ``weights_only=False`` when the safe load fails: try it first."""
    if not data:
        return
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # any failure: torch would retry unsafely
        held = refused_objects(exc)
        what = f"hold Python objects ({held})" if held else "cannot be read by a safe load"
        raise _refuse(
            path,
            f"its sample inputs ({pt2.SAMPLE_INPUTS_FILENAME_FORMAT.format(_MODEL)}) "
            f"{what}, and torch retries them with a full unpickling load that can run code",
        ) from None


def _members(path: Path, zf: zipfile.ZipFile) -> tuple[str, dict[str, zipfile.ZipInfo]]:
    """The archive's root folder and its file members by name below it."""
    infos = [i for i in zf.infolist() if not i.is_dir()]
    names = [i.filename for i in infos]
    if not names:
        raise _refuse(path, "the archive is empty")
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise _refuse(path, f"the archive lists {twice!r} twice")
    root = names[0].split("/")[0] + "/"
    outside = [n for n in names if not n.startswith(root)]
    if outside:
        raise _refuse(
            path,
            f"member {outside[0]!r} lies outside the archive folder (the pre-2.8 layout, "
            "which torch reads with unpickling retries)",
        )
    members = {i.filename[len(root) :]: i for i in infos}
    packed = [n for n, i in members.items() if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise _refuse(path, f"member {packed[0]!r} is compressed (torch.export never compresses)")
    return root, members


def _json(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo | None, what: str) -> Any:
    if info is None:
        raise _refuse(path, f"it has no {what}")
    try:
        return json.loads(zf.read(info))
    except ValueError:
        raise _refuse(path, f"its {what} is not valid JSON") from None


def _named(name: str) -> str:
    """Why an unexpected member is refused, for the routes torch would take."""
    legacy = {
        f"{pt2.WEIGHTS_DIR}{_MODEL}.pt": "a legacy pickled weights file",
        f"{pt2.CONSTANTS_DIR}{_MODEL}.pt": "a legacy pickled constants file",
    }
    if name in legacy:
        return f"{legacy[name]} ({name}) that torch reads with a full unpickling load"
    if name.startswith(pt2.AOTINDUCTOR_DIR):
        return f"compiled native code ({name}) that torch would load and run"
    if name.startswith(pt2.MODELS_DIR) or name.startswith(pt2.SAMPLE_INPUTS_DIR):
        return f"a second program ({name}); fairfx writes one"
    return f"an unexpected member {name!r}"


def checked_archive(path: Path) -> io.BytesIO:
    """``path`` checked member by member (see the module docstring), as an in-memory copy of
    the checked members for ``torch.export.load``. Raises FairfxError naming the first
    problem."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise FairfxError(
            f"cannot read {path} as a torch.export program (not a .pt2 zip archive: "
            f"{' '.join(str(exc).split())[:120]}); fairfx.save_pruned writes these files"
        ) from None
    with zf:
        root, members = _members(path, zf)
        fmt = members.get(pt2.ARCHIVE_FORMAT_PATH)
        if fmt is None or zf.read(fmt).decode(errors="replace").strip() != pt2.ARCHIVE_FORMAT_VALUE:
            raise _refuse(path, "it is not a torch.export .pt2 archive (no 'archive_format: pt2')")
        program = _json(
            path,
            zf,
            members.get(pt2.MODELS_FILENAME_FORMAT.format(_MODEL)),
            "program (models/model.json)",
        )
        _check_program(path, program)
        allowed = set(_FIXED)
        for cfg, folder, what in (
            (pt2.WEIGHTS_CONFIG_FILENAME_FORMAT, pt2.WEIGHTS_DIR, "weight"),
            (pt2.CONSTANTS_CONFIG_FILENAME_FORMAT, pt2.CONSTANTS_DIR, "constant"),
        ):
            name = cfg.format(_MODEL)
            config = _json(path, zf, members.get(name), f"{what}s config ({name})")
            allowed |= _tensor_records(path, config, folder, what)
        for name in members:
            if name not in allowed and not name.startswith(pt2.EXTRA_DIR):
                raise _refuse(path, f"it holds {_named(name)}")
        sample = members.get(pt2.SAMPLE_INPUTS_FILENAME_FORMAT.format(_MODEL))
        _check_sample_inputs(path, zf.read(sample) if sample else b"")
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as copy:
            for name, info in members.items():
                copy.writestr(root + name, zf.read(info))
    out.seek(0)
    return out
