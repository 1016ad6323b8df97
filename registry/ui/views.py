"""The catalog pages: server-rendered, thin function views over the selectors and services.

Each view finds its object through one access helper (404 for what does not exist, 403 for a missing
role), reads through ``registry.selectors`` and writes through services; POST views redirect.
"""

from __future__ import annotations

import json
from collections import deque
from itertools import groupby
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Prefetch, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from lifecycle.states import PIPELINE_STATES
from registry import auth, selectors
from registry.api.views import model_context
from registry.models import Alias, ApiToken, Event, ModelVersion, RegisteredModel, VersionStatus
from registry.ui.forms import TokenCreateForm, VersionFilterForm

PAGE_SIZE = 50
EVENTS_SHOWN = 50
LINEAGE_DEPTH = 3
# The plaintext of a token just issued waits here for the one page view that shows it (see `tokens`).
NEW_TOKEN_SESSION_KEY = "modelgate.new_token"
# "Awaiting Approval", as ``ModelVersion.get_status_display`` says it (badges show it in lower case).
STATUS_LABELS = dict(VersionStatus.choices)


# --- access helpers -----------------------------------------------------------------------------


def _model_for_user(request: HttpRequest, name: str, action: str = "read") -> RegisteredModel:
    """The model named ``name``: 404 when there is none, 403 when no role of the user allows ``action``."""
    model = RegisteredModel.objects.filter(name=name).select_related("created_by").first()
    if model is None:
        raise Http404(f"no model named {name!r}")
    if not selectors.user_can(request.user, model, action):
        raise PermissionDenied(f"you have no role on {name}")
    return model


def _version_for_user(request: HttpRequest, name: str, number: int) -> ModelVersion:
    model = _model_for_user(request, name)
    version = selectors.version_get(model, number)
    if version is None:
        raise Http404(f"{name} has no version {number}")
    return version


def _token_for_user(request: HttpRequest, key: str) -> ApiToken:
    # Another user's token is "not found", never "forbidden": the page does not confirm that it exists.
    token = ApiToken.objects.filter(user=request.user, token_key=key).select_related("user").first()
    if token is None:
        raise Http404("no such token")
    return token


# --- models -------------------------------------------------------------------------------------


@login_required
@require_GET
def model_list(request: HttpRequest) -> HttpResponse:
    models = selectors.models_visible_to(request.user)
    query = request.GET.get("q", "").strip()[:100]
    if query:
        models = models.filter(Q(name__icontains=query) | Q(description__icontains=query))
    page = Paginator(models, PAGE_SIZE).get_page(request.GET.get("page"))
    on_page = list(page.object_list)
    summary = model_context(on_page)  # champions and counts of the whole page in two queries
    rows = [
        {
            "model": model,
            "champion": summary["champions"].get(model.pk),
            "counts": _ordered_counts(summary["counts"].get(model.pk, {})),
        }
        for model in on_page
    ]
    return render(request, "registry/model_list.html", {"page": page, "rows": rows, "query": query})


@login_required
@require_GET
def model_detail(request: HttpRequest, name: str) -> HttpResponse:
    model = _model_for_user(request, name)
    form = VersionFilterForm(request.GET)
    status = form.cleaned_data["status"] if form.is_valid() else ""
    versions = selectors.version_list(model=model, status=[status] if status else None).prefetch_related(
        Prefetch("aliases", queryset=Alias.objects.only("id", "name", "version_id").order_by("name"))
    )
    counts = selectors.model_status_counts(model)
    return render(
        request,
        "registry/model_detail.html",
        {
            "model": model,
            "champion": selectors.model_champion(model),
            "counts": _ordered_counts(counts),
            "total": sum(counts.values()),
            "status": status,
            "page": Paginator(versions, PAGE_SIZE).get_page(request.GET.get("page")),
            "policy_json": _readable_policy(model.policy),
        },
    )


# The policy's sections in the order DESIGN.md §5 and the docs present them.
POLICY_SECTIONS = ("gates", "exports", "shadow", "approval", "retirement")


def _readable_policy(policy: dict[str, Any]) -> str:
    """The policy as indented JSON, sections in the documented order and each gate's ``kind`` first.

    PostgreSQL's jsonb keeps keys sorted by length, which would print ``"min"`` before ``"kind"``.
    """
    ordered = {key: policy[key] for key in POLICY_SECTIONS if key in policy}
    ordered.update((key, value) for key, value in policy.items() if key not in ordered)
    if isinstance(ordered.get("gates"), list):
        ordered["gates"] = [
            {"kind": gate["kind"], **gate} if isinstance(gate, dict) and "kind" in gate else gate
            for gate in ordered["gates"]
        ]
    return json.dumps(ordered, indent=2)


def _ordered_counts(counts: dict[str, int]) -> list[tuple[str, str, int]]:
    """(status, label, count) in lifecycle order, leaving out the statuses with no version."""
    return [
        (status, STATUS_LABELS[status], counts[status])
        for status in VersionStatus.values
        if counts.get(status)
    ]


# --- versions -----------------------------------------------------------------------------------


@login_required
@require_GET
def version_detail(request: HttpRequest, name: str, version: int) -> HttpResponse:
    v = _version_for_user(request, name, version)
    graph = selectors.lineage_graph(v, direction="both", depth=LINEAGE_DEPTH)
    source = v.source or {}
    ci_run_url = source.get("ci_run_url") or ""
    events = Event.objects.filter(version=v).order_by("-id")[:EVENTS_SHOWN]
    return render(
        request,
        "registry/version_detail.html",
        {
            "model": v.model,
            "version": v,
            "polling": v.status in PIPELINE_STATES,
            "signature": v.signature or {},
            "source": source,
            # Only web links become <a href>: a pushed "javascript:" URL stays inert text.
            "ci_run_link": ci_run_url if ci_run_url.startswith(("https://", "http://")) else "",
            "params": _pretty_items(v.params),
            "metrics": _pretty_items(v.metrics),
            "attempts": _gate_attempts(v),
            "lineage": _lineage_lists(graph.nodes, graph.edges, f"version:{v.model.name}:{v.version}"),
            "aliases": [alias.name for alias in v.aliases.all()],
            "events": [(event, _compact_json(event.data)) for event in events],
        },
    )


@login_required
@require_GET
def version_status(request: HttpRequest, name: str, version: int) -> HttpResponse:
    """The status block alone, which the version page polls (htmx) while the pipeline works."""
    model = _model_for_user(request, name)
    v = (
        ModelVersion.objects.filter(model=model, version=version)
        .only("id", "model_id", "version", "status", "status_reason", "status_changed_at")
        .first()
    )
    if v is None:
        raise Http404(f"{name} has no version {version}")
    polling = v.status in PIPELINE_STATES
    response = render(
        request, "registry/_version_status.html", {"model": model, "version": v, "polling": polling}
    )
    if not polling and request.headers.get("HX-Request"):
        # The pipeline moved on while the page was open: reload it once so that the gate results and
        # events written meanwhile appear too. The reloaded page no longer polls.
        response["HX-Refresh"] = "true"
    return response


def _gate_attempts(version: ModelVersion) -> list[dict[str, Any]]:
    """Gate results grouped by validation attempt, the latest first (uses the prefetched rows)."""
    attempts = []
    for attempt, group in groupby(version.gate_results.all(), key=lambda result: result.attempt):
        results = list(group)
        attempts.append(
            {
                "attempt": attempt,
                "current": attempt == version.gate_attempt,
                "results": [
                    {
                        "gate": result,
                        "value": _number(result.value),
                        "baseline": _number(result.baseline),
                        "threshold": _number(result.threshold),
                        "details": _compact_json(result.details),
                    }
                    for result in results
                ],
                "failed": sum(1 for result in results if result.passed is False),
                "skipped": sum(1 for result in results if result.passed is None),
            }
        )
    return attempts[::-1]


def _lineage_lists(nodes: list[dict], edges: list[dict], root: str) -> dict[str, list[dict]]:
    """The lineage graph as three lists: the root's datasets, its ancestors and its descendants."""
    by_id = {node["id"]: node for node in nodes}
    datasets = [
        {**by_id[edge["source"]], "role": edge["kind"], "rows_label": f"{by_id[edge['source']]['rows']:,}"}
        for edge in edges
        if edge["target"] == root and by_id[edge["source"]]["type"] == "dataset"
    ]
    version_edges = [edge for edge in edges if by_id[edge["source"]]["type"] == "version"]
    parents_of: dict[str, list[dict]] = {}
    children_of: dict[str, list[dict]] = {}
    for edge in version_edges:
        parents_of.setdefault(edge["target"], []).append(edge)
        children_of.setdefault(edge["source"], []).append(edge)

    def walk(neighbours: dict[str, list[dict]], far_end: str) -> list[dict]:
        found: dict[str, dict] = {}
        queue = deque([(root, 0)])
        while queue:
            current, hops = queue.popleft()
            for edge in neighbours.get(current, []):
                other = edge[far_end]
                if other != root and other not in found:
                    node = by_id[other]
                    found[other] = {
                        **node,
                        "status_label": STATUS_LABELS.get(node["status"], node["status"]),
                        "kind": edge["kind"],
                        "hops": hops + 1,
                    }
                    queue.append((other, hops + 1))
        return sorted(found.values(), key=lambda n: (n["hops"], n["model"], -n["version"]))

    return {
        "datasets": sorted(datasets, key=lambda d: (d["role"], d["name"], d["version"])),
        "parents": walk(parents_of, "source"),
        "children": walk(children_of, "target"),
    }


def _number(value: float | None) -> str:
    """Up to four decimals without trailing zeros: 0.8, 0.7143, 12.5, 200; tiny values in e-notation."""
    if value is None:
        return "—"
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    if text in {"0", "-0"} and value != 0:
        return f"{value:.2e}"
    return text


def _pretty_items(values: dict[str, Any] | None) -> list[tuple[str, str]]:
    return [
        (key, value if isinstance(value, str) else _compact_json(value))
        for key, value in sorted((values or {}).items())
    ]


def _compact_json(value: Any) -> str:
    if value in (None, {}, []):
        return ""
    return json.dumps(value, separators=(", ", ": "), sort_keys=True, default=str)


# --- API tokens ---------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def tokens(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = TokenCreateForm(request.POST)
        if form.is_valid():
            token, plaintext = auth.token_issue(
                user=request.user,
                name=form.cleaned_data["name"],
                days=form.cleaned_data["days"],
                actor=request.user,
            )
            # Post/redirect/get: the plaintext rides in the session to the next page view, which pops it,
            # so that a reload or the back button never shows it again.
            request.session[NEW_TOKEN_SESSION_KEY] = {"name": token.name, "plaintext": plaintext}
            return redirect("ui:tokens")
    else:
        form = TokenCreateForm()
    new_token = request.session.pop(NEW_TOKEN_SESSION_KEY, None)
    now = timezone.now()
    return render(
        request,
        "registry/tokens.html",
        {
            "form": form,
            "new_token": new_token,
            "tokens": [
                (token, token.expiry is not None and token.expiry <= now)
                for token in ApiToken.objects.filter(user=request.user).order_by("-created")
            ],
        },
    )


@login_required
@require_POST
def token_revoke(request: HttpRequest, key: str) -> HttpResponse:
    token = _token_for_user(request, key)
    label = token.name or token.token_key
    auth.token_revoke(token=token, actor=request.user)
    messages.success(request, f"Token “{label}” revoked: it no longer authenticates.")
    return redirect("ui:tokens")
