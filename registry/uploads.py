"""Streaming uploads: every file goes chunk by chunk to a temporary file and is hashed on the way.

Nothing is held whole in memory, the sha256 is known the moment the upload ends (without a second read),
and an upload over the size limit is cut off as soon as it crosses it, with a 413.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from django.core.files.uploadedfile import TemporaryUploadedFile
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from rest_framework import status
from rest_framework.exceptions import APIException


class UploadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"
    default_detail = "The upload is larger than the server accepts."


def upload_limit(request: Any) -> int:
    if request.path.startswith("/api/v1/datasets/"):
        return settings.MAX_DATASET_BYTES
    return settings.MAX_ARTIFACT_BYTES


def _too_large(limit: int) -> UploadTooLarge:
    return UploadTooLarge(
        f"The upload is larger than the limit of {limit} bytes ({limit / 1024**2:.0f} MiB)."
    )


class HashingUploadHandler(TemporaryFileUploadHandler):
    """A temporary-file handler that also computes sha256 and enforces the size limit."""

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        limit = upload_limit(self.request)
        # Refuse before reading a byte when the client announces the size; multipart overhead is small.
        if content_length and content_length > limit + 1024 * 1024:
            raise _too_large(limit)
        return None

    def new_file(self, *args: Any, **kwargs: Any) -> None:
        super().new_file(*args, **kwargs)
        self.hasher = hashlib.sha256()
        self.received = 0
        self.limit = upload_limit(self.request)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self.received += len(raw_data)
        if self.received > self.limit:
            self.file.close()  # the temporary file is deleted on close
            raise _too_large(self.limit)
        self.hasher.update(raw_data)
        self.file.write(raw_data)

    def file_complete(self, file_size: int) -> TemporaryUploadedFile:
        uploaded = super().file_complete(file_size)
        uploaded.sha256 = self.hasher.hexdigest()  # type: ignore[attr-defined]
        return uploaded
