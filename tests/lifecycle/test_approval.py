"""Human sign-off: Slack buttons signed as Slack signs them, web and API decisions, quorum,
separation of duties, timeouts, promotion, history and rollback, and signed webhooks."""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from urllib.parse import urlencode

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from lifecycle import approval
from lifecycle.states import version_transition
from registry.models import (
    Alias,
    Approval,
    Event,
    ModelRole,
    ModelVersion,
    Promotion,
    Role,
    SlackIdentity,
    SlackMessage,
    WebhookDelivery,
)
from tests.conftest import SLACK_SIGNING_SECRET, push, wait_for_status
from tests.factories import ModelVersionFactory
from tests.lifecycle.test_pipeline import set_policy
from tests.standins import Recorder, WebhookHandler, slack_signature

pytestmark = pytest.mark.django_db(transaction=True)

CHANNEL = "C0123456"


def slack_click(
    version: ModelVersion, slack_user: str, action: str = "approve", *, age: float = 0, ts: str = ""
) -> tuple[str, dict]:
    """A block_actions request body and headers, signed exactly as Slack signs them."""
    payload = {
        "type": "block_actions",
        "user": {"id": slack_user, "username": slack_user},
        "team": {"id": "T1"},
        "channel": {"id": CHANNEL},
        "message": {"ts": ts or "1700000000.000100"},
        "response_url": f"{settings_slack_url()}/response/{slack_user}",
        "actions": [
            {"action_id": action, "value": f"{version.model.name}:{version.version}:{version.approval_round}"}
        ],
    }
    body = urlencode({"payload": json.dumps(payload)})
    timestamp = str(int(time.time() - age))
    headers = {
        "HTTP_X_SLACK_REQUEST_TIMESTAMP": timestamp,
        "HTTP_X_SLACK_SIGNATURE": slack_signature(SLACK_SIGNING_SECRET, timestamp, body),
    }
    return body, headers


def settings_slack_url() -> str:
    from django.conf import settings

    return settings.SLACK_API_URL.removesuffix("/api/")


def post_click(body: str, headers: dict):
    return APIClient().post(
        "/slack/interactions/", body, content_type="application/x-www-form-urlencoded", **headers
    )


@pytest.fixture
def slack_policy(owner) -> dict:
    policy = {"gates": [{"kind": "loads"}], "approval": {"min_approvals": 1, "slack_channel": CHANNEL}}
    set_policy(owner, policy)
    return policy


@pytest.fixture
def alice_on_slack(approver) -> str:
    SlackIdentity.objects.create(user=approver.user, slack_user_id="U_ALICE")
    return "U_ALICE"


def awaiting(fraud_model, number: int, *, created_by=None) -> ModelVersion:
    """A version put in awaiting_approval through the real path's functions (no gates run)."""
    version = ModelVersionFactory(model=fraud_model, version=number, created_by=created_by)
    version_transition(version_id=version.pk, to="validating", actor="tests")
    return approval.await_approval(version_id=version.pk, actor="tests")


def test_reaching_awaiting_approval_posts_one_message_with_both_buttons(
    celery_workers, slack_server, fraud_model, publisher, slack_policy, tmp_path
):
    from tests import builders

    push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path))
    version = wait_for_status("fraud", 1)
    assert version.status == "awaiting_approval"

    posts = slack_server.wait_for(lambda c: c["path"].endswith("chat.postMessage"))
    time.sleep(1)  # a second post would have arrived by now
    posts = [c for c in slack_server.calls if c["path"].endswith("chat.postMessage")]
    assert len(posts) == 1
    data = posts[0]["data"]
    assert data["channel"] == CHANNEL
    assert posts[0]["auth"] == "Bearer xoxb-test-token"
    text = json.dumps(data["blocks"])
    assert "fraud v1" in text and "1 passed, 0 skipped, 0 failed" in text and "pablo" in text
    assert "/models/fraud/versions/1/" in text
    buttons = [b for block in data["blocks"] if block["type"] == "actions" for b in block["elements"]]
    assert {(b["action_id"], b.get("style")) for b in buttons} == {
        ("approve", "primary"),
        ("reject", "danger"),
    }
    message = SlackMessage.objects.get(version=version)
    assert message.channel == CHANNEL and message.ts


def test_a_signed_approve_click_promotes_moves_champion_archives_and_updates_the_message(
    celery_workers, slack_server, fraud_model, slack_policy, alice_on_slack, publisher
):
    old = awaiting(fraud_model, 1, created_by=publisher.user)
    approval.version_promote(version=old, actor="tests")
    version = awaiting(fraud_model, 2, created_by=publisher.user)
    slack_server.wait_for(lambda c: c["path"].endswith("chat.postMessage") and "v2" in json.dumps(c["data"]))

    response = post_click(*slack_click(version, alice_on_slack))

    assert response.status_code == 200
    version.refresh_from_db()
    assert version.status == "production"
    assert Alias.objects.get(model=fraud_model, name="champion").version_id == version.pk
    assert ModelVersion.objects.get(pk=old.pk).status == "archived"
    decision = Approval.objects.get(version=version)
    assert (decision.channel, decision.actor_name, decision.slack_user_id) == ("slack", "alice", "U_ALICE")
    assert decision.evidence_digest == approval.evidence_digest(decision.evidence)
    assert decision.evidence["version"] == 2
    updates = slack_server.wait_for(
        lambda c: c["path"].endswith("chat.update") and "Approved by @alice" in json.dumps(c["data"])
    )
    assert "1 of 1" in json.dumps(updates[-1]["data"]["blocks"])
    assert not [
        b for b in updates[-1]["data"]["blocks"] if b["type"] == "actions"
    ]  # buttons gone once decided


def refused(response, version: ModelVersion, status: int) -> None:
    assert response.status_code == status
    version.refresh_from_db()
    assert version.status == "awaiting_approval"
    assert not Approval.objects.filter(version=version).exists()


def test_unsigned_wrongly_signed_and_stale_requests_change_nothing(fraud_model, slack_policy, alice_on_slack):
    version = awaiting(fraud_model, 1)
    body, headers = slack_click(version, alice_on_slack)

    refused(post_click(body, {}), version, 401)
    refused(post_click(body, {**headers, "HTTP_X_SLACK_SIGNATURE": "v0=" + "0" * 64}), version, 401)
    refused(post_click(*slack_click(version, alice_on_slack, age=6 * 60)), version, 401)
    tampered = body.replace("approve", "reject")
    refused(post_click(tampered, headers), version, 401)
    assert Event.objects.filter(kind="slack.refused").count() == 4


def test_the_exact_same_request_replayed_is_refused(fraud_model, slack_policy, alice_on_slack, owner):
    ModelVersion.objects.filter(model=fraud_model).delete()
    set_policy(owner, {"approval": {"min_approvals": 2, "slack_channel": CHANNEL}})
    version = awaiting(fraud_model, 1)
    body, headers = slack_click(version, alice_on_slack)
    assert post_click(body, headers).status_code == 200
    assert Approval.objects.filter(version=version).count() == 1

    replay = post_click(body, headers)

    assert replay.status_code == 401
    assert "replay" in replay.json()["error"]["message"]
    assert Approval.objects.filter(version=version).count() == 1
    assert Event.objects.filter(kind="slack.refused").count() == 1


def test_a_mapped_user_who_is_not_an_approver_is_told_so_and_nothing_changes(
    celery_workers, slack_server, fraud_model, slack_policy, viewer
):
    SlackIdentity.objects.create(user=viewer.user, slack_user_id="U_VICTOR")
    version = awaiting(fraud_model, 1)

    response = post_click(*slack_click(version, "U_VICTOR"))

    refused(response, version, 200)
    event = Event.objects.get(kind="approval.refused")
    assert event.actor == "victor" and "not an approver of fraud" in event.data["reason"]
    ephemeral = slack_server.wait_for(lambda c: c["path"] == "/response/U_VICTOR")
    assert ephemeral[0]["data"]["response_type"] == "ephemeral"
    assert "you are not an approver of fraud" in ephemeral[0]["data"]["text"]


def test_an_unmapped_slack_user_is_refused(fraud_model, slack_policy):
    version = awaiting(fraud_model, 1)
    refused(post_click(*slack_click(version, "U_STRANGER")), version, 200)
    assert "not linked" in Event.objects.get(kind="approval.refused").data["reason"]


def test_the_pusher_cannot_approve_their_own_version(fraud_model, slack_policy, approver):
    SlackIdentity.objects.create(user=approver.user, slack_user_id="U_ALICE")
    version = awaiting(fraud_model, 1, created_by=approver.user)

    refused(post_click(*slack_click(version, "U_ALICE")), version, 200)
    assert "self-approval" in Event.objects.get(kind="approval.refused").data["reason"]
    api = approver.client.post("/api/v1/models/fraud/versions/1/approve/", {"comment": "lgtm"}, format="json")
    assert api.status_code == 403 and "self-approval" in api.json()["error"]["message"]


def test_the_author_named_in_the_source_cannot_approve_either(fraud_model, slack_policy, approver):
    version = awaiting(fraud_model, 1)
    ModelVersion.objects.filter(pk=version.pk).update(source={"author": "alice"})
    response = approver.client.post("/api/v1/models/fraud/versions/1/approve/", {}, format="json")
    assert response.status_code == 403


def test_a_double_click_records_one_approval_and_a_quorum_of_two_needs_two_people(
    fraud_model, owner, slack_policy, alice_on_slack, make_actor
):
    set_policy(owner, {"approval": {"min_approvals": 2, "slack_channel": CHANNEL}})
    version = awaiting(fraud_model, 1)
    first = post_click(*slack_click(version, alice_on_slack))
    time.sleep(1.1)  # a second click is a new request: new timestamp, new signature
    second = post_click(*slack_click(version, alice_on_slack))

    assert first.status_code == second.status_code == 200
    assert Approval.objects.filter(version=version).count() == 1
    version.refresh_from_db()
    assert version.status == "awaiting_approval"
    assert str(approval.quorum(version)) == "1 of 2"
    text, _ = __import__("lifecycle.slack", fromlist=["x"]).message_blocks(version)
    assert "1 of 2" in text

    bob = make_actor("bob")
    ModelRole.objects.create(model=fraud_model, user=bob.user, role=Role.APPROVER)
    response = bob.client.post(
        "/api/v1/models/fraud/versions/1/approve/", {"comment": "ship it"}, format="json"
    )

    assert response.status_code == 201, response.content
    assert response.json()["quorum"] == "2 of 2"
    version.refresh_from_db()
    assert version.status == "production"
    assert set(Approval.objects.filter(version=version).values_list("channel", flat=True)) == {"slack", "api"}


def test_a_reject_rejects_with_the_comment(fraud_model, approver):
    awaiting(fraud_model, 1)
    response = approver.client.post(
        "/api/v1/models/fraud/versions/1/reject/", {"comment": "AUC too low on BR"}, format="json"
    )
    assert response.status_code == 201
    version = ModelVersion.objects.get(model=fraud_model, version=1)
    assert (version.status, version.status_reason) == ("rejected", "rejected by alice: AUC too low on BR")


def test_a_timeout_rejects_the_version_updates_the_message_and_records_the_reason(
    celery_workers, slack_server, fraud_model, owner, alice_on_slack
):
    set_policy(owner, {"approval": {"slack_channel": CHANNEL, "timeout_hours": 1}})
    version = awaiting(fraud_model, 1)
    slack_server.wait_for(lambda c: c["path"].endswith("chat.postMessage"))

    assert approval.approvals_expire(now=timezone.now() + dt.timedelta(minutes=30)) == []
    assert approval.approvals_expire(now=timezone.now() + dt.timedelta(hours=2)) == [version.pk]

    version.refresh_from_db()
    assert (version.status, version.status_reason) == ("rejected", "approval timed out")
    assert Event.objects.filter(
        version=version, kind="version.transitioned", data__reason="approval timed out"
    ).exists()
    slack_server.wait_for(
        lambda c: c["path"].endswith("chat.update") and "approval timed out" in json.dumps(c["data"])
    )


def test_two_approvals_racing_on_two_versions_leave_exactly_one_production_version(fraud_model, make_actor):
    approvers = [make_actor(f"approver{i}") for i in range(2)]
    for actor in approvers:
        ModelRole.objects.create(model=fraud_model, user=actor.user, role=Role.APPROVER)
    versions = [awaiting(fraud_model, n) for n in (1, 2)]
    barrier = threading.Barrier(2)
    errors = []

    def approve(actor, version) -> None:
        try:
            barrier.wait()
            approval.approval_record(
                version_id=version.pk, user=actor.user, decision="approve", channel="api"
            )
        except Exception as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=approve, args=pair) for pair in zip(approvers, versions, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    statuses = sorted(ModelVersion.objects.filter(model=fraud_model).values_list("status", flat=True))
    assert statuses == ["archived", "production"]
    champion = Alias.objects.get(model=fraud_model, name="champion").version
    assert champion.status == "production"
    assert Promotion.objects.filter(model=fraud_model).count() == 2


def test_history_answers_before_and_after_a_promotion_and_after_a_rollback(fraud_model, owner, approver):
    def served(at):
        return owner.client.get("/api/v1/models/fraud/history/", {"at": at.isoformat()}).json()["version"]

    before = timezone.now()
    v1 = awaiting(fraud_model, 1)
    approval.approval_record(version_id=v1.pk, user=approver.user, decision="approve", channel="api")
    after_v1 = timezone.now()
    v2 = awaiting(fraud_model, 2)
    approval.approval_record(version_id=v2.pk, user=approver.user, decision="approve", channel="api")
    after_v2 = timezone.now()

    rollback = approver.client.post(
        "/api/v1/models/fraud/rollback/", {"comment": "v2 misbehaves"}, format="json"
    )
    assert rollback.status_code == 202, rollback.content
    assert rollback.json()["version"] == 1 and rollback.json()["status"] == "awaiting_approval"
    assert ModelVersion.objects.get(pk=v1.pk).gate_attempt == 1  # no new gates
    approval.approval_record(version_id=v1.pk, user=approver.user, decision="approve", channel="api")
    after_rollback = timezone.now()

    assert served(before) is None
    assert served(after_v1) == 1
    assert served(after_v2) == 2
    assert served(after_rollback) == 1
    history = owner.client.get("/api/v1/models/fraud/history/").json()["history"]
    assert [(h["version"], h["previous"], h["kind"]) for h in history] == [
        (1, None, "promote"),
        (2, 1, "promote"),
        (1, 2, "rollback"),
    ]
    assert ModelVersion.objects.get(pk=v2.pk).status == "archived"


def test_only_promotion_moves_the_champion(fraud_model, owner):
    ModelVersionFactory(model=fraud_model, version=1)
    response = owner.client.put("/api/v1/models/fraud/aliases/champion/", {"version": 1}, format="json")
    assert response.status_code == 400
    assert not Alias.objects.filter(name="champion").exists()


@pytest.fixture
def receiver() -> Recorder:
    server = Recorder(WebhookHandler)
    yield server
    server.stop()


def test_webhooks_are_signed_and_a_failing_receiver_gets_the_event_on_the_third_attempt(
    celery_workers, fraud_model, owner, approver, receiver
):
    from lifecycle.webhooks import signature

    receiver.fail_first = 2
    created = owner.client.post(
        "/api/v1/models/fraud/webhooks/",
        {"url": f"{receiver.url}/hook", "events": ["version.promoted"]},
        format="json",
    )
    assert created.status_code == 201, created.content
    secret = created.json()["secret"]
    version = awaiting(fraud_model, 1)

    approval.approval_record(version_id=version.pk, user=approver.user, decision="approve", channel="api")

    delivered = receiver.wait_for(lambda c: c["answered"] == 200, timeout=60)[0]
    headers = delivered["headers"]
    assert headers["X-Modelgate-Event"] == "version.promoted"
    assert headers["X-Modelgate-Signature"] == signature(
        secret, headers["X-Modelgate-Timestamp"], delivered["body"]
    )
    body = json.loads(delivered["body"])
    assert (
        body["model"] == "fraud"
        and body["version"]["number"] == 1
        and body["version"]["status"] == "production"
    )
    assert [c["answered"] for c in receiver.calls] == [500, 500, 200]
    row = WebhookDelivery.objects.get(event="version.promoted")
    assert row.state == "delivered"
    assert [a["status"] for a in row.attempts] == [500, 500, 200]


def test_a_webhook_ping_is_delivered(celery_workers, fraud_model, owner, receiver):
    hook = owner.client.post(
        "/api/v1/models/fraud/webhooks/", {"url": f"{receiver.url}/p"}, format="json"
    ).json()
    response = owner.client.post(f"/api/v1/models/fraud/webhooks/{hook['id']}/ping/")
    assert response.status_code == 202
    delivered = receiver.wait_for(lambda c: c["answered"] == 200)[0]
    assert delivered["headers"]["X-Modelgate-Event"] == "ping"


def test_webhook_secrets_never_appear_in_reads(fraud_model, owner, receiver):
    created = owner.client.post(
        "/api/v1/models/fraud/webhooks/", {"url": f"{receiver.url}/x"}, format="json"
    ).json()
    listed = owner.client.get("/api/v1/models/fraud/webhooks/").content.decode()
    assert created["secret"] not in listed


def test_without_slack_the_page_and_api_are_the_paths_and_the_logs_say_so_once(
    fraud_model, settings, slack_server, approver, caplog
):
    from lifecycle import slack

    settings.SLACK_BOT_TOKEN = ""
    slack._warned_unconfigured = False
    version = awaiting(fraud_model, 1)

    with caplog.at_level("WARNING", logger="lifecycle.slack"):
        assert slack.request_post(version.pk, version.approval_round) is None
        assert slack.message_update(version.pk) is False

    assert [r.getMessage() for r in caplog.records].count(
        "Slack is not configured (SLACK_BOT_TOKEN is empty): sign off on the version page or the API"
    ) == 1
    assert slack_server.calls == []
    response = approver.client.post("/api/v1/models/fraud/versions/1/approve/", {}, format="json")
    assert response.status_code == 201 and response.json()["version"]["status"] == "production"


def test_a_quorum_reached_while_a_required_export_runs_promotes_when_the_export_passes(
    fraud_model, owner, approver
):
    from lifecycle.exports import exports_complete
    from registry.models import Export

    set_policy(owner, {"exports": {"formats": ["onnx"], "required": ["onnx"]}})
    version = awaiting(fraud_model, 1)
    export = Export.objects.create(version=version, format="onnx", status="running", required=True)

    approval.approval_record(version_id=version.pk, user=approver.user, decision="approve", channel="api")
    version.refresh_from_db()
    assert version.status == "awaiting_approval"  # 1 of 1, but the required export is not done

    Export.objects.filter(pk=export.pk).update(status="passed")
    exports_complete(version.pk)

    version.refresh_from_db()
    assert version.status == "production"
    assert Promotion.objects.get(model=fraud_model).actor == "system:exports"
