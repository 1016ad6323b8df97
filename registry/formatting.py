"""How numbers are written for people: on the pages and in the audit report (Markdown and HTML) alike."""

from __future__ import annotations

from typing import Any


def number_text(value: Any) -> str:
    """Up to four decimals without trailing zeros, thousands separated, tiny values in e-notation."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        text = f"{value:.4f}".rstrip("0").rstrip(".")
        return f"{value:.2e}" if text in {"0", "-0"} and value else text
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
