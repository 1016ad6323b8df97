"""The catalog pages: server-rendered, thin function views over the selectors and services.

Each view finds its object through one access helper (404 for what does not exist, 403 for a missing
role), reads through ``registry.selectors`` and writes through services; POST views redirect.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import deque
from itertools import groupby
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import IntegrityError, transaction
from django.db.models import Count, F, Prefetch, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from lifecycle import approval, webhooks
from lifecycle.policy import policy_parse
from lifecycle.states import PIPELINE_STATES
from registry import auth, selectors
from registry.api.views import model_context
from registry.errors import Conflict, NotFound
from registry.formatting import number_text
from registry.models import (
    Alias,
    ApiToken,
    Approval,
    Dataset,
    Event,
    ModelRole,
    ModelVersion,
    Promotion,
    RegisteredModel,
    Role,
    SlackIdentity,
    VersionStatus,
    Webhook,
    WebhookDelivery,
)
from registry.ui import charts, trends
from registry.ui.forms import (
    SORT_CHOICES,
    DecisionForm,
    RollbackForm,
    SlackIdentityForm,
    TokenCreateForm,
    VersionFilterForm,
    WebhookCreateForm,
)

PAGE_SIZE = 50
EVENTS_SHOWN = 50
LINEAGE_DEPTH = 3
# The depths the lineage graph offers; it opens at LINEAGE_DEPTH, like the lists under it.
LINEAGE_GRAPH_DEPTHS = (1, 2, 3, 5, 10)
# The plaintext of a token just issued waits here for the one page view that shows it (see `tokens`).
NEW_TOKEN_SESSION_KEY = "modelgate.new_token"
# Likewise the secret of a webhook just created, for the one model page view that shows it.
NEW_WEBHOOK_SESSION_KEY = "modelgate.new_webhook"
DELIVERIES_SHOWN = 10
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


def _version_row_for_user(request: HttpRequest, name: str, number: int) -> ModelVersion:
    """The bare version row (no prefetching), for the POST views that hand it to a service."""
    model = _model_for_user(request, name)
    version = ModelVersion.objects.filter(model=model, version=number).select_related("model").first()
    if version is None:
        raise Http404(f"{name} has no version {number}")
    return version


def _hook_for_user(request: HttpRequest, name: str, hook_id: int) -> Webhook:
    model = _model_for_user(request, name, "manage")
    hook = Webhook.objects.filter(model=model, pk=hook_id).select_related("model").first()
    if hook is None:
        raise Http404(f"{name} has no webhook {hook_id}")
    return hook


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
    summary = model_context(on_page)  # champions and counts of the whole page in one query
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
    return _model_page(request, _model_for_user(request, name))


def _model_page(
    request: HttpRequest, model: RegisteredModel, *, webhook_form: WebhookCreateForm | None = None
) -> HttpResponse:
    form = VersionFilterForm(request.GET)
    valid = form.is_valid()
    status = form.cleaned_data["status"] if valid else ""
    sort = (form.cleaned_data["sort"] if valid else "") or "-version"
    versions = (
        selectors.version_list(model=model, status=[status] if status else None)
        .order_by(*selectors.VERSION_SORTS[sort])
        .prefetch_related(
            Prefetch("aliases", queryset=Alias.objects.only("id", "name", "version_id").order_by("name"))
        )
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
            "sort": sort,
            "sort_choices": SORT_CHOICES,
            "page": Paginator(versions, PAGE_SIZE).get_page(request.GET.get("page")),
            "policy_json": _readable_policy(model.policy),
            "gate_charts": trends.gate_charts(model),
            "serving": _serving_view(model),
            **_model_signoff(request, model, webhook_form),
        },
    )


def _percent(share: float | None) -> str:
    return "—" if share is None else f"{share * 100:.1f}%"


RATE_WINDOW_MINUTES = 5


def _serving_view(model: RegisteredModel) -> dict[str, Any]:
    """What serves and how busy it is: today's predictions, and the recent rate from sampled captures."""
    from lifecycle import serving
    from registry.models import TrafficRecord, Usage

    champion = selectors.model_champion(model)
    if champion is None:
        return {}
    since = timezone.now() - dt.timedelta(minutes=RATE_WINDOW_MINUTES)
    sampled = TrafficRecord.objects.filter(model=model, source="live", at__gte=since).count()
    rate = policy_parse(model.policy).shadow.sample_rate
    today = Usage.objects.filter(version=champion, day=timezone.now().date()).values_list(
        "predictions", flat=True
    )
    return {
        "version": champion,
        "via": serving.served_artifact_of(champion).via,
        "today": sum(today),
        "rate": sampled / rate / (RATE_WINDOW_MINUTES * 60) if rate else None,
        "window": RATE_WINDOW_MINUTES,
    }


def _model_signoff(
    request: HttpRequest, model: RegisteredModel, webhook_form: WebhookCreateForm | None
) -> dict[str, Any]:
    """What approvers (rollback) and owners (webhooks) see on the model page; nothing for others."""
    new_hook = request.session.pop(NEW_WEBHOOK_SESSION_KEY, None)
    if not selectors.user_can(request.user, model, "approve"):
        return {}
    context: dict[str, Any] = {"rollback_to": _rollback_target(model), "rollback_form": RollbackForm()}
    if not selectors.user_can(request.user, model, "manage"):
        return context
    recent = WebhookDelivery.objects.order_by("-created_at", "-id")[:DELIVERIES_SHOWN]
    return {
        **context,
        "hooks": model.webhooks.order_by("id").prefetch_related(
            Prefetch("deliveries", queryset=recent, to_attr="recent")
        ),
        "webhook_form": webhook_form or WebhookCreateForm(),
        "new_hook": new_hook if new_hook and new_hook["model"] == model.name else None,
    }


def _rollback_target(model: RegisteredModel) -> ModelVersion | None:
    """The version a rollback would serve again: the one the last promotion replaced, if archived.

    ``approval.rollback_request`` decides; this only says whether offering the button makes sense.
    """
    last = (
        Promotion.objects.filter(model=model)
        .exclude(version=None)
        .select_related("previous")
        .order_by("-at", "-id")
        .first()
    )
    if last is None or last.previous is None or last.previous.status != VersionStatus.ARCHIVED:
        return None
    return last.previous


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
            "lineage_depth": LINEAGE_DEPTH,
            "lineage_depths": LINEAGE_GRAPH_DEPTHS,
            "aliases": [alias.name for alias in v.aliases.all()],
            "events": [(event, _compact_json(event.data)) for event in events],
            **_version_signoff(request, v),
            "exports": _export_rows(v),
            "shadow": _shadow_view(v),
        },
    )


def _shadow_view(version: ModelVersion) -> dict[str, Any] | None:
    """The shadow card: progress, agreement over time, output differences, latency, slices."""
    from lifecycle import shadow

    run = shadow.shadow_latest(version)
    if run is None:
        skipped = (
            version.events.filter(kind="stage.skipped", data__stage="shadow")
            .values_list("data", flat=True)
            .first()
        )
        return {"skipped": skipped["reason"]} if skipped else None
    rules = policy_parse(version.model.policy).shadow
    s = run.summary or {}
    latency = s.get("latency_ms") or {}
    cand, champ = latency.get("candidate") or {}, latency.get("champion") or {}
    histogram = (s.get("diff") or {}).get("histogram") or {}
    timeline = [(point[1], point[2]) for point in s.get("timeline", [])]
    slices = [
        (field, value, cell["rows"], cell["agreement"], _percent(cell["agreement"]))
        for field, values in sorted((s.get("slices") or {}).items())
        for value, cell in sorted(values.items())
    ]
    return {
        "run": run,
        "rules": rules,
        "progress": min(100, round(100 * run.requests / rules.min_requests)) if rules.min_requests else 100,
        "summary": s,
        "agreement": _percent(s.get("agreement")),
        "min_agreement": _percent(rules.min_agreement),
        "agreement_chart": charts.line(
            timeline, label="agreement with the champion against requests seen", threshold=rules.min_agreement
        ),
        "diff_chart": charts.histogram(
            histogram.get("counts", []),
            histogram.get("edges", []),
            label="max |candidate − champion| per row",
        ),
        "latency_chart": charts.bars(
            [
                ("p50", [("candidate", cand.get("p50")), ("champion", champ.get("p50"))]),
                ("p95", [("candidate", cand.get("p95")), ("champion", champ.get("p95"))]),
            ],
            label="single-request latency, candidate and champion",
            unit="ms",
        ),
        "slices": slices,
        "earlier": list(version.shadow_runs.exclude(pk=run.pk).select_related("baseline").order_by("-id")),
    }


EXPORT_BADGES = {
    "passed": "status-production",
    "failed": "status-rejected",
    "pending": "status-validating",
    "running": "status-validating",
    "not_applicable": "status-archived",
}


def _export_rows(version: ModelVersion) -> list[dict[str, Any]]:
    """The export branches for the version page: status badge, size, parity numbers, runtime, download."""
    api = reverse("api:version-detail", kwargs={"name": version.model.name, "version": version.version})
    rows = []
    for export in version.exports.all():  # prefetched by selectors.version_get
        parity = export.parity or {}
        timing = " + ".join(
            f"{label} {ms / 1000:.1f} s"
            for label, ms in (("convert", export.convert_ms), ("check", export.check_ms))
            if ms is not None
        )
        rows.append(
            {
                "format": export.format,
                "status": export.status,
                "status_label": export.status.replace("_", " "),
                "badge": EXPORT_BADGES.get(export.status, "status-archived"),
                "required": export.required,
                "size": export.size,
                "max_abs_diff": _number(parity.get("max_abs_diff")),
                "mean_abs_diff": _number(parity.get("mean_abs_diff")),
                "atol": _number(parity.get("atol")),
                "samples": parity.get("samples"),
                "inputs": parity.get("inputs", ""),
                "converter": parity.get("converter", ""),
                "timing": timing,
                "runtime": export.runtime,
                "error": export.error,
                "download_url": (
                    f"{api}exports/{export.format}/artifact/"
                    if export.status == "passed" and export.artifact_key and not export.purged_at
                    else ""
                ),
            }
        )
    return rows


def _version_signoff(request: HttpRequest, version: ModelVersion) -> dict[str, Any]:
    """The sign-off block: this round's decisions, the quorum, and what the user may do about it."""
    history = list(version.approvals.all())  # prefetched by selectors.version_get
    if version.status != VersionStatus.AWAITING_APPROVAL:
        return {"approval_history": history}
    current = [a for a in history if a.round == version.approval_round]
    mine = next((a for a in current if a.actor_name == request.user.get_username()), None)
    count = approval.quorum(version)
    summary = approval.evidence_summary(version)
    return {
        "approval_history": history,
        "signoff": {
            "current": current,
            "quorum": count,
            "percent": min(100, round(100 * count.approvals / count.required)),
            "mine": mine,
            # approval_record refuses whoever this names; the page only explains it beforehand.
            "refusal": "" if mine else approval.approval_refusal(request.user, version),
            "gates_line": approval.gates_line(summary),
            "digest": approval.evidence_digest(summary),
            "form": DecisionForm(),
        },
    }


@login_required
@require_POST
def version_approve(request: HttpRequest, name: str, version: int) -> HttpResponse:
    return _decide(request, name, version, Approval.Decision.APPROVE)


@login_required
@require_POST
def version_reject(request: HttpRequest, name: str, version: int) -> HttpResponse:
    return _decide(request, name, version, Approval.Decision.REJECT)


def _decide(request: HttpRequest, name: str, number: int, decision: str) -> HttpResponse:
    """Record a web decision through ``approval.approval_record``, which holds every rule."""
    v = _version_row_for_user(request, name, number)
    back = redirect("ui:version-detail", name=v.model.name, version=v.version)
    form = DecisionForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Nothing recorded: {form.errors['comment'][0]}")
        return back
    try:
        result = approval.approval_record(
            version_id=v.pk,
            user=request.user,
            decision=decision,
            channel=Approval.Channel.WEB,
            comment=form.cleaned_data["comment"],
        )
    except approval.ApprovalRefused as exc:  # approval_record has audited the attempt
        messages.error(request, f"You cannot sign off {v.label}: {exc.message}.")
        return back
    except Conflict as exc:
        messages.error(request, f"Nothing recorded: {exc.message}.")
        return back
    messages.success(request, _decision_message(result))
    return back


def _decision_message(result: approval.Decision) -> str:
    version, verb = result.version, "approved" if result.approval.decision == "approve" else "rejected"
    if not result.created:
        return f"You had already {verb} {version.label} in this round; nothing new was recorded."
    if version.status == VersionStatus.PRODUCTION:
        return f"You approved {version.label} ({result.quorum}): it is now in production and the champion."
    if version.status == VersionStatus.REJECTED:
        return f"You rejected {version.label}: it will not be promoted."
    return f"You approved {version.label}: {result.quorum} approvals, it still awaits sign-off."


@login_required
@require_POST
def model_rollback(request: HttpRequest, name: str) -> HttpResponse:
    model = _model_for_user(request, name, "approve")
    form = RollbackForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Nothing requested: {form.errors['comment'][0]}")
        return redirect("ui:model-detail", name=model.name)
    try:
        target = approval.rollback_request(
            model=model, actor=request.user, comment=form.cleaned_data["comment"]
        )
    except (NotFound, Conflict) as exc:
        messages.error(request, f"No rollback: {exc.message}.")
        return redirect("ui:model-detail", name=model.name)
    messages.success(
        request,
        f"Rollback to {target.label} requested: it serves again once approved ({approval.quorum(target)}).",
    )
    return redirect("ui:version-detail", name=model.name, version=target.version)


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
    version_edges = [
        edge
        for edge in edges
        if by_id[edge["source"]]["type"] == "version" and by_id[edge["target"]]["type"] == "version"
    ]
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
    return number_text(None if value is None else float(value))


def _pretty_items(values: dict[str, Any] | None) -> list[tuple[str, str]]:
    return [
        (key, value if isinstance(value, str) else _compact_json(value))
        for key, value in sorted((values or {}).items())
    ]


def _compact_json(value: Any) -> str:
    if value in (None, {}, []):
        return ""
    return json.dumps(value, separators=(", ", ": "), sort_keys=True, default=str)


# --- datasets -----------------------------------------------------------------------------------


@login_required
@require_GET
def dataset_detail(request: HttpRequest, name: str, version: int) -> HttpResponse:
    """A registered dataset and the versions that used it, among those the user may read."""
    # Datasets belong to no model: any signed-in user may read one, as through the API.
    dataset = Dataset.objects.filter(name=name, version=version).select_related("created_by").first()
    if dataset is None:
        raise Http404(f"no dataset {name}:{version}")
    page = Paginator(selectors.dataset_uses(dataset, request.user), PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    return render(
        request,
        "registry/dataset_detail.html",
        {
            "dataset": dataset,
            "rows_label": f"{dataset.rows:,}",
            "schema": dataset.schema if isinstance(dataset.schema, list) else [],
            "page": page,
        },
    )


# --- the approvals inbox ------------------------------------------------------------------------


@login_required
@require_GET
def inbox(request: HttpRequest) -> HttpResponse:
    """Versions awaiting the user's sign-off, oldest first, with their gates and quorum in one query."""
    current_gates = Q(gate_results__attempt=F("gate_attempt"))
    versions = approval.inbox(request.user).annotate(
        # distinct: the gate and approval joins multiply each other's rows.
        gates_passed=Count(
            "gate_results", filter=current_gates & Q(gate_results__passed=True), distinct=True
        ),
        gates_skipped=Count(
            "gate_results", filter=current_gates & Q(gate_results__passed__isnull=True), distinct=True
        ),
        gates_failed=Count(
            "gate_results", filter=current_gates & Q(gate_results__passed=False), distinct=True
        ),
        approvals_so_far=Count(
            "approvals",
            filter=Q(approvals__round=F("approval_round"), approvals__decision=Approval.Decision.APPROVE),
            distinct=True,
        ),
    )
    page = Paginator(versions, PAGE_SIZE).get_page(request.GET.get("page"))
    required: dict[int, int] = {}
    rows = []
    for v in page.object_list:
        if v.model_id not in required:
            required[v.model_id] = policy_parse(v.model.policy).approval.min_approvals
        # What approval.quorum(v) says, from the annotation instead of one count per row.
        rows.append({"version": v, "quorum": approval.Quorum(v.approvals_so_far, required[v.model_id])})
    return render(request, "registry/inbox.html", {"page": page, "rows": rows})


@login_required
@require_GET
def retirement_page(request: HttpRequest) -> HttpResponse:
    """Upcoming retirements (warned versions, soonest first) on the models the user can see."""
    warned = (
        ModelVersion.objects.filter(
            retire_on__isnull=False, model__in=selectors.models_visible_to(request.user)
        )
        .select_related("model")
        .order_by("retire_on", "model__name", "version")
    )
    page = Paginator(warned, PAGE_SIZE).get_page(request.GET.get("page"))
    owned = set(
        ModelRole.objects.filter(user=request.user, role=Role.OWNER).values_list("model_id", flat=True)
    )
    rows = [
        {"version": v, "can_keep": request.user.is_staff or v.model_id in owned} for v in page.object_list
    ]
    return render(request, "registry/retirement.html", {"page": page, "rows": rows})


@login_required
@require_POST
def version_keep(request: HttpRequest, name: str, version: int) -> HttpResponse:
    """The "keep" button: pin the version so the sweep leaves it alone (owners)."""
    from lifecycle import retirement

    v = _version_for_user(request, name, version)
    if not selectors.user_can(request.user, v.model, "manage"):
        raise PermissionDenied(f"you need the owner role on {name} to keep a version")
    retirement.version_pin(version=v, actor=request.user)
    messages.success(request, f"{v.label} is pinned: the retirement sweep leaves it alone.")
    return redirect(request.POST.get("next") or reverse("ui:retirement"))


@require_GET
def inbox_count(request: HttpRequest) -> HttpResponse:
    """The top bar's badge, fetched by base.html's script after the page loads so that no page pays
    for it."""
    if not request.user.is_authenticated:
        return HttpResponse("")  # a login redirect would be swapped into the top bar
    return render(request, "registry/_inbox_count.html", {"count": approval.inbox(request.user).count()})


# --- webhooks -----------------------------------------------------------------------------------


@login_required
@require_POST
def webhook_create(request: HttpRequest, name: str) -> HttpResponse:
    model = _model_for_user(request, name, "manage")
    form = WebhookCreateForm(request.POST)
    if not form.is_valid():
        return _model_page(request, model, webhook_form=form)
    hook = webhooks.webhook_create(
        model=model, url=form.cleaned_data["url"], events=form.cleaned_data["events"], actor=request.user
    )
    # As with tokens: the secret rides in the session to the next page view only.
    request.session[NEW_WEBHOOK_SESSION_KEY] = {"model": model.name, "url": hook.url, "secret": hook.secret}
    return redirect(reverse("ui:model-detail", kwargs={"name": model.name}) + "#webhooks")


@login_required
@require_POST
def webhook_delete(request: HttpRequest, name: str, hook_id: int) -> HttpResponse:
    hook = _hook_for_user(request, name, hook_id)
    webhooks.webhook_delete(hook=hook, actor=request.user)
    messages.success(request, f"Webhook to {hook.url} deleted: it receives nothing more.")
    return redirect(reverse("ui:model-detail", kwargs={"name": hook.model.name}) + "#webhooks")


@login_required
@require_POST
def webhook_ping(request: HttpRequest, name: str, hook_id: int) -> HttpResponse:
    hook = _hook_for_user(request, name, hook_id)
    with transaction.atomic():
        # Only this hook gets the ping, whatever events it subscribes to; it is sent once this commits.
        (delivery,) = webhooks.webhooks_emit(
            event="ping", model=hook.model, data={"hook": hook.pk}, only=hook
        )
    messages.success(request, f"Ping queued for {hook.url} (delivery {delivery.delivery_id}).")
    return redirect(reverse("ui:model-detail", kwargs={"name": hook.model.name}) + "#webhooks")


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
    return _tokens_page(request, form=form)


def _tokens_page(
    request: HttpRequest,
    *,
    form: TokenCreateForm | None = None,
    slack_form: SlackIdentityForm | None = None,
) -> HttpResponse:
    new_token = request.session.pop(NEW_TOKEN_SESSION_KEY, None)
    identity = SlackIdentity.objects.filter(user=request.user).first()
    if slack_form is None:
        initial = {"slack_user_id": identity.slack_user_id if identity else ""}
        slack_form = SlackIdentityForm(user=request.user, initial=initial)
    now = timezone.now()
    return render(
        request,
        "registry/tokens.html",
        {
            "form": form or TokenCreateForm(),
            "new_token": new_token,
            "tokens": [
                (token, token.expiry is not None and token.expiry <= now)
                for token in ApiToken.objects.filter(user=request.user).order_by("-created")
            ],
            "slack_identity": identity,
            "slack_form": slack_form,
        },
    )


@login_required
@require_POST
def slack_identity(request: HttpRequest) -> HttpResponse:
    """Link (or, with an empty id, unlink) the Slack account whose clicks count as this user's."""
    form = SlackIdentityForm(request.POST, user=request.user)
    if not form.is_valid():
        return _tokens_page(request, slack_form=form)
    slack_user_id = form.cleaned_data["slack_user_id"]
    if not slack_user_id:
        approval.slack_identity_set(user=request.user, slack_user_id="")
        messages.success(
            request, "Slack unlinked: Approve and Reject clicks in Slack no longer count as yours."
        )
        return redirect("ui:tokens")
    try:
        approval.slack_identity_set(user=request.user, slack_user_id=slack_user_id)
    except IntegrityError:  # linked by someone else between the form's check and this write
        form.add_error("slack_user_id", "This Slack member ID is already linked to another Modelgate user.")
        return _tokens_page(request, slack_form=form)
    messages.success(request, f"Slack member {slack_user_id} linked: its clicks in Slack now count as yours.")
    return redirect("ui:tokens")


@login_required
@require_POST
def token_revoke(request: HttpRequest, key: str) -> HttpResponse:
    token = _token_for_user(request, key)
    label = token.name or token.token_key
    auth.token_revoke(token=token, actor=request.user)
    messages.success(request, f"Token “{label}” revoked: it no longer authenticates.")
    return redirect("ui:tokens")
