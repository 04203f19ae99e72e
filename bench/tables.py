"""The plain-text table every benchmark prints (one definition: bench/run_all.py, learn_phase.py and trl_side_by_side.py use it)."""
from __future__ import annotations


def table(title: str, rows: list[tuple], header: tuple) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths))  # noqa: E731
    return "\n".join([f"\n## {title}", line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])
