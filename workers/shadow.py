"""Shadow tasks: fold a model's new traffic into its running shadows, and the periodic sweep."""

from __future__ import annotations

from celery import shared_task

from lifecycle import shadow
from workers.limits import model_limits


@shared_task(
    name="workers.shadow.evaluate_model_shadows",
    acks_late=True,
    reject_on_worker_lost=True,
    time_limit=600,  # a model's runs each fold for at most shadow.BUDGET_SECONDS per task
    soft_time_limit=480,
)
def evaluate_model_shadows(model_id: int) -> None:
    with model_limits():
        shadow.model_shadows_evaluate(model_id)


@shared_task(name="workers.shadow.evaluate_shadows", ignore_result=True)
def evaluate_shadows() -> None:
    """Beat: wake every model with a running shadow (new traffic, or max_days reached with none)."""
    for model_id in shadow.shadows_due():
        evaluate_model_shadows.delay(model_id)
