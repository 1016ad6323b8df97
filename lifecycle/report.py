"""The audit report of a version: the seven questions someone asks about a model a year later.

``version_report`` assembles the answers from the records the lifecycle left (dataset links and their
statistics, gate results, shadow runs, approvals, promotions and events) in a fixed number of queries,
for any version: retired and purged ones included, since their metadata is never deleted. Every section
says plainly when it does not apply. ``report_markdown`` renders the same numbers as Markdown; the UI's
printable page renders the same dict.
"""

from __future__ import annotations

import datetime as dt
from itertools import groupby
from typing import Any

from django.db.models import Q
from django.utils import timezone

from lifecycle.approval import evidence_digest, gate_result_json
from registry.formatting import number_text
from registry.models import (
    Approval,
    Event,
    EventKind,
    GateResult,
    ModelVersion,
    Promotion,
    ShadowRun,
    VersionDataset,
)

QUESTIONS = {
    "datasets": "Which datasets trained and validated it?",
    "validation_data": "What did the validation data look like?",
    "gates": "How did it do on its gates, per slice, on every attempt?",
    "comparison": "How did it compare with the model it replaced, on the same rows?",
    "shadow": "How did it behave beside the champion on real traffic?",
    "sign_off": "Who signed it off, where, when, and on what evidence?",
    "history": "When did it serve, what replaced it, and was it retired or purged?",
}
SCORED_ROLES = ("validation", "test")


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _section(key: str, *, applies: bool, note: str = "", **content: Any) -> dict[str, Any]:
    return {"question": QUESTIONS[key], "applies": applies, "note": note, **content}


# --- the sections ---------------------------------------------------------------------------------------


def _datasets(links: list[VersionDataset]) -> dict[str, Any]:
    items = [
        {
            "name": link.dataset.name,
            "version": link.dataset.version,
            "role": link.role,
            "sha256": link.dataset.sha256,
            "rows": link.dataset.rows,
            "format": link.dataset.format,
            "size": link.dataset.size,
            "registered_at": _iso(link.dataset.created_at),
        }
        for link in links
    ]
    note = (
        ""
        if items
        else "no dataset is linked: none was named at push, and no gate scored a registered dataset"
    )
    if items and not any(i["role"] == "train" for i in items):
        note = "no training dataset was named at push"
    return _section("datasets", applies=bool(items), note=note, items=items)


def _validation_data(links: list[VersionDataset]) -> dict[str, Any]:
    items = []
    for link in links:
        if link.role not in SCORED_ROLES:
            continue
        ds = link.dataset
        columns = (ds.stats or {}).get("columns") or {}
        items.append(
            {
                "dataset": f"{ds.name}:{ds.version}",
                "role": link.role,
                "rows": ds.rows,
                "features": columns,
                "note": ""
                if columns
                else "statistics were not computed: registered before they were kept "
                "(`manage.py dataset_stats` fills them in)",
            }
        )
    note = "" if items else "no validation data: no gate scored this version on a registered dataset"
    return _section("validation_data", applies=bool(items), note=note, items=items)


def _result(r: GateResult) -> dict[str, Any]:
    return {
        **gate_result_json(r),
        "gate_index": r.gate_index,
        "rows": r.rows,
        "duration_ms": r.duration_ms,
        "details": r.details,
        "at": _iso(r.created_at),
    }


def _gates(version: ModelVersion, results: list[GateResult]) -> dict[str, Any]:
    attempts = []
    for attempt, group in groupby(results, key=lambda r: r.attempt):
        rows = [_result(r) for r in group]
        failed = sum(1 for r in rows if r["passed"] is False)
        attempts.append(
            {
                "attempt": attempt,
                "current": attempt == version.gate_attempt,
                "outcome": "failed" if failed else "passed",
                "passed": sum(1 for r in rows if r["passed"] is True),
                "failed": failed,
                "skipped": sum(1 for r in rows if r["passed"] is None),
                "results": rows,
            }
        )
    note = "" if attempts else "no gate ran: the version never reached validation"
    return _section("gates", applies=bool(attempts), note=note, attempts=attempts)


def _shadow_run(run: ShadowRun) -> dict[str, Any]:
    summary = run.summary or {}
    return {
        "id": run.pk,
        "status": run.status,
        "baseline": run.baseline.version,
        "sources": run.sources,
        "requests": run.requests,
        "rows": run.rows,
        "errors": run.errors,
        "reason": run.reason,
        "agreement": summary.get("agreement"),
        "diff": summary.get("diff"),
        "shift": summary.get("shift"),
        "latency_ms": summary.get("latency_ms"),
        "labelled": summary.get("labelled"),
        "slices": summary.get("slices"),
        "started_at": _iso(run.started_at),
        "ended_at": _iso(run.ended_at),
    }


def _comparison(
    results: list[GateResult], runs: list[ShadowRun], promotions: list[Promotion], version: ModelVersion
) -> dict[str, Any]:
    first_promotion = next((p for p in promotions if p.version_id == version.pk), None)
    replaced = first_promotion.previous if first_promotion else None
    latest = max((r.attempt for r in results), default=None)
    regression = [
        {
            "metric": r.metric,
            "slice": r.slice,
            "dataset": (r.details or {}).get("dataset"),
            "champion": (r.details or {}).get("champion"),
            "value": r.value,
            "baseline": r.baseline,
            "drop": (r.details or {}).get("drop"),
            "threshold": r.threshold,
            "passed": r.passed,
            "rows": r.rows,
        }
        for r in results
        if r.gate == "no_regression" and r.attempt == latest and r.passed is not None
    ]
    skipped = next(
        (
            r.skipped_reason
            for r in results
            if r.gate == "no_regression" and r.attempt == latest and r.passed is None
        ),
        "",
    )
    judged = [r for r in runs if r.status not in {ShadowRun.Status.RUNNING, ShadowRun.Status.CANCELLED}]
    shadow = _shadow_run(judged[0]) if judged else None
    notes = []
    if replaced is None:
        notes.append(
            "first version: no baseline" if first_promotion else "not promoted, so it replaced no model"
        )
    if not regression:
        notes.append(
            f"no no_regression numbers: {skipped}" if skipped else "no no_regression gate in the policy"
        )
    if shadow is None:
        notes.append("no shadow comparison")
    return _section(
        "comparison",
        applies=bool(regression or shadow or replaced),
        note="; ".join(notes),
        replaced={"version": replaced.version, "at": _iso(first_promotion.at)} if replaced else None,
        no_regression=regression,
        shadow=shadow,
    )


def _shadow(runs: list[ShadowRun], skipped: list[Event]) -> dict[str, Any]:
    items = [_shadow_run(run) for run in runs]
    note = ""
    if not items:
        reasons = [e.data.get("reason", "") for e in skipped if e.data.get("stage") in (None, "shadow")]
        note = f"no shadow ran: {reasons[-1]}" if reasons and reasons[-1] else "no shadow ran"
    return _section("shadow", applies=bool(items), note=note, runs=items)


def _sign_off(approvals: list[Approval]) -> dict[str, Any]:
    rounds = []
    for number, group in groupby(approvals, key=lambda a: a.round):
        decisions = []
        for a in group:
            recomputed = evidence_digest(a.evidence)
            decisions.append(
                {
                    "decision": a.decision,
                    "actor": a.actor_name,
                    "channel": a.channel,
                    "slack": {
                        "user": a.slack_user_id,
                        "channel": a.slack_channel,
                        "message_ts": a.slack_message_ts,
                    }
                    if a.channel == Approval.Channel.SLACK
                    else None,
                    "comment": a.comment,
                    "at": _iso(a.at),
                    "evidence": a.evidence,
                    "evidence_digest": a.evidence_digest,
                    "recomputed_digest": recomputed,
                    "digest_matches": recomputed == a.evidence_digest,
                }
            )
        rounds.append({"round": number, "decisions": decisions})
    mismatches = sum(1 for r in rounds for d in r["decisions"] if not d["digest_matches"])
    note = "" if rounds else "nobody signed it off: it never reached a decision"
    if mismatches:
        note = (
            f"WARNING: {mismatches} decision(s) carry evidence that no longer matches its digest: "
            "the stored evidence was changed after the decision"
        )
    return _section("sign_off", applies=bool(rounds), note=note, rounds=rounds, digest_mismatches=mismatches)


def _history(version: ModelVersion, promotions: list[Promotion], events: list[Event]) -> dict[str, Any]:
    served = []
    for index, promotion in enumerate(promotions):
        if promotion.version_id != version.pk:
            continue
        after = promotions[index + 1] if index + 1 < len(promotions) else None  # ordered by time
        served.append(
            {
                "from": _iso(promotion.at),
                "kind": promotion.kind,
                "by": promotion.actor,
                "replaced": promotion.previous.version if promotion.previous else None,
                "until": _iso(after.at) if after else None,
                "replaced_by": after.version.version if after and after.version else None,
                "ended_by": after.kind if after else None,
            }
        )
    retired = [
        e for e in events if e.kind == EventKind.VERSION_TRANSITIONED and e.data.get("to") == "retired"
    ]
    restored = [e for e in events if e.kind == EventKind.VERSION_RESTORED]
    purged = next((e for e in events if e.kind == EventKind.VERSION_PURGED), None)
    retirement = None
    if retired:
        last = retired[-1]
        retirement = {
            "at": _iso(last.at),
            "by": last.actor,
            "reason": last.data.get("reason", ""),
            "restored_since": bool(restored and restored[-1].id > last.id),
        }
    bytes_ = {
        "purged": version.purged_at is not None,
        "purged_at": _iso(version.purged_at),
        "artifact": (purged.data.get("artifact") if purged else None),
        "exports_purged": (purged.data.get("exports") if purged else []),
    }
    notes = []
    if not served:
        notes.append("it never served")
    if retirement is None:
        notes.append("not retired")
    notes.append(
        f"its bytes were purged at {bytes_['purged_at']}: the artifact can no longer be downloaded"
        if bytes_["purged"]
        else "its bytes are kept"
    )
    return _section(
        "history",
        applies=True,
        note="; ".join(notes),
        status=version.status,
        status_reason=version.status_reason,
        served=served,
        retirement=retirement,
        bytes=bytes_,
    )


# --- the report -----------------------------------------------------------------------------------------


def version_report(version: ModelVersion) -> dict[str, Any]:
    """The audit report of ``version`` as one JSON-ready dict (eight queries, whatever the history)."""
    links = list(
        VersionDataset.objects.filter(version=version)
        .select_related("dataset")
        .order_by("role", "dataset__name")
    )
    results = list(GateResult.objects.filter(version=version).order_by("attempt", "gate_index", "slice"))
    runs = list(ShadowRun.objects.filter(candidate=version).select_related("baseline").order_by("-id"))
    approvals = list(Approval.objects.filter(version=version).order_by("round", "at", "id"))
    # The model's promotions that involve this version, and the one right after each of its stints.
    promotions = list(
        Promotion.objects.filter(model_id=version.model_id)
        .filter(Q(version=version) | Q(previous=version))
        .select_related("version", "previous")
        .order_by("at", "id")
    )
    events = list(
        Event.objects.filter(
            version=version,
            kind__in=[
                EventKind.VERSION_TRANSITIONED,
                EventKind.VERSION_RESTORED,
                EventKind.VERSION_PURGED,
                EventKind.STAGE_SKIPPED,
            ],
        ).order_by("id")
    )
    model = version.model
    return {
        "model": model.name,
        "version": version.version,
        "status": version.status,
        "format": version.format,
        "sha256": version.sha256,
        "size": version.size,
        "source": version.source,
        "created_by": version.created_by.username if version.created_by else None,
        "created_at": _iso(version.created_at),
        "generated_at": _iso(timezone.now()),
        "sections": {
            "datasets": _datasets(links),
            "validation_data": _validation_data(links),
            "gates": _gates(version, results),
            "comparison": _comparison(results, runs, promotions, version),
            "shadow": _shadow(runs, [e for e in events if e.kind == EventKind.STAGE_SKIPPED]),
            "sign_off": _sign_off(approvals),
            "history": _history(
                version, promotions, [e for e in events if e.kind != EventKind.STAGE_SKIPPED]
            ),
        },
    }


# --- Markdown -------------------------------------------------------------------------------------------


def _num(value: Any) -> str:
    return number_text(value).replace("|", "\\|").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_num(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def _verdict(passed: bool | None) -> str:
    return {True: "passed", False: "FAILED", None: "skipped"}[passed]


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the same numbers as the JSON, one heading per question."""
    s = report["sections"]
    out = [
        f"# Audit report: {report['model']} v{report['version']}",
        "",
        f"Status **{report['status']}**, format {report['format']}, sha256 `{report['sha256']}`, "
        f"{_num(report['size'])} bytes, pushed by {report['created_by'] or '—'} at {report['created_at']}. "
        f"Generated at {report['generated_at']}.",
        "",
    ]

    def heading(number: int, key: str) -> None:
        out.extend([f"## {number}. {s[key]['question']}", ""])
        if s[key]["note"]:
            out.extend([f"_{s[key]['note']}_", ""])

    heading(1, "datasets")
    if s["datasets"]["items"]:
        out += _table(
            ["dataset", "role", "rows", "format", "sha256"],
            [
                [f"{d['name']}:{d['version']}", d["role"], d["rows"], d["format"], f"`{d['sha256']}`"]
                for d in s["datasets"]["items"]
            ],
        )

    heading(2, "validation_data")
    for item in s["validation_data"]["items"]:
        out.extend([f"**{item['dataset']}** ({item['role']}, {_num(item['rows'])} rows)", ""])
        if item["note"]:
            out.extend([f"_{item['note']}_", ""])
        numeric = [(n, c) for n, c in item["features"].items() if c["kind"] == "numeric"]
        categorical = [(n, c) for n, c in item["features"].items() if c["kind"] == "categorical"]
        if numeric:
            out += _table(
                ["feature", "count", "nulls", "mean", "std", "min", "max"],
                [
                    [n, c["count"], c["nulls"], c.get("mean"), c.get("std"), c.get("min"), c.get("max")]
                    for n, c in numeric
                ],
            )
        if categorical:
            out += _table(
                ["feature", "count", "nulls", "distinct", "top values"],
                [
                    [n, c["count"], c["nulls"], c["distinct"], ", ".join(f"{v} ({k:,})" for v, k in c["top"])]
                    for n, c in categorical
                ],
            )

    heading(3, "gates")
    for attempt in s["gates"]["attempts"]:
        current = " (current)" if attempt["current"] else ""
        out.extend(
            [
                f"**Attempt {attempt['attempt']}{current}: {attempt['outcome']}** — {attempt['passed']} passed, "
                f"{attempt['failed']} failed, {attempt['skipped']} skipped",
                "",
            ]
        )
        out += _table(
            ["gate", "metric", "slice", "value", "baseline", "threshold", "rows", "result"],
            [
                [
                    r["gate"],
                    r["metric"] or "—",
                    r["slice"] or "all rows",
                    r["value"],
                    r["baseline"],
                    r["threshold"],
                    r["rows"],
                    _verdict(r["passed"]) + (f": {r['skipped_reason']}" if r["skipped_reason"] else ""),
                ]
                for r in attempt["results"]
            ],
        )

    heading(4, "comparison")
    c = s["comparison"]
    if c["replaced"]:
        out.extend([f"It replaced **v{c['replaced']['version']}** at {c['replaced']['at']}.", ""])
    if c["no_regression"]:
        out += _table(
            ["metric", "slice", "this version", "champion", "champion version", "drop", "allowed", "result"],
            [
                [
                    r["metric"],
                    r["slice"] or "all rows",
                    r["value"],
                    r["baseline"],
                    f"v{r['champion']}",
                    r["drop"],
                    r["threshold"],
                    _verdict(r["passed"]),
                ]
                for r in c["no_regression"]
            ],
        )
    if c["shadow"]:
        sh = c["shadow"]
        out.extend(
            [
                f"Shadow against v{sh['baseline']}: agreement {_num(sh['agreement'])} over {_num(sh['requests'])} "
                f"requests ({_num(sh['rows'])} rows), verdict {sh['status']}.",
                "",
            ]
        )

    heading(5, "shadow")
    for run in s["shadow"]["runs"]:
        diff = run["diff"] or {}
        latency = run["latency_ms"] or {}
        shift = run["shift"] or {}
        out.extend(
            [f"**Run {run['id']} against v{run['baseline']}: {run['status']}** — {run['reason'] or ''}", ""]
        )
        out += _table(
            [
                "requests",
                "rows",
                "errors",
                "agreement",
                "diff mean",
                "diff p95",
                "diff max",
                "KS",
                "PSI",
                "p95 latency ratio",
                "sources",
                "from",
                "to",
            ],
            [
                [
                    run["requests"],
                    run["rows"],
                    run["errors"],
                    run["agreement"],
                    diff.get("mean"),
                    diff.get("p95"),
                    diff.get("max"),
                    shift.get("ks"),
                    shift.get("psi"),
                    latency.get("p95_ratio"),
                    ", ".join(run["sources"] or []),
                    run["started_at"],
                    run["ended_at"],
                ]
            ],
        )

    heading(6, "sign_off")
    for rnd in s["sign_off"]["rounds"]:
        out.extend([f"**Round {rnd['round']}**", ""])
        out += _table(
            ["decision", "who", "channel", "when", "comment", "evidence digest", "digest check"],
            [
                [
                    d["decision"],
                    d["actor"],
                    d["channel"]
                    + (f" ({d['slack']['channel']}, user {d['slack']['user']})" if d["slack"] else ""),
                    d["at"],
                    d["comment"] or "—",
                    f"`{d['evidence_digest']}`",
                    "matches" if d["digest_matches"] else f"MISMATCH (now `{d['recomputed_digest']}`)",
                ]
                for d in rnd["decisions"]
            ],
        )

    heading(7, "history")
    h = s["history"]
    out.extend(
        [f"Status now: **{h['status']}**" + (f" — {h['status_reason']}" if h["status_reason"] else ""), ""]
    )
    if h["served"]:
        out += _table(
            ["served from", "until", "replaced", "replaced by", "how", "by"],
            [
                [
                    x["from"],
                    x["until"] or "still serving",
                    f"v{x['replaced']}" if x["replaced"] else "—",
                    f"v{x['replaced_by']}" if x["replaced_by"] else (x["ended_by"] or "—"),
                    x["kind"],
                    x["by"],
                ]
                for x in h["served"]
            ],
        )
    if h["retirement"]:
        r = h["retirement"]
        out.extend(
            [
                f"Retired at {r['at']} by {r['by']}: {r['reason']}"
                + (" (restored since)" if r["restored_since"] else ""),
                "",
            ]
        )
    b = h["bytes"]
    out.extend(
        [
            f"Bytes: purged at {b['purged_at']} (artifact {b['artifact'] or 'deleted'}; exports: {', '.join(b['exports_purged']) or 'none'})"
            if b["purged"]
            else "Bytes: kept.",
            "",
        ]
    )
    return "\n".join(out)
