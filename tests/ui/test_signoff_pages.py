"""Sign-off in the pages, through Django's test client: the version page's Approve and Reject, the
approvals inbox, rollback, webhooks and the Slack link. The rules themselves are tested in
``tests/lifecycle/test_approval.py``; these tests check that the pages go through them."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from lifecycle import approval
from lifecycle.states import version_transition
from registry.models import (
    Alias,
    Approval,
    Event,
    EventKind,
    ModelRole,
    ModelVersion,
    RegisteredModel,
    Role,
    SlackIdentity,
    Webhook,
    WebhookDelivery,
)
from tests.ui.factories import GateResultFactory, PushedVersionFactory, RegisteredModelFactory

pytestmark = pytest.mark.django_db


def browser_for(actor) -> Client:
    client = Client()
    client.force_login(actor.user)
    return client


def set_policy(owner, approval_section: dict, model: str = "fraud") -> None:
    policy = {"gates": [{"kind": "loads"}], "approval": approval_section}
    response = owner.client.put(f"/api/v1/models/{model}/policy/", policy, format="json")
    assert response.status_code == 200, response.content


def awaiting(model: RegisteredModel, number: int, *, created_by=None, gates: int = 2) -> ModelVersion:
    """A version put in awaiting_approval through the lifecycle's own functions (no workers needed)."""
    version = PushedVersionFactory(model=model, version=number, created_by=created_by)
    for index in range(gates):
        GateResultFactory(version=version, gate_index=index)
    version_transition(version_id=version.pk, to="validating", actor="tests")
    return approval.await_approval(version_id=version.pk, actor="tests")


def version_url(number: int, model: str = "fraud") -> str:
    return reverse("ui:version-detail", kwargs={"name": model, "version": number})


def decide_url(number: int, decision: str, model: str = "fraud") -> str:
    return reverse(f"ui:version-{decision}", kwargs={"name": model, "version": number})


def shown_digest(html: str) -> str:
    return re.search(r'Its digest, recorded with your decision: <code title="([0-9a-f]{64})"', html).group(1)


def refused_events(version: ModelVersion):
    return Event.objects.filter(kind=EventKind.APPROVAL_REFUSED, version=version)


@pytest.fixture
def one_approval(owner, fraud_model) -> None:
    set_policy(owner, {"min_approvals": 1})


@pytest.fixture
def two_approvals(owner, fraud_model) -> None:
    set_policy(owner, {"min_approvals": 2})


# --- the version page ---------------------------------------------------------------------------


def test_an_approver_sees_the_quorum_and_both_buttons(approver, publisher, fraud_model, two_approvals):
    awaiting(fraud_model, 1, created_by=publisher.user)
    html = browser_for(approver).get(version_url(1)).content.decode()
    assert re.search(r"<strong>0 of 2</strong>\s*<span class=\"muted\">approvals</span>", html)
    assert f'action="{decide_url(1, "approve")}"' in html
    assert f'formaction="{decide_url(1, "reject")}"' in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert "gates 2 passed, 0 skipped, 0 failed" in html
    assert "No decision yet in this round." in html


def test_approving_through_the_web_form_records_a_web_approval_with_the_evidence_digest(
    approver, publisher, fraud_model, one_approval
):
    old = awaiting(fraud_model, 1, created_by=publisher.user)
    approval.version_promote(version=old, actor="tests")
    awaiting(fraud_model, 2, created_by=publisher.user)
    client = browser_for(approver)
    digest = shown_digest(client.get(version_url(2)).content.decode())

    response = client.post(decide_url(2, "approve"), {"comment": "holdout numbers look right"})

    assert response.status_code == 302 and response["Location"] == version_url(2)
    decision = Approval.objects.get(version__version=2)
    assert (decision.decision, decision.channel, decision.actor_name) == ("approve", "web", "alice")
    assert decision.comment == "holdout numbers look right"
    assert decision.evidence_digest == digest == approval.evidence_digest(decision.evidence)
    assert ModelVersion.objects.get(model=fraud_model, version=2).status == "production"
    assert ModelVersion.objects.get(model=fraud_model, version=1).status == "archived"
    assert Alias.objects.get(model=fraud_model, name="champion").version.version == 2
    html = client.get(version_url(2)).content.decode()
    assert "it is now in production and the champion" in html
    assert '<span class="badge status-production badge-lg">Production</span>' in html
    assert "holdout numbers look right" in html  # in the approvals history


def test_rejecting_through_the_web_form_rejects_the_version(approver, publisher, fraud_model, one_approval):
    awaiting(fraud_model, 1, created_by=publisher.user)
    client = browser_for(approver)
    response = client.post(decide_url(1, "reject"), {"comment": "FR recall is borderline"})
    assert response.status_code == 302
    version = ModelVersion.objects.get(model=fraud_model, version=1)
    assert version.status == "rejected"
    assert version.status_reason == "rejected by alice: FR recall is borderline"
    assert Approval.objects.get(version=version).channel == "web"
    assert "You rejected fraud v1" in client.get(version_url(1)).content.decode()


def test_one_of_two_approvals_leaves_the_version_waiting_and_the_second_promotes_it(
    owner, approver, publisher, fraud_model, two_approvals
):
    awaiting(fraud_model, 1, created_by=publisher.user)
    alice = browser_for(approver)
    alice.post(decide_url(1, "approve"), {"comment": "fine by me"})

    html = alice.get(version_url(1)).content.decode()
    assert "1 of 2 approvals, it still awaits sign-off" in html  # the message
    assert re.search(r"<strong>1 of 2</strong>", html)
    assert re.search(r"approved</span>\s*<strong>alice</strong>\s*<span class=\"muted small\">via web", html)
    assert "You approved this version" in html and "it waits for other approvers" in html
    assert f'action="{decide_url(1, "approve")}"' not in html  # no second vote for alice

    olivia = browser_for(owner)
    assert f'action="{decide_url(1, "approve")}"' in olivia.get(version_url(1)).content.decode()
    olivia.post(decide_url(1, "approve"))
    assert ModelVersion.objects.get(model=fraud_model, version=1).status == "production"
    assert Approval.objects.filter(version__version=1, channel="web").count() == 2


def test_a_second_click_records_nothing_new(approver, publisher, fraud_model, two_approvals):
    awaiting(fraud_model, 1, created_by=publisher.user)
    client = browser_for(approver)
    client.post(decide_url(1, "approve"))
    client.post(decide_url(1, "approve"))
    assert Approval.objects.filter(version__version=1).count() == 1
    assert "You had already approved fraud v1" in client.get(version_url(1)).content.decode()


def test_a_viewer_sees_no_buttons_and_a_forged_post_is_refused_and_audited(
    viewer, publisher, fraud_model, one_approval
):
    version = awaiting(fraud_model, 1, created_by=publisher.user)
    client = browser_for(viewer)
    html = client.get(version_url(1)).content.decode()
    assert decide_url(1, "approve") not in html and decide_url(1, "reject") not in html
    assert "You cannot sign off this version: you are not an approver of fraud." in html

    response = client.post(decide_url(1, "approve"), {"comment": "sneaky"})

    assert response.status_code == 302
    version.refresh_from_db()
    assert version.status == "awaiting_approval"
    assert not Approval.objects.exists()
    refused = refused_events(version).get()
    assert refused.actor == "victor"
    assert refused.data == {"channel": "web", "reason": "you are not an approver of fraud"}
    assert (
        "You cannot sign off fraud v1: you are not an approver of fraud."
        in client.get(version_url(1)).content.decode()
    )


def test_the_pusher_cannot_approve_their_own_version(owner, fraud_model, one_approval):
    version = awaiting(fraud_model, 1, created_by=owner.user)
    client = browser_for(owner)
    html = client.get(version_url(1)).content.decode()
    assert decide_url(1, "approve") not in html
    assert "you pushed (or authored) this version; the policy does not allow self-approval" in html

    client.post(decide_url(1, "approve"))

    version.refresh_from_db()
    assert version.status == "awaiting_approval" and not Approval.objects.exists()
    assert "self-approval" in refused_events(version).get().data["reason"]


def test_an_outsider_cannot_reach_the_decision_urls(outsider, publisher, fraud_model, one_approval):
    version = awaiting(fraud_model, 1, created_by=publisher.user)
    client = browser_for(outsider)
    assert client.post(decide_url(1, "approve")).status_code == 403
    assert client.post(decide_url(1, "reject")).status_code == 403
    version.refresh_from_db()
    assert version.status == "awaiting_approval" and not Approval.objects.exists()


def test_the_decision_urls_take_only_a_post_from_a_signed_in_user(
    approver, publisher, fraud_model, one_approval
):
    awaiting(fraud_model, 1, created_by=publisher.user)
    assert browser_for(approver).get(decide_url(1, "approve")).status_code == 405
    response = Client().post(decide_url(1, "approve"))
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert not Approval.objects.exists()


def test_the_decision_form_needs_a_csrf_token(approver, publisher, fraud_model, one_approval):
    awaiting(fraud_model, 1, created_by=publisher.user)
    client = Client(enforce_csrf_checks=True)
    client.force_login(approver.user)
    assert client.post(decide_url(1, "approve")).status_code == 403
    assert not Approval.objects.exists()


def test_deciding_on_a_version_that_no_longer_waits_is_shown_as_a_conflict(
    approver, publisher, fraud_model, one_approval
):
    version = PushedVersionFactory(model=fraud_model, version=1, status="rejected", created_by=publisher.user)
    client = browser_for(approver)
    client.post(decide_url(1, "approve"))
    assert not Approval.objects.exists()
    html = client.get(version_url(1)).content.decode()
    assert "Nothing recorded: fraud v1 is rejected, not awaiting approval." in html
    assert version.status == "rejected"


def test_a_too_long_comment_records_nothing(approver, publisher, fraud_model, one_approval):
    awaiting(fraud_model, 1, created_by=publisher.user)
    client = browser_for(approver)
    client.post(decide_url(1, "approve"), {"comment": "x" * 5001})
    assert not Approval.objects.exists()
    assert (
        "Nothing recorded: Ensure this value has at most 5000 characters"
        in client.get(version_url(1)).content.decode()
    )


def promoted_twice(fraud_model, publisher) -> None:
    """fraud v1 promoted (approved by alice on the web), then replaced by v2: v1 is archived."""
    v1 = awaiting(fraud_model, 1, created_by=publisher.user)
    approval.approval_record(
        version_id=v1.pk,
        user=get_user("alice"),
        decision="approve",
        channel="web",
        comment="first release",
    )
    v2 = awaiting(fraud_model, 2, created_by=publisher.user)
    approval.approval_record(version_id=v2.pk, user=get_user("alice"), decision="approve", channel="api")


def get_user(username: str):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.get(username=username)


def test_the_history_lists_every_round_with_shortened_digests(
    owner, approver, publisher, fraud_model, one_approval
):
    promoted_twice(fraud_model, publisher)
    approval.rollback_request(model=fraud_model, actor=approver.user, comment="v2 misbehaves")
    approval.approval_record(
        version_id=ModelVersion.objects.get(model=fraud_model, version=1).pk,
        user=owner.user,
        decision="approve",
        channel="api",
        comment="roll it back",
    )
    html = browser_for(approver).get(version_url(1)).content.decode()
    rows = re.findall(r"<tr>\s*<td class=\"num\">(\d)</td>(.*?)</tr>", html, re.S)
    assert [(round_, "alice" in row, "olivia" in row) for round_, row in rows] == [
        ("1", True, False),
        ("2", False, True),
    ]
    for decision in Approval.objects.filter(version__version=1):
        digest = decision.evidence_digest
        assert f'<code title="sha256 {digest}">{digest[:12]}</code>' in html
    assert "first release" in html and "roll it back" in html


def version_page_queries(client: Client, version: ModelVersion, approvals: int) -> int:
    for n in range(approvals):
        Approval.objects.create(
            version=version,
            round=1 + n % 3,
            decision="approve",
            actor_name=f"someone-{version.pk}-{n}",
            channel="api",
            evidence={},
            evidence_digest="0" * 64,
        )
    with CaptureQueriesContext(connection) as queries:
        assert client.get(version_url(version.version)).status_code == 200
    return len(queries)


def test_the_version_page_costs_the_same_queries_for_1_or_12_decisions(
    approver, publisher, fraud_model, two_approvals
):
    client = browser_for(approver)
    client.get(reverse("ui:model-list"))  # warm the session
    few = version_page_queries(client, awaiting(fraud_model, 1, created_by=publisher.user), 1)
    many = version_page_queries(client, awaiting(fraud_model, 2, created_by=publisher.user), 12)
    assert few == many


# --- rollback -----------------------------------------------------------------------------------


def test_an_approver_requests_a_rollback_from_the_model_page(
    approver, viewer, publisher, fraud_model, one_approval
):
    promoted_twice(fraud_model, publisher)
    model_url = reverse("ui:model-detail", kwargs={"name": "fraud"})
    rollback_url = reverse("ui:model-rollback", kwargs={"name": "fraud"})
    assert "Request rollback" not in browser_for(viewer).get(model_url).content.decode()
    client = browser_for(approver)
    html = client.get(model_url).content.decode()
    assert f'action="{rollback_url}"' in html and "Request rollback to v1" in html

    response = client.post(rollback_url, {"comment": "v2 misbehaves"})

    assert response.status_code == 302 and response["Location"] == version_url(1)
    v1 = ModelVersion.objects.get(model=fraud_model, version=1)
    assert (v1.status, v1.is_rollback, v1.approval_round) == ("awaiting_approval", True, 2)
    assert "v2 misbehaves" in v1.status_reason
    html = client.get(version_url(1)).content.decode()
    assert "Rollback to fraud v1 requested" in html
    assert '<span class="warning-note">rollback</span>' in html  # in the sign-off block
    assert "Request rollback" not in client.get(model_url).content.decode()  # v1 is no longer archived


def test_a_rollback_with_nothing_to_return_to_is_explained(approver, publisher, fraud_model, one_approval):
    client = browser_for(approver)
    response = client.post(reverse("ui:model-rollback", kwargs={"name": "fraud"}))
    assert response.status_code == 302
    html = client.get(response["Location"]).content.decode()
    assert "No rollback: fraud has no previous production version to roll back to." in html


def test_a_viewer_cannot_request_a_rollback(viewer, publisher, fraud_model, one_approval):
    promoted_twice(fraud_model, publisher)
    response = browser_for(viewer).post(reverse("ui:model-rollback", kwargs={"name": "fraud"}))
    assert response.status_code == 403
    assert ModelVersion.objects.get(model=fraud_model, version=1).status == "archived"


# --- the inbox ----------------------------------------------------------------------------------


def test_the_inbox_lists_only_what_awaits_the_user(
    owner, approver, publisher, viewer, outsider, fraud_model, two_approvals
):
    waiting = awaiting(fraud_model, 1, created_by=publisher.user)
    decided = awaiting(fraud_model, 2, created_by=publisher.user)
    approval.approval_record(version_id=decided.pk, user=approver.user, decision="approve", channel="web")
    PushedVersionFactory(model=fraud_model, version=3, status="rejected")
    PushedVersionFactory(model=fraud_model, version=4, status="validating")
    elsewhere = RegisteredModelFactory(name="churn")
    ModelRole.objects.create(model=elsewhere, user=approver.user, role=Role.VIEWER)
    awaiting(elsewhere, 1)

    html = browser_for(approver).get(reverse("ui:inbox")).content.decode()
    assert re.findall(r'href="(/models/[^"]+/versions/\d+/)"><strong>', html) == [version_url(1)]
    assert "pablo" in html and "2 passed" in html and "0 of 2" in html
    assert f'href="{version_url(1)}#signoff"' in html
    # The owner has not decided on either.
    owner_html = browser_for(owner).get(reverse("ui:inbox")).content.decode()
    assert version_url(1) in owner_html and version_url(2) in owner_html and "1 of 2" in owner_html
    for nobody in (viewer, outsider):
        assert (
            "Nothing awaits your sign-off." in browser_for(nobody).get(reverse("ui:inbox")).content.decode()
        )
    assert waiting.status == "awaiting_approval"


def test_the_inbox_still_lists_a_rollback_the_user_approved_in_an_earlier_round(
    owner, approver, publisher, fraud_model, two_approvals
):
    """alice approved v1 in round 1; v1 comes back for a rollback (round 2) and only olivia decided."""
    for number in (1, 2):
        version = awaiting(fraud_model, number, created_by=publisher.user)
        for user in (approver.user, owner.user):
            approval.approval_record(version_id=version.pk, user=user, decision="approve", channel="web")
    approval.rollback_request(model=fraud_model, actor=owner.user)
    v1 = ModelVersion.objects.get(model=fraud_model, version=1)
    approval.approval_record(version_id=v1.pk, user=owner.user, decision="approve", channel="web")
    assert list(approval.inbox(approver.user)) == [v1]


def test_the_inbox_marks_versions_the_user_pushed(owner, fraud_model, one_approval):
    awaiting(fraud_model, 1, created_by=owner.user)
    html = browser_for(owner).get(reverse("ui:inbox")).content.decode()
    assert 'olivia <span class="muted small">(you)</span>' in html


def test_the_inbox_shows_failed_and_skipped_gates_of_the_current_attempt(
    approver, publisher, fraud_model, one_approval
):
    version = awaiting(fraud_model, 1, created_by=publisher.user, gates=0)
    GateResultFactory(version=version, attempt=1, gate_index=0, passed=False)  # an older attempt
    ModelVersion.objects.filter(pk=version.pk).update(gate_attempt=2)
    GateResultFactory(version=version, attempt=2, gate_index=0)
    GateResultFactory(version=version, attempt=2, gate_index=1, passed=None, skipped_reason="no champion")
    html = browser_for(approver).get(reverse("ui:inbox")).content.decode()
    assert re.search(
        r">1 passed</span>,\s*<span class=\"mark-skip\">1 skipped</span>,\s*<span class=\"muted\">0 failed<",
        html,
    )


def inbox_queries(client: Client, approver, rows: int) -> int:
    for n in range(ModelVersion.objects.filter(status="awaiting_approval").count(), rows):
        model = RegisteredModelFactory(name=f"m{n:03}", policy={"approval": {"min_approvals": 1 + n % 2}})
        ModelRole.objects.create(model=model, user=approver.user, role=Role.APPROVER)
        version = awaiting(model, 1, gates=3)
        Approval.objects.create(
            version=version,
            round=version.approval_round,
            decision="approve",
            actor_name="someone-else",
            channel="api",
            evidence={},
            evidence_digest="0" * 64,
        )
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("ui:inbox"))
    assert response.status_code == 200
    assert len(response.context["rows"]) == rows
    return len(queries)


def test_the_inbox_costs_the_same_queries_for_3_or_30_rows(approver):
    client = browser_for(approver)
    client.get(reverse("ui:model-list"))  # warm the session
    assert inbox_queries(client, approver, 3) == inbox_queries(client, approver, 30)


def test_the_inbox_pages_by_fifty(make_actor):
    ada = make_actor("ada", staff=True)
    model = RegisteredModelFactory(name="big")
    for number in range(1, 53):
        awaiting(model, number, gates=0)
    client = browser_for(ada)
    first = client.get(reverse("ui:inbox")).content.decode()
    assert first.count("#signoff") == 50 and "Page 1 of 2 · 52 versions" in first
    assert client.get(reverse("ui:inbox"), {"page": 2}).content.decode().count("#signoff") == 2


def test_the_top_bar_links_the_inbox_and_loads_its_count(approver, publisher, fraud_model, one_approval):
    awaiting(fraud_model, 1, created_by=publisher.user)
    awaiting(fraud_model, 2, created_by=publisher.user)
    client = browser_for(approver)
    html = client.get(reverse("ui:model-list")).content.decode()
    assert (
        f'<a href="{reverse("ui:inbox")}">Inbox<span id="inbox-count" data-src="{reverse("ui:inbox-count")}"'
        in html
    )
    badge = client.get(reverse("ui:inbox-count")).content.decode()
    assert ">2</span>" in badge and "2 versions await your sign-off" in badge
    assert Client().get(reverse("ui:inbox-count")).content == b""  # signed out: nothing to swap in


# --- webhooks -----------------------------------------------------------------------------------


def model_url() -> str:
    return reverse("ui:model-detail", kwargs={"name": "fraud"})


def test_only_owners_see_the_webhooks_section(owner, approver, viewer, fraud_model):
    assert 'id="webhooks"' in browser_for(owner).get(model_url()).content.decode()
    for actor in (approver, viewer):
        assert 'id="webhooks"' not in browser_for(actor).get(model_url()).content.decode()


def test_a_new_webhook_shows_its_secret_once(owner, fraud_model):
    client = browser_for(owner)
    response = client.post(
        reverse("ui:webhook-create", kwargs={"name": "fraud"}),
        {"url": "https://hooks.example.com/modelgate", "events": ["version.promoted", "version.rejected"]},
    )
    assert response.status_code == 302 and response["Location"] == model_url() + "#webhooks"
    hook = Webhook.objects.get(model=fraud_model)
    assert hook.url == "https://hooks.example.com/modelgate"
    assert sorted(hook.events) == ["version.promoted", "version.rejected"]
    assert Event.objects.filter(kind=EventKind.WEBHOOK_CREATED, model=fraud_model).exists()

    html = client.get(model_url()).content.decode()
    shown = re.search(r'data-testid="new-webhook-secret">.*?<code>([^<]+)</code>', html, re.S).group(1)
    assert shown == hook.secret
    assert '<span class="chip">version.promoted</span>' in html
    again = client.get(model_url()).content.decode()
    assert hook.secret not in again and "hooks.example.com/modelgate" in again


def test_a_webhook_with_no_event_checked_gets_every_event(owner, fraud_model):
    browser_for(owner).post(
        reverse("ui:webhook-create", kwargs={"name": "fraud"}), {"url": "https://h.example/x"}
    )
    assert Webhook.objects.get().events == []
    assert '<span class="chip">every event</span>' in browser_for(owner).get(model_url()).content.decode()


def test_a_bad_webhook_url_is_shown_again_with_the_error(owner, fraud_model):
    response = browser_for(owner).post(
        reverse("ui:webhook-create", kwargs={"name": "fraud"}), {"url": "ftp://files.example.com/x"}
    )
    assert response.status_code == 200
    assert b"Enter a valid URL." in response.content
    assert b'value="ftp://files.example.com/x"' in response.content
    assert not Webhook.objects.exists()


def test_only_an_owner_may_add_ping_or_delete_webhooks(owner, approver, fraud_model):
    hook = Webhook.objects.create(model=fraud_model, url="https://h.example/x", secret="s")
    client = browser_for(approver)
    assert (
        client.post(
            reverse("ui:webhook-create", kwargs={"name": "fraud"}), {"url": "https://e.x/"}
        ).status_code
        == 403
    )
    for name in ("ui:webhook-ping", "ui:webhook-delete"):
        assert client.post(reverse(name, kwargs={"name": "fraud", "hook_id": hook.pk})).status_code == 403
    assert Webhook.objects.count() == 1 and not WebhookDelivery.objects.exists()
    other = RegisteredModelFactory(name="churn")
    ModelRole.objects.create(model=other, user=owner.user, role=Role.OWNER)
    # A hook of another model is not found through this one.
    url = reverse("ui:webhook-delete", kwargs={"name": "churn", "hook_id": hook.pk})
    assert browser_for(owner).post(url).status_code == 404


def test_send_ping_queues_a_delivery_shown_under_the_hook(owner, fraud_model):
    hook = Webhook.objects.create(
        model=fraud_model, url="https://h.example/x", events=["version.promoted"], secret="s"
    )
    client = browser_for(owner)
    response = client.post(reverse("ui:webhook-ping", kwargs={"name": "fraud", "hook_id": hook.pk}))
    assert response.status_code == 302
    delivery = WebhookDelivery.objects.get(webhook=hook)
    assert delivery.event == "ping" and delivery.state == "pending"
    assert delivery.payload["data"] == {"hook": hook.pk} and delivery.payload["model"] == "fraud"
    html = client.get(model_url()).content.decode()
    assert f"Ping queued for https://h.example/x (delivery {delivery.delivery_id})" in html
    row = re.search(r'<table class="deliveries">.*?</table>', html, re.S).group(0)
    assert "<code>ping</code>" in row and "delivery-pending" in row and "not sent yet" in row


def test_the_last_ten_deliveries_are_shown_with_their_attempts(owner, fraud_model):
    hook = Webhook.objects.create(model=fraud_model, url="https://h.example/x", secret="s")
    for n in range(12):
        WebhookDelivery.objects.create(
            webhook=hook,
            event="version.registered",
            delivery_id=f"00000000-0000-0000-0000-{n:012}",
            payload={"n": n},
            state="failed" if n == 11 else "delivered",
            attempts=[{"at": "t", "status": 500, "error": "HTTP 500", "ms": 3.2}] * (3 if n == 11 else 1),
        )
    html = browser_for(owner).get(model_url()).content.decode()
    table = re.search(r'<table class="deliveries">.*?</table>', html, re.S).group(0)
    assert table.count("<tr>") == 11  # the head row and ten deliveries
    assert "delivery-failed" in table and '<td class="num">3</td>' in table and "HTTP 500" in table


def test_deleting_a_webhook_removes_it(owner, fraud_model):
    hook = Webhook.objects.create(model=fraud_model, url="https://h.example/x", secret="s")
    client = browser_for(owner)
    response = client.post(reverse("ui:webhook-delete", kwargs={"name": "fraud", "hook_id": hook.pk}))
    assert response.status_code == 302
    assert not Webhook.objects.exists()
    assert "Webhook to https://h.example/x deleted" in client.get(model_url()).content.decode()


def model_page_queries(client: Client, model: RegisteredModel, hooks: int, deliveries: int) -> int:
    for n in range(model.webhooks.count(), hooks):
        hook = Webhook.objects.create(model=model, url=f"https://h.example/{n}", secret="s")
        for _ in range(deliveries):
            approval.webhooks.webhooks_emit(event="ping", model=model, only=hook)
    with CaptureQueriesContext(connection) as queries:
        assert client.get(model_url()).status_code == 200
    return len(queries)


def test_the_model_page_costs_the_same_queries_for_1_or_6_webhooks(owner, fraud_model):
    client = browser_for(owner)
    client.get(reverse("ui:model-list"))  # warm the session
    assert model_page_queries(client, fraud_model, 1, 2) == model_page_queries(client, fraud_model, 6, 12)


# --- Slack identity -----------------------------------------------------------------------------


def test_a_user_links_their_slack_member_id(approver):
    client = browser_for(approver)
    assert "not linked" in client.get(reverse("ui:tokens")).content.decode()
    response = client.post(reverse("ui:slack-identity"), {"slack_user_id": " u012ab3cd "})
    assert response.status_code == 302 and response["Location"] == reverse("ui:tokens")
    assert SlackIdentity.objects.get(user=approver.user).slack_user_id == "U012AB3CD"
    html = client.get(reverse("ui:tokens")).content.decode()
    assert "Slack member U012AB3CD linked" in html and 'value="U012AB3CD"' in html

    client.post(reverse("ui:slack-identity"), {"slack_user_id": "W0ALICE2"})
    assert SlackIdentity.objects.get(user=approver.user).slack_user_id == "W0ALICE2"
    client.post(reverse("ui:slack-identity"), {"slack_user_id": ""})
    assert not SlackIdentity.objects.exists()


def test_a_slack_member_id_speaks_for_one_user_only(approver, viewer):
    SlackIdentity.objects.create(user=approver.user, slack_user_id="U0ALICE")
    response = browser_for(viewer).post(reverse("ui:slack-identity"), {"slack_user_id": "U0ALICE"})
    assert response.status_code == 200
    assert b"already linked to another Modelgate user" in response.content
    assert b"alice" not in response.content.split(b"</header>")[1]  # whose it is stays unsaid
    assert SlackIdentity.objects.get(slack_user_id="U0ALICE").user == approver.user


def test_a_malformed_slack_member_id_is_refused(approver):
    response = browser_for(approver).post(reverse("ui:slack-identity"), {"slack_user_id": "@alice"})
    assert response.status_code == 200
    assert b"starts with U or W" in response.content
    assert not SlackIdentity.objects.exists()
