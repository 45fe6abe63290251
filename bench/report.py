"""The one table the benchmark prints: each target, its two figures, their ratio, pass or fail."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Row:
    """One target's line. ``ratio`` is None when it could not be measured (``note`` says why)."""

    target: str
    measured: str
    against: str
    ratio: float | None
    threshold: str
    passed: bool | None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def at_least(
    target: str, measured: str, against: str, value: float, ceiling: float, minimum: float
) -> Row:
    """A row for "``value`` at least ``minimum`` × ``ceiling``"."""
    ratio = value / ceiling if ceiling else None
    return Row(
        target,
        measured,
        against,
        ratio,
        f">= {minimum:g}",
        None if ratio is None else ratio >= minimum,
    )


def at_most(
    target: str, measured: str, against: str, value: float, limit: float, maximum: float
) -> Row:
    """A row for "``value`` at most ``maximum`` × ``limit``"."""
    ratio = value / limit if limit else None
    return Row(
        target,
        measured,
        against,
        ratio,
        f"<= {maximum:g}",
        None if ratio is None else ratio <= maximum,
    )


def not_measured(target: str, threshold: str, why: str) -> Row:
    return Row(target, "-", "-", None, threshold, None, why)


def rps(value: float) -> str:
    return f"{value:,.0f} req/s" if value >= 10 else f"{value:.2f} req/s"


def render(rows: list[Row], title: str) -> str:
    """A plain-text table (also valid Markdown) of ``rows``."""
    header = ("target", "measured", "against", "ratio", "threshold", "result")
    lines = [
        (
            row.target,
            row.measured,
            row.against,
            "-" if row.ratio is None else f"{row.ratio:.2f}",
            row.threshold,
            "not run" if row.passed is None else ("pass" if row.passed else "FAIL"),
        )
        for row in rows
    ]
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(header, *lines, strict=False)
    ]

    def line(cells: tuple[str, ...]) -> str:
        return (
            "| "
            + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
            + " |"
        )

    out = [title, "", line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out.extend(line(cells) for cells in lines)
    notes = [f"- {row.target}: {row.note}" for row in rows if row.note]
    if notes:
        out.extend(["", *notes])
    return "\n".join(out)
