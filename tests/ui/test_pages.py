"""The catalog pages, through Django's test client: access, content, token flow, query counts."""

from __future__ import annotations

import hashlib
import itertools
import re

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from registry.models import Alias, ApiToken, Event, EventKind, ModelRole, RegisteredModel, Role
from tests.builders import tiny_onnx_model
from tests.conftest import push
from tests.ui.factories import (
    DatasetFactory,
    GateResultFactory,
    PushedVersionFactory,
    RegisteredModelFactory,
    link_dataset,
    link_parent,
    make_champion,
    record_event,
)

pytestmark = pytest.mark.django_db


def browser_for(actor) -> Client:
    """A logged-in web session for a named actor (the pages use sessions, not tokens)."""
    client = Client()
    client.force_login(actor.user)
    return client


@pytest.fixture
def rejected_version(fraud_model):
    """fraud v1: rejected by a failed recall gate on one slice, trained from a dataset, with a child."""
    version = PushedVersionFactory(
        model=fraud_model, version=1, status="rejected", status_reason="recall on country=FR is 0.71 < 0.8"
    )
    GateResultFactory(version=version, gate_index=0, gate="loads", metric="", value=None, threshold=None)
    GateResultFactory(version=version, gate_index=1, metric="accuracy", value=0.93, threshold=0.9)
    GateResultFactory(
        version=version,
        gate_index=2,
        metric="recall",
        slice="country=FR",
        value=0.71,
        threshold=0.8,
        passed=False,
    )
    GateResultFactory(
        version=version,
        gate_index=3,
        gate="no_regression",
        metric="roc_auc",
        value=None,
        threshold=None,
        passed=None,
        skipped_reason="no champion to compare with",
    )
    link_dataset(version, DatasetFactory(name="holdout", rows=5000), role="validation")
    link_dataset(version, DatasetFactory(name="transactions", version=3, rows=120_000), role="train")
    link_parent(PushedVersionFactory(model=fraud_model, version=2, status="awaiting_approval"), version)
    return version


def page_urls(model: str = "fraud", version: int = 1) -> list[str]:
    return [
        reverse("ui:model-list"),
        reverse("ui:model-detail", kwargs={"name": model}),
        reverse("ui:version-detail", kwargs={"name": model, "version": version}),
        reverse("ui:version-status", kwargs={"name": model, "version": version}),
        reverse("ui:tokens"),
    ]


# --- access -------------------------------------------------------------------------------------


def test_every_page_renders_for_the_owner(owner, rejected_version):
    client = browser_for(owner)
    for url in page_urls():
        response = client.get(url)
        assert response.status_code == 200, url


def test_every_page_redirects_an_anonymous_visitor_to_the_login_page(rejected_version):
    for url in page_urls():
        response = Client().get(url)
        assert response.status_code == 302, url
        assert response["Location"] == f"{reverse('login')}?next={url}"


def test_an_outsider_with_no_role_is_forbidden_from_the_model_pages(outsider, rejected_version):
    client = browser_for(outsider)
    for url in page_urls()[1:4]:
        response = client.get(url)
        assert response.status_code == 403, url
        assert b"you have no role on fraud" in response.content.lower()


def test_an_outsider_does_not_see_the_model_in_the_list(outsider, rejected_version):
    response = browser_for(outsider).get(reverse("ui:model-list"))
    assert response.status_code == 200
    assert b"fraud" not in response.content
    assert b"You have no role on any model yet" in response.content


def test_a_model_or_version_that_does_not_exist_is_not_found(owner, rejected_version):
    client = browser_for(owner)
    assert client.get(reverse("ui:model-detail", kwargs={"name": "nope"})).status_code == 404
    assert (
        client.get(reverse("ui:version-detail", kwargs={"name": "fraud", "version": 99})).status_code == 404
    )
    assert (
        client.get(reverse("ui:version-status", kwargs={"name": "fraud", "version": 99})).status_code == 404
    )


def test_a_viewer_can_read_every_model_page(viewer, rejected_version):
    client = browser_for(viewer)
    for url in page_urls():
        assert client.get(url).status_code == 200, url


def test_the_login_page_logs_a_user_in_and_lands_on_the_model_list(owner):
    client = Client()
    assert client.get(reverse("login")).status_code == 200
    response = client.post(reverse("login"), {"username": "olivia", "password": "pw-olivia"})
    assert response.status_code == 302
    assert response["Location"] == reverse("ui:model-list")
    assert b"olivia" in client.get(reverse("ui:model-list")).content


def test_logout_is_a_post_form_with_a_csrf_token(owner):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner.user)
    html = client.get(reverse("ui:model-list")).content.decode()
    form = re.search(r'<form method="post" action="/logout/">(.*?)</form>', html, re.S)
    assert form and "csrfmiddlewaretoken" in form.group(1)


# --- model list ---------------------------------------------------------------------------------


def test_the_model_list_shows_the_champion_and_the_counts_per_status(owner, fraud_model):
    PushedVersionFactory(model=fraud_model, version=1, status="archived")
    make_champion(PushedVersionFactory(model=fraud_model, version=2))
    PushedVersionFactory(model=fraud_model, version=3, status="rejected")
    PushedVersionFactory(model=fraud_model, version=4, status="rejected")
    html = browser_for(owner).get(reverse("ui:model-list")).content.decode()
    assert 'href="/models/fraud/versions/2/">v2</a>' in html
    assert re.search(r"Rejected<span class=\"count\">2</span>", html)
    assert re.search(r"Production<span class=\"count\">1</span>", html)
    assert re.search(r"Archived<span class=\"count\">1</span>", html)


def test_the_model_list_searches_names_and_descriptions(owner, fraud_model):
    other = RegisteredModelFactory(name="churn", description="who leaves next month")
    ModelRole.objects.create(model=other, user=owner.user, role=Role.OWNER)
    client = browser_for(owner)
    by_name = client.get(reverse("ui:model-list"), {"q": "chu"}).content.decode()
    assert "/models/churn/" in by_name and "/models/fraud/" not in by_name
    by_description = client.get(reverse("ui:model-list"), {"q": "detector"}).content.decode()
    assert "/models/fraud/" in by_description and "/models/churn/" not in by_description


def test_the_model_list_pages_by_fifty(make_actor):
    admin = make_actor("ada", staff=True)
    RegisteredModelFactory.create_batch(55)
    client = browser_for(admin)
    first = client.get(reverse("ui:model-list")).content.decode()
    assert first.count('<td class="nowrap"><a href="/models/') == 50
    assert "Page 1 of 2" in first
    second = client.get(reverse("ui:model-list"), {"page": 2}).content.decode()
    assert second.count('<td class="nowrap"><a href="/models/') == 5


def model_list_queries(client: Client, models: int) -> int:
    for n in range(RegisteredModel.objects.count(), models):
        model = RegisteredModelFactory(name=f"m{n:03}")
        make_champion(PushedVersionFactory(model=model, version=1))
        PushedVersionFactory(model=model, version=2, status="rejected")
    with CaptureQueriesContext(connection) as queries:
        assert client.get(reverse("ui:model-list")).status_code == 200
    return len(queries)


def test_the_model_list_costs_the_same_queries_for_5_or_50_models(make_actor):
    client = browser_for(make_actor("ada", staff=True))
    assert model_list_queries(client, 5) == model_list_queries(client, 50)


# --- model page ---------------------------------------------------------------------------------


def test_the_model_page_shows_the_policy_and_the_versions_table(owner, fraud_model):
    version = PushedVersionFactory(model=fraud_model, version=1, status="validating", created_by=owner.user)
    html = browser_for(owner).get(reverse("ui:model-detail", kwargs={"name": "fraud"})).content.decode()
    assert "fraud detector" in html
    assert "&quot;gates&quot;: [" in html  # the policy, pretty-printed
    assert f'title="{version.sha256}">{version.sha256[:12]}</code>' in html
    assert version.git_sha[:10] in html
    assert '<span class="badge status-validating">Validating</span>' in html
    assert "47.1\xa0KB" in html
    assert ">olivia<" in html


def test_the_model_page_filters_versions_by_status(owner, fraud_model):
    PushedVersionFactory(model=fraud_model, version=1, status="rejected")
    PushedVersionFactory(model=fraud_model, version=2, status="awaiting_approval")
    client = browser_for(owner)
    url = reverse("ui:model-detail", kwargs={"name": "fraud"})
    html = client.get(url, {"status": "rejected"}).content.decode()
    assert "/models/fraud/versions/1/" in html and "/models/fraud/versions/2/" not in html
    # An unknown status is ignored rather than an error.
    html = client.get(url, {"status": "bogus"}).content.decode()
    assert "/models/fraud/versions/1/" in html and "/models/fraud/versions/2/" in html


def model_page_queries(client: Client, model: RegisteredModel, versions: int) -> list[str]:
    """The SQL of one model page once the model has ``versions`` versions."""
    for number in range(model.versions.count() + 1, versions + 1):
        version = PushedVersionFactory(
            model=model, version=number, status="rejected", created_by=model.created_by
        )
        Alias.objects.create(model=model, name=f"candidate-{number}", version=version)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("ui:model-detail", kwargs={"name": model.name}))
    assert response.status_code == 200
    return [query["sql"] for query in queries.captured_queries]


def test_the_model_page_costs_the_same_queries_for_10_or_60_versions(owner, fraud_model):
    make_champion(PushedVersionFactory(model=fraud_model, version=1, created_by=owner.user))
    client = browser_for(owner)
    with_10 = model_page_queries(client, fraud_model, 10)
    with_60 = model_page_queries(client, fraud_model, 60)
    assert len(with_10) == len(with_60), "\n".join(with_60)


# --- version page -------------------------------------------------------------------------------


def test_the_version_page_highlights_the_failed_gate(owner, rejected_version):
    html = (
        browser_for(owner).get(reverse("ui:version-detail", kwargs={"name": "fraud", "version": 1})).content
    )
    html = html.decode()
    failed_rows = re.findall(r'<tr class="gate-failed">(.*?)</tr>', html, re.S)
    assert len(failed_rows) == 1
    assert "recall" in failed_rows[0] and "country=FR" in failed_rows[0]
    assert "0.71" in failed_rows[0] and "0.8" in failed_rows[0] and "✗" in failed_rows[0]
    skipped = re.findall(r'<tr class="gate-skipped">(.*?)</tr>', html, re.S)
    assert len(skipped) == 1 and "no champion to compare with" in skipped[0]
    assert html.count("✓ pass") == 2
    assert "1 failed" in html


def test_the_version_page_shows_status_metadata_and_lineage(owner, rejected_version):
    html = (
        browser_for(owner).get(reverse("ui:version-detail", kwargs={"name": "fraud", "version": 1})).content
    )
    html = html.decode()
    assert '<span class="badge status-rejected badge-lg">Rejected</span>' in html
    assert "recall on country=FR is 0.71 &lt; 0.8" in html
    assert rejected_version.sha256 in html
    assert '<a href="https://ci.example.com/runs/1"' in html
    assert "reported by CI — not trusted" in html
    assert "<code>features</code>" in html and "[?, 4]" in html
    assert "<strong>holdout</strong>:1" in html and '<span class="chip">validation</span>' in html
    assert "<strong>transactions</strong>:3" in html and '<span class="chip">train</span>' in html
    assert '<a href="/models/fraud/versions/2/"><strong>fraud v2</strong></a>' in html  # a child
    assert "No parent version." in html
    assert 'href="/api/v1/models/fraud/versions/1/artifact/"' in html


def test_the_version_page_lists_parents_up_to_three_hops(owner, fraud_model):
    chain = [PushedVersionFactory(model=fraud_model, version=n) for n in range(1, 6)]
    for parent, child in itertools.pairwise(chain):
        link_parent(child, parent)
    html = (
        browser_for(owner).get(reverse("ui:version-detail", kwargs={"name": "fraud", "version": 5})).content
    )
    html = html.decode()
    for number in (4, 3, 2):
        assert f"<strong>fraud v{number}</strong>" in html
    assert "<strong>fraud v1</strong>" not in html  # four hops: beyond the depth shown
    assert "3 hops away" in html


def test_the_version_page_shows_the_latest_fifty_events_newest_first(owner, fraud_model):
    version = PushedVersionFactory(model=fraud_model, version=1)
    for n in range(60):
        record_event(version, step=n)
    html = (
        browser_for(owner).get(reverse("ui:version-detail", kwargs={"name": "fraud", "version": 1})).content
    )
    html = html.decode()
    assert "latest 50, newest first" in html
    assert "&quot;step&quot;: 59" in html and "&quot;step&quot;: 10}" in html
    assert "&quot;step&quot;: 9}" not in html
    assert html.index("&quot;step&quot;: 59") < html.index("&quot;step&quot;: 58")


def test_a_ci_run_url_that_is_not_a_web_link_is_not_clickable(owner, fraud_model):
    PushedVersionFactory(model=fraud_model, version=1, source={"ci_run_url": "javascript:alert(1)"})
    html = (
        browser_for(owner).get(reverse("ui:version-detail", kwargs={"name": "fraud", "version": 1})).content
    )
    assert b'href="javascript:' not in html
    assert b"javascript:alert(1)" in html


def version_page_queries(client: Client, model: RegisteredModel, number: int, rows: int) -> int:
    version = PushedVersionFactory(model=model, version=number, status="rejected")
    for n in range(rows):
        GateResultFactory(version=version, attempt=1 + n % 2, gate_index=n, passed=n % 4 != 0)
        link_dataset(version, DatasetFactory(), role="validation")
        link_parent(PushedVersionFactory(model=model, version=1000 * number + n), version)
        record_event(version, n=n)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(reverse("ui:version-detail", kwargs={"name": model.name, "version": number}))
    assert response.status_code == 200
    return len(queries)


def test_the_version_page_costs_the_same_queries_for_few_or_many_rows(owner, fraud_model):
    client = browser_for(owner)
    client.get(reverse("ui:model-list"))  # warm the session
    assert version_page_queries(client, fraud_model, 1, rows=2) == version_page_queries(
        client, fraud_model, 2, rows=25
    )


def test_the_artifact_link_downloads_with_the_web_session(owner, publisher, fraud_model, tmp_path):
    artifact = tiny_onnx_model(tmp_path)
    assert push(publisher.client, "fraud", artifact).status_code == 201
    client = browser_for(owner)
    html = client.get(reverse("ui:version-detail", kwargs={"name": "fraud", "version": 1})).content.decode()
    link = re.search(r'href="(/api/v1/models/fraud/versions/1/artifact/)"', html).group(1)
    response = client.get(link)
    assert response.status_code == 200
    body = b"".join(response.streaming_content)
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(artifact.read_bytes()).hexdigest()


# --- the status block ---------------------------------------------------------------------------


def test_the_status_block_polls_while_the_pipeline_works(owner, fraud_model):
    PushedVersionFactory(model=fraud_model, version=1, status="validating")
    client = browser_for(owner)
    html = client.get(reverse("ui:version-detail", kwargs={"name": "fraud", "version": 1})).content.decode()
    assert 'hx-get="/models/fraud/versions/1/status/" hx-trigger="every 2s" hx-swap="outerHTML"' in html
    fragment = client.get(reverse("ui:version-status", kwargs={"name": "fraud", "version": 1}))
    assert b'hx-trigger="every 2s"' in fragment.content
    assert b"<html" not in fragment.content
    assert "HX-Refresh" not in fragment.headers


def test_the_status_block_stops_polling_once_the_status_is_settled(owner, fraud_model):
    version = PushedVersionFactory(model=fraud_model, version=1, status="awaiting_approval")
    client = browser_for(owner)
    html = client.get(reverse("ui:version-detail", kwargs={"name": "fraud", "version": 1})).content.decode()
    assert "hx-trigger" not in html
    # A page that was polling learns the news and reloads once, to show the gate results too.
    fragment = client.get(
        reverse("ui:version-status", kwargs={"name": "fraud", "version": 1}), headers={"HX-Request": "true"}
    )
    assert b"hx-trigger" not in fragment.content
    assert b"Awaiting Approval" in fragment.content
    assert fragment.headers["HX-Refresh"] == "true"
    assert version.status == "awaiting_approval"


# --- API tokens ---------------------------------------------------------------------------------


def test_a_new_token_is_shown_once_and_authenticates_against_the_api(owner, fraud_model):
    client = browser_for(owner)
    response = client.post(reverse("ui:tokens"), {"name": "github-actions", "days": "30"})
    assert response.status_code == 302 and response["Location"] == reverse("ui:tokens")

    html = client.get(reverse("ui:tokens")).content.decode()
    plaintext = re.search(r'data-testid="new-token">.*?<code>(mg_[^<]+)</code>', html, re.S).group(1)
    token = ApiToken.objects.get(user=owner.user, name="github-actions")
    assert plaintext.startswith(token.token_key)
    assert f"<code>{token.token_key}…</code>" in html

    again = client.get(reverse("ui:tokens")).content.decode()
    assert plaintext not in again and "github-actions" in again

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert api.get("/api/v1/models/fraud/").status_code == 200
    assert Event.objects.filter(kind=EventKind.TOKEN_ISSUED, data__name="github-actions").exists()


def test_a_token_form_with_bad_days_is_shown_again_with_the_error(owner):
    response = browser_for(owner).post(reverse("ui:tokens"), {"name": "ci", "days": "0"})
    assert response.status_code == 200
    assert b"greater than or equal to 1" in response.content
    assert not ApiToken.objects.filter(name="ci").exists()


def test_revoking_a_token_stops_it_working(owner, fraud_model):
    client = browser_for(owner)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {owner.token}")
    assert api.get("/api/v1/models/fraud/").status_code == 200
    token = ApiToken.objects.get(user=owner.user, name="tests")

    response = client.post(reverse("ui:token-revoke", kwargs={"key": token.token_key}))
    assert response.status_code == 302 and response["Location"] == reverse("ui:tokens")
    assert not ApiToken.objects.filter(pk=token.pk).exists()
    assert api.get("/api/v1/models/fraud/").status_code == 401
    assert Event.objects.filter(kind=EventKind.TOKEN_REVOKED, data__token_key=token.token_key).exists()
    assert "revoked" in client.get(reverse("ui:tokens")).content.decode()


def test_revoking_needs_a_post_and_ones_own_token(owner, outsider):
    theirs = ApiToken.objects.get(user=outsider.user)
    client = browser_for(owner)
    url = reverse("ui:token-revoke", kwargs={"key": theirs.token_key})
    assert client.get(url).status_code == 405
    assert client.post(url).status_code == 404
    assert ApiToken.objects.filter(pk=theirs.pk).exists()


def test_the_token_page_lists_only_the_users_own_tokens(owner, outsider):
    html = browser_for(owner).get(reverse("ui:tokens")).content.decode()
    assert ApiToken.objects.get(user=owner.user).token_key in html
    assert ApiToken.objects.get(user=outsider.user).token_key not in html
