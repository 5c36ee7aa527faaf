"""Plain-text tables for the command line (no third-party formatting library)."""

from __future__ import annotations

from collections.abc import Sequence


def format_rows(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Align `rows` under `headers`, one space-padded column each, with a rule below the header."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
