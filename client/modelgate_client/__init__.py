"""Python client and CLI for the Modelgate model registry."""

from __future__ import annotations

from modelgate_client.api import (
    ApiError,
    ChecksumMismatch,
    Client,
    ServerUnreachable,
    __version__,
    file_sha256,
)

__all__ = [
    "ApiError",
    "ChecksumMismatch",
    "Client",
    "ServerUnreachable",
    "__version__",
    "file_sha256",
]
