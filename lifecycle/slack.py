"""Slack sign-off: the Block Kit request with Approve and Reject buttons, and the button clicks.

Messages go out through ``slack_sdk.WebClient`` (``SLACK_API_URL`` points it elsewhere in tests).
Clicks arrive at ``/slack/interactions/``: the signature is checked with ``slack_sdk``'s
``SignatureVerifier`` (which also refuses requests older than five minutes), a replay of the same
signed request is refused, and the decision goes through ``lifecycle.approval`` like any other.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from lifecycle import approval
from lifecycle.policy import policy_parse
from registry.models import Approval, ModelVersion, SlackIdentity, SlackMessage, SlackRequestSeen
from registry.models import VersionStatus as S

log = logging.getLogger(__name__)
_warned_unconfigured = False


def configured() -> bool:
    """Slack is used when a bot token is set; otherwise the page and the API are the sign-off paths."""
    global _warned_unconfigured
    if settings.SLACK_BOT_TOKEN:
        return True
    if not _warned_unconfigured:
        log.warning(
            "Slack is not configured (SLACK_BOT_TOKEN is empty): sign off on the version page or the API"
        )
        _warned_unconfigured = True
    return False


def client() -> Any:
    from slack_sdk import WebClient

    return WebClient(token=settings.SLACK_BOT_TOKEN, base_url=settings.SLACK_API_URL, timeout=10)


def version_url(version: ModelVersion) -> str:
    return f"{settings.PUBLIC_URL}/models/{version.model.name}/versions/{version.version}/"


# --- the message ---------------------------------------------------------------------------------------------


def _decisions_line(version: ModelVersion) -> str:
    decisions = Approval.objects.filter(version=version, round=version.approval_round).order_by("at")
    parts = [
        f"{'Approved' if a.decision == 'approve' else 'Rejected'} by @{a.actor_name} {a.at:%H:%M} UTC"
        + (f" ({a.comment})" if a.comment else "")
        for a in decisions
    ]
    return "; ".join(parts)


def message_blocks(version: ModelVersion) -> tuple[str, list[dict[str, Any]]]:
    """The text fallback and the Block Kit blocks for a version's approval request, as it stands now."""
    summary = approval.evidence_summary(version)
    count = approval.quorum(version)
    pusher = version.created_by.get_username() if version.created_by else "unknown"
    title = f"{version.model.name} v{version.version}"
    if version.is_rollback:
        title += " (rollback)"
    failed = [g for g in summary["gates"] if g["passed"] is False]
    exports = ", ".join(f"{e['format']}: {e['status']}" for e in summary["exports"]) or "none requested"
    state = {
        S.AWAITING_APPROVAL: f":hourglass: Awaiting approval — {count}",
        S.PRODUCTION: f":white_check_mark: Promoted to production — {count}",
        S.REJECTED: f":x: Rejected — {version.status_reason}",
    }.get(version.status, f"Status: {version.status}")
    decided = _decisions_line(version)
    if decided and version.status == S.AWAITING_APPROVAL:
        state += f"\n{decided} — {count}"
    elif decided:
        state += f"\n{decided}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": f"{title} awaits sign-off"[:150]}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Model*\n{version.model.name}"},
                {"type": "mrkdwn", "text": f"*Version*\nv{version.version}"},
                {"type": "mrkdwn", "text": f"*Pushed by*\n{pusher}"},
                {"type": "mrkdwn", "text": f"*sha256*\n`{version.sha256[:12]}`"},
                {"type": "mrkdwn", "text": f"*Gates*\n{approval.gates_line(summary)}"},
                {
                    "type": "mrkdwn",
                    "text": _shadow_text(summary["shadow"]),
                },
                {"type": "mrkdwn", "text": f"*Exports*\n{exports}"[:1900]},
            ],
        },
    ]
    if failed:
        lines = "\n".join(f"• {g['gate']} {g['metric']} {g['slice']}: {g['value']}" for g in failed[:10])
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Failed gates*\n{lines}"}})
    blocks.append(
        {
            "type": "section",
            "text": {"type": "mrkdwn", "text": f"<{version_url(version)}|Open the version page>"},
        }
    )
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": state}]})
    if version.status == S.AWAITING_APPROVAL:
        value = f"{version.model.name}:{version.version}:{version.approval_round}"
        blocks.append(
            {
                "type": "actions",
                "block_id": "decision",
                "elements": [
                    {
                        "type": "button",
                        "action_id": "approve",
                        "style": "primary",
                        "value": value,
                        "text": {"type": "plain_text", "text": "Approve"},
                    },
                    {
                        "type": "button",
                        "action_id": "reject",
                        "style": "danger",
                        "value": value,
                        "text": {"type": "plain_text", "text": "Reject"},
                    },
                ],
            }
        )
    text = f"{title}: {state.splitlines()[0]}"
    return text, blocks


def request_post(version_id: int, round: int) -> SlackMessage | None:
    """Post the approval request for one round (once: a re-run finds the stored message)."""
    if not configured():
        return None
    version = ModelVersion.objects.select_related("model", "created_by").get(pk=version_id)
    if version.approval_round != round or version.status != S.AWAITING_APPROVAL:
        return None
    existing = SlackMessage.objects.filter(version=version, round=round).first()
    if existing is not None:
        return existing
    channel = policy_parse(version.model.policy).approval.slack_channel
    if not channel:
        log.info("%s: no slack_channel in the policy; not posting", version.label)
        return None
    text, blocks = message_blocks(version)
    response = client().chat_postMessage(channel=channel, text=text, blocks=blocks)
    try:
        with transaction.atomic():
            message = SlackMessage.objects.create(
                version=version, round=round, channel=response["channel"], ts=response["ts"]
            )
            from registry.events import event_record
            from registry.models import EventKind

            event_record(
                kind=EventKind.SLACK_POSTED,
                actor="system:slack",
                version=version,
                data={"channel": message.channel, "ts": message.ts, "round": round},
            )
    except IntegrityError:  # a concurrent run posted first; keep theirs
        return SlackMessage.objects.get(version=version, round=round)
    return message


def message_update(version_id: int) -> bool:
    """Rewrite the round's message in place to show the decisions, or the outcome."""
    if not configured():
        return False
    version = ModelVersion.objects.select_related("model", "created_by").get(pk=version_id)
    message = SlackMessage.objects.filter(version=version, round=version.approval_round).first()
    if message is None:
        return False
    text, blocks = message_blocks(version)
    client().chat_update(channel=message.channel, ts=message.ts, text=text, blocks=blocks)
    return True


def notify(channel: str, text: str) -> bool:
    """Post a plain notification (retirement warnings and the like) to a channel."""
    if not configured():
        return False
    from slack_sdk.errors import SlackApiError

    try:
        client().chat_postMessage(channel=channel, text=text, unfurl_links=False)
    except (SlackApiError, OSError) as exc:
        log.warning("could not notify %s: %s", channel, exc)
        return False
    return True


def respond(response_url: str, text: str) -> None:
    """An ephemeral answer to the clicker, through the interaction's response_url."""
    from slack_sdk.webhook import WebhookClient

    WebhookClient(response_url, timeout=10).send(text=text, response_type="ephemeral", replace_original=False)


# --- interactions -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Click:
    action: str  # approve | reject
    model: str
    version: int
    round: int
    slack_user: str
    team: str
    channel: str
    ts: str
    response_url: str


class BadRequest(Exception):
    """The request is not a well-formed, signed, fresh Slack interaction."""


def verify(body: bytes, headers: dict[str, str]) -> None:
    """Check the signature and age (slack_sdk), then refuse a replay of the exact same request."""
    from slack_sdk.signature import SignatureVerifier

    timestamp = headers.get("X-Slack-Request-Timestamp", "")
    signature = headers.get("X-Slack-Signature", "")
    if not settings.SLACK_SIGNING_SECRET:
        raise BadRequest("Slack is not configured: SLACK_SIGNING_SECRET is empty")
    if not timestamp or not signature:
        raise BadRequest("the request is not signed")
    if not SignatureVerifier(settings.SLACK_SIGNING_SECRET).is_valid(
        body=body, timestamp=timestamp, signature=signature
    ):
        raise BadRequest("the signature is wrong or the request is older than five minutes")
    try:
        with transaction.atomic():
            SlackRequestSeen.objects.create(signature=signature[:100])
    except IntegrityError:
        raise BadRequest("this exact request was already handled (a replay)") from None


def seen_prune(now: dt.datetime | None = None) -> int:
    """Forget replay signatures older than the age check's window: the verifier refuses those anyway."""
    cutoff = (now or timezone.now()) - dt.timedelta(minutes=10)
    deleted, _ = SlackRequestSeen.objects.filter(at__lt=cutoff).delete()
    return deleted


def parse(payload_text: str) -> Click:
    try:
        payload = json.loads(payload_text)
        action = payload["actions"][0]
        model, version, round_ = action["value"].rsplit(":", 2)
        return Click(
            action=action["action_id"],
            model=model,
            version=int(version),
            round=int(round_),
            slack_user=payload["user"]["id"],
            team=(payload.get("team") or {}).get("id", ""),
            channel=(payload.get("channel") or {}).get("id", ""),
            ts=(payload.get("message") or payload.get("container") or {}).get("ts", "")
            or (payload.get("container") or {}).get("message_ts", ""),
            response_url=payload.get("response_url", ""),
        )
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise BadRequest(f"not a block_actions payload Modelgate sent: {exc}") from None


def user_for(click: Click):
    identity = SlackIdentity.objects.select_related("user").filter(slack_user_id=click.slack_user).first()
    return identity.user if identity else None


def _shadow_text(shadow: dict[str, Any]) -> str:
    text = f"*Shadow*\n{shadow['verdict']}: {shadow['reason']}"
    if shadow.get("warning"):
        text += f"\n:warning: {shadow['warning']}"
    return text[:1900]
