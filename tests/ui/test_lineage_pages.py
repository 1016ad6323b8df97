"""The dataset page and the lineage graph's place on the version page, through Django's test client."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from registry.models import ModelRole, RegisteredModel, Role
from tests.ui.factories import DatasetFactory, PushedVersionFactory, link_dataset

pytestmark = pytest.mark.django_db


def browser_for(actor) -> Client:
    client = Client()
    client.force_login(actor.user)
    return client


@pytest.fixture
def holdout(fraud_model):
    """holdout:2, which validated fraud v1 and trained v2, and also trained a model no one here can read."""
    dataset = DatasetFactory(
        name="holdout",
        version=2,
        rows=1_250_000,
        format="parquet",
        schema=[{"name": "amount", "dtype": "float64"}, {"name": "country", "dtype": "object"}],
    )
    link_dataset(PushedVersionFactory(model=fraud_model, version=1), dataset, role="validation")
    link_dataset(PushedVersionFactory(model=fraud_model, version=2, status="rejected"), dataset, role="train")
    secret = RegisteredModel.objects.create(name="secret")
    link_dataset(PushedVersionFactory(model=secret, version=1), dataset, role="train")
    return dataset


def test_the_dataset_page_shows_the_data_and_the_versions_that_used_it(viewer, holdout):
    response = browser_for(viewer).get(reverse("ui:dataset-detail", kwargs={"name": "holdout", "version": 2}))

    assert response.status_code == 200
    html = response.content.decode()
    assert "<h1>holdout:2</h1>" in html
    assert holdout.sha256 in html and "1,250,000" in html and "parquet" in html
    assert "<code>amount</code></td><td>float64</td>" in html
    assert '<a href="/models/fraud/versions/2/"><strong>fraud v2</strong></a>' in html
    assert '<span class="chip">validation</span>' in html and "Rejected" in html
    assert "secret" not in html  # the viewer has no role on it


def test_the_dataset_page_pages_the_versions_that_used_it(owner, fraud_model):
    dataset = DatasetFactory(name="clicks")
    for n in range(1, 53):
        link_dataset(PushedVersionFactory(model=fraud_model, version=n), dataset)
    client = browser_for(owner)
    url = reverse("ui:dataset-detail", kwargs={"name": "clicks", "version": 1})

    first, second = client.get(url).content.decode(), client.get(url, {"page": 2}).content.decode()

    assert "Page 1 of 2 · 52 versions" in first and "fraud v52" in first and "fraud v2<" not in first
    assert "fraud v2<" in second and "fraud v1<" in second and "fraud v3<" not in second


def test_the_dataset_page_needs_a_login_and_an_existing_dataset(owner, holdout):
    url = reverse("ui:dataset-detail", kwargs={"name": "holdout", "version": 2})
    assert Client().get(url)["Location"] == f"{reverse('login')}?next={url}"
    missing = reverse("ui:dataset-detail", kwargs={"name": "holdout", "version": 3})
    assert browser_for(owner).get(missing).status_code == 404


def test_the_version_page_carries_the_lineage_graph_beside_the_lists(owner, holdout):
    ModelRole.objects.filter(model__name="fraud", user=owner.user).update(role=Role.OWNER)
    html = (
        browser_for(owner).get(reverse("ui:version-detail", kwargs={"name": "fraud", "version": 1})).content
    ).decode()

    assert 'data-url="/api/v1/models/fraud/versions/1/lineage/"' in html
    assert 'data-root="version:fraud:1"' in html
    assert '<option value="3" selected>3</option>' in html and '<option value="10">10</option>' in html
    for script in ("vendor/cytoscape.min.js", "vendor/cytoscape-dagre.min.js", "modelgate/lineage.js"):
        assert f'<script src="/static/{script}" defer></script>' in html
    assert 'id="gates"' in html and 'id="exports"' in html
    assert 'data-testid="lineage-datasets"' in html  # the lists stay, for keyboards and screen readers
