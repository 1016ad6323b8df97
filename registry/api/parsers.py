"""JSON as PostgreSQL can store it: finite numbers only.

Python's json reads ``NaN`` and ``Infinity``, and reads ``1e999`` as ``inf``; jsonb refuses all three, so
such a number used to travel through validation and end as a database error (a 500) on save. Every JSON
document the API reads goes through :func:`loads` instead, which refuses them with a ValueError.
"""

from __future__ import annotations

import codecs
import json
import math
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError


def _constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number: numbers must be finite")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of range: numbers must be finite")
    return value


def loads(text: str | bytes) -> Any:
    """``json.loads`` that refuses NaN, Infinity and numbers that overflow a float."""
    return json.loads(text, parse_constant=_constant, parse_float=_float)


class JSONParser(parsers.JSONParser):
    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        encoding = parsers.get_encoding(parser_context or {})
        try:
            return loads(codecs.getreader(encoding)(stream).read())
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
