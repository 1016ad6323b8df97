"""Request hygiene in front of the API."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, JsonResponse

from registry.api.errors import error_body


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
