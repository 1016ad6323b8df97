"""The story of a version in a real browser: the model page's gate charts, the version page, its printable
audit report, and the search page, in Chromium (the README's pictures come from here)."""

from __future__ import annotations

import re

import pytest
from django.utils import timezone
from playwright.sync_api import Page, expect

from lifecycle.approval import evidence_digest
from registry.models import Approval, Dataset, GateResult, ModelVersion, Promotion, ShadowRun
from tests.ui.conftest import docs_image, screenshot
from tests.ui.factories import PushedVersionFactory
from tests.ui.test_lineage_browser import fraud, log_in  # noqa: F401 (fraud is a fixture)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def history(fraud: dict) -> dict:  # noqa: F811
    """fraud's versions 5..40, each scored by two metric gates, and holdout's statistics."""
    model = fraud["model"]
    for n in range(5, 41):
        version = PushedVersionFactory(
            model=model, version=n, status="rejected" if n % 7 == 0 else "archived"
        )
        accuracy = 0.86 + 0.002 * n - (0.05 if n % 7 == 0 else 0)
        GateResult.objects.create(
            version=version,
            attempt=1,
            gate_index=0,
            gate="metric",
            metric="accuracy",
            value=accuracy,
            threshold=0.9,
            passed=accuracy >= 0.9,
        )
        GateResult.objects.create(
            version=version,
            attempt=1,
            gate_index=1,
            gate="metric",
            metric="recall",
            value=0.7 + 0.004 * n,
            threshold=0.75,
            passed=0.7 + 0.004 * n >= 0.75,
        )
    Dataset.objects.filter(name="holdout").update(
        stats={
            "columns": {
                "amount": {
                    "kind": "numeric",
                    "count": 5000,
                    "nulls": 12,
                    "mean": 84.2,
                    "std": 61.9,
                    "min": 0.5,
                    "max": 2950.0,
                },
                "country": {
                    "kind": "categorical",
                    "count": 5000,
                    "nulls": 0,
                    "distinct": 5,
                    "distinct_is_lower_bound": False,
                    "top": [["US", 2010], ["DE", 1480], ["BR", 510]],
                },
            }
        }
    )
    Approval.objects.filter(version=fraud["v2"]).update(
        evidence_digest=evidence_digest({}), comment="shadow looks clean"
    )
    # A shadow as the evaluator leaves it (lifecycle.shadow), so the version page's charts have data.
    ShadowRun.objects.filter(candidate=fraud["v2"]).update(
        rows=1200,
        ended_at=timezone.now(),
        sources=["live"],
        summary={
            "agreement": 0.987,
            "timeline": [[i, i * 40, 0.975 + 0.012 * (i / 30) ** 0.5] for i in range(1, 31)],
            "diff": {
                "mean": 0.004,
                "p50": 0.002,
                "p95": 0.011,
                "max": 0.31,
                "histogram": {
                    "counts": [905, 190, 60, 25, 12, 5, 2, 1],
                    "edges": [0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4],
                },
            },
            "shift": {"ks": 0.021, "psi": 0.004},
            "latency_ms": {
                "candidate": {"p50": 1.9, "p95": 3.1},
                "champion": {"p50": 2.2, "p95": 3.6},
                "p95_ratio": 0.86,
            },
            "slices": {
                "country": {
                    "US": {"rows": 610, "agreement": 0.992},
                    "DE": {"rows": 420, "agreement": 0.986},
                    "BR": {"rows": 170, "agreement": 0.97},
                }
            },
            "errors": 0,
        },
    )
    Promotion.objects.create(
        model=model,
        version=fraud["v2"],
        previous=ModelVersion.objects.get(model=model, version=1),
        actor="olivia",
    )
    return fraud


def test_charts_version_page_audit_report_and_search_in_the_browser(page: Page, history: dict) -> None:
    log_in(page)
    page.goto("/models/fraud/")
    trends = page.get_by_test_id("gate-trends")
    expect(trends.locator("figure")).to_have_count(2)
    expect(trends.locator('figure[data-metric="accuracy"] line.threshold')).to_have_count(1)
    expect(trends.locator('figure[data-metric="accuracy"] circle.dot')).to_have_count(37)  # v2 and v5..v40
    docs_image(trends, "gate-trends")

    page.get_by_test_id("version-sort").select_option("version")
    expect(page).to_have_url(re.compile(r"sort=version"))
    expect(page.locator("table tbody tr").first).to_contain_text("v1")

    page.goto("/models/fraud/versions/2/")
    expect(page.locator("#lineage-graph")).to_have_attribute("data-state", "ready")
    docs_image(page.locator("main"), "version-page")

    page.get_by_test_id("report-link").click()
    expect(page).to_have_url(re.compile(r"/models/fraud/versions/2/report/$"))
    expect(page.locator("section.report-section h2")).to_have_count(7)
    expect(page.locator("#validation-data")).to_contain_text("84.2")
    expect(page.locator("#sign-off")).to_contain_text("shadow looks clean")
    expect(page.get_by_test_id("digest-ok")).to_have_count(1)
    expect(page.locator("#comparison")).to_contain_text("It replaced v1")
    screenshot(page, "ui-audit-report")
    docs_image(page.locator("main"), "audit-report")

    page.goto("/search/")
    page.get_by_label("Model").fill("fra")
    page.get_by_label("Status").select_option("rejected")
    page.get_by_role("button", name="Search").click()
    rejected = ModelVersion.objects.filter(model__name="fraud", status="rejected").count()
    expect(page.get_by_test_id("result-count")).to_have_text(f"{rejected} versions")
    docs_image(page.locator("main"), "search")
