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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .zoo_results import ZooResult, append_row, load_rows

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


def _wait(pid: int, start: float, timeout: float, min_free_gb: float) -> tuple[int, Any, str]:
    """Wait for the worker; stop it past ``timeout`` or when memory runs low. ``(exit code,
    resource usage, why it was stopped or "")``."""
    stopped, done = "", 0
    try:
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status), usage, stopped
            free = available_memory_gb()
            if not stopped and time.monotonic() - start > timeout:
                stopped = f"timeout: stopped after {timeout:.0f} s wall"
            elif not stopped and free is not None and free < min_free_gb:
                stopped = f"stopped: the machine's available memory fell below {min_free_gb} GiB"
            if stopped:
                _stop(pid)
            time.sleep(0.5)
    finally:  # Ctrl-C or an error here: the worker must not outlive the sweep
        if not done:
            _stop(pid)
            os.waitpid(pid, 0)


def run_one(
    name: str,
    work: Callable[[str], None],
    *,
    timeout: float,
    cpu_limit: int = 0,
    min_free_gb: float = 0.0,
    fair: bool = True,
) -> ZooResult:
    """``work(name)`` in a forked worker process, which reports its row through :func:`emit`;
    the row, with the reason the worker stopped if it did.

    Forked rather than started afresh: the worker inherits the imported torch and torchvision
    (about 5 CPU-seconds a model on the 2-core machine saved) and the parent runs no model, so
    it holds no model memory to pass on."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        sys.stdout.flush()
        sys.stderr.flush()
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(work, name, out.fileno(), err.fileno(), cpu_limit)
        rc, usage, stopped = _wait(pid, start, timeout, min_free_gb)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    result = _last_row(stdout, name) or ZooResult(name)
    result.worker_seconds = time.monotonic() - start
    result.cpu_seconds = usage.ru_utime + usage.ru_stime
    result.peak_rss_mb = usage.ru_maxrss / 1024  # KiB on Linux
    if stopped or rc != 0:
        peak = f"{result.peak_rss_mb / 1024:.1f} GiB peak resident"
        if stopped:
            reason = f"{stopped} ({peak})"
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


def sweep(
    names: Iterable[str],
    work: Callable[[str], None],
    *,
    out: str | None,
    resume: bool = False,
    timeout: float = 3600,
    cpu_limit: int = 0,
    min_free_gb: float = 0.0,
    fair: bool = True,
    log: Callable[[str], None] = print,
) -> list[ZooResult]:
    """Every model in its own worker; rows appended to ``out`` (JSON lines) as they finish."""
    names = list(names)
    done = load_rows(out) if resume and out and Path(out).is_file() else {}
    commit = _commit()
    results = []
    for i, name in enumerate(names, 1):
        if name in done:
            results.append(done[name])
            log(f"[{i}/{len(names)}] {name}: done before, skipped (--resume)")
            continue
        r = run_one(
            name, work, timeout=timeout, cpu_limit=cpu_limit, min_free_gb=min_free_gb,
            fair=fair,
        )  # fmt: skip
        r.commit = commit
        if out:
            append_row(out, r)
        results.append(r)
        log(
            f"[{i}/{len(names)}] {name}: random handled={r.handled} exact={r.oracle_exact} "
            f"export={r.exported} | FAIR done={r.fair_done} exact={r.fair_exact} "
            f"export={r.fair_exported} after={r.fair_params_after}/{r.params_before} | "
            f"{r.worker_seconds:.0f} s wall, {r.cpu_seconds:.0f} s CPU, "
            f"{r.peak_rss_mb / 1024:.1f} GiB | {r.error} {r.fair_error}".rstrip()
        )
    return results
