"""Regenerate the generated sections of the README and docs/ from the code, so they cannot drift.

    python -m fairfx.apps.readme           # rerun the demo; rewrite every generated section
    python -m fairfx.apps.readme --ops     # only the supported-ops table of docs/ops.md
    python -m fairfx.apps.readme --zoo     # only the zoo section of docs/results.md
    python -m fairfx.apps.readme --tree    # only the module tree of docs/architecture.md
    python -m fairfx.apps.readme --check   # exit 1 when the ops, zoo or tree section is stale

A generated section sits between ``<!-- fairfx:NAME:start -->`` and ``<!-- fairfx:NAME:end -->``
lines; everything outside the markers is left as written. The ops table is built from the rule
tables in :mod:`fairfx.engine.rules` (one row per rule function, listing every op it serves), so
adding a rule changes the table on the next run and ``tests/test_readme.py`` fails until then.
The demo section (README) is the text :mod:`fairfx.apps.demo` prints, from a fresh run; the zoo
section is made from the sweep's rows file by :mod:`fairfx.apps.zoo_results`; the tree from the
modules' docstrings by :mod:`fairfx.apps.module_tree`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..files import atomic_path, write_text
from .module_tree import module_tree
from .ops_table import ops_table
from .zoo_results import ROWS_FILE, zoo_section

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# Each generated section and the file that holds it.
SECTION_FILES = {
    "demo": README,
    "ops": ROOT / "docs" / "ops.md",
    "zoo": ROOT / "docs" / "results.md",
    "tree": ROOT / "docs" / "architecture.md",
}
DEMO_PLOT = "benchmarks/results/demo_kept_channels.png"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- fairfx:{name}:start -->", f"<!-- fairfx:{name}:end -->"


def section(text: str, name: str) -> str:
    """The generated text of section ``name`` in ``text`` (without the marker lines)."""
    start, end = _markers(name)
    found = re.search(re.escape(start) + r"\n(.*?)\n?" + re.escape(end), text, re.S)
    if found is None:
        raise ValueError(f"no {start} ... {end} section")
    return found.group(1).rstrip("\n")


def replace_section(text: str, name: str, body: str) -> str:
    start, end = _markers(name)
    section(text, name)  # the markers must be there
    pattern = re.escape(start) + r"\n.*?" + re.escape(end)
    return re.sub(pattern, lambda _: f"{start}\n{body.rstrip()}\n{end}", text, count=1, flags=re.S)


def demo_section(
    result: dict[str, Any], printed: str, seconds: float, load: float | None = None
) -> str:
    acc = result["accuracy_test"]
    if acc["fine_tuned"] > acc["original"]:
        verdict = (
            "The fine-tuned model beats the original here because the short SGD fine-tune also "
            "trains further."
        )
    else:
        verdict = (
            f"Fine-tuning recovers {acc['fine_tuned'] - acc['one_shot']:+.3f} of test accuracy "
            f"over the one-shot prune ({acc['fine_tuned'] - acc['original']:+.3f} against the "
            "original)."
        )
    return "\n".join(
        [
            f"A run of `make demo` ({seconds:.0f} s wall on the 2-core development machine"
            f"{_load_note(load)}; training is cached after the first run; the test split is "
            "held out from training, calibration and fine-tuning), written here by "
            "`python -m fairfx.apps.readme`:",
            "",
            "```",
            printed.strip(),
            "```",
            "",
            f"{verdict} {_latency_note(result)} Kept channels per group:",
            "",
            f"![kept channels per group]({DEMO_PLOT})",
        ]
    )


def _latency_note(result: dict[str, Any]) -> str:
    """What the latency rows of this run say, counted from the run itself."""
    rows = result.get("latency_ms", {})
    faster = sum(1 for r in rows.values() if r["pruned"] < r["original"])
    return (
        f"At 32x32 the convolutions dominate the forward pass, so removing MACs removes time: "
        f"the pruned model was faster in {faster} of {len(rows)} latency settings of this run "
        "(eager and compiled, batch 1 and 8; the two models alternate, so read the ratios)."
    )


def _load_note(load: float | None) -> str:
    """The machine's load when the run started, so a reader can judge the latency rows."""
    return "" if load is None else f", 1-minute load average {load:.1f} when it started"


class _Tee(io.StringIO):
    """Keeps what the demo prints and still shows it."""

    def write(self, text: str) -> int:
        sys.__stdout__.write(text)
        return super().write(text)


def run_demo(argv: Iterable[str] = ()) -> str:
    """Run the demo as ``make demo`` does; its section text, with the plot copied in place."""
    from . import demo

    args = demo.parser().parse_args(list(argv))
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    tee = _Tee()
    with contextlib.redirect_stdout(tee):
        result = demo.run(args)
    seconds = time.perf_counter() - start
    printed = "\n".join(
        line for line in tee.getvalue().splitlines() if not line.startswith("wrote ")
    )
    plot = Path(args.out) / "kept_channels.png"
    with atomic_path(ROOT / DEMO_PLOT) as tmp:
        shutil.copyfile(plot, tmp)
    return demo_section(result, printed, seconds, load)


def generated() -> dict[str, Any]:
    """Section name -> a function making its text (the demo's is run separately)."""
    return {"ops": ops_table, "zoo": lambda: zoo_section(ROOT), "tree": module_tree}


def stale_sections() -> list[str]:
    return [
        name
        for name, make in generated().items()
        if section(SECTION_FILES[name].read_text(), name) != make()
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Regenerate the generated sections of README and docs")
    p.add_argument("--ops", action="store_true", help="only the supported-ops table (no demo)")
    p.add_argument("--zoo", action="store_true", help=f"only the zoo section (from {ROWS_FILE})")
    p.add_argument("--tree", action="store_true", help="only the module tree")
    p.add_argument("--check", action="store_true", help="exit 1 if a generated part is stale")
    args = p.parse_args(argv)
    if args.check:
        stale = stale_sections()
        print(
            "".join(f"{SECTION_FILES[n].relative_to(ROOT)}'s {n} section is stale: run "
                    f"python -m fairfx.apps.readme --{n}\n" for n in stale)
            or "the generated sections match the code and the sweep's rows"
        )  # fmt: skip
        return 1 if stale else 0
    only = [n for n in generated() if getattr(args, n)]
    makers = {n: m for n, m in generated().items() if not only or n in only}
    if not only:
        makers["demo"] = run_demo
    for name, make in makers.items():
        path = SECTION_FILES[name]
        text = path.read_text()
        new = replace_section(text, name, make())
        if new != text:
            write_text(path, new)
            print(f"rewrote the {name} section of {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
