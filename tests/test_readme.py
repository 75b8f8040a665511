"""The README says what the code does: its ops table is the rule table, its references exist."""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest
import torch

from fairfx.apps import ops_table, readme
from fairfx.apps.module_tree import module_tree
from fairfx.apps.zoo_results import ROWS_FILE, zoo_section
from fairfx.engine import rules

ROOT = Path(__file__).resolve().parents[1]


OPS = ROOT / "docs" / "ops.md"


def test_ops_table_is_the_rule_table() -> None:
    written = readme.section(OPS.read_text(), "ops")
    assert written == readme.ops_table(), (
        "docs/ops.md's supported-ops table disagrees with fairfx/engine/rules/: run "
        "`python -m fairfx.apps.readme --ops` and commit it"
    )


def test_zoo_section_is_the_sweep_file() -> None:
    written = readme.section((ROOT / "docs" / "results.md").read_text(), "zoo")
    assert written == zoo_section(ROOT), (
        f"docs/results.md's zoo section disagrees with {ROWS_FILE}: run "
        "`python -m fairfx.apps.readme --zoo` and commit it"
    )


def test_module_tree_lists_every_module() -> None:
    written = readme.section((ROOT / "docs" / "architecture.md").read_text(), "tree")
    assert written == module_tree(), (
        "docs/architecture.md's module tree is stale: run `python -m fairfx.apps.readme --tree`"
    )
    for path in (ROOT / "fairfx").rglob("*.py"):
        if path.name != "__init__.py":
            assert f" {path.name} " in written or f"  {path.name}" in written, path


def test_readme_is_a_front_page() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    for doc in ("usage", "cli", "architecture", "decisions", "ops", "results", "limits"):
        assert f"docs/{doc}.md" in text, doc


def test_every_result_names_its_command_and_results_file() -> None:
    """Each section of docs/results.md says how it was measured and where the output is."""
    text = (ROOT / "docs" / "results.md").read_text()
    for block in text.split("\n## ")[1:]:
        title = block.splitlines()[0]
        commands = re.findall(
            r"`((?:OMP_NUM_THREADS=\d+ )?(?:nice -n \d+ )?python [^`]+|make \w+)`", block
        )
        assert commands, f"docs/results.md '{title}' names no command"
        files = re.findall(r"benchmarks/(?:results/)?[\w./-]+\.(?:md|jsonl|json|txt|png)\b", block)
        assert files, f"docs/results.md '{title}' names no results file"
        for f in files:
            assert (ROOT / f).exists(), f"docs/results.md '{title}': {f} does not exist"


def test_the_check_fails_when_a_rule_is_added_or_removed(monkeypatch) -> None:
    written = readme.section(OPS.read_text(), "ops")
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
    for folder in ("fairfx", "benchmarks", "tests", "docs"):
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
    code = text[text.index("## Use it from Python") : text.index("## Headline results")]
    assert needle in code
    # A plain torch.export.export(pruned, (x,)) fixes the batch size: the .pt2 rejects batch 1.
    for line in code.splitlines():
        if "torch.export.export(" in line:
            assert "dynamic_shapes" in line, line
