"""Human sign-off and promotion: who may approve, the quorum, and the one promotion path.

Every interface (Slack buttons, the web page, the API) records a decision through ``approval_record``;
none re-implements the rules. A decision keeps the evidence the approver was shown and its digest, so
that a year later anyone can check that what was approved is what the records still say.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from lifecycle import webhooks
from lifecycle.pipeline import enqueue_on_commit
from lifecycle.policy import policy_parse
from lifecycle.states import TransitionNotAllowed, version_transition
from registry.errors import Conflict, NotFound, ServiceError
from registry.events import Actor, actor_label, event_record
from registry.models import (
    Alias,
    Approval,
    EventKind,
    GateResult,
    ModelRole,
    ModelVersion,
    Promotion,
    RegisteredModel,
    Role,
    SlackIdentity,
)
from registry.models import VersionStatus as S

log = logging.getLogger(__name__)

POST_SLACK = "workers.approvals.post_slack_request"
UPDATE_SLACK = "workers.approvals.update_slack_message"


class ApprovalRefused(ServiceError):
    status = 403
    code = "approval_refused"


# --- evidence -----------------------------------------------------------------------------------------


def gate_result_json(r: GateResult) -> dict[str, Any]:
    """One gate result as the approver's evidence (and the audit report) show it."""
    return {
        "gate": r.gate,
        "metric": r.metric,
        "slice": r.slice,
        "value": r.value,
        "baseline": r.baseline,
        "threshold": r.threshold,
        "passed": r.passed,
        "skipped_reason": r.skipped_reason,
    }


def evidence_summary(version: ModelVersion) -> dict[str, Any]:
    """What an approver is shown: the gates of the latest attempt, the shadow verdict and the exports."""
    gates = [
        gate_result_json(r)
        for r in GateResult.objects.filter(version=version, attempt=version.gate_attempt).order_by(
            "gate_index", "slice"
        )
    ]
    exports = [
        {"format": e.format, "status": e.status, "max_abs_diff": (e.parity or {}).get("max_abs_diff")}
        for e in version.exports.order_by("format")
    ]
    return {
        "model": version.model.name,
        "version": version.version,
        "sha256": version.sha256,
        "gate_attempt": version.gate_attempt,
        "gates": gates,
        "shadow": shadow_evidence(version),
        "exports": exports,
        "rollback": version.is_rollback,
    }


def shadow_evidence(version: ModelVersion) -> dict[str, Any]:
    """The shadow verdict and its numbers, or why the stage was skipped."""
    from lifecycle import shadow

    run = shadow.shadow_latest(version)
    if run is None or run.status == run.Status.RUNNING:
        skipped = (
            version.events.filter(kind=EventKind.STAGE_SKIPPED)
            .order_by("-id")
            .values_list("data", flat=True)
            .first()
        )
        return {"verdict": "skipped", "reason": (skipped or {}).get("reason", "")}
    summary = run.summary or {}
    latency = summary.get("latency_ms") or {}
    return {
        "verdict": run.status,
        "reason": run.reason,
        "baseline": run.baseline.version,
        "requests": run.requests,
        "rows": run.rows,
        "agreement": summary.get("agreement"),
        "p95_latency_ratio": latency.get("p95_ratio"),
        "errors": run.errors,
        "labelled": summary.get("labelled"),
        "warning": summary.get("warning", ""),
    }


def evidence_digest(summary: dict[str, Any]) -> str:
    canonical = json.dumps(summary, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def gates_line(summary: dict[str, Any]) -> str:
    """A one-line gates summary for Slack and notifications: 5 passed, 1 skipped, 0 failed."""
    passed = sum(1 for g in summary["gates"] if g["passed"] is True)
    skipped = sum(1 for g in summary["gates"] if g["passed"] is None)
    failed = sum(1 for g in summary["gates"] if g["passed"] is False)
    return f"{passed} passed, {skipped} skipped, {failed} failed"


# --- rules --------------------------------------------------------------------------------------------


def _is_author(user: AbstractBaseUser, version: ModelVersion) -> bool:
    author = str((version.source or {}).get("author") or "").strip().lower()
    if version.created_by_id == user.pk:
        return True
    return bool(author) and author in {
        user.get_username().lower(),
        (getattr(user, "email", "") or "").lower(),
    }


def approval_refusal(user: AbstractBaseUser, version: ModelVersion) -> str:
    """Why ``user`` may not sign off ``version`` (an empty string when they may)."""
    policy = policy_parse(version.model.policy).approval
    if not user.is_authenticated:
        return "you are not signed in"
    holds_role = (
        user.is_staff
        or ModelRole.objects.filter(
            model=version.model, user=user, role__in=[Role.APPROVER, Role.OWNER]
        ).exists()
    )
    if not holds_role:
        return f"you are not an approver of {version.model.name}"
    if policy.approvers:
        groups = set(user.groups.values_list("name", flat=True))
        if user.get_username() not in policy.approvers and not groups & set(policy.approvers):
            return f"you are not among the approvers the policy of {version.model.name} names"
    if not policy.allow_self_approval and _is_author(user, version):
        return "you pushed (or authored) this version; the policy does not allow self-approval"
    return ""


@dataclass(frozen=True)
class Quorum:
    approvals: int
    required: int

    def __str__(self) -> str:
        return f"{self.approvals} of {self.required}"


def quorum(version: ModelVersion) -> Quorum:
    required = policy_parse(version.model.policy).approval.min_approvals
    count = Approval.objects.filter(
        version=version, round=version.approval_round, decision=Approval.Decision.APPROVE
    ).count()
    return Quorum(count, required)


# --- entering and leaving awaiting_approval ------------------------------------------------------------


@transaction.atomic
def await_approval(
    *, version_id: int, actor: Actor, reason: str = "", rollback: bool = False
) -> ModelVersion:
    """Move a version to awaiting_approval, opening a new approval round, and ask the approvers."""
    locked = ModelVersion.objects.select_for_update().get(pk=version_id)
    moved = version_transition(
        version_id=locked.pk,
        to=S.AWAITING_APPROVAL,
        actor=actor,
        reason=reason,
        approval_round=locked.approval_round + 1,
        is_rollback=rollback,
        lease_expires_at=None,
        task_attempts=0,
    )
    enqueue_on_commit(POST_SLACK, moved.pk, moved.approval_round)
    return moved


@dataclass(frozen=True)
class Decision:
    approval: Approval
    created: bool
    quorum: Quorum
    version: ModelVersion


def approval_record(
    *,
    version_id: int,
    user: AbstractBaseUser,
    decision: str,
    channel: str,
    comment: str = "",
    slack: dict[str, str] | None = None,
) -> Decision:
    """Record one person's decision and act on it: any reject rejects, a quorum promotes.

    A second click by the same person in the same round returns the first decision (no new record).
    A refused attempt raises ApprovalRefused after auditing it in a transaction of its own (the
    decision's transaction is rolled back, the refusal must stay on record).
    """
    try:
        return _approval_record(
            version_id=version_id, user=user, decision=decision, channel=channel, comment=comment, slack=slack
        )
    except ApprovalRefused as exc:
        version = ModelVersion.objects.select_related("model").get(pk=version_id)
        approval_refusal_record(version=version, actor=user, channel=channel, reason=exc.message, data=slack)
        raise


@transaction.atomic
def _approval_record(
    *,
    version_id: int,
    user: AbstractBaseUser,
    decision: str,
    channel: str,
    comment: str,
    slack: dict[str, str] | None,
) -> Decision:
    version = ModelVersion.objects.select_for_update().select_related("model").get(pk=version_id)
    name = actor_label(user)
    existing = Approval.objects.filter(version=version, round=version.approval_round, actor_name=name).first()
    if existing is not None:
        return Decision(existing, False, quorum(version), version)
    if version.status != S.AWAITING_APPROVAL:
        raise Conflict(
            f"{version.label} is {version.status}, not awaiting approval", code="not_awaiting_approval"
        )
    refusal = approval_refusal(user, version)
    if refusal:
        raise ApprovalRefused(refusal)
    summary = evidence_summary(version)
    slack = slack or {}
    approval = Approval.objects.create(
        version=version,
        round=version.approval_round,
        decision=decision,
        actor=user,
        actor_name=name,
        channel=channel,
        comment=comment,
        slack_user_id=slack.get("user_id", ""),
        slack_channel=slack.get("channel", ""),
        slack_message_ts=slack.get("ts", ""),
        evidence=summary,
        evidence_digest=evidence_digest(summary),
    )
    event_record(
        kind=EventKind.APPROVAL_RECORDED,
        actor=user,
        version=version,
        data={
            "decision": decision,
            "channel": channel,
            "comment": comment,
            "round": version.approval_round,
            "digest": approval.evidence_digest,
        },
    )
    if decision == Approval.Decision.REJECT:
        version = version_transition(
            version_id=version.pk,
            to=S.REJECTED,
            actor=user,
            reason=f"rejected by {name}" + (f": {comment}" if comment else ""),
        )
    else:
        webhooks.webhooks_emit(
            version=version, event="version.approved", data={"by": name, "channel": channel}
        )
        version = promote_when_ready(version=version, actor=user)
    enqueue_on_commit(UPDATE_SLACK, version.pk)
    return Decision(approval, True, quorum(version), version)


def approval_refusal_record(
    *, version: ModelVersion, actor: Actor, channel: str, reason: str, data: dict | None = None
) -> None:
    """Audit a refused sign-off attempt (in its own transaction: the attempt changed nothing else)."""
    event_record(
        kind=EventKind.APPROVAL_REFUSED,
        actor=actor,
        version=version,
        data={"channel": channel, "reason": reason, **(data or {})},
    )


def promote_when_ready(*, version: ModelVersion, actor: Actor) -> ModelVersion:
    """Promote once the quorum is reached and no required export is failing or still running."""
    if version.status != S.AWAITING_APPROVAL:
        return version
    current = quorum(version)
    if current.approvals < current.required:
        return version
    from lifecycle import exports  # exports completes by calling back into this module

    required_ok = exports.exports_required_ok(version)
    if required_ok is None:
        log.info("%s has its quorum; promotion waits for its required exports", version.label)
        return version
    if required_ok is False:
        return version  # the exports step rejects it
    return version_promote(version=version, actor=actor)


@transaction.atomic
def version_promote(*, version: ModelVersion, actor: Actor) -> ModelVersion:
    """In one transaction: the version serves, the previous one is archived, champion moves, history grows.

    The model's row lock serialises promotions of one model, so two quorums reached at once on two
    versions end with one production version (and the database's partial unique index agrees).
    """
    RegisteredModel.objects.select_for_update().get(pk=version.model_id)
    previous = ModelVersion.objects.filter(model_id=version.model_id, status=S.PRODUCTION).first()
    if previous is not None:
        version_transition(
            version_id=previous.pk, to=S.ARCHIVED, actor=actor, reason=f"replaced by v{version.version}"
        )
    kind = Promotion.Kind.ROLLBACK if version.is_rollback else Promotion.Kind.PROMOTE
    promoted = version_transition(
        version_id=version.pk,
        to=S.PRODUCTION,
        actor=actor,
        reason="rolled back to this version" if version.is_rollback else "approved",
        expected=S.AWAITING_APPROVAL,
        data={"previous": previous.version if previous else None, "kind": kind},
    )
    Alias.objects.update_or_create(
        model_id=version.model_id,
        name="champion",
        defaults={"version": promoted, "updated_at": timezone.now()},
    )
    Promotion.objects.create(
        model_id=version.model_id, version=promoted, previous=previous, kind=kind, actor=actor_label(actor)
    )
    from lifecycle import shadow  # shadows against the old champion re-pair with the new one

    shadow.shadows_repair(model_id=version.model_id, champion=promoted, actor=actor)
    event_record(
        kind=EventKind.VERSION_PROMOTED,
        actor=actor,
        version=promoted,
        data={"previous": previous.version if previous else None, "kind": kind},
    )
    return promoted


@transaction.atomic
def rollback_request(*, model: RegisteredModel, actor: AbstractBaseUser, comment: str = "") -> ModelVersion:
    """Ask to serve the previous production version again, through the same approval path (no new gates)."""
    last = Promotion.objects.filter(model=model).exclude(version=None).order_by("-at", "-id").first()
    if last is None or last.previous is None:
        raise NotFound(f"{model.name} has no previous production version to roll back to")
    target = ModelVersion.objects.select_for_update().get(pk=last.previous_id)
    if target.status != S.ARCHIVED:
        raise Conflict(f"{target.label} is {target.status}; only an archived version can be rolled back to")
    event_record(
        kind=EventKind.ROLLBACK_REQUESTED,
        actor=actor,
        version=target,
        data={"from": last.version.version, "to": target.version, "comment": comment},
    )
    return await_approval(
        version_id=target.pk,
        actor=actor,
        reason=f"rollback from v{last.version.version} requested by {actor_label(actor)}"
        + (f": {comment}" if comment else ""),
        rollback=True,
    )


@transaction.atomic
def slack_identity_set(*, user: AbstractBaseUser, slack_user_id: str) -> SlackIdentity | None:
    """Link (or, with an empty id, unlink) the Slack account whose clicks count as ``user``'s."""
    old = SlackIdentity.objects.filter(user=user).values_list("slack_user_id", flat=True).first()
    identity = None
    if slack_user_id:
        identity, _ = SlackIdentity.objects.update_or_create(
            user=user, defaults={"slack_user_id": slack_user_id}
        )
    else:
        SlackIdentity.objects.filter(user=user).delete()
    event_record(
        kind=EventKind.SLACK_IDENTITY_SET, actor=user, data={"old": old, "new": slack_user_id or None}
    )
    return identity


def approvals_expire(now: dt.datetime | None = None) -> list[int]:
    """Reject every version whose approval waited longer than its policy's timeout_hours."""
    now = now or timezone.now()
    expired = []
    waiting = ModelVersion.objects.filter(status=S.AWAITING_APPROVAL).select_related("model")
    for version in waiting.only("id", "status_changed_at", "model__policy", "model__name", "version"):
        hours = policy_parse(version.model.policy).approval.timeout_hours
        if version.status_changed_at + dt.timedelta(hours=hours) > now:
            continue
        try:
            with transaction.atomic():
                version_transition(
                    version_id=version.pk,
                    to=S.REJECTED,
                    actor="system:approvals",
                    reason="approval timed out",
                    expected=S.AWAITING_APPROVAL,
                    data={"timeout_hours": hours},
                )
                enqueue_on_commit(UPDATE_SLACK, version.pk)
            expired.append(version.pk)
        except TransitionNotAllowed:
            continue  # decided meanwhile
    return expired


def inbox(user: AbstractBaseUser) -> Any:
    """Versions awaiting approval that ``user`` may sign off (role-wise; self-approval is checked on click)."""
    waiting = ModelVersion.objects.filter(status=S.AWAITING_APPROVAL).select_related("model", "created_by")
    if not user.is_staff:
        models = ModelRole.objects.filter(user=user, role__in=[Role.APPROVER, Role.OWNER]).values("model_id")
        waiting = waiting.filter(model_id__in=models)
    # Not those this user already decided in the current round (one subquery: both conditions must
    # hold on the same approval row, which a plain exclude() across the relation does not ensure).
    decided = Approval.objects.filter(
        version=OuterRef("pk"), round=OuterRef("approval_round"), actor_name=user.get_username()
    )
    return waiting.exclude(Exists(decided)).order_by("status_changed_at")
