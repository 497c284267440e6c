"""Plain-text tables for the terminal, no wider than a width (100 columns by default).

``convzoo recipes``, ``models`` and ``bench`` print through :func:`fit_table`, so every listing
fits a normal terminal without wrapping; ``--wide`` passes a width that never shrinks and
``--json`` prints everything. Written by hand because the field's table printers (tabulate,
rich) are not dependencies of convzoo and do not shorten chosen columns to a width.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

WIDTH = 100  # a normal terminal; wider tables wrap and become unreadable
UNLIMITED = 10**6
MIN_SHRUNK = 12  # a shortened column keeps at least this many characters


def fit_table(rows: Iterable[Sequence[str]], header: Sequence[str], width: int = WIDTH, *,
              shrink: Iterable[str] = (), right: Iterable[str] = ()) -> str:
    """``header`` and ``rows`` (cells as text) aligned in columns two spaces apart, no line
    wider than ``width``: the ``shrink`` columns, widest first, are shortened (ending in
    "...") until the table fits or they reach ``MIN_SHRUNK`` characters; the others keep their
    width. ``right``: columns aligned right (numbers)."""
    body = [[str(c) for c in row] for row in rows]
    header = list(header)
    widths = [max([len(h), *(len(row[i]) for row in body)]) for i, h in enumerate(header)]
    movable = [i for i, h in enumerate(header) if h in set(shrink)]
    while sum(widths) + 2 * (len(header) - 1) > width and movable:
        i = max(movable, key=lambda j: widths[j])
        if widths[i] <= MIN_SHRUNK:
            break
        widths[i] -= 1
    right = set(right)

    def cell(text: str, w: int, name: str) -> str:
        text = text if len(text) <= w else text[:w - 3] + "..."
        return text.rjust(w) if name in right else text.ljust(w)

    lines = ["  ".join(cell(c, w, h) for c, w, h in zip(row, widths, header))
             for row in [header, *body]]
    return "\n".join(line.rstrip() for line in lines)
