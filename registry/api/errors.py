"""One JSON shape for every API error: ``{"error": {"code", "message", "fields"?}}``."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig, TooManyFieldsSent
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from lifecycle.policy import PolicyInvalid
from lifecycle.states import TransitionNotAllowed
from registry.errors import ServiceError
from registry.storage import StoreUnavailable

log = logging.getLogger(__name__)


def error_body(code: str, message: str, fields: dict | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return {"error": error}


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested validation detail as ``{"field.sub": [messages]}``."""
    if isinstance(detail, dict):
        out: dict[str, list[str]] = {}
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out.update(_flatten(value, name))
        return out
    if isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            return {prefix or "non_field_errors": [str(item) for item in detail]}
        out = {}
        for index, item in enumerate(detail):
            out.update(_flatten(item, f"{prefix}.{index}" if prefix else str(index)))
        return out
    return {prefix or "non_field_errors": [str(detail)]}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, ServiceError):
        return Response(error_body(exc.code, exc.message, exc.fields), status=exc.status)
    if isinstance(exc, PolicyInvalid):
        return Response(error_body("invalid_policy", str(exc), exc.fields), status=400)
    if isinstance(exc, TransitionNotAllowed):
        return Response(error_body("invalid_transition", str(exc)), status=409)
    if isinstance(exc, StoreUnavailable):
        log.error("artifact store unavailable: %s", exc)
        return Response(error_body("store_unavailable", str(exc)), status=503, headers={"Retry-After": "5"})
    if isinstance(exc, RecursionError):
        # Python's json gives up on deeply nested documents with a RecursionError, not a ValueError,
        # so DRF's parsers let it through as a 500.
        return Response(error_body("invalid", "the JSON document is nested too deeply"), status=400)
    if isinstance(exc, RequestDataTooBig):
        # Django raises it (a SuspiciousOperation) while reading a JSON body or a multipart form's fields;
        # left alone it became a bare "Bad request." that did not say what was too big.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        message = (
            f"The request's JSON body or form fields (e.g. the push's metadata) are larger than the limit "
            f"of {limit} bytes ({limit / 1024**2:.0f} MiB); files are not counted."
        )
        return Response(error_body("too_large", message), status=413)
    if isinstance(exc, TooManyFieldsSent):
        limit = settings.DATA_UPLOAD_MAX_NUMBER_FIELDS
        return Response(error_body("invalid", f"The request has more than {limit} form fields."), status=400)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or "Not found.")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten(exc.detail)
        first_field, messages = next(iter(fields.items()), ("", ["invalid input"]))
        message = messages[0] if first_field == "non_field_errors" else f"{first_field}: {messages[0]}"
        response.data = error_body("invalid", message, fields)
    else:
        detail = exc.detail if isinstance(exc, exceptions.APIException) else str(exc)
        code = getattr(detail, "code", None) or getattr(exc, "default_code", "error")
        response.data = error_body(str(code), str(detail))
    return response


def json_error_view(status_code: int, code: str, message: str):
    def view(request, exception=None):
        if request.path.startswith(("/api/", "/slack/")) or "application/json" in request.headers.get(
            "Accept", ""
        ):
            return JsonResponse(error_body(code, message), status=status_code)
        from django.views import defaults

        handler = {
            404: defaults.page_not_found,
            500: defaults.server_error,
            400: defaults.bad_request,
            403: defaults.permission_denied,
        }
        if status_code == 500:
            return handler[500](request)
        return handler[status_code](request, exception)

    return view


handler400 = json_error_view(status.HTTP_400_BAD_REQUEST, "bad_request", "Bad request.")
handler403 = json_error_view(status.HTTP_403_FORBIDDEN, "forbidden", "You do not have permission to do this.")
handler404 = json_error_view(status.HTTP_404_NOT_FOUND, "not_found", "Not found.")
handler500 = json_error_view(status.HTTP_500_INTERNAL_SERVER_ERROR, "server_error", "Internal server error.")
