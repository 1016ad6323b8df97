"""What an export step raises when the model, not the worker, is at fault."""

from __future__ import annotations


class ConversionFailed(Exception):
    """A converter refused the model; ``message`` is the converter's own reason, cleaned up."""

    def __init__(self, converter: str, message: str) -> None:
        self.converter, self.message = converter, message
        super().__init__(f"{converter}: {message}")


class NotApplicable(Exception):
    """The format cannot come from this source (TFLite from ONNX, say); not a failure."""


def not_the_models_fault(exc: BaseException) -> bool:
    """Errors that say nothing about the model: a time limit, the database or the store going away.

    The steps re-raise these instead of recording them as a failed export, so that the task is retried.
    """
    from celery.exceptions import SoftTimeLimitExceeded
    from django.db import Error as DatabaseError

    from registry.storage import StoreUnavailable

    return isinstance(exc, SoftTimeLimitExceeded | DatabaseError | StoreUnavailable)
