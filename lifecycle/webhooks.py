"""Outgoing webhooks: signed deliveries of lifecycle events to the URLs a model's owners register.

A delivery row is written in the transaction of the event it reports, and sent by a task once that
commits; failures are retried with exponential backoff and every attempt is recorded on the row.
The signature is HMAC-SHA256 over ``"{timestamp}.{body}"`` with the hook's secret.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from typing import Any

import requests
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from registry.events import Actor, event_record
from registry.models import EventKind, ModelVersion, RegisteredModel, Webhook, WebhookDelivery

log = logging.getLogger(__name__)

DELIVER = "workers.approvals.deliver_webhook"
EVENTS = (
    "version.registered",
    "version.rejected",
    "version.awaiting_approval",
    "version.approved",
    "version.promoted",
    "version.retired",
    "export.completed",
    "shadow.completed",
    "version.retirement_warned",
    "version.retirement_cancelled",
    "version.purged",
    "version.restored",
    "ping",
)
# Status moves that are announced, by the status a version reaches.
STATUS_EVENTS = {
    "rejected": "version.rejected",
    "awaiting_approval": "version.awaiting_approval",
    "production": "version.promoted",
    "retired": "version.retired",
}


def signature(secret: str, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


@transaction.atomic
def webhook_create(*, model: RegisteredModel, url: str, events: list[str], actor: Actor) -> Webhook:
    hook = Webhook.objects.create(
        model=model,
        url=url,
        events=events,
        secret=secrets.token_urlsafe(32),
        created_by=actor if not isinstance(actor, str) else None,
    )
    event_record(
        kind=EventKind.WEBHOOK_CREATED, actor=actor, model=model, data={"url": url, "events": events}
    )
    return hook


@transaction.atomic
def webhook_delete(*, hook: Webhook, actor: Actor) -> None:
    """Delete a hook; its pending deliveries go with it, the audit log keeps the fact."""
    event_record(
        kind=EventKind.WEBHOOK_DELETED,
        actor=actor,
        model=hook.model,
        data={"url": hook.url, "events": hook.events},
    )
    hook.delete()


def _payload(
    event: str, model: RegisteredModel, version: ModelVersion | None, data: dict[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event": event,
        "model": model.name,
        "at": timezone.now().isoformat(),
        "data": data,
    }
    if version is not None:
        body["version"] = {
            "number": version.version,
            "status": version.status,
            "status_reason": version.status_reason,
            "sha256": version.sha256,
            "url": f"{settings.PUBLIC_URL}/models/{model.name}/versions/{version.version}/",
        }
    return body


def webhooks_emit(
    *,
    event: str,
    version: ModelVersion | None = None,
    model: RegisteredModel | None = None,
    data: dict | None = None,
    only: Webhook | None = None,
) -> list[WebhookDelivery]:
    """Queue a delivery of ``event`` to every active hook of the model that subscribes to it."""
    model = model or version.model
    if only is not None:
        hooks = [only]
    else:
        hooks = [
            h for h in Webhook.objects.filter(model=model, active=True) if not h.events or event in h.events
        ]
    deliveries = []
    for hook in hooks:
        delivery = WebhookDelivery.objects.create(
            webhook=hook,
            event=event,
            delivery_id=uuid.uuid4(),
            payload=_payload(event, model, version, data or {}),
            next_attempt_at=timezone.now(),
        )
        deliveries.append(delivery)
        from lifecycle.pipeline import enqueue_on_commit

        enqueue_on_commit(DELIVER, delivery.pk)
    return deliveries


def models_with_hooks(model_ids: set[int]) -> set[int]:
    return set(Webhook.objects.filter(model_id__in=model_ids, active=True).values_list("model_id", flat=True))


def webhooks_emit_many(items: list[tuple[str, int, int, dict]]) -> int:
    """``webhooks_emit`` for many versions at once, ``(event, version_id, model_id, data)`` each: one
    query for the hooks, and only when a model has one, one for its versions and one insert.

    ``data`` may be a function returning the dict; it is called only for models that have a hook.
    """
    if not items:
        return 0
    hooks: dict[int, list[Webhook]] = {}
    for hook in Webhook.objects.filter(model_id__in={m for _, _, m, _ in items}, active=True).select_related(
        "model"
    ):
        hooks.setdefault(hook.model_id, []).append(hook)
    wanted = [(e, v, m, d) for e, v, m, d in items if m in hooks]
    if not wanted:
        return 0
    versions = ModelVersion.objects.in_bulk([v for _, v, _, _ in wanted])
    now = timezone.now()
    deliveries = [
        WebhookDelivery(
            webhook=hook,
            event=event,
            delivery_id=uuid.uuid4(),
            payload=_payload(event, hook.model, versions[version_id], data() if callable(data) else data),
            next_attempt_at=now,
        )
        for event, version_id, model_id, data in wanted
        if version_id in versions
        for hook in hooks[model_id]
        if not hook.events or event in hook.events
    ]
    from lifecycle.pipeline import enqueue_on_commit

    for delivery in WebhookDelivery.objects.bulk_create(deliveries):
        enqueue_on_commit(DELIVER, delivery.pk)
    return len(deliveries)


def _backoff(attempt: int) -> float:
    return settings.MODELGATE_WEBHOOK_BACKOFF_SECONDS * (2 ** (attempt - 1))


def webhook_deliver(delivery_id: int) -> WebhookDelivery | None:
    """Send one delivery if it is due; record the attempt; schedule the next one on failure.

    The row is claimed by moving next_attempt_at forward first (compare-and-set), so that the task and
    the beat sweep never send the same attempt twice.
    """
    now = timezone.now()
    delivery = WebhookDelivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if delivery is None or delivery.state != WebhookDelivery.State.PENDING:
        return None
    if delivery.next_attempt_at and delivery.next_attempt_at > now:
        return None
    claim_until = now + dt.timedelta(seconds=settings.MODELGATE_WEBHOOK_TIMEOUT_SECONDS + 30)
    claimed = WebhookDelivery.objects.filter(
        pk=delivery.pk, state=WebhookDelivery.State.PENDING, next_attempt_at=delivery.next_attempt_at
    ).update(next_attempt_at=claim_until)
    if claimed != 1:
        return None
    body = json.dumps(delivery.payload, sort_keys=True, separators=(",", ":")).encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Modelgate-Webhooks/1",
        "X-Modelgate-Event": delivery.event,
        "X-Modelgate-Delivery": str(delivery.delivery_id),
        "X-Modelgate-Timestamp": timestamp,
        "X-Modelgate-Signature": signature(delivery.webhook.secret, timestamp, body),
    }
    started = time.perf_counter()
    status, error = None, ""
    try:
        response = requests.post(
            delivery.webhook.url,
            data=body,
            headers=headers,
            timeout=settings.MODELGATE_WEBHOOK_TIMEOUT_SECONDS,
        )
        status = response.status_code
        if not 200 <= status < 300:
            error = f"HTTP {status}"
    except requests.RequestException as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    attempts = [
        *delivery.attempts,
        {
            "at": now.isoformat(),
            "status": status,
            "error": error,
            "ms": round((time.perf_counter() - started) * 1000, 1),
        },
    ]
    if not error:
        state, next_at = WebhookDelivery.State.DELIVERED, None
    elif len(attempts) >= settings.MODELGATE_WEBHOOK_MAX_ATTEMPTS:
        state, next_at = WebhookDelivery.State.FAILED, None
    else:
        state, next_at = (
            WebhookDelivery.State.PENDING,
            timezone.now() + dt.timedelta(seconds=_backoff(len(attempts))),
        )
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        attempts=attempts, state=state, next_attempt_at=next_at
    )
    delivery.attempts, delivery.state, delivery.next_attempt_at = attempts, state, next_at
    if state == WebhookDelivery.State.PENDING:
        from config.celery import app

        app.send_task(DELIVER, args=[delivery.pk], countdown=_backoff(len(attempts)))
    return delivery


def webhooks_due(now: dt.datetime | None = None) -> list[int]:
    """Pending deliveries whose next attempt is due (the sweep's safety net for lost tasks)."""
    now = now or timezone.now()
    return list(
        WebhookDelivery.objects.filter(state=WebhookDelivery.State.PENDING, next_attempt_at__lte=now)
        .order_by("id")
        .values_list("id", flat=True)[:500]
    )
