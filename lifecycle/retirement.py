"""Auto-retirement and retention: find the versions nobody uses, warn, retire, purge their bytes.

The sweep reads every version once (one query each for the models and their policies, the versions,
their last use and the aliases) and decides in Python, so it makes the same queries whatever the
number of versions. What it
decides is written in bulk: one UPDATE and one INSERT of events per kind of action.

Decisions, per version, in order:

- a retired version whose ``purge_after_days`` have passed loses its bytes (``purge``);
- a version in the pipeline (registered, validating, shadowing, awaiting approval), held by an alias
  other than ``champion``, tagged ``pinned``, among the newest ``keep_last`` versions that do not serve
  (the rollback pool), used within ``unused_days``, or pushed within them, is exempt; a warning it had
  is cancelled;
- a production version is only a candidate when the policy's ``retire_production`` is true;
- a candidate with no warning gets one (``retire_on`` = today + ``warn_days``);
- a warned candidate whose ``retire_on`` has come is retired.

Running the sweep twice in a day changes nothing the second time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Max, Q
from django.utils import timezone

from lifecycle import webhooks
from lifecycle.pipeline import enqueue_on_commit
from lifecycle.policy import policy_parse
from lifecycle.states import TransitionNotAllowed, version_transition, versions_transition_bulk
from registry.errors import Conflict, ServiceError
from registry.events import Actor, actor_label, event_record, events_bulk
from registry.models import (
    Alias,
    EventKind,
    Export,
    ModelVersion,
    Promotion,
    RegisteredModel,
    Usage,
)
from registry.models import VersionStatus as S
from registry.storage import blob_delete

log = logging.getLogger(__name__)

ACTOR = "system:retirement"
NOTIFY = "workers.approvals.slack_notify"
IN_PIPELINE = frozenset({S.REGISTERED, S.VALIDATING, S.SHADOWING, S.AWAITING_APPROVAL})
PINNED = "pinned"


@dataclass
class Decision:
    version_id: int
    model_id: int
    model: str
    version: int
    status: str
    action: str  # warn | retire | cancel | purge
    reason: str
    last_used: dt.date | None = None
    retire_on: dt.date | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "status": self.status,
            "action": self.action,
            "reason": self.reason,
            "last_used": self.last_used.isoformat() if self.last_used else None,
            "retire_on": self.retire_on.isoformat() if self.retire_on else None,
        }


@dataclass
class Plan:
    today: dt.date
    decisions: list[Decision] = field(default_factory=list)

    def of(self, action: str) -> list[Decision]:
        return [d for d in self.decisions if d.action == action]


# --- reading ------------------------------------------------------------------------------------------


def _versions():
    return ModelVersion.objects.order_by("model_id", "-version").values_list(
        "id",
        "model_id",
        "version",
        "status",
        "tags",
        "created_at",
        "status_changed_at",
        "retirement_warned_at",
        "retire_on",
        "purged_at",
    )


def _last_used() -> dict[int, dt.date]:
    """Each version's last day with a prediction or a download: one aggregate query."""
    return dict(
        Usage.objects.filter(Q(predictions__gt=0) | Q(downloads__gt=0))
        .order_by()
        .values("version_id")
        .annotate(last=Max("day"))
        .values_list("version_id", "last")
    )


def retirement_plan(now: dt.datetime | None = None) -> Plan:
    """What the sweep would do now, and why: four queries, whatever the number of versions."""
    now = now or timezone.now()
    today = now.date()
    plan = Plan(today=today)
    if not settings.MODELGATE_RETIREMENT_ENABLED:
        return plan
    rules = {
        m.pk: (m.name, policy_parse(m.policy).retirement)
        for m in RegisteredModel.objects.only("id", "name", "policy")
    }
    last_used = _last_used()
    aliased = set(Alias.objects.exclude(name="champion").values_list("version_id", flat=True))
    # Rows come newest first per model, so each version's rank among the model's versions that do not
    # serve (the rollback pool keep_last protects) is counted on the way.
    model_id, rank = None, 0
    for row in _versions().iterator(chunk_size=10_000):
        if row[1] != model_id:
            model_id, rank = row[1], 0
        if row[3] != S.PRODUCTION:
            rank += 1
        name, policy = rules[model_id]
        if policy.enabled:
            decision = _decide((*row, last_used.get(row[0]), row[0] in aliased, rank), name, policy, now)
            if decision is not None:
                plan.decisions.append(decision)
    return plan


def _decide(row: tuple, name: str, policy: Any, now: dt.datetime) -> Decision | None:
    (
        pk,
        model_id,
        number,
        status,
        tags,
        created,
        changed,
        warned,
        retire_on,
        purged,
        last_used,
        aliased,
        rank,
    ) = row
    today = now.date()

    def decision(action: str, reason: str, on: dt.date | None = retire_on) -> Decision:
        return Decision(pk, model_id, name, number, status, action, reason, last_used, on)

    if status == S.RETIRED:
        if purged is None and changed + dt.timedelta(days=policy.purge_after_days) <= now:
            return decision(
                "purge", f"retired on {changed:%Y-%m-%d}, over {policy.purge_after_days} days ago"
            )
        return None
    since = last_used or created.date()
    exempt = _exemption(status, tags or [], rank, aliased, since, today, policy, used=last_used is not None)
    if exempt:
        return decision("cancel", f"warning cancelled: {exempt}", None) if warned is not None else None
    unused = (
        f"unused since {since:%Y-%m-%d}"
        if last_used
        else f"never used since it was pushed on {since:%Y-%m-%d}"
    )
    if warned is None:
        on = today + dt.timedelta(days=policy.warn_days)
        note = (
            " (it is the champion: the model will have no production version)"
            if status == S.PRODUCTION
            else ""
        )
        return decision("warn", f"v{number} will be retired on {on:%Y-%m-%d}: {unused}{note}", on)
    if retire_on is not None and today >= retire_on:
        return decision("retire", f"{unused}; warned on {warned:%Y-%m-%d}")
    return None


def _exemption(status, tags, rank, aliased, since, today, policy, *, used: bool) -> str:
    if status in IN_PIPELINE:
        return f"{status.replace('_', ' ')}"
    if status == S.PRODUCTION and not policy.retire_production:
        return "in production (retire_production is false)"
    if aliased:
        return "held by an alias"
    if PINNED in tags:
        return "pinned"
    if status != S.PRODUCTION and rank <= policy.keep_last:
        return f"among the newest {policy.keep_last} versions"
    if since > today - dt.timedelta(days=policy.unused_days):
        return (
            f"used on {since:%Y-%m-%d}"
            if used
            else f"pushed on {since:%Y-%m-%d}, within {policy.unused_days} days"
        )
    return ""


# --- acting -------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    warned: list[Decision]
    cancelled: list[Decision]
    retired: list[Decision]
    purged: list[Decision]

    def counts(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("warned", "cancelled", "retired", "purged")}


def retirement_sweep(now: dt.datetime | None = None) -> SweepResult:
    """Carry out today's plan. Idempotent: a second run the same day finds nothing to do."""
    now = now or timezone.now()
    plan = retirement_plan(now)
    result = SweepResult(plan.of("warn"), plan.of("cancel"), [], [])
    with _sweep_transaction():
        _warn(result.warned, now)
        _cancel(result.cancelled, now)
    result.retired = _retire(plan.of("retire"), now)
    result.purged = _purge(plan.of("purge"), now)
    if any(result.counts().values()):
        log.info("retirement sweep: %s", result.counts())
    return result


@contextlib.contextmanager
def _sweep_transaction() -> Iterator[None]:
    """A transaction for the sweep's bulk writes. On PostgreSQL its commit does not wait for the WAL
    flush (``synchronous_commit off``, this transaction only): a crash right after could lose the
    sweep's last changes, and the next sweep, which is idempotent, makes them again."""
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
        yield


def _emit(event: str, decisions: list[Decision]) -> None:
    webhooks.webhooks_emit_many([(event, d.version_id, d.model_id, d.as_dict) for d in decisions])


def _events(kind: str, decisions: list[Decision], now: dt.datetime, extra: dict | None = None) -> None:
    events_bulk(
        [
            {
                "kind": kind,
                "actor": ACTOR,
                "model_id": d.model_id,
                "version_id": d.version_id,
                "data": {**d.as_dict(), **(extra or {})},
                "at": now,
            }
            for d in decisions
        ]
    )


def _notify(decisions: list[Decision], headline: str) -> None:
    """One Slack message per model that has a channel, listing its versions."""
    by_model: dict[int, list[Decision]] = defaultdict(list)
    for d in decisions:
        by_model[d.model_id].append(d)
    if not by_model:
        return
    for model in RegisteredModel.objects.filter(pk__in=list(by_model)).only("id", "name", "policy"):
        channel = policy_parse(model.policy).approval.slack_channel
        if not channel:
            continue
        items = by_model[model.pk]
        lines = "\n".join(f"• {model.name} v{d.version}: {d.reason}" for d in items[:50])
        more = f"\n… and {len(items) - 50} more" if len(items) > 50 else ""
        enqueue_on_commit(NOTIFY, channel, f"*{headline}* ({model.name})\n{lines}{more}")


def _warn(decisions: list[Decision], now: dt.datetime) -> None:
    if not decisions:
        return
    by_date: dict[dt.date, list[int]] = defaultdict(list)
    for d in decisions:
        by_date[d.retire_on].append(d.version_id)
    for on, ids in by_date.items():  # one UPDATE per distinct warn_days in use
        ModelVersion.objects.filter(pk__any=ids, retirement_warned_at=None).update(
            retirement_warned_at=now, retire_on=on
        )
    _events(EventKind.RETIREMENT_WARNED, decisions, now)
    _emit("version.retirement_warned", decisions)
    _notify(decisions, "Versions will be retired unless they are used or kept")


def _cancel(decisions: list[Decision], now: dt.datetime) -> None:
    if not decisions:
        return
    ModelVersion.objects.filter(pk__any=[d.version_id for d in decisions]).update(
        retirement_warned_at=None, retire_on=None
    )
    _events(EventKind.RETIREMENT_CANCELLED, decisions, now)
    _emit("version.retirement_cancelled", decisions)


def _retire(decisions: list[Decision], now: dt.datetime) -> list[Decision]:
    if not decisions:
        return []
    done = []
    # A production version leaves serving: its own transaction, champion cleared, owners told plainly.
    for d in [d for d in decisions if d.status == S.PRODUCTION]:
        version = ModelVersion.objects.select_related("model").get(pk=d.version_id)
        if _retire_champion(version, d):
            done.append(d)
    rest = [d for d in decisions if d.status != S.PRODUCTION]
    with _sweep_transaction():
        moved = versions_transition_bulk(
            versions=[(d.version_id, d.model_id, d.status) for d in rest],
            to=S.RETIRED,
            actor=ACTOR,
            reason="retired as unused, after a warning (see the retirement events)",
            data_of={d.version_id: {"unused": d.reason} for d in rest},
            also={"retirement_warned_at": None, "retire_on": None},
        )
        retired = [d for d in rest if d.version_id in moved]
        _notify(retired, "Versions retired as unused")
    return done + retired


def _retire_champion(version: ModelVersion, decision: Decision, actor: Actor = ACTOR, why: str = "") -> bool:
    reason = f"{why or 'retired as unused: ' + decision.reason}; the model has no champion now, and predict answers 404"
    try:
        with transaction.atomic():
            RegisteredModel.objects.select_for_update().get(pk=version.model_id)
            version_transition(
                version_id=version.pk,
                to=S.RETIRED,
                actor=actor,
                reason=reason,
                expected=S.PRODUCTION,
                retirement_warned_at=None,
                retire_on=None,
            )
            Alias.objects.filter(model_id=version.model_id, name="champion", version=version).delete()
            Promotion.objects.create(
                model_id=version.model_id,
                version=None,
                previous=version,
                kind=Promotion.Kind.CLEAR,
                actor=actor_label(actor),
            )
            _notify([decision], f"{version.label} was retired: {version.model.name} has no champion now")
    except TransitionNotAllowed:
        return False
    return True


def _purge(decisions: list[Decision], now: dt.datetime) -> list[Decision]:
    """Delete the bytes of versions retired long enough, keeping bytes a live version or export shares."""
    if not decisions:
        return []
    ids = [d.version_id for d in decisions]
    versions = {
        v.pk: v for v in ModelVersion.objects.filter(pk__any=ids).only("id", "model_id", "artifact_key")
    }
    exports = list(Export.objects.filter(version_id__any=ids, purged_at=None).exclude(artifact_key=""))
    keys = {v.artifact_key for v in versions.values() if v.artifact_key} | {e.artifact_key for e in exports}
    # Content-addressed keys: bytes are shared by every version (or export) with the same content.
    shared = set(
        ModelVersion.objects.filter(artifact_key__in=keys, purged_at=None)
        .exclude(pk__any=ids)
        .values_list("artifact_key", flat=True)
    ) | set(
        Export.objects.filter(artifact_key__in=keys, purged_at=None)
        .exclude(version_id__any=ids)
        .values_list("artifact_key", flat=True)
    )
    deleted, kept = set(), set()
    for key in keys:
        if key in shared:
            kept.add(key)
            continue
        try:
            blob_delete(key)
        except Exception:  # the store is away: try again on the next sweep (purged_at stays empty)
            log.warning("could not delete %s; the next sweep tries again", key, exc_info=True)
            continue
        deleted.add(key)
    done = [d for d in decisions if versions[d.version_id].artifact_key in deleted | kept]
    done_ids = [d.version_id for d in done]
    with _sweep_transaction():
        ModelVersion.objects.filter(pk__any=done_ids).update(purged_at=now)
        Export.objects.filter(version_id__any=done_ids, purged_at=None).update(purged_at=now)
        events_bulk(
            [
                dict(
                    kind=EventKind.VERSION_PURGED,
                    actor=ACTOR,
                    model_id=versions[d.version_id].model_id,
                    version_id=d.version_id,
                    data={
                        "reason": d.reason,
                        "artifact": "deleted"
                        if versions[d.version_id].artifact_key in deleted
                        else "kept: shared with a live version",
                        "exports": sorted(e.format for e in exports if e.version_id == d.version_id),
                    },
                    at=now,
                )
                for d in done
            ]
        )
        _emit("version.purged", done)
    return done


# --- operator actions ---------------------------------------------------------------------------------


def version_retire(*, version: ModelVersion, actor: Actor, comment: str = "") -> ModelVersion:
    """Retire a version by hand (owners). A production version leaves serving and the champion is cleared."""
    why = f"retired by {actor_label(actor)}" + (f": {comment}" if comment else "")
    if version.status == S.PRODUCTION:
        decision = Decision(
            version.pk, version.model_id, version.model.name, version.version, version.status, "retire", why
        )
        if not _retire_champion(version, decision, actor, why):
            raise Conflict(f"{version.label} is no longer in production")
    else:
        version_transition(
            version_id=version.pk,
            to=S.RETIRED,
            actor=actor,
            reason=why,
            retirement_warned_at=None,
            retire_on=None,
        )
    return ModelVersion.objects.select_related("model").get(pk=version.pk)


class RestoreRefused(ServiceError):
    status = 409
    code = "restore_refused"


@transaction.atomic
def version_restore(*, version: ModelVersion, actor: Actor, upload=None) -> ModelVersion:
    """A retired version back to ``archived``; a purged one only with its identical bytes re-uploaded."""
    locked = ModelVersion.objects.select_for_update().select_related("model").get(pk=version.pk)
    if locked.status != S.RETIRED:
        raise Conflict(f"{locked.label} is {locked.status}; only a retired version can be restored")
    data: dict[str, Any] = {}
    if locked.purged_at is not None:
        if upload is None:
            raise RestoreRefused(
                f"{locked.label}'s bytes were purged on {locked.purged_at:%Y-%m-%d}; restore it by uploading "
                f"the identical artifact (sha256 {locked.sha256}) as `artifact`"
            )
        if upload.sha256 != locked.sha256:
            raise ServiceError(
                f"the uploaded file's sha256 is {upload.sha256}, not {locked.sha256}: only the identical bytes "
                "restore a purged version",
                code="checksum_mismatch",
            )
        from registry.storage import blob_put

        with upload.path.open("rb") as fh:
            key = blob_put(fh, sha256=upload.sha256)
        ModelVersion.objects.filter(pk=locked.pk).update(artifact_key=key, purged_at=None)
        data["bytes"] = "re-uploaded, sha256 matches"
    restored = version_transition(
        version_id=locked.pk, to=S.ARCHIVED, actor=actor, reason=f"restored by {actor_label(actor)}"
    )
    event_record(kind=EventKind.VERSION_RESTORED, actor=actor, version=restored, data=data)
    webhooks.webhooks_emit(
        event="version.restored", version=restored, data={"by": actor_label(actor), **data}
    )
    return restored


@transaction.atomic
def version_pin(*, version: ModelVersion, actor: Actor) -> ModelVersion:
    """Keep a version from auto-retirement: tag it ``pinned`` and cancel a pending warning."""
    locked = ModelVersion.objects.select_for_update().get(pk=version.pk)
    tags = list(locked.tags or [])
    if PINNED not in tags:
        tags.append(PINNED)
    was_warned = locked.retirement_warned_at is not None
    ModelVersion.objects.filter(pk=locked.pk).update(tags=tags, retirement_warned_at=None, retire_on=None)
    event_record(
        kind=EventKind.VERSION_PINNED,
        actor=actor,
        version=locked,
        data={"warning_cancelled": was_warned},
    )
    locked.refresh_from_db()
    return locked
