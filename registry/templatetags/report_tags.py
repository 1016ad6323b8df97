"""Filters for the printable audit report: the numbers as the Markdown report writes them."""

from __future__ import annotations

from typing import Any

from django import template

from registry.formatting import number_text

register = template.Library()


@register.filter
def num(value: Any) -> str:
    return number_text(value)


@register.filter
def verdict(passed: bool | None) -> str:
    return {True: "passed", False: "FAILED", None: "skipped"}.get(passed, "—")
