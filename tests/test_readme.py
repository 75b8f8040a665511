"""The README says what the code does: its ops table is the rule table, its references exist."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch

from fairfx.apps import ops_table, readme
from fairfx.apps.zoo_results import ROWS_FILE, zoo_section
from fairfx.engine import rules

ROOT = Path(__file__).resolve().parents[1]


def test_readme_ops_table_is_the_rule_table() -> None:
    written = readme.section((ROOT / "README.md").read_text(), "ops")
    assert written == readme.ops_table(), (
        "README.md's supported-ops table disagrees with fairfx/engine/rules/: run "
        "`python -m fairfx.apps.readme --ops` and commit the README"
    )


def test_readme_zoo_section_is_the_sweep_file() -> None:
    written = readme.section((ROOT / "README.md").read_text(), "zoo")
    assert written == zoo_section(ROOT), (
        f"README.md's zoo section disagrees with {ROWS_FILE}: run "
        "`python -m fairfx.apps.readme --zoo` and commit the README"
    )


def test_the_check_fails_when_a_rule_is_added_or_removed(monkeypatch) -> None:
    written = readme.section((ROOT / "README.md").read_text(), "ops")
    monkeypatch.setitem(rules.FUNCTION_RULES, torch.roll, rules.FUNCTION_RULES[torch.neg])
    assert readme.ops_table() != written  # `torch.roll` moves from blocking to pass-through
    monkeypatch.undo()
    monkeypatch.delitem(rules.MODULE_RULES, torch.nn.GroupNorm)
    assert readme.ops_table() != written
    assert "`nn.GroupNorm`" not in readme.ops_table()


def test_every_op_with_a_rule_is_listed_and_no_listed_blocker_has_one() -> None:
    table = readme.ops_table()
    for cls in rules.MODULE_RULES:
        assert ops_table._module_name(cls) in table, cls
    for fn in rules.FUNCTION_RULES:
        assert ops_table._function_name(fn) in table, fn
    for method in rules.METHOD_RULES:
        assert f"`.{method}()`" in table, method
    blocking = table.splitlines()[-1]
    assert blocking.startswith("| anything else |")
    assert "MultiheadAttention" not in blocking and "`nn.MultiheadAttention`" in table
    assert "`torch.roll`" in blocking  # no rule: it blocks


def test_unknown_rules_still_get_a_row(monkeypatch) -> None:
    def my_rule(a, node):
        """Made-up rule for a test."""

    monkeypatch.setitem(rules.FUNCTION_RULES, torch.roll, my_rule)
    assert "| other | `torch.roll` | Made-up rule for a test. |" in readme.ops_table()
    monkeypatch.setitem(rules.FUNCTION_RULES, torch.roll, functools.partial(my_rule))
    assert "| other | `torch.roll` | Made-up rule for a test. |" in readme.ops_table()


def _doc_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml"]
    for folder in ("fairfx", "benchmarks", "tests"):
        files += sorted((ROOT / folder).rglob("*.py")) + sorted((ROOT / folder).rglob("*.md"))
    return [f for f in files if f.is_file()]


def test_doc_references_point_inside_the_repo() -> None:
    names = {p.name for p in ROOT.rglob("*") if ".git" not in p.parts}
    problems = []
    for path in _doc_files():
        text = path.read_text(errors="replace")
        for ref in re.findall(r"[\w./-]*\b[\w-]+\.md\b", text):
            target = ref.lstrip("./")
            found = (ROOT / target).exists() or (path.parent / ref).exists()
            if not found and ("/" in target or Path(target).name not in names):
                problems.append(f"{path.relative_to(ROOT)}: {ref}")
        for outside in ("/work/shared", "../shared"):
            if outside in text and path.name != Path(__file__).name:
                problems.append(f"{path.relative_to(ROOT)}: {outside}")
    assert not problems, problems


@pytest.mark.parametrize("needle", ["save_pruned", "load_pruned"])
def test_quick_start_saves_with_a_dynamic_batch(needle) -> None:
    text = (ROOT / "README.md").read_text()
    code = text[text.index("## Use it from Python") : text.index("## How it works")]
    assert needle in code
    # A plain torch.export.export(pruned, (x,)) fixes the batch size: the .pt2 rejects batch 1.
    for line in code.splitlines():
        if "torch.export.export(" in line:
            assert "dynamic_shapes" in line, line
