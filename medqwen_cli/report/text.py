"""Small text helpers of the HTML page: escaping, numbers, status badges."""

from __future__ import annotations

from html import escape
from typing import Any


def esc(value: Any) -> str:
    return escape("" if value is None else str(value))


def fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def badge(status: str) -> str:
    """A coloured label: accepted / no criteria (green, grey), not accepted (red)."""
    css = {"accepted": "ok", "accepted by override": "warn", "not accepted": "bad",
           "verified": "ok", "damaged": "bad", "passed": "ok",
           "failed": "bad"}.get(status, "muted")  # fmt: skip
    return f'<span class="badge {css}">{esc(status)}</span>'


def when(iso: str | None) -> str:
    """`2026-12-07T05:17:16+00:00` -> `2026-12-07 05:17:16 UTC` (the bundle records UTC)."""
    if not iso:
        return "n/a"
    return iso.replace("T", " ").removesuffix("+00:00") + (" UTC" if iso.endswith("+00:00") else "")
