"""Tables: one row per contender, then the ratios vkpy / contender measured in the same run."""

from __future__ import annotations

import math
from collections.abc import Sequence

from scenarios import Result

VKPY_PREFIX = "vkpy-"


def _cell(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "never"
    if isinstance(value, int) or abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(mine: float | None, theirs: float | None) -> str:
    if mine is None or theirs is None or math.isnan(mine) or math.isnan(theirs):
        return "-"
    if theirs == 0:
        return "-" if mine == 0 else "inf"
    return f"{mine / theirs:.2f}x"


def table(title: str, results: Sequence[Result], ratio_columns: Sequence[str] | None = None) -> str:
    """A markdown table of every result, then one row per (vkpy variant, other contender) pair."""
    if not results:
        return f"### {title}\n\n(no result)\n"
    columns: list[str] = []
    for result in results:
        columns += [c for c in result.figures if c not in columns]
    lines = [f"### {title}", ""]
    loads = [f"{r.agent} {r.load}" for r in results if r.load]
    if loads:
        lines += [f"Load average (1, 5, 15 min) when each contender started: {'; '.join(loads)}", ""]
    lines.append("| contender | " + " | ".join(columns) + " |")
    lines.append("|---|" + "---:|" * len(columns))
    for result in results:
        cells = [_cell(result.figures.get(c)) for c in columns]
        lines.append(f"| {result.agent} | " + " | ".join(cells) + " |")
    compared = [c for c in (ratio_columns or columns)]
    for mine in (r for r in results if r.agent.startswith(VKPY_PREFIX)):
        for other in (r for r in results if not r.agent.startswith(VKPY_PREFIX)):
            cells = [
                _ratio(mine.figures.get(c), other.figures.get(c)) if c in compared else "" for c in columns
            ]
            lines.append(f"| *{mine.agent} / {other.agent}* | " + " | ".join(cells) + " |")
    notes = [f"{r.agent}: {r.note}" for r in results if r.note]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def request_breakdown(title: str, results: Sequence[Result], per: float, at_rest: bool = False) -> str:
    """Every contender's API requests by verb and resource, divided by ``per`` (pods, nodes,
    minutes...)."""
    lines = [f"#### {title}", "", "| contender | requests (verb resource: count) |", "|---|---|"]
    for result in results:
        counts = result.rest_counts if at_rest else result.counts
        parts = [f"{key}: {n / per:.2f}" for key, n in sorted(counts.items(), key=lambda kv: -kv[1])]
        lines.append(f"| {result.agent} | {'; '.join(parts) or '-'} |")
    return "\n".join(lines) + "\n"
