"""The pages in a real browser: Debian's Chromium driven by Playwright against a live server.

The data is written to the database before the browser starts; Playwright's sync API runs an event
loop in this thread, so the later DB writes (the polling test) need DJANGO_ALLOW_ASYNC_UNSAFE.
Screenshots land in ``test-results/`` (gitignored) for a human to look at.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Page, expect

from registry.models import ModelRole, ModelVersion, RegisteredModel, Role
from tests.ui.conftest import screenshot
from tests.ui.factories import (
    DatasetFactory,
    GateResultFactory,
    PushedVersionFactory,
    link_dataset,
    link_parent,
    make_champion,
    record_event,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def shot(page: Page, name: str) -> None:
    screenshot(page, f"ui-{name}")


@pytest.fixture
def catalog() -> dict:
    """A user with a password, owner of "fraud": v1 in production, v2 rejected by a failed slice gate."""
    user = get_user_model().objects.create_user(username="olivia", password="correct horse battery")
    model = RegisteredModel.objects.create(
        name="fraud",
        description="Card-not-present fraud detector for the payments API",
        tags=["payments", "tabular"],
        policy={
            "gates": [
                {"kind": "loads"},
                {"kind": "metric", "metric": "accuracy", "dataset": "holdout", "label": "y", "min": 0.9},
                {
                    "kind": "metric",
                    "metric": "recall",
                    "dataset": "holdout",
                    "label": "y",
                    "slice_by": "country",
                    "min": 0.8,
                },
            ],
            "approval": {"min_approvals": 1, "approvers": ["alice"]},
        },
        created_by=user,
    )
    ModelRole.objects.create(model=model, user=user, role=Role.OWNER)
    RegisteredModel.objects.create(name="churn", description="Monthly churn propensity", tags=["crm"])
    ModelRole.objects.create(model=RegisteredModel.objects.get(name="churn"), user=user, role=Role.VIEWER)

    holdout = DatasetFactory(name="holdout", version=2, rows=5000)
    train = DatasetFactory(name="transactions", version=7, rows=1_200_000)
    v1 = PushedVersionFactory(model=model, version=1, created_by=user)
    make_champion(v1)
    link_dataset(v1, train, role="train")
    v2 = PushedVersionFactory(
        model=model,
        version=2,
        status="rejected",
        status_reason="metric: recall on country=FR is 0.7143 < 0.8",
        created_by=user,
        tags=["nightly"],
    )
    link_dataset(v2, train, role="train")
    link_dataset(v2, holdout, role="validation")
    link_parent(v2, v1)
    GateResultFactory(version=v2, gate_index=0, gate="loads", metric="", value=None, threshold=None)
    GateResultFactory(version=v2, gate_index=1, metric="accuracy", value=0.9312, threshold=0.9, rows=5000)
    for country, recall in (("DE", 0.8621), ("FR", 0.7143), ("US", 0.9012)):
        GateResultFactory(
            version=v2,
            gate_index=2,
            metric="recall",
            slice=f"country={country}",
            value=recall,
            threshold=0.8,
            passed=recall >= 0.8,
        )
    for kind, data in (
        ("version.registered", {"sha256": v2.sha256, "format": "onnx"}),
        ("version.transitioned", {"from": "registered", "to": "validating"}),
        ("gates.completed", {"attempt": 1, "passed": False}),
        ("version.transitioned", {"from": "validating", "to": "rejected"}),
    ):
        record_event(v2, kind, **data)
    return {"user": user, "model": model, "v1": v1, "v2": v2}


def log_in(page: Page) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login/\?next=/$"))
    shot(page, "login")
    page.get_by_label("Username").fill("olivia")
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/$"))


def test_an_owner_logs_in_and_reads_why_a_version_was_rejected(page: Page, catalog: dict) -> None:
    log_in(page)
    expect(page.get_by_role("heading", name="Models")).to_be_visible()
    fraud_row = page.get_by_role("row").filter(has_text="fraud")
    expect(fraud_row.get_by_role("link", name="v1")).to_be_visible()
    expect(fraud_row.locator(".badge.status-rejected")).to_have_text("Rejected1")
    expect(fraud_row.locator(".badge.status-production")).to_have_text("Production1")
    shot(page, "model-list")

    page.get_by_role("link", name="fraud", exact=True).click()
    expect(page).to_have_url(re.compile(r"/models/fraud/$"))
    expect(page.locator("pre.json")).to_contain_text('"min_approvals": 1')
    expect(page.locator("table tbody tr")).to_have_count(2)
    shot(page, "model-detail")

    page.get_by_role("link", name="v2", exact=True).click()
    expect(page).to_have_url(re.compile(r"/models/fraud/versions/2/$"))
    status = page.locator("#version-status")
    expect(status.locator(".badge")).to_have_text("Rejected")
    expect(status).to_contain_text("recall on country=FR is 0.7143 < 0.8")
    expect(status).not_to_have_attribute("hx-trigger", "every 2s")
    expect(page.get_by_test_id("sha256")).to_have_text(catalog["v2"].sha256)

    failed = page.locator("tr.gate-failed")
    expect(failed).to_have_count(1)
    expect(failed).to_contain_text("country=FR")
    expect(failed).to_contain_text("0.7143")
    expect(failed).to_contain_text("✗ fail")
    assert failed.evaluate("row => getComputedStyle(row).backgroundColor") == "rgb(253, 236, 234)"
    expect(page.locator("table.gates tbody tr")).to_have_count(5)

    datasets = page.get_by_test_id("lineage-datasets")
    expect(datasets).to_contain_text("holdout:2")
    expect(datasets).to_contain_text("validation")
    expect(datasets).to_contain_text("transactions:7")
    expect(page.locator("#lineage")).to_contain_text("fraud v1")
    expect(page.get_by_text("reported by CI — not trusted")).to_be_visible()
    expect(page.get_by_role("link", name="Download artifact")).to_have_attribute(
        "href", "/api/v1/models/fraud/versions/2/artifact/"
    )
    shot(page, "version-rejected")

    page.get_by_role("link", name="fraud v1").click()
    expect(page.locator("#version-status .badge")).to_have_text("Production")
    expect(page.locator("h1")).to_contain_text("champion")


def test_the_status_block_follows_the_pipeline_until_it_settles(page: Page, catalog: dict) -> None:
    v3 = PushedVersionFactory(
        model=catalog["model"], version=3, status="validating", created_by=catalog["user"]
    )
    log_in(page)
    page.goto("/models/fraud/versions/3/")
    status = page.locator("#version-status")
    expect(status).to_have_attribute("hx-trigger", "every 2s")
    expect(status.locator(".badge")).to_have_text("Validating")
    shot(page, "version-validating")

    # The workers finish: gate results land and the version moves on (straight in the DB here).
    GateResultFactory(version=v3, gate_index=0, gate="loads", metric="", value=None, threshold=None)
    GateResultFactory(version=v3, gate_index=1, metric="accuracy", value=0.95, threshold=0.9)
    ModelVersion.objects.filter(pk=v3.pk).update(
        status="awaiting_approval", status_reason="all gates passed; waiting for 1 approval"
    )

    expect(status.locator(".badge")).to_have_text("Awaiting Approval", timeout=10_000)
    expect(status).not_to_have_attribute("hx-trigger", "every 2s")
    expect(page.locator("table.gates tbody tr")).to_have_count(2)  # the page reloaded once
    shot(page, "version-awaiting-approval")


def test_tokens_are_created_shown_once_and_revoked(page: Page, catalog: dict) -> None:
    log_in(page)
    page.get_by_role("link", name="API tokens").click()
    page.get_by_label("Name").fill("github-actions")
    page.get_by_label("Expires after (days)").fill("30")
    page.get_by_role("button", name="Create token").click()
    secret = page.get_by_test_id("new-token")
    expect(secret).to_contain_text("shown only this once")
    plaintext = secret.locator("code").first.inner_text()
    assert plaintext.startswith("mg_")
    shot(page, "tokens-created")

    page.reload()
    expect(page.get_by_test_id("new-token")).to_have_count(0)
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("row").filter(has_text="github-actions").get_by_role("button", name="Revoke").click()
    expect(page.locator(".messages")).to_contain_text("revoked")
    expect(page.get_by_role("row").filter(has_text="github-actions")).to_have_count(0)
    shot(page, "tokens-revoked")


def test_an_outsider_sees_a_clean_forbidden_page(page: Page, catalog: dict) -> None:
    get_user_model().objects.create_user(username="oscar", password="correct horse battery")
    page.goto("/login/")
    page.get_by_label("Username").fill("oscar")
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("You have no role on any model yet")).to_be_visible()
    response = page.goto("/models/fraud/")
    assert response is not None and response.status == 403
    expect(page.get_by_role("heading", name="You cannot open this page")).to_be_visible()
    shot(page, "forbidden")
