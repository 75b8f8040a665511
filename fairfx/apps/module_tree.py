"""The package tree of docs/architecture.md, generated from each module's docstring.

One line per module: its path and the first sentence of its docstring, so the tree cannot omit a
module or describe one that is gone (``tests/test_readme.py`` compares it with the package).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
WIDTH = 72  # characters of summary per line


def _summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    first = " ".join(doc.strip().split("\n\n")[0].split())
    first = first.split(". ")[0].rstrip(".")
    if len(first) > WIDTH:  # cut at a word, so the tree stays one line per module
        first = first[:WIDTH].rsplit(" ", 1)[0] + " ..."
    return first


def module_tree(root: Path = PACKAGE) -> str:
    """An indented listing of ``root``: folders first line from their ``__init__`` docstring."""
    lines = ["```", f"{root.name}/"]

    def walk(folder: Path, depth: int) -> None:
        pad = "  " * depth
        for path in sorted(folder.iterdir(), key=lambda p: (p.is_dir(), p.name)):
            if path.name.startswith("__pycache__"):
                continue
            if path.is_dir() and (path / "__init__.py").exists():
                lines.append(f"{pad}{path.name}/  {_summary(path / '__init__.py')}")
                walk(path, depth + 1)
            elif path.suffix == ".py" and path.name != "__init__.py":
                lines.append(f"{pad}{path.name:<22} {_summary(path)}")

    walk(root, 1)
    lines.append("```")
    return "\n".join(lines)
