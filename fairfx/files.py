"""Files: loads that cannot run code, writes that cannot lose data, paths that cannot clash.

Scores files and calibration states are meant to be shared, and a pickle runs code while it is
read, before any format check could refuse it. Every fairfx load therefore goes through
``torch.load(weights_only=True)``, which rebuilds tensors and plain containers only, and fairfx
saves nothing else: payloads are dicts of tensors, str, int, float, bool, None, lists, tuples and
dicts, tagged with a format string checked on load.

Every output is first written to a temporary file in the target's own folder and renamed over
the target (``os.replace`` is atomic on one file system): an interrupted write (Ctrl-C, a full
disk, an exception in the writer) leaves the previous file intact and no temporary file behind,
and two runs writing one path each leave a complete file.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
import pickle
import pickletools
import re
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import FairfxError

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------- safe loads
def safe_load(path: PathLike, what: str, fix: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; any failure is one FairfxError line.

    ``what`` names the expected content ("a fairfx scores file"), ``fix`` says how to get a good
    file. A file holding Python objects other than tensors and plain containers is refused
    without running anything.
    """
    p = Path(path)
    if not p.is_file():
        raise FairfxError(f"{p} does not exist or is not a file; {fix}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        held = refused_objects(exc) or _raw_pickle_globals(p)
        if held is None:  # a broken stream, not a refused object
            detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(exc))
            text = detail.group(1).strip() if detail else _short(exc)
            raise FairfxError(
                f"cannot read {p} as {what} (not a file torch.save wrote, or damaged: {text}); "
                f"{fix}"
            ) from None
        raise FairfxError(
            f"{p} is not {what}: it holds Python objects ({held}) that a safe load "
            f"(torch.load weights_only=True) refuses to run; {fix}"
        ) from None
    except Exception as exc:  # not a torch file, truncated, ...
        raise FairfxError(f"cannot read {p} as {what} ({_short(exc)}); {fix}") from None


# torch 2.14 words a refused global in two ways: an unknown one, and one from a blocked module.
_REFUSED = (
    re.compile(r"Unsupported global: GLOBAL (\S+)"),
    re.compile(r"unsupported GLOBAL (\S+) whose module"),
)


def refused_objects(exc: BaseException) -> str | None:
    """The Python object a ``weights_only`` load refused (``"posix.system"``), or None when
    the error is not such a refusal."""
    for pattern in _REFUSED:
        found = pattern.search(str(exc))
        if found:
            return found.group(1)
    return None


def _raw_pickle_globals(path: Path) -> str | None:
    """The globals a plain ``pickle.dumps`` file names (torch's safe loader stops at its first
    opcode it does not know, before reading them); found by listing opcodes, nothing runs."""
    try:
        with path.open("rb") as f:
            data = f.read(1 << 20)
        names, strings = [], []
        for op, arg, _ in pickletools.genops(data):
            if isinstance(arg, str):
                strings.append(arg)
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(".".join(strings[-2:]))
    except Exception:  # not a pickle stream: no objects to name
        return None
    return ", ".join(dict.fromkeys(names)) or None


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def load_payload(path: PathLike, fmt: str, what: str, fix: str) -> dict[str, Any]:
    """A safe load of a fairfx payload: a dict whose ``"format"`` is ``fmt``."""
    payload = safe_load(path, what, fix)
    found = payload.get("format") if isinstance(payload, dict) else None
    if found != fmt:
        held = f"format {found!r}" if isinstance(found, str) else f"a {type(payload).__name__}"
        raise FairfxError(f"{path} is not {what}: it holds {held}, expected {fmt!r}; {fix}")
    return payload


def plain(value: Any) -> Any:
    """``value`` as containers a safe load accepts: numpy arrays become tensors, numpy scalars
    and paths Python values; anything else unknown becomes its ``str`` (metadata only)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {k if isinstance(k, (str, int)) else str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [plain(v) for v in value]
        return tuple(items) if type(value) is tuple else items
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def json_default(value: Any) -> Any:
    """``json.dumps(default=...)`` for reports and the metadata inside a ``.pt2``: arrays and
    tensors as lists, numpy scalars and paths as Python values, anything else as its ``str``."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-1 of a module's state (names, shapes, values): scores saved for one set of weights
    are valid for it only, and a file records which one."""
    h = hashlib.sha1()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        t = v.detach().cpu().contiguous().reshape(-1)  # raw bytes: bfloat16 has no numpy
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ------------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` when the block ends.

    The temporary name keeps the target's extension (writers such as matplotlib and
    ``torch.export.save`` look at it). On any exception, KeyboardInterrupt and SIGTERM
    included, the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    if not target.parent.is_dir():
        raise FairfxError(
            f"cannot write {target}: folder {target.parent} does not exist; create it first"
        )
    with _sigterm_cleans_up():
        fd, name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name}.", suffix=f".tmp{target.suffix}"
        )
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            _set_mode(tmp, target)
            batch = _TOGETHER.get()
            if batch is not None and target.resolve() in batch[0]:
                batch[1][target.resolve()] = tmp  # renamed with the others at the end
            else:
                os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program was, so cleanups run as for Ctrl-C."""


def raise_terminated(signum: int, frame: object) -> None:
    """A SIGTERM handler: raise :class:`Terminated`."""
    raise Terminated


@contextlib.contextmanager
def _sigterm_cleans_up() -> Iterator[None]:
    """While a file is written, a SIGTERM that nothing else handles raises Terminated, so the
    temporary file is removed; the process then ends by SIGTERM as it would have. (A program
    with its own handler, the CLI's included, keeps it.)"""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    ):
        yield
        return
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    except Terminated:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


_TOGETHER: contextvars.ContextVar[tuple[set[Path], dict[Path, Path]] | None] = (
    contextvars.ContextVar("fairfx_outputs_together", default=None)
)


@contextlib.contextmanager
def outputs_together(paths: Iterable[PathLike | None]) -> Iterator[None]:
    """Within the block, writes to ``paths`` (through :func:`atomic_path`) stay temporary
    files; they replace their targets together when the block ends normally, and are removed
    when it ends by an exception or an interrupt. A run stopped between two outputs so leaves
    the old set (the old program with the old report), never a mix. Interrupts are held back
    during the renames, which take microseconds."""
    batch: tuple[set[Path], dict[Path, Path]] = (
        {Path(p).resolve() for p in paths if p is not None},
        {},
    )
    token = _TOGETHER.set(batch)
    try:
        yield
    except BaseException:
        for tmp in batch[1].values():
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise
    else:
        with _signals_held():
            for target, tmp in batch[1].items():
                os.replace(tmp, target)
    finally:
        _TOGETHER.reset(token)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM wait until the block ends (where the platform can hold them)."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _set_mode(tmp: Path, target: Path) -> None:
    """Give the new file the mode a plain ``open(path, "w")`` would (mkstemp makes it 0600)."""
    try:
        mode = target.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    os.chmod(tmp, mode)


def atomic_write(path: PathLike, write: Callable[[Path], Any]) -> None:
    """Call ``write(temporary_path)`` and rename the result over ``path`` (see atomic_path)."""
    with atomic_path(path) as tmp:
        write(tmp)


def save_payload(payload: Mapping[str, Any], path: PathLike) -> None:
    """``torch.save`` of a plain payload (a state_dict is one), atomically."""
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def write_text(path: PathLike, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


# ------------------------------------------------------------------------------ path checks
def check_output(path: PathLike, flag: str) -> Path:
    """Refuse, before any work, an output path that cannot be written: a directory, a missing
    or read-only folder, a read-only existing file."""
    p = Path(path)
    if p.is_dir():
        raise FairfxError(f"{flag} {p} is a directory; give a file name")
    folder = p.parent
    if not folder.is_dir():
        raise FairfxError(f"{flag} {p}: directory {folder} does not exist; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FairfxError(
            f"{flag} {p}: directory {folder} is not writable; choose a folder you can write to"
        )
    if p.exists() and (not os.access(p, os.W_OK) or not p.stat().st_mode & 0o222):
        raise FairfxError(
            f"{flag} {p} exists and is read-only; choose another path or make it writable"
        )
    return p


def _same(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    return folder.is_dir() and folder.resolve() in path.resolve().parents


def check_clashes(
    outputs: Mapping[str, PathLike | None], inputs: Mapping[str, PathLike | None]
) -> None:
    """Refuse an output that is also an input, lies inside an input folder, or equals another
    output (compared by resolved path and by ``os.path.samefile``). Keys are the flags shown
    in the message (``"--out"``); ``None`` values are skipped."""
    outs = [(f, Path(p)) for f, p in outputs.items() if p is not None]
    ins = [(f, Path(p)) for f, p in inputs.items() if p is not None]
    for i, (flag, path) in enumerate(outs):
        for other, opath in outs[:i]:
            if _same(path, opath):
                raise FairfxError(
                    f"{flag} and {other} are the same file ({path}): one would overwrite the "
                    "other; give them different paths"
                )
        for other, ipath in ins:
            if _same(path, ipath):
                raise FairfxError(
                    f"{flag} {path} is also the input {other}: writing it would destroy the "
                    "input; give another output path"
                )
            if _inside(path, ipath):
                raise FairfxError(
                    f"{flag} {path} lies inside the input folder {other} {ipath}: it would "
                    "change the input; write it elsewhere"
                )
