"""The shadow card and the serving summary in Chromium, on a shadow evaluated by the real code.

The shadow is folded in-process by ``lifecycle.shadow.shadow_evaluate`` (ONNX Runtime, real traffic
records), so the page draws numbers the verdict actually used. Screenshots land in ``test-results/``.
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import Page, expect

from lifecycle import shadow
from lifecycle.traffic import traffic_record
from registry.models import ModelRole, Role, TrafficRecord
from tests import builders
from tests.serving.test_shadow import rows, served_champion, version_from
from tests.ui.conftest import screenshot
from tests.ui.test_signoff_browser import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct horse battery"


@pytest.fixture
def shadowed(fraud_model, tmp_path):
    user = get_user_model().objects.create_user(username="sam", password=PASSWORD)
    ModelRole.objects.create(model=fraud_model, user=user, role=Role.VIEWER)
    fraud_model.policy = {"shadow": {"min_requests": 40, "min_agreement": 0.9, "max_p95_latency_ratio": 50}}
    fraud_model.save()
    champion = served_champion(fraud_model, tmp_path / "1")
    candidate = version_from(fraud_model, builders.threshold_onnx_classifier(tmp_path / "2", shift=1.0), 2)
    run = shadow.shadow_start(version=candidate, champion=champion, actor="tests")
    data = rows(400, disagree=0.05, seed=7)
    TrafficRecord.objects.bulk_create(
        traffic_record(
            model_id=fraud_model.pk,
            request_id=f"r{i}",
            inputs=batch,
            rows=len(batch),
            metadata={"country": ["DE", "FR", "PL"][i % 3]},
        )
        for i, batch in enumerate(np.array_split(data, 40))
    )
    # A shared worker may take the run's lease first (shadow_start wakes the shadow queue): both paths
    # run the same code; wait for whichever concludes it.
    deadline = time.monotonic() + 60
    while run.status == "running" and time.monotonic() < deadline:
        shadow.shadow_evaluate(run.pk)
        run.refresh_from_db()
        time.sleep(0.2)
    return run


def test_the_version_page_draws_the_shadow_and_the_model_page_shows_what_serves(page: Page, shadowed):
    run = shadowed
    run.refresh_from_db()
    assert run.status == "passed", run.reason

    log_in(page, "sam")
    page.goto("/models/fraud/versions/2/")
    card = page.get_by_test_id("shadow")
    expect(card).to_contain_text("passed")
    expect(card).to_contain_text("40 of 40 requests")
    expect(page.get_by_test_id("shadow-agreement")).to_contain_text(re.compile(r"9\d\.\d%"))
    expect(card.locator("svg.chart")).to_have_count(3)
    expect(page.get_by_test_id("shadow-slices")).to_contain_text("PL")
    card.scroll_into_view_if_needed()
    screenshot(page, "shadow-version-page")

    page.goto("/models/fraud/")
    expect(page.get_by_test_id("serving")).to_contain_text("v1")
    expect(page.get_by_test_id("serving")).to_contain_text("predictions today")
    screenshot(page, "shadow-model-page")


def test_the_retirement_page_lists_upcoming_retirements_and_keep_pins_the_version(
    page: Page, fraud_model, owner
):
    import datetime as dt

    from django.utils import timezone

    from lifecycle import retirement
    from registry.models import Event, ModelVersion
    from tests.factories import ModelVersionFactory

    owner.user.set_password(PASSWORD)
    owner.user.save()
    old = timezone.now() - dt.timedelta(days=60)
    for number in range(1, 6):
        ModelVersionFactory(model=fraud_model, version=number, status="archived", created_at=old)
    retirement.retirement_sweep()  # warns v1 and v2 (v3..v5 are the newest three)

    log_in(page, "olivia")
    page.get_by_role("link", name="Retirement").click()
    table = page.get_by_test_id("retirements")
    expect(table.locator("tbody tr")).to_have_count(2)
    expect(table).to_contain_text("v1")
    screenshot(page, "retirement-page")
    table.locator("tbody tr").first.get_by_role("button", name="Keep").click()

    expect(page.get_by_text("is pinned")).to_be_visible()
    expect(page.get_by_test_id("retirements").locator("tbody tr")).to_have_count(1)
    v1 = ModelVersion.objects.get(model=fraud_model, version=1)
    assert "pinned" in v1.tags and v1.retire_on is None
    assert Event.objects.filter(kind="version.pinned", version=v1, actor="olivia").exists()
    assert retirement.retirement_plan().of("warn") == []
