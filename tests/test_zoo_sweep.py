"""The zoo sweep's runner: a model that hangs, crashes or fails leaves a row saying so, rows reach
the file as models finish, ``--resume`` skips them. Fake workers (forked like the real one) stand
in for the model checks so these run in seconds."""

from __future__ import annotations

import os
import signal
import time

import pytest

from fairfx.apps.zoo_results import (
    ZooResult,
    append_row,
    format_table,
    load_rows,
    readme_section,
    summary,
)
from fairfx.apps.zoo_sweep import emit, run_one, sweep
from fairfx.errors import FairfxError


def _random_done(name: str) -> ZooResult:
    return ZooResult(name, handled=True, oracle_exact=True, exported=True, params_before=10,
                     params_after=5, seconds=0.1)  # fmt: skip


def _fair_done(name: str, kept: int = 5) -> ZooResult:
    r = _random_done(name)
    r.fair_run = r.fair_done = r.fair_exact = r.fair_exported = True
    r.fair_params_after = kept
    return r


def _hangs(name: str) -> None:
    emit(_random_done(name))
    time.sleep(60)


def _killed(name: str) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _crashes(name: str) -> None:
    emit(_random_done(name))
    raise RuntimeError("boom: out of ideas")


def _burns_cpu(name: str) -> None:
    emit(_random_done(name))
    while True:
        pass


def test_a_hanging_fair_path_is_a_timeout_row_with_the_random_column_kept() -> None:
    r = run_one("m", _hangs, timeout=1.0)
    assert r.handled and r.oracle_exact and r.exported  # the random column survived
    assert r.fair_run and not r.fair_done
    assert r.fair_error.startswith("timeout: stopped after 1 s wall"), r.fair_error
    assert r.worker_seconds < 30 and "FAIR: timeout" in format_table([r])


def test_a_worker_over_its_cpu_limit_is_a_timeout_row() -> None:
    r = run_one("m", _burns_cpu, timeout=60, cpu_limit=1)
    assert r.handled and r.fair_error == "timeout: over the 1 CPU-second limit"
    assert r.cpu_seconds > 0.5  # the kernel counts CPU time in ticks


def test_a_worker_killed_before_any_row_is_a_failure_row() -> None:
    r = run_one("m", _killed, timeout=30)
    assert not r.handled and "killed by SIGKILL" in r.error
    assert r.peak_rss_mb > 0


def test_a_crash_names_the_last_line_of_its_error_output() -> None:
    r = run_one("m", _crashes, timeout=30)
    assert r.handled
    assert r.fair_error == "worker exited with status 1: RuntimeError: boom: out of ideas"


def test_a_finished_worker_row_is_taken_as_it_is() -> None:
    r = run_one("m", lambda name: emit(_fair_done(name)), timeout=30)
    assert r.fair_done and r.fair_exact and r.fair_exported and not r.fair_error
    assert summary([r]) == (
        "random half: handled 1/1, oracle-exact 1/1, exported 1/1; "
        "FAIR: compressed 1/1, oracle-exact 1/1, exported 1/1"
    )


def test_rows_reach_the_file_and_resume_skips_them(tmp_path) -> None:
    out = tmp_path / "zoo.jsonl"
    first = sweep(["a", "b"], lambda n: emit(_fair_done(n, 4)), out=str(out), log=lambda _: None)
    assert [r.name for r in first] == ["a", "b"] and len(out.read_text().splitlines()) == 2

    def fails(name: str) -> None:
        raise SystemExit("ran again")

    # The models already in the file are not run again.
    again = sweep(["a", "b", "c"], fails, out=str(out), resume=True, log=lambda _: None)
    assert [r.fair_params_after for r in again[:2]] == [4, 4]
    assert again[2].error == "worker exited with status 1: SystemExit: ran again"
    assert set(load_rows(out)) == {"a", "b", "c"}


def test_a_half_written_last_line_is_ignored_and_a_later_row_wins(tmp_path) -> None:
    out = tmp_path / "zoo.jsonl"
    append_row(out, ZooResult("a", error="first"))
    append_row(out, ZooResult("a", handled=True))
    with open(out, "a") as f:
        f.write('{"name": "b", "hand')
    rows = load_rows(out)
    assert set(rows) == {"a"} and rows["a"].handled and not rows["a"].error
    with pytest.raises(FairfxError, match="does not exist"):
        load_rows(tmp_path / "missing.jsonl")


def test_the_table_gives_every_failure_its_reason() -> None:
    rows = [
        ZooResult("ok", groups=3, prunable=2, handled=True, oracle_exact=True, exported=True,
                  params_before=100, params_after=40, fair_run=True, fair_done=True,
                  fair_exact=True, fair_exported=True, fair_params_after=50),
        ZooResult("capture_fails", error="FairfxError: cannot trace | here", fair_run=False),
        ZooResult("fair_fails", handled=True, oracle_exact=True, exported=True,
                  params_before=100, params_after=40, fair_run=True,
                  fair_error="RuntimeError: bad"),
    ]  # fmt: skip
    table = format_table(rows)
    assert "| ok | 3 (2) | 0.00M -> 0.00M | exact | yes | 0.00M (50%) | exact | yes |" in table
    assert "cannot trace \\| here" in table  # a pipe in a reason does not break the row
    assert "FAIR: RuntimeError: bad" in table
    assert "not run" not in table
    assert summary(rows).endswith("FAIR: compressed 1/3, oracle-exact 1/3, exported 1/3")


def test_the_readme_section_counts_every_model_and_names_every_gap() -> None:
    ok = _fair_done("ok")
    ok.worker_seconds, ok.cpu_seconds, ok.peak_rss_mb, ok.commit = 60.0, 30.0, 2048.0, "abc1234"
    bad = _random_done("bad")
    bad.fair_run, bad.fair_error = True, "timeout: stopped after 9 s wall"
    text = readme_section({"ok": ok, "bad": bad}, ["ok", "bad", "gone"])
    assert text.startswith(
        "**random half: handled 2/3, oracle-exact 2/3, exported 2/3; "
        "FAIR: compressed 1/3, oracle-exact 1/3, exported 1/3**"
    )
    assert "- bad: FAIR: timeout: stopped after 9 s wall" in text
    assert "for 1 models (the sweep did not reach them): gone" in text
    assert "kept 50.0%-50.0%" in text and "2.0 GiB (ok)" in text and "`abc1234` 1" in text
    assert "| ok |" in text and "| 60 (30) |" in text and "not run" not in text


def test_jobs_run_models_at_once_and_keep_the_order(tmp_path) -> None:
    def slow(name: str) -> None:
        time.sleep(1.0)
        emit(_fair_done(name))

    start = time.monotonic()
    rows = sweep(list("abcd"), slow, out=None, jobs=4, start_free_gb=0.0, log=lambda _: None)
    assert [r.name for r in rows] == list("abcd") and all(r.fair_done for r in rows)
    assert time.monotonic() - start < 3.5  # four 1-second workers side by side, not in turn


def test_retry_reruns_only_the_failed_rows(tmp_path) -> None:
    out = tmp_path / "zoo.jsonl"
    append_row(out, _fair_done("good"))
    append_row(out, ZooResult("bad", error="timeout: stopped after 9 s wall"))
    ran = []

    def work(name: str) -> None:
        emit(_fair_done(name))

    rows = sweep(["good", "bad"], work, out=str(out), resume=True, retry=True,
                 log=ran.append)  # fmt: skip
    assert "skipped" in ran[0] and ran[0].startswith("[1/2] good")
    assert rows[1].fair_done and load_rows(out)["bad"].fair_done


def test_the_largest_worker_is_stopped_when_memory_runs_low(monkeypatch, tmp_path) -> None:
    # Memory runs low only once the worker has handed over its random column: on a loaded
    # machine the sweep's first check can come before the forked worker has run at all.
    handed_over = tmp_path / "random-column-sent"

    def hangs_after_the_random_column(name: str) -> None:
        emit(_random_done(name))
        handed_over.touch()
        time.sleep(60)

    monkeypatch.setattr(
        "fairfx.apps.zoo_sweep.available_memory_gb",
        lambda: 0.5 if handed_over.exists() else 64.0,
    )
    r = run_one("m", hangs_after_the_random_column, timeout=30, min_free_gb=1.0)
    assert r.handled and r.fair_error.startswith(
        "stopped: the machine's available memory fell below 1.0 GiB"
    )
