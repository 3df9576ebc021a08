"""Terminal output: aligned Markdown tables (build info, benchmarks) and messages
that do not break a progress bar."""
from __future__ import annotations

import sys


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, rows)])


def say(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(message, file=sys.stderr)
