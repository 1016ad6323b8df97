"""The lineage graph in a real browser: Debian's Chromium driven by Playwright against a live server.

Set up as ``test_browser.py`` is: the data is written before the browser starts and the browser may
fetch nothing from outside the live server, so cytoscape and its dagre layout come from static/vendor/.
The graph draws on a canvas: the tests read it through ``window.modelgateLineage`` (the cytoscape
instance) and click a node where cytoscape says it is drawn.
"""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.utils import timezone
from playwright.sync_api import Page, expect

from registry.models import Approval, Export, ModelRole, RegisteredModel, Role, ShadowRun
from tests.ui.conftest import docs_image, screenshot
from tests.ui.factories import (
    DatasetFactory,
    GateResultFactory,
    PushedVersionFactory,
    link_dataset,
    link_parent,
    make_champion,
)

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "correct horse battery"


@pytest.fixture
def fraud() -> dict:
    """fraud v2, in production: trained and validated on two datasets, fine-tuned from v1, with an ONNX
    export, two gate attempts, a shadow run and an approval; v3 and v4 descend from it."""
    olivia = get_user_model().objects.create_user(username="olivia", password=PASSWORD)
    model = RegisteredModel.objects.create(name="fraud", description="Card-not-present fraud detector")
    ModelRole.objects.create(model=model, user=olivia, role=Role.OWNER)
    v1 = PushedVersionFactory(model=model, version=1, status="archived")
    v2 = PushedVersionFactory(model=model, version=2, gate_attempt=2, approval_round=1)
    make_champion(v2)
    v3 = PushedVersionFactory(model=model, version=3, status="rejected")
    v4 = PushedVersionFactory(model=model, version=4, status="registered")
    link_parent(v2, v1)
    link_parent(v3, v2)
    link_parent(v4, v3)
    link_dataset(v2, DatasetFactory(name="transactions", version=7, rows=1_200_000), role="train")
    link_dataset(v2, DatasetFactory(name="holdout", version=2, rows=5000), role="validation")
    Export.objects.create(version=v2, format="onnx", status="passed", required=True)
    Export.objects.create(version=v2, format="tfjs", status="failed", error="unsupported op")
    GateResultFactory(version=v2, attempt=1, gate_index=0, value=0.81, passed=False)
    GateResultFactory(version=v2, attempt=2, gate_index=0, value=0.94)
    ShadowRun.objects.create(
        candidate=v2,
        baseline=v1,
        status="passed",
        since=timezone.now(),
        requests=1200,
        summary={"agreement": 0.987},
    )
    Approval.objects.create(
        version=v2,
        round=1,
        decision="approve",
        actor=olivia,
        actor_name="olivia",
        channel="web",
        evidence={},
        evidence_digest="0" * 64,
    )
    return {"model": model, "v2": v2}


def log_in(page: Page) -> None:
    page.goto("/login/")
    page.get_by_label("Username").fill("olivia")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/$"))


def wait_for_graph(page: Page, query: str) -> None:
    expect(page.locator("#lineage-graph")).to_have_attribute("data-query", query)
    expect(page.locator("#lineage-graph")).to_have_attribute("data-state", "ready")


def node_ids(page: Page) -> set[str]:
    return set(page.evaluate("window.modelgateLineage.nodes().map(node => node.id())"))


def click_node(page: Page, node_id: str) -> None:
    """Click where cytoscape draws the node: its rendered position inside the graph's container."""
    graph = page.locator("#lineage-graph")
    graph.scroll_into_view_if_needed()
    # On a loaded machine the page may still be settling (a late resize refits the graph): click
    # only once the node and its container have kept their place for a few frames.
    previous = None
    for _ in range(50):
        box = graph.bounding_box()
        at = page.evaluate("id => window.modelgateLineage.$id(id).renderedPosition()", node_id)
        current = (box and (round(box["x"]), round(box["y"])), round(at["x"]), round(at["y"]))
        if box is not None and current == previous:
            break
        previous = current
        page.wait_for_timeout(100)
    assert box is not None
    page.mouse.click(box["x"] + at["x"], box["y"] + at["y"])


def test_the_version_page_draws_the_lineage_and_a_dataset_node_opens_the_dataset(
    page: Page, fraud: dict
) -> None:
    log_in(page)
    page.goto("/models/fraud/versions/2/")
    wait_for_graph(page, "direction=both&depth=3")

    types = page.evaluate(
        "() => Object.fromEntries(['dataset', 'version', 'export', 'gate', 'shadow', 'approval']"
        ".map(type => [type, window.modelgateLineage.nodes('.' + type).length]))"
    )
    assert types == {"dataset": 2, "version": 4, "export": 2, "gate": 2, "shadow": 1, "approval": 1}
    assert {"dataset:holdout:2", "export:fraud:2:onnx", "approval:fraud:2:1", "gate:fraud:2:2"} <= node_ids(
        page
    )
    # Left to right: the datasets and the parent before the version, its runs and children after it.
    x = page.evaluate(
        "ids => ids.map(id => window.modelgateLineage.$id(id).position('x'))",
        ["dataset:holdout:2", "version:fraud:1", "version:fraud:2", "approval:fraud:2:1", "version:fraud:3"],
    )
    assert x[0] < x[2] and x[1] < x[2] and x[2] < x[3] and x[2] < x[4]

    page.locator("#lineage").scroll_into_view_if_needed()
    docs_image(page.locator("#lineage"), "version-lineage")
    screenshot(page, "ui-lineage-version")

    click_node(page, "dataset:holdout:2")
    expect(page).to_have_url(re.compile(r"/datasets/holdout/2/$"))
    expect(page.get_by_role("heading", name="holdout:2")).to_be_visible()
    expect(page.get_by_test_id("dataset-uses")).to_contain_text("fraud v2")
    screenshot(page, "ui-lineage-dataset")


def test_a_run_node_opens_its_section_of_the_version_page(page: Page, fraud: dict) -> None:
    log_in(page)
    page.goto("/models/fraud/versions/2/")
    wait_for_graph(page, "direction=both&depth=3")

    click_node(page, "export:fraud:2:onnx")

    expect(page).to_have_url(re.compile(r"/models/fraud/versions/2/#exports$"))
    expect(page.locator("#exports")).to_be_in_viewport()


def test_direction_and_depth_change_the_nodes_drawn(page: Page, fraud: dict) -> None:
    log_in(page)
    page.goto("/models/fraud/versions/2/")
    wait_for_graph(page, "direction=both&depth=3")
    versions = "window.modelgateLineage.nodes('.version').map(node => node.id()).sort()"
    assert page.evaluate(versions) == [f"version:fraud:{n}" for n in (1, 2, 3, 4)]

    page.get_by_label("Direction").select_option("up")
    wait_for_graph(page, "direction=up&depth=3")
    assert page.evaluate(versions) == ["version:fraud:1", "version:fraud:2"]
    assert "dataset:transactions:7" in node_ids(page)  # the root's datasets and runs stay

    page.get_by_label("Direction").select_option("down")
    page.get_by_label("Depth").select_option("1")
    wait_for_graph(page, "direction=down&depth=1")
    assert page.evaluate(versions) == ["version:fraud:2", "version:fraud:3"]

    page.get_by_label("Depth").select_option("10")
    wait_for_graph(page, "direction=down&depth=10")
    assert page.evaluate(versions) == ["version:fraud:2", "version:fraud:3", "version:fraud:4"]
