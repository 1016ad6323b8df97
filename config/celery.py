"""The Celery app: queues, routing, delivery guarantees and the beat schedule (DESIGN.md §7)."""

from __future__ import annotations

import os

from celery import Celery
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# Task modules: the pipeline (gates, reconciler), the export branches, sign-off and webhooks, shadows.
app = Celery(
    "modelgate",
    include=[
        "workers.tasks",
        "workers.exports",
        "workers.approvals",
        "workers.shadow",
        "workers.maintenance",
    ],
)
app.config_from_object("django.conf:settings", namespace="CELERY")

QUEUES = ("pipeline", "gates", "exports", "shadow", "maintenance")

app.conf.update(
    # One direct exchange per queue, bound by its own name: a message routed to a queue lands there only.
    task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
    task_default_queue="pipeline",
    task_routes={
        "workers.tasks.run_gates": {"queue": "gates"},
        "workers.tasks.reconcile_pipeline": {"queue": "pipeline"},
        "workers.exports.*": {"queue": "exports"},
        "workers.approvals.*": {"queue": "pipeline"},
        "workers.shadow.*": {"queue": "shadow"},
        "workers.maintenance.*": {"queue": "maintenance"},
    },
    # A task is acknowledged only once it has finished, and a worker that dies mid-task (SIGKILL, OOM)
    # hands its message back instead of losing it. The database lease and attempt counter make the
    # redelivery safe and stop a model that kills its worker every time.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
    timezone="UTC",
    broker_connection_retry_on_startup=True,
    # Publishing from a web request must not hang for long when the broker is away: the version is
    # already committed and the reconciler enqueues it later.
    task_publish_retry_policy={
        "max_retries": 2,
        "interval_start": 0,
        "interval_step": 0.5,
        "interval_max": 1,
    },
    worker_hijack_root_logger=False,
)
