"""Errors that services raise and every interface (API, UI, CLI) turns into a clear answer."""

from __future__ import annotations


class ServiceError(Exception):
    """A refusal with an HTTP status, a short code and a sentence for a person."""

    status = 400
    code = "invalid"

    def __init__(
        self, message: str, *, fields: dict[str, list[str]] | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields
        if code:
            self.code = code


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class Gone(ServiceError):
    status = 410
    code = "gone"


class ChecksumMismatch(ServiceError):
    code = "checksum_mismatch"


class TooLarge(ServiceError):
    status = 413
    code = "too_large"


def nul_path(value: object, field: str) -> str | None:
    """Where a JSON document holds a NUL character (PostgreSQL's jsonb and text cannot store one)."""
    if isinstance(value, str):
        return field if "\x00" in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            found = nul_path(key, field) or nul_path(item, f"{field}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = nul_path(item, f"{field}.{index}")
            if found:
                return found
    return None


# JSON documents that clients send (push metadata, parameters) are refused past this depth: none needs
# more, and a deeper one only costs recursion wherever it is read, rendered or stored.
JSON_MAX_DEPTH = 32


def deep_path(value: object, field: str, limit: int = JSON_MAX_DEPTH) -> str | None:
    """Where a JSON document nests deeper than ``limit`` levels (walked without recursion)."""
    stack: list[tuple[object, str, int]] = [(value, field, 1)]
    while stack:
        item, where, depth = stack.pop()
        if not isinstance(item, dict | list):
            continue
        if depth > limit:
            return where
        children = item.items() if isinstance(item, dict) else enumerate(item)
        stack.extend((child, f"{where}.{key}", depth + 1) for key, child in children)
    return None
