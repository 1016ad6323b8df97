"""The printable audit report page of a version (the same dict as the API's report)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from lifecycle.report import version_report
from registry.ui.views import _version_row_for_user


@login_required
@require_GET
def version_report_page(request: HttpRequest, name: str, version: int) -> HttpResponse:
    found = _version_row_for_user(request, name, version)
    return render(request, "registry/version_report.html", {"report": version_report(found)})
