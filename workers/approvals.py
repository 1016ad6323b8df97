"""Celery tasks of sign-off: Slack messages, approval timeouts and webhook deliveries."""

from __future__ import annotations

from celery import shared_task

from lifecycle import approval, slack, webhooks


@shared_task(name="workers.approvals.post_slack_request", acks_late=True)
def post_slack_request(version_id: int, round: int) -> None:
    slack.request_post(version_id, round)


@shared_task(name="workers.approvals.update_slack_message", acks_late=True)
def update_slack_message(version_id: int) -> None:
    slack.message_update(version_id)


@shared_task(name="workers.approvals.slack_respond", acks_late=True)
def slack_respond(response_url: str, text: str) -> None:
    slack.respond(response_url, text)


@shared_task(name="workers.approvals.slack_notify", acks_late=True)
def slack_notify(channel: str, text: str) -> None:
    slack.notify(channel, text)


@shared_task(name="workers.approvals.expire_approvals", ignore_result=True)
def expire_approvals() -> None:
    approval.approvals_expire()
    slack.seen_prune()


@shared_task(name="workers.approvals.deliver_webhook", acks_late=True)
def deliver_webhook(delivery_id: int) -> None:
    webhooks.webhook_deliver(delivery_id)


@shared_task(name="workers.approvals.retry_webhooks", ignore_result=True)
def retry_webhooks() -> None:
    for delivery_id in webhooks.webhooks_due():
        webhooks.webhook_deliver(delivery_id)
