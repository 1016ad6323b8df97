"""The catalog at scale and its search: the pages and lists run the same number of queries at 10 and at
1,000 versions, and versions are found by model, status, tag, alias, dataset, git sha and date, in the
API and on the search page."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from registry.models import (
    Alias,
    Approval,
    Export,
    GateResult,
    ModelRole,
    ModelVersion,
    Role,
    VersionDataset,
)
from tests.ui.factories import DatasetFactory, PushedVersionFactory, RegisteredModelFactory, link_parent

pytestmark = pytest.mark.django_db

STATUSES = ["archived", "rejected", "retired", "awaiting_approval", "registered"]
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def add_versions(model, start: int, stop: int, dataset=None) -> None:
    """Versions ``start``..``stop - 1`` of ``model``, written in bulk, each with a gate result and an
    export, every tenth linked to ``dataset``, the ones awaiting approval with an approval round."""
    versions = ModelVersion.objects.bulk_create(
        [
            ModelVersion(
                model=model,
                version=n,
                status=STATUSES[n % len(STATUSES)],
                sha256=hashlib.sha256(f"{model.name}{n}".encode()).hexdigest(),
                artifact_key=f"artifacts/{model.name}/{n}",
                size=1000 + n,
                format="onnx",
                git_sha=hashlib.sha1(f"{model.name}{n}".encode()).hexdigest(),
                tags=["nightly"] if n % 2 else ["release"],
                approval_round=1 if STATUSES[n % len(STATUSES)] == "awaiting_approval" else 0,
                created_at=T0 + dt.timedelta(hours=n),
            )
            for n in range(start, stop)
        ]
    )
    GateResult.objects.bulk_create(
        [GateResult(version=v, attempt=1, gate_index=0, gate="loads", passed=True) for v in versions]
    )
    Export.objects.bulk_create([Export(version=v, format="onnx", status="passed") for v in versions])
    if dataset is not None:
        VersionDataset.objects.bulk_create(
            [
                VersionDataset(version=v, dataset=dataset, role="validation")
                for v in versions
                if v.version % 10 == 0
            ]
        )


@pytest.fixture
def catalog(django_user_model):
    """Three models a non-staff user can read (and approve), one of them "big", with a champion each."""
    user = django_user_model.objects.create_user("reader", password="pw")
    dataset = DatasetFactory(name="holdout")
    models = [RegisteredModelFactory(name=name) for name in ("big", "churn", "fraud")]
    for model in models:
        ModelRole.objects.create(model=model, user=user, role=Role.APPROVER)
        champion = PushedVersionFactory(model=model, version=1, status="production")
        Alias.objects.create(model=model, name="champion", version=champion)
    root = ModelVersion.objects.get(model__name="big", version=1)
    parent = PushedVersionFactory(model=models[0], version=2, status="archived")
    link_parent(root, parent)
    VersionDataset.objects.create(version=root, dataset=dataset, role="validation")
    GateResult.objects.create(version=root, attempt=1, gate_index=0, gate="loads", passed=True)
    Export.objects.create(version=root, format="onnx", status="passed")
    Approval.objects.create(
        version=root,
        round=1,
        decision="approve",
        actor_name="someone",
        channel="web",
        evidence={},
        evidence_digest="x",
    )
    client = Client()
    client.force_login(user)
    return {"user": user, "client": client, "models": models, "dataset": dataset}


PAGES = [
    "/",
    "/models/big/",
    "/models/big/?status=archived&sort=-size",
    "/models/big/?sort=status&page=2",
    "/models/big/versions/1/",
    "/inbox/",
    "/search/?q=big&status=awaiting_approval",
    "/search/?dataset=holdout&sort=created",
    "/api/v1/models/",
    "/api/v1/models/big/",
    "/api/v1/models/big/versions/?tag=nightly",
    "/api/v1/versions/",
    "/api/v1/versions/?status=awaiting_approval&dataset=holdout",
]


def queries(client: Client, path: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200, (path, response.content[:500])
    return len(captured)


def test_pages_and_lists_run_as_many_queries_at_1000_versions_as_at_10(catalog):
    big, churn, fraud = catalog["models"]
    add_versions(big, 3, 10, catalog["dataset"])
    add_versions(churn, 2, 10)
    small = {path: queries(catalog["client"], path) for path in PAGES}

    add_versions(big, 10, 1000, catalog["dataset"])
    add_versions(churn, 10, 300)
    add_versions(fraud, 2, 300)
    assert ModelVersion.objects.count() > 1500
    large = {path: queries(catalog["client"], path) for path in PAGES}

    assert large == small
    assert max(small.values()) <= 25, small


def test_the_model_page_sorts_and_filters_its_versions(catalog):
    add_versions(catalog["models"][0], 3, 120)
    client = catalog["client"]
    oldest_first = client.get("/models/big/?sort=version").content.decode()
    assert oldest_first.index(">v1<") < oldest_first.index(">v3<")
    largest = client.get("/models/big/?sort=-size&status=rejected").content.decode()
    assert ">v116<" in largest and ">v3<" not in largest  # 116 is the largest rejected (116 % 5 == 1)
    assert client.get("/models/big/?sort=nonsense&status=nonsense").status_code == 200


@pytest.fixture
def searchable(catalog):
    big, churn, _ = catalog["models"]
    add_versions(big, 3, 40, catalog["dataset"])
    add_versions(churn, 2, 20)
    Alias.objects.create(model=churn, name="canary", version=ModelVersion.objects.get(model=churn, version=7))
    return catalog


def found(client: Client, query: str) -> list[tuple[str, int]]:
    response = client.get(f"/api/v1/versions/?page_size=500&{query}")
    assert response.status_code == 200, response.content
    return [(v["model"], v["version"]) for v in response.json()["results"]]


def test_the_api_finds_versions_by_each_field_and_their_combinations(searchable, make_actor):
    client = searchable["client"]
    assert {m for m, _ in found(client, "model=churn")} == {"churn"}
    assert {m for m, _ in found(client, "model=churn&model=fraud")} == {"churn", "fraud"}
    assert {m for m, _ in found(client, "model_contains=HUR")} == {"churn"}
    assert all(
        ModelVersion.objects.get(model__name=m, version=n).status == "rejected"
        for m, n in found(client, "status=rejected")
    )
    assert found(client, "alias=canary") == [("churn", 7)]
    assert sorted(found(client, "alias=champion")) == [("big", 1), ("churn", 1), ("fraud", 1)]
    assert sorted(n for _, n in found(client, "dataset=holdout")) == [1, 10, 20, 30]
    assert sorted(n for _, n in found(client, "dataset=holdout:1&tag=release")) == [10, 20, 30]
    assert found(client, "dataset=holdout:2") == []
    sha = ModelVersion.objects.get(model__name="big", version=17).git_sha
    assert found(client, f"git_sha={sha}") == [("big", 17)]
    assert ("big", 17) in found(client, f"git_sha={sha[:7]}")
    window = found(client, "model=big&created_after=2026-01-01T05:00:00Z&created_before=2026-01-01T08:00:00Z")
    assert sorted(n for _, n in window) == [5, 6, 7]
    newest_first = [n for _, n in found(client, "model=churn")]
    assert newest_first == sorted(newest_first, reverse=True)
    oldest_first = [n for _, n in found(client, "model=churn&sort=created")]
    assert oldest_first == sorted(oldest_first)
    # The same filters on one model's list.
    response = client.get("/api/v1/models/big/versions/?dataset=holdout&status=archived")
    assert [v["version"] for v in response.json()["results"]] == [30, 20, 10]
    # Someone without a role on a model finds none of its versions.
    assert found(make_actor("stranger").client, "model=big") == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("git_sha=xyz1", "git_sha"),
        ("git_sha=ab", "git_sha"),
        ("dataset=holdout:one", "dataset"),
        ("status=flying", "status"),
        ("created_after=yesterday", "created_after"),
        ("created_after=2026-02-01&created_before=2026-01-01", "created_before"),
        ("sort=size", "sort"),
        ("alias=not%20a%20slug", "alias"),
    ],
)
def test_bad_search_parameters_are_a_400_naming_the_field(searchable, query, field):
    response = searchable["client"].get(f"/api/v1/versions/?{query}")
    assert response.status_code == 400, response.content
    assert field in response.json()["error"]["fields"]


def test_the_search_page_finds_versions_and_explains_bad_fields(searchable):
    client = searchable["client"]
    page = client.get("/search/?q=big&dataset=holdout&tag=release&sort=created").content.decode()
    assert 'data-testid="result-count">3 versions' in page
    assert page.index(">v10<") < page.index(">v30<")
    sha = ModelVersion.objects.get(model__name="churn", version=7).git_sha
    page = client.get(f"/search/?git_sha={sha[:8]}&alias=canary").content.decode()
    assert 'data-testid="result-count">1 version<' in page and "canary" in page
    page = client.get("/search/?created_after=2026-01-02&created_before=2026-01-01")
    assert page.status_code == 200 and "must be later than the start date" in page.content.decode()
    assert "4 to 64 hex digits" in client.get("/search/?git_sha=nothex").content.decode()
    # With no criteria it lists every readable version, the newest push first.
    everything = client.get("/search/").content.decode()
    total = ModelVersion.objects.count()
    assert f'data-testid="result-count">{total} versions' in everything


def test_the_model_page_charts_each_gate_metric_across_versions_with_its_threshold(catalog):
    big = catalog["models"][0]
    add_versions(big, 3, 60)
    versions = {v.version: v for v in ModelVersion.objects.filter(model=big)}
    GateResult.objects.bulk_create(
        [
            GateResult(
                version=versions[n],
                attempt=1,
                gate_index=1,
                gate="metric",
                metric="recall",
                value=0.5 + n / 200,
                threshold=0.7,
                passed=0.5 + n / 200 >= 0.7,
            )
            for n in range(3, 60)
        ]
        + [  # a sliced value and an older attempt are not charted
            GateResult(
                version=versions[59],
                attempt=1,
                gate_index=1,
                gate="metric",
                metric="recall",
                slice="country=BR",
                value=0.01,
                threshold=0.7,
                passed=False,
            ),
        ]
    )
    page = catalog["client"].get("/models/big/").content.decode()
    chart = page[page.index('data-metric="recall"') :]
    chart = chart[: chart.index("</figure>")]
    assert "latest v59: 0.7950" in chart and "threshold 0.7000" in chart
    assert "50 newest versions" in page  # the 50 newest of 57 charted
    assert chart.count('class="dot"') == 50
    assert 'class="threshold"' in chart and "v10" in chart and "v59" in chart
    assert "30 failed" in chart  # v10..v39 are under 0.7 among the 50 charted (v10..v59)
