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
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

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


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the worker leads its own session


def worker_command(cpu_limit: int, flags: Iterable[str] = ()) -> list[str]:
    """The command that runs one model (its name appended) in a worker process."""
    return [
        sys.executable, "-m", "fairfx.apps.zoo", "--worker", "--cpu-limit", str(cpu_limit), *flags
    ]  # fmt: skip


def run_one(
    name: str,
    cmd: list[str],
    *,
    timeout: float,
    cpu_limit: int = 0,
    min_free_gb: float = 0.0,
    fair: bool = True,
) -> ZooResult:
    """One model in a fresh worker process (``cmd`` + ``[name]``); its row, with the reason it
    stopped if it did. ``cpu_limit`` only names the limit the worker set itself."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([*cmd, name], stdout=out, stderr=err, start_new_session=True)
        start, stopped, status, usage, pid = time.monotonic(), "", 0, None, 0
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                free = available_memory_gb()
                if not stopped and time.monotonic() - start > timeout:
                    stopped = f"timeout: stopped after {timeout:.0f} s wall"
                elif not stopped and free is not None and free < min_free_gb:
                    stopped = (
                        f"stopped: the machine's available memory fell below {min_free_gb} GiB"
                    )
                if stopped:
                    _stop(proc)
                time.sleep(0.5)
        finally:  # Ctrl-C or an error here: the worker must not outlive the sweep
            if not pid:
                _stop(proc)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    result = _last_row(stdout, name) or ZooResult(name)
    result.worker_seconds = time.monotonic() - start
    result.cpu_seconds = usage.ru_utime + usage.ru_stime
    result.peak_rss_mb = usage.ru_maxrss / 1024  # KiB on Linux
    rc = proc.returncode
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
            result.fair_seconds = time.monotonic() - start - result.seconds
        elif not (result.handled or result.error):
            result.error = reason
            result.seconds = time.monotonic() - start
    return result


def sweep(
    names: Iterable[str],
    cmd: list[str],
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
            name, cmd, timeout=timeout, cpu_limit=cpu_limit, min_free_gb=min_free_gb,
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
