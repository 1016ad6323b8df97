"""The Celery app: queues, routing, delivery guarantees and the beat schedule (DESIGN.md §7)."""

from __future__ import annotations

import logging
import os
import time

from celery import Celery, signals
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
        "workers.tasks.warm_datasets": {"queue": "gates"},
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

# The queues whose tasks open models in TensorFlow, Keras, ONNX Runtime or the TFLite interpreter.
MODEL_QUEUES = frozenset({"gates", "exports", "shadow"})


@signals.worker_init.connect
def _preload_model_runtimes(sender: object = None, **kwargs: object) -> None:
    """Import the model runtimes once in a worker's main process, before the pool forks its children.

    The gates and exports workers run ``--max-tasks-per-child 1``: every task is a fresh child, and
    importing TensorFlow there costs 4-5 s of each gate run and each export. Imported in the parent,
    the modules are inherited by every fork for free. Importing creates no TensorFlow thread pool or
    session (those start with the first op, in the child), so the children are safe; a parent never
    opens a model. ``MODELGATE_PRELOAD_RUNTIMES=false`` turns it off.
    """
    if os.environ.get("MODELGATE_PRELOAD_RUNTIMES", "true").lower() in {"0", "false", "no", "off"}:
        return
    consumed = set(getattr(sender, "app", app).amqp.queues.consume_from or QUEUES)
    if not consumed & MODEL_QUEUES:
        return
    started = time.perf_counter()
    import keras  # noqa: F401
    import onnxruntime  # noqa: F401
    import tensorflow  # noqa: F401

    logging.getLogger(__name__).info(
        "preloaded tensorflow, keras and onnxruntime for %s in %.1f s",
        ",".join(sorted(consumed & MODEL_QUEUES)),
        time.perf_counter() - started,
    )
