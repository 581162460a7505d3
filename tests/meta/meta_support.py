"""What the meta-tests read: the hook contract and the configuration schema, from the source files
(ast, no imports), and the Markdown pages that must document them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOOKSPECS = ROOT / "vkpy" / "hookspecs.py"
SCHEMA = ROOT / "vkpy" / "config" / "schema.py"
DOCS = ROOT / "docs"


def hook_signatures() -> dict[str, str]:
    """Every ``@hookspec`` function in vkpy/hookspecs.py → its signature on one line, as written
    there: ``async def create_pod(node: NodeHandle, pod: Pod) -> None``."""
    tree = ast.parse(HOOKSPECS.read_text())
    hooks: dict[str, str] = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if not any(isinstance(d, ast.Name) and d.id == "hookspec" for d in node.decorator_list):
            continue
        prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
        returns = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
        hooks[node.name] = f"{prefix} {node.name}({ast.unparse(node.args)}){returns}"
    return hooks


def schema_classes() -> dict[str, list[tuple[str, str]]]:
    """Every class in vkpy/config/schema.py → its fields, as (name, annotation source)."""
    tree = ast.parse(SCHEMA.read_text())
    classes: dict[str, list[tuple[str, str]]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes[node.name] = [
                (item.target.id, ast.unparse(item.annotation))
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            ]
    return classes


def markdown_sections(text: str) -> dict[str, str]:
    """Heading text (without the #s) → its section: the lines up to the next heading of the same or a
    higher level. Lines in fenced code blocks are never headings."""
    lines = text.splitlines()
    headings: list[tuple[int, int, str]] = []
    fenced = False
    for number, line in enumerate(lines):
        if line.startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (match := re.match(r"(#+) (.+)$", line)):
            headings.append((number, len(match.group(1)), match.group(2).strip()))
    sections: dict[str, str] = {}
    for i, (start, level, title) in enumerate(headings):
        end = next((n for n, lv, _ in headings[i + 1 :] if lv <= level), len(lines))
        sections[title] = "\n".join(lines[start:end])
    return sections


def function_source(test_id: str) -> tuple[str, str] | None:
    """For ``tests/x/test_y.py::test_name``: (the function's source, the whole file), or None when
    there is no such top-level test function."""
    path, _, name = test_id.partition("::")
    file = ROOT / path
    if not file.is_file():
        return None
    text = file.read_text()
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return ast.get_source_segment(text, node) or "", text
    return None
