"""Sign-off in a real browser: Debian's Chromium driven by Playwright against a live server.

Set up as ``test_browser.py`` is: the data is written before the browser starts, the browser may
fetch nothing from outside the live server, and screenshots land in ``test-results/``.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.db import transaction
from playwright.sync_api import Page, expect

from lifecycle import approval
from lifecycle.states import version_transition
from registry.models import (
    Alias,
    Approval,
    ModelRole,
    ModelVersion,
    RegisteredModel,
    Role,
    SlackIdentity,
    Webhook,
    WebhookDelivery,
)
from tests.ui.conftest import screenshot
from tests.ui.factories import GateResultFactory, PushedVersionFactory, make_champion

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


PASSWORD = "correct horse battery"


def shot(page: Page, name: str) -> None:
    screenshot(page, f"ui-signoff-{name}")


@pytest.fixture
def fraud() -> dict:
    """fraud: v1 in production, v2 pushed by pablo and waiting for one approval; alice approves."""
    users = {
        name: get_user_model().objects.create_user(username=name, password=PASSWORD)
        for name in ("olivia", "alice", "pablo")
    }
    model = RegisteredModel.objects.create(
        name="fraud",
        description="Card-not-present fraud detector for the payments API",
        policy={"gates": [{"kind": "loads"}], "approval": {"min_approvals": 1}},
        created_by=users["olivia"],
    )
    for name, role in (("olivia", Role.OWNER), ("alice", Role.APPROVER), ("pablo", Role.PUBLISHER)):
        ModelRole.objects.create(model=model, user=users[name], role=role)
    make_champion(PushedVersionFactory(model=model, version=1, created_by=users["pablo"]))
    v2 = PushedVersionFactory(model=model, version=2, created_by=users["pablo"])
    GateResultFactory(version=v2, gate_index=0, gate="loads", metric="", value=None, threshold=None)
    GateResultFactory(version=v2, gate_index=1, metric="accuracy", value=0.9412, threshold=0.9)
    GateResultFactory(
        version=v2,
        gate_index=2,
        gate="no_regression",
        metric="roc_auc",
        value=None,
        threshold=None,
        passed=None,
        skipped_reason="no baseline recorded for v1",
    )
    version_transition(version_id=v2.pk, to="validating", actor="tests")
    with transaction.atomic():
        approval.await_approval(version_id=v2.pk, actor="tests")
    return {"model": model, "v2": v2, **users}


def log_in(page: Page, username: str) -> None:
    page.goto("/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/$"))


def test_an_approver_approves_from_the_inbox_and_the_version_goes_to_production(
    page: Page, fraud: dict
) -> None:
    log_in(page, "alice")
    inbox_link = page.locator("nav.nav").get_by_role("link", name=re.compile("^Inbox"))
    expect(inbox_link.get_by_test_id("inbox-count")).to_have_text("1")
    inbox_link.click()
    expect(page).to_have_url(re.compile(r"/inbox/$"))
    row = page.get_by_role("row").filter(has_text="fraud")
    expect(row).to_contain_text("pablo")
    expect(row).to_contain_text("2 passed, 1 skipped, 0 failed")
    expect(row).to_contain_text("0 of 1")
    expect(inbox_link.get_by_test_id("inbox-count")).to_have_text("1")
    shot(page, "inbox")

    row.get_by_role("link", name="v2").click()
    expect(page).to_have_url(re.compile(r"/models/fraud/versions/2/$"))
    signoff = page.locator("#signoff")
    expect(signoff.get_by_test_id("quorum")).to_contain_text("0 of 1")
    expect(signoff).to_contain_text("gates 2 passed, 1 skipped, 0 failed")
    page.get_by_label("Comment").fill("Holdout accuracy 0.94; the skipped regression gate is expected.")
    shot(page, "version-awaiting")

    signoff.get_by_role("button", name="Approve").click()
    expect(page.locator(".messages")).to_contain_text("it is now in production and the champion")
    expect(page.locator("#version-status .badge")).to_have_text("Production")
    expect(page.locator("h1")).to_contain_text("champion")
    expect(page.locator("#signoff")).to_have_count(0)
    history = page.locator("#approvals")
    expect(history).to_contain_text("alice")
    expect(history).to_contain_text("Holdout accuracy 0.94")
    decision = Approval.objects.get(version=fraud["v2"])
    expect(history.locator("code")).to_have_text(decision.evidence_digest[:12])
    expect(inbox_link.get_by_test_id("inbox-count")).to_have_count(0)
    shot(page, "version-approved")
    assert (decision.channel, decision.decision) == ("web", "approve")

    page.get_by_role("link", name="fraud", exact=True).click()
    expect(page.locator(".summary > div").first).to_contain_text("v2")
    expect(page.locator(".summary").get_by_role("button", name="Request rollback to v1")).to_be_visible()
    expect(page.locator("table tbody tr").filter(has_text="v1")).to_contain_text("Archived")
    shot(page, "model-after-promotion")
    assert Alias.objects.get(model=fraud["model"], name="champion").version_id == fraud["v2"].pk

    page.get_by_role("link", name="Inbox").click()
    expect(page.get_by_text("Nothing awaits your sign-off.")).to_be_visible()


def test_the_pusher_reads_why_they_cannot_approve(page: Page, fraud: dict) -> None:
    ModelRole.objects.create(model=fraud["model"], user=fraud["pablo"], role=Role.APPROVER)
    log_in(page, "pablo")
    page.goto("/models/fraud/versions/2/")
    expect(page.get_by_test_id("signoff-refusal")).to_contain_text(
        "you pushed (or authored) this version; the policy does not allow self-approval"
    )
    expect(page.locator("#signoff").get_by_role("button")).to_have_count(0)
    shot(page, "version-refused")


def test_an_approver_rejects_with_a_comment(page: Page, fraud: dict) -> None:
    log_in(page, "alice")
    page.goto("/models/fraud/versions/2/")
    page.get_by_label("Comment").fill("Wait for the FR slice fix.")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("#signoff").get_by_role("button", name="Reject").click()
    expect(page.locator("#version-status .badge")).to_have_text("Rejected")
    expect(page.locator("#version-status")).to_contain_text("rejected by alice: Wait for the FR slice fix.")
    shot(page, "version-rejected")
    assert ModelVersion.objects.get(pk=fraud["v2"].pk).status == "rejected"


def test_an_owner_adds_a_webhook_pings_it_and_links_slack(page: Page, fraud: dict) -> None:
    log_in(page, "olivia")
    page.goto("/models/fraud/")
    hooks = page.locator("#webhooks")
    expect(hooks).to_contain_text("No webhook")
    hooks.get_by_label("Payload URL").fill("https://ci.example.com/hooks/modelgate")
    hooks.get_by_label("version.promoted").check()
    hooks.get_by_label("version.rejected").check()
    hooks.get_by_role("button", name="Add webhook").click()
    secret = page.get_by_test_id("new-webhook-secret")
    expect(secret).to_contain_text("shown only this once")
    hook = Webhook.objects.get(model=fraud["model"])
    expect(secret.locator("code").first).to_have_text(hook.secret)
    shot(page, "webhook-created")

    page.get_by_role("button", name="Send ping").click()
    expect(page.locator(".messages")).to_contain_text(
        "Ping queued for https://ci.example.com/hooks/modelgate"
    )
    expect(page.get_by_test_id("new-webhook-secret")).to_have_count(0)
    deliveries = page.locator("table.deliveries tbody tr")
    expect(deliveries).to_have_count(1)
    expect(deliveries).to_contain_text("ping")
    shot(page, "webhook-pinged")
    assert WebhookDelivery.objects.get(webhook=hook).event == "ping"

    page.get_by_role("link", name="API tokens").click()
    page.get_by_label("Slack member ID").fill("U0OLIVIA1")
    page.get_by_role("button", name="Link Slack").click()
    expect(page.locator(".messages")).to_contain_text("Slack member U0OLIVIA1 linked")
    shot(page, "slack-linked")
    assert SlackIdentity.objects.get(user=fraud["olivia"]).slack_user_id == "U0OLIVIA1"
