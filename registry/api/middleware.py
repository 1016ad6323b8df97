"""Request hygiene in front of the API."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

from registry.api.errors import error_body

log = logging.getLogger(__name__)


class RejectNulMiddleware:
    """Refuse NUL characters in the path or query string with a 400.

    PostgreSQL cannot store or even compare a string holding NUL, so such a value would otherwise end
    as a database error (a 500) wherever it reaches a query.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path or any(
            "\x00" in k or any("\x00" in v for v in vs) for k, vs in request.GET.lists()
        ):
            return JsonResponse(error_body("invalid", "NUL characters are not allowed in URLs"), status=400)
        return self.get_response(request)


class DatabaseUnavailableMiddleware:
    """Answer 503 with ``Retry-After`` while the database cannot be reached, instead of a 500.

    A restart or failover of PostgreSQL surfaces as an ``OperationalError`` or ``InterfaceError`` in
    whichever query runs first (often the token lookup). The request's transaction is rolled back with
    the connection, so nothing is half-written, and ``CONN_HEALTH_CHECKS`` opens a new connection on the
    next request once the database is back: no restart of the web processes is needed.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        log.error("database unavailable on %s %s: %s", request.method, request.path, exception)
        body = error_body("database_unavailable", "The database is unavailable; retry shortly.")
        if request.path.startswith(("/api/", "/slack/")) or "application/json" in request.headers.get(
            "Accept", ""
        ):
            response: HttpResponse = JsonResponse(body, status=503)
        else:
            response = HttpResponse(
                "Modelgate cannot reach its database right now. Retry in a few seconds.",
                status=503,
                content_type="text/plain; charset=utf-8",
            )
        response["Retry-After"] = "5"
        return response
