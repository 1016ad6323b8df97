"""The search page: versions across the models a user may read, by model, status, tag, alias, dataset,
git sha and push date (the same selector as ``GET /api/v1/versions/``)."""

from __future__ import annotations

import datetime as dt

from django.contrib.auth.decorators import login_required
from django.db.models import Prefetch
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from registry import selectors
from registry.models import Alias
from registry.ui.forms import VersionSearchForm
from registry.ui.paging import CappedPaginator

PAGE_SIZE = 50


def _midnight(day: dt.date | None) -> dt.datetime | None:
    return dt.datetime.combine(day, dt.time.min, tzinfo=dt.UTC) if day else None


@login_required
@require_GET
def version_search_page(request: HttpRequest) -> HttpResponse:
    form = VersionSearchForm(request.GET)  # no criteria: every version, the newest push first
    page = None
    if form.is_valid():
        data = form.cleaned_data
        search = selectors.VersionSearch(
            model_contains=data["q"].strip(),
            status=(data["status"],) if data["status"] else (),
            tag=data["tag"].strip(),
            alias=data["alias"],
            dataset=data["dataset"],
            git_sha=data["git_sha"],
            created_after=_midnight(data["created_after"]),
            created_before=_midnight(data["created_before"]),
        )
        versions = (
            selectors.version_search(search, user=request.user)
            .order_by(*selectors.VERSION_SORTS[data["sort"] or "-created"])
            .prefetch_related(
                Prefetch("aliases", queryset=Alias.objects.only("id", "name", "version_id").order_by("name"))
            )
        )
        page = CappedPaginator(versions, PAGE_SIZE).get_page(request.GET.get("page"))
    return render(request, "registry/version_search.html", {"form": form, "page": page})
