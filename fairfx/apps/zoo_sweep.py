"""Run the zoo sweep one model per worker process, for long runs on a small shared machine.

Why a process per model: a model that exhausts memory or crashes takes only its own row down, and
the memory a 600M-parameter model held goes back to the machine before the next model starts.
Each worker prints its row after the random-plan column and again after the FAIR column; the
parent appends the last row it saw to the JSON-lines file as soon as the worker ends, so an
interrupted sweep keeps every finished model and ``--resume`` skips them.

A model that runs out of time (wall clock or CPU seconds) or memory gets a row that says so in the
column that did not finish: a failure row, never a silent gap. Workers ask the kernel to pick
them first when memory runs out (``oom_score_adj``) and the parent stops a worker when the
machine's available memory falls below a floor, so the sweep never pushes other programs out.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .zoo_results import ZooResult, append_row, failures, load_rows

ROW_TAG = "ZOO-ROW "  # a worker's stdout line carrying its row as JSON


def available_memory_gb() -> float | None:
    """MemAvailable from /proc/meminfo (None where there is no such file)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        return out.stdout.strip()
    except OSError:
        return ""


def _last_row(stdout: str, name: str) -> ZooResult | None:
    rows = [line[len(ROW_TAG) :] for line in stdout.splitlines() if line.startswith(ROW_TAG)]
    if not rows:
        return None
    result = ZooResult.from_dict(json.loads(rows[-1]))
    return result if result.name == name else None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)  # the worker leads its own session


def emit(result: ZooResult) -> None:
    """Called in a worker: hand the row as it stands to the parent (the last one counts)."""
    print(ROW_TAG + result.to_json(), flush=True)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)  # the sweep is gone: so is its worker


def _child(work: Callable[[str], None], name: str, out: int, err: int, cpu_limit: int) -> None:
    """The forked worker: its own session and output files, first in line for the kernel's
    out-of-memory killer (not a neighbour's process), a CPU limit; it ends with the sweep."""
    code = 1
    try:
        os.setsid()
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (the child ends with os._exit)
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
        if cpu_limit:
            resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit, cpu_limit + 30))
        threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
        work(name)
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


@dataclass
class _Running:
    """A worker in flight: its model, process, start time and output files."""

    name: str
    pid: int
    start: float
    out: IO[str]
    err: IO[str]
    stopped: str = ""  # why the parent stopped it, if it did

    def rss_gb(self) -> float:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
        except OSError:
            pass
        return 0.0

    def stop(self, why: str) -> None:
        if not self.stopped:
            self.stopped = why
            _stop(self.pid)


def _start(work: Callable[[str], None], name: str, cpu_limit: int) -> _Running:
    """Fork a worker for ``name``. Forked rather than started afresh: the worker inherits the
    imported torch and torchvision (about 5 CPU-seconds a model saved on the 2-core machine),
    and the parent runs no model, so it has no model memory to pass on."""
    # Closed by _finish (or the sweep's cleanup): the worker outlives this call.
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # noqa: SIM115
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(work, name, out.fileno(), err.fileno(), cpu_limit)
    return _Running(name, pid, time.monotonic(), out, err)


def _finish(w: _Running, status: int, usage: Any, cpu_limit: int, fair: bool) -> ZooResult:
    """The row of a worker that ended, with the reason it stopped if it did."""
    rc = os.waitstatus_to_exitcode(status)
    w.out.seek(0)
    w.err.seek(0)
    stdout, stderr = w.out.read(), w.err.read()
    w.out.close()
    w.err.close()
    result = _last_row(stdout, w.name) or ZooResult(w.name)
    result.worker_seconds = time.monotonic() - w.start
    result.cpu_seconds = usage.ru_utime + usage.ru_stime
    result.peak_rss_mb = usage.ru_maxrss / 1024  # KiB on Linux
    if w.stopped or rc != 0:
        peak = f"{result.peak_rss_mb / 1024:.1f} GiB peak resident"
        if w.stopped:
            reason = f"{w.stopped} ({peak})"
        elif rc == -signal.SIGXCPU:
            reason = f"timeout: over the {cpu_limit} CPU-second limit"
        elif rc == -signal.SIGKILL:
            reason = f"killed by SIGKILL, likely out of memory ({peak})"
        else:
            reason = f"worker exited with status {rc}: {_last_line(stderr)}"
        if result.handled and fair and not (result.fair_done or result.fair_error):
            result.fair_run, result.fair_error = True, reason
            result.fair_seconds = result.worker_seconds - result.seconds
        elif not (result.handled or result.error):
            result.error = reason
            result.seconds = result.worker_seconds
    return result


def run_one(name: str, work: Callable[[str], None], **options: Any) -> ZooResult:
    """``work(name)`` in a forked worker, which reports its row through :func:`emit`; the row,
    with the reason the worker stopped if it did. ``options`` as for :func:`sweep`."""
    return sweep([name], work, out=None, log=lambda _: None, **options)[0]


def sweep(
    names: Iterable[str],
    work: Callable[[str], None],
    *,
    out: str | None,
    resume: bool = False,
    retry: bool = False,
    jobs: int = 1,
    timeout: float = 3600,
    cpu_limit: int = 0,
    min_free_gb: float = 0.0,
    start_free_gb: float = 4.0,
    fair: bool = True,
    log: Callable[[str], None] = print,
) -> list[ZooResult]:
    """Every model in its own worker, up to ``jobs`` at once; rows appended to ``out`` (JSON
    lines) as they finish. ``resume`` skips the models ``out`` already has (``retry``: only
    those whose row has no failure). A second worker starts only while ``start_free_gb`` of
    memory is available; below ``min_free_gb`` the largest worker is stopped, with that reason
    in its row."""
    names = list(names)
    rows = load_rows(out) if resume and out and Path(out).is_file() else {}
    done = {n: r for n, r in rows.items() if not (retry and failures(r))}
    commit = _commit()
    results: dict[str, ZooResult] = {}
    pending = deque(n for n in names if n not in done)
    running: list[_Running] = []
    for i, name in enumerate(names, 1):
        if name in done:
            results[name] = done[name]
            log(f"[{i}/{len(names)}] {name}: done before, skipped (--resume)")
    try:
        while pending or running:
            while pending and len(running) < jobs:
                free = available_memory_gb()
                if running and free is not None and free < start_free_gb:
                    break
                running.append(_start(work, pending.popleft(), cpu_limit))
            free = available_memory_gb()
            if running and free is not None and free < min_free_gb:
                max(running, key=_Running.rss_gb).stop(
                    f"stopped: the machine's available memory fell below {min_free_gb} GiB"
                )
            for w in list(running):
                if time.monotonic() - w.start > timeout:
                    w.stop(f"timeout: stopped after {timeout:.0f} s wall")
                pid, status, usage = os.wait4(w.pid, os.WNOHANG)
                if not pid:
                    continue
                running.remove(w)
                r = results[w.name] = _finish(w, status, usage, cpu_limit, fair)
                r.commit = commit
                if out:
                    append_row(out, r)
                log(_progress(r, len(results), len(names)))
            time.sleep(0.2)
    finally:  # Ctrl-C or an error here: no worker outlives the sweep
        for w in running:
            _stop(w.pid)
            os.waitpid(w.pid, 0)
            w.out.close()
            w.err.close()
    return [results[n] for n in names]


def _progress(r: ZooResult, count: int, total: int) -> str:
    return (
        f"[{count}/{total}] {r.name}: random handled={r.handled} exact={r.oracle_exact} "
        f"export={r.exported} | FAIR done={r.fair_done} exact={r.fair_exact} "
        f"export={r.fair_exported} after={r.fair_params_after}/{r.params_before} | "
        f"{r.worker_seconds:.0f} s wall, {r.cpu_seconds:.0f} s CPU, "
        f"{r.peak_rss_mb / 1024:.1f} GiB | {r.error} {r.fair_error}"
    ).rstrip()
