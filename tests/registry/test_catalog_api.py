"""The catalog API: models, policy, aliases, lineage, history, datasets, and who may do what."""

from __future__ import annotations

import datetime as dt
import json
import time

import boto3
import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework import serializers

from registry.api.serializers import ModelOutSerializer
from registry.api.views import model_context
from registry.models import (
    Alias,
    Approval,
    Dataset,
    Export,
    GateResult,
    ModelRole,
    ModelVersion,
    Promotion,
    RegisteredModel,
    Role,
    ShadowRun,
)
from tests import builders
from tests.conftest import push
from tests.factories import DatasetFactory, ModelVersionFactory, link_dataset, parent_chain

pytestmark = pytest.mark.django_db


# --- auth matrix --------------------------------------------------------------------------------

MUTATIONS = [
    # (method, path, body, roles allowed)
    ("patch", "/api/v1/models/fraud/", {"description": "new"}, {"owner"}),
    ("put", "/api/v1/models/fraud/policy/", {"gates": [{"kind": "loads"}]}, {"owner"}),
    ("post", "/api/v1/models/fraud/roles/", {"username": "oscar", "role": "viewer"}, {"owner"}),
    ("put", "/api/v1/models/fraud/aliases/staging/", {"version": 1}, {"owner"}),
    ("delete", "/api/v1/models/fraud/aliases/canary/", None, {"owner"}),
    ("post", "/api/v1/models/fraud/versions/", "PUSH", {"owner", "publisher"}),
]
READS = [
    "/api/v1/models/fraud/",
    "/api/v1/models/fraud/policy/",
    "/api/v1/models/fraud/versions/",
    "/api/v1/models/fraud/versions/1/",
    "/api/v1/models/fraud/versions/1/artifact/",
    "/api/v1/models/fraud/versions/1/lineage/",
    "/api/v1/models/fraud/versions/1/events/",
    "/api/v1/models/fraud/aliases/",
    "/api/v1/models/fraud/history/",
]
ROLES = ["owner", "publisher", "approver", "viewer", "outsider"]


@pytest.fixture
def actors(owner, publisher, approver, viewer, outsider, fraud_model, tmp_path):
    push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path))
    version = fraud_model.versions.get()
    Alias.objects.create(model=fraud_model, name="canary", version=version)
    return {
        "owner": owner,
        "publisher": publisher,
        "approver": approver,
        "viewer": viewer,
        "outsider": outsider,
    }


def send(client, method: str, path: str, body, tmp_path):
    if body == "PUSH":
        with builders.tiny_onnx_model(tmp_path, seed=7).open("rb") as fh:
            return client.post(path, {"artifact": fh, "metadata": "{}"}, format="multipart")
    return getattr(client, method)(path, body, format="json")


@pytest.mark.parametrize(
    ("method", "path", "body", "allowed"), MUTATIONS, ids=[f"{m} {p}" for m, p, _, _ in MUTATIONS]
)
@pytest.mark.parametrize("role", ROLES)
def test_mutations_need_the_right_role(actors, anonymous, tmp_path, method, path, body, allowed, role):
    assert send(anonymous, method, path, body, tmp_path).status_code == 401

    response = send(actors[role].client, method, path, body, tmp_path)

    if role in allowed:
        assert response.status_code in {200, 201, 204}, response.content
    else:
        assert response.status_code == 403, response.content
        assert response.json()["error"]["code"] == "permission_denied"


@pytest.mark.parametrize("path", READS)
def test_reads_need_a_role_on_the_model(actors, anonymous, path):
    assert anonymous.get(path).status_code == 401
    assert actors["viewer"].client.get(path).status_code == 200
    assert actors["outsider"].client.get(path).status_code == 403


def test_any_signed_in_user_may_create_a_model_and_becomes_its_owner(outsider, anonymous):
    assert anonymous.post("/api/v1/models/", {"name": "x"}, format="json").status_code == 401
    response = outsider.client.post("/api/v1/models/", {"name": "churn"}, format="json")
    assert response.status_code == 201
    assert ModelRole.objects.filter(model__name="churn", user=outsider.user, role=Role.OWNER).exists()


def test_both_bearer_and_token_schemes_are_accepted_and_a_bad_token_is_401(owner, fraud_model):
    from rest_framework.test import APIClient

    for scheme in ("Bearer", "Token"):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"{scheme} {owner.token}")
        assert client.get("/api/v1/models/fraud/").status_code == 200
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Bearer mg_not-a-real-token")
    response = client.get("/api/v1/models/fraud/")
    assert response.status_code == 401
    assert response.json()["error"]["message"]


def test_an_expired_or_revoked_token_is_refused(owner, fraud_model, settings):
    from registry.auth import token_cache, token_revoke
    from registry.models import ApiToken

    token = ApiToken.objects.get(user=owner.user)
    ApiToken.objects.filter(pk=token.pk).update(expiry=timezone.now() - dt.timedelta(seconds=1))
    # Written behind the process's back: it takes effect once the token cache's entry lapses.
    token_cache.forget(token.token_key)
    assert owner.client.get("/api/v1/models/fraud/").status_code == 401
    ApiToken.objects.filter(pk=token.pk).update(expiry=None)
    assert owner.client.get("/api/v1/models/fraud/").status_code == 200
    # Revoked through the service: refused at once, cache or not.
    token_revoke(token=token, actor="tests")
    assert owner.client.get("/api/v1/models/fraud/").status_code == 401


def test_the_token_cache_keeps_a_token_for_its_lifetime_only(owner, fraud_model, settings):
    from registry.auth import token_cache
    from registry.models import ApiToken

    settings.MODELGATE_TOKEN_CACHE_SECONDS = 0.5
    token_cache.forget(ApiToken.objects.get(user=owner.user).token_key)
    assert owner.client.get("/api/v1/models/fraud/").status_code == 200
    ApiToken.objects.filter(user=owner.user).delete()  # behind the cache's back
    assert owner.client.get("/api/v1/models/fraud/").status_code == 200  # still cached
    time.sleep(0.6)
    assert owner.client.get("/api/v1/models/fraud/").status_code == 401
    settings.MODELGATE_TOKEN_CACHE_SECONDS = 0  # off: every request is checked
    assert owner.client.get("/api/v1/models/fraud/").status_code == 401


def test_tokens_are_stored_hashed(owner):
    from registry.models import ApiToken

    stored = ApiToken.objects.get(user=owner.user)
    assert owner.token not in {stored.digest, stored.token_key}
    assert owner.token.startswith(stored.token_key)


def test_issue_token_prints_the_token_alone_on_the_last_line(db):
    from io import StringIO

    from django.core.management import call_command

    out = StringIO()
    call_command("issue_token", "ci-bot", "--create", "--name", "github", stdout=out)
    token = out.getvalue().strip().splitlines()[-1]
    assert token.startswith("mg_") and " " not in token


# --- models and policy --------------------------------------------------------------------------


def test_a_model_shows_its_champion_and_counts(owner, fraud_model):
    a, b = (
        ModelVersionFactory(model=fraud_model, version=1),
        ModelVersionFactory(model=fraud_model, version=2),
    )
    Alias.objects.create(model=fraud_model, name="champion", version=a)
    type(b).objects.filter(pk=b.pk).update(status="rejected")

    body = owner.client.get("/api/v1/models/fraud/").json()

    assert body["champion"] == 1
    assert body["counts"] == {"registered": 1, "rejected": 1}
    assert body["policy"]["approval"]["min_approvals"] == 1  # defaults are filled in


def test_a_model_is_presented_exactly_as_its_declared_fields_would_present_it(owner, fraud_model):
    version = ModelVersionFactory(model=fraud_model, version=1)
    Alias.objects.create(model=fraud_model, name="champion", version=version)
    fraud_model.tags = ["fraud", "é"]
    context = model_context([fraud_model])
    presented = ModelOutSerializer(fraud_model, context=context)

    by_fields = serializers.ModelSerializer.to_representation(presented, fraud_model)

    assert presented.data == by_fields
    assert list(presented.data) == list(by_fields)  # the same keys, in the same order
    assert by_fields["created_at"].endswith("Z") and by_fields["champion"] == 1


def test_a_page_of_models_gets_its_champions_and_counts_in_one_query(owner, fraud_model):
    owner.client.post("/api/v1/models/", {"name": "churn"}, format="json")
    churn = RegisteredModel.objects.get(name="churn")
    _, b, c = (ModelVersionFactory(model=fraud_model, version=n) for n in (1, 2, 3))
    Alias.objects.create(model=fraud_model, name="champion", version=b)
    type(c).objects.filter(pk=c.pk).update(status="rejected")

    with CaptureQueriesContext(connection) as queries:
        summary = model_context([fraud_model, churn])

    assert len(queries) == 1
    assert summary == {
        "counts": {fraud_model.pk: {"registered": 2, "rejected": 1}},
        "champions": {fraud_model.pk: 2},
    }
    assert model_context([]) == {"counts": {}, "champions": {}}


def test_creating_a_model_twice_is_a_conflict(owner, fraud_model):
    response = owner.client.post("/api/v1/models/", {"name": "fraud"}, format="json")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "exists"


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"gates": [{"kind": "teleport"}]}, "gates.0"),
        ({"gates": [{"kind": "size", "max_mb": -1}]}, "gates.0.max_mb"),
        (
            {"gates": [{"kind": "metric", "metric": "accuracy", "dataset": "holdout", "label": "y"}]},
            "gates.0",
        ),
        ({"shadow": {"sample_rate": 2}}, "shadow.sample_rate"),
        ({"approval": {"min_approvals": 0}}, "approval.min_approvals"),
        ({"exports": {"formats": ["onnx"], "required": ["tfjs"]}}, "exports"),
        ({"surprise": True}, "surprise"),
        ([], "policy"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_field(owner, fraud_model, policy, field):
    response = owner.client.put("/api/v1/models/fraud/policy/", policy, format="json")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "invalid_policy"
    assert field in response.json()["error"]["fields"], response.json()


def test_a_policy_naming_a_dataset_that_does_not_exist_is_refused(owner, fraud_model):
    gate = {"kind": "metric", "metric": "recall", "dataset": "holdout", "label": "y", "min": 0.8}
    response = owner.client.put("/api/v1/models/fraud/policy/", {"gates": [gate]}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["fields"]["gates.0.dataset"] == ["no dataset holdout is registered"]

    DatasetFactory(name="holdout")
    response = owner.client.put("/api/v1/models/fraud/policy/", {"gates": [gate]}, format="json")
    assert response.status_code == 200
    assert response.json()["gates"][0]["min_slice_rows"] == 30  # defaults filled
    assert fraud_model.events.filter(kind="policy.changed").count() == 1


# --- versions, aliases, history -----------------------------------------------------------------


def test_versions_filter_by_status_and_tag_with_cursor_pages(owner, fraud_model):
    for n in range(1, 8):
        ModelVersionFactory(model=fraud_model, version=n, tags=["nightly"] if n % 2 else ["adhoc"])
    type(fraud_model.versions.first()).objects.filter(model=fraud_model, version__in=[1, 2]).update(
        status="rejected"
    )

    page = owner.client.get("/api/v1/models/fraud/versions/?page_size=3").json()
    assert [v["version"] for v in page["results"]] == [7, 6, 5]
    page2 = owner.client.get(page["next"]).json()
    assert [v["version"] for v in page2["results"]] == [4, 3, 2]

    tagged = owner.client.get("/api/v1/models/fraud/versions/?tag=nightly").json()["results"]
    assert [v["version"] for v in tagged] == [7, 5, 3, 1]
    rejected = owner.client.get("/api/v1/models/fraud/versions/?status=rejected").json()["results"]
    assert [v["version"] for v in rejected] == [2, 1]
    cross = owner.client.get("/api/v1/versions/?status=rejected&status=registered").json()["results"]
    assert len(cross) == 7
    bad = owner.client.get("/api/v1/models/fraud/versions/?status=sleeping")
    assert bad.status_code == 400 and "status" in bad.json()["error"]["fields"]


def test_the_champion_alias_is_moved_only_by_promotion(owner, fraud_model):
    ModelVersionFactory(model=fraud_model, version=1)
    response = owner.client.put("/api/v1/models/fraud/aliases/champion/", {"version": 1}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "protected_alias"
    assert (
        owner.client.put("/api/v1/models/fraud/aliases/staging/", {"version": 1}, format="json").status_code
        == 200
    )
    assert owner.client.get("/api/v1/models/fraud/aliases/").json() == [
        {
            "name": "staging",
            "version": 1,
            "updated_at": Alias.objects.get().updated_at.isoformat().replace("+00:00", "Z"),
        }
    ]


def test_history_answers_what_served_at_a_time(owner, fraud_model):
    v1, v2 = (
        ModelVersionFactory(model=fraud_model, version=1),
        ModelVersionFactory(model=fraud_model, version=2),
    )
    t0 = timezone.now() - dt.timedelta(days=10)
    Promotion.objects.create(model=fraud_model, version=v1, at=t0)
    Promotion.objects.create(model=fraud_model, version=v2, previous=v1, at=t0 + dt.timedelta(days=5))

    def served(at: dt.datetime):
        return owner.client.get("/api/v1/models/fraud/history/", {"at": at.isoformat()}).json()["version"]

    assert served(t0 - dt.timedelta(days=1)) is None
    assert served(t0 + dt.timedelta(days=1)) == 1
    assert served(t0 + dt.timedelta(days=6)) == 2
    assert len(owner.client.get("/api/v1/models/fraud/history/").json()["history"]) == 2
    assert owner.client.get("/api/v1/models/fraud/history/?at=yesterday").status_code == 400
    # An offset Python accepts but PostgreSQL does not (schemathesis found it): converted, not a 500.
    odd = owner.client.get("/api/v1/models/fraud/history/", {"at": "1305-07-03T20:05:54-21:54"})
    assert odd.status_code == 200 and odd.json()["version"] is None
    assert (
        owner.client.get("/api/v1/models/fraud/history/", {"at": "0001-01-01T00:00:00+10:00"}).status_code
        == 400
    )


# --- lineage ------------------------------------------------------------------------------------


def lineage_queries(client, model: str, version: int, depth: int) -> tuple[int, dict]:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(
            f"/api/v1/models/{model}/versions/{version}/lineage/?direction=up&depth={depth}"
        )
    assert response.status_code == 200
    return len(queries), response.json()


def test_lineage_of_a_50_deep_chain_takes_as_many_queries_as_a_2_deep_one(owner, fraud_model):
    deep = parent_chain(fraud_model, 51)
    shallow_model = RegisteredModel.objects.create(name="shallow")
    ModelRole.objects.create(model=shallow_model, user=owner.user, role=Role.OWNER)
    shallow = parent_chain(shallow_model, 3)
    for chain in (deep, shallow):
        link_dataset(chain[0], DatasetFactory(), "train")

    deep_queries, deep_graph = lineage_queries(owner.client, "fraud", deep[-1].version, 100)
    shallow_queries, shallow_graph = lineage_queries(owner.client, "shallow", shallow[-1].version, 100)

    assert deep_queries == shallow_queries
    assert len([n for n in deep_graph["nodes"] if n["type"] == "version"]) == 51
    assert len([n for n in shallow_graph["nodes"] if n["type"] == "version"]) == 3
    assert len(deep_graph["edges"]) == 51  # 50 parent links and the dataset


def test_lineage_follows_direction_and_depth(owner, fraud_model):
    chain = parent_chain(fraud_model, 5)
    link_dataset(chain[2], DatasetFactory(name="clicks"), "validation")

    _, down = lineage_queries(owner.client, "fraud", 3, 5)
    up = {n["id"] for n in down["nodes"]}
    assert up == {"version:fraud:1", "version:fraud:2", "version:fraud:3", "dataset:clicks:1"}
    graph = owner.client.get("/api/v1/models/fraud/versions/3/lineage/?direction=down&depth=1").json()
    assert {n["id"] for n in graph["nodes"] if n["type"] == "version"} == {
        "version:fraud:3",
        "version:fraud:4",
    }
    assert {"source": "version:fraud:3", "target": "version:fraud:4", "kind": "fine_tuned_from"} in graph[
        "edges"
    ]
    assert owner.client.get("/api/v1/models/fraud/versions/3/lineage/?depth=-1").status_code == 400


def test_lineage_adds_the_roots_runs_and_links_every_node_to_its_page(owner, fraud_model):
    v1, v2 = parent_chain(fraud_model, 2)
    ModelVersion.objects.filter(pk=v2.pk).update(gate_attempt=2)
    link_dataset(v2, DatasetFactory(name="clicks", version=4), "train")
    Export.objects.create(version=v2, format="onnx", status="passed")
    GateResult.objects.bulk_create(
        [
            GateResult(version=v2, attempt=1, gate_index=0, gate="loads", passed=False),
            GateResult(version=v2, attempt=2, gate_index=0, gate="loads", passed=True),
            GateResult(version=v2, attempt=2, gate_index=1, gate="metric", passed=None),
        ]
    )
    ShadowRun.objects.create(
        candidate=v2, baseline=v1, status="failed", since=timezone.now(), summary={"agreement": 0.5}
    )
    for name, decision in (("alice", "approve"), ("bob", "reject")):
        Approval.objects.create(
            version=v2, round=1, decision=decision, actor_name=name, channel="api", evidence_digest="0" * 64
        )
    GateResult.objects.create(version=v1, attempt=1, gate_index=0, gate="loads", passed=True)  # not the root

    # The version page fetches this with the browser's session, not a token.
    browser = Client()
    browser.force_login(owner.user)
    response = browser.get("/api/v1/models/fraud/versions/2/lineage/?direction=both&depth=5")

    assert response.status_code == 200
    nodes = {node["id"]: node for node in response.json()["nodes"]}
    page = "/models/fraud/versions/2/"
    assert nodes["version:fraud:1"]["url"] == "/models/fraud/versions/1/"
    assert nodes["version:fraud:2"]["url"] == page
    assert nodes["dataset:clicks:4"]["url"] == "/datasets/clicks/4/"
    assert nodes["export:fraud:2:onnx"]["url"] == f"{page}#exports"
    assert [
        (n["id"], n["status"], n["failed"], n["skipped"], n["current"], n["url"])
        for n in nodes.values()
        if n["type"] == "gate"
    ] == [
        ("gate:fraud:2:1", "failed", 1, 0, False, f"{page}#gates"),
        ("gate:fraud:2:2", "passed", 0, 1, True, f"{page}#gates"),
    ]
    shadow = next(n for n in nodes.values() if n["type"] == "shadow")
    assert (shadow["status"], shadow["agreement"], shadow["baseline"], shadow["url"]) == (
        "failed",
        0.5,
        1,
        f"{page}#shadow",
    )
    assert nodes["approval:fraud:2:1"] | {"id": None} == {
        "id": None,
        "type": "approval",
        "round": 1,
        "status": "rejected",
        "approvals": ["alice"],
        "rejections": ["bob"],
        "url": f"{page}#approvals",
    }
    edges = response.json()["edges"]
    assert {"source": "version:fraud:2", "target": "approval:fraud:2:1", "kind": "signed_off_by"} in edges
    assert {"source": "version:fraud:2", "target": shadow["id"], "kind": "shadowed_by"} in edges
    assert {"source": "version:fraud:2", "target": "gate:fraud:2:1", "kind": "gated_by"} in edges


def test_a_push_links_its_datasets_and_parents(owner, publisher, fraud_model, tmp_path):
    (tmp_path / "train.csv").write_text("a,b\n1,2\n3,4\n")
    with (tmp_path / "train.csv").open("rb") as fh:
        assert (
            publisher.client.post(
                "/api/v1/datasets/", {"file": fh, "name": "train"}, format="multipart"
            ).status_code
            == 201
        )
    push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path / "1"))
    meta = {
        "datasets": [{"name": "train", "version": "latest", "role": "train"}],
        "parents": [{"model": "fraud", "version": 1, "kind": "fine_tuned_from"}],
        "source": {"git_sha": "abc123", "branch": "main", "author": "pablo"},
        "metrics": {"auc": 0.91},
    }
    body = push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path / "2", seed=2), meta).json()

    assert body["datasets"] == [{"name": "train", "version": 1, "role": "train"}]
    assert body["parents"] == [{"model": "fraud", "version": 1, "kind": "fine_tuned_from"}]
    assert body["source"]["git_sha"] == "abc123"
    graph = owner.client.get("/api/v1/models/fraud/versions/2/lineage/").json()
    assert {"source": "dataset:train:1", "target": "version:fraud:2", "kind": "train"} in graph["edges"]


# --- datasets -----------------------------------------------------------------------------------


def test_datasets_record_sha_rows_and_schema_for_csv_parquet_and_npz(owner, tmp_path):
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({"x": np.arange(250, dtype=float), "country": ["BR", "US"] * 125, "y": [0, 1] * 125})
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    np.savez(tmp_path / "d.npz", x=np.zeros((250, 3), dtype=np.float32), y=np.ones(250))

    results = {}
    for name in ("d.csv", "d.parquet", "d.npz"):
        with (tmp_path / name).open("rb") as fh:
            response = owner.client.post(
                "/api/v1/datasets/", {"file": fh, "name": "holdout"}, format="multipart"
            )
        assert response.status_code == 201, response.content
        results[name] = response.json()

    assert [r["version"] for r in results.values()] == [1, 2, 3]
    assert {r["format"] for r in results.values()} == {"csv", "parquet", "npz"}
    assert all(r["rows"] == 250 for r in results.values())
    assert [c["name"] for c in results["d.csv"]["schema"]] == ["x", "country", "y"]
    assert results["d.npz"]["schema"][0] == {"name": "x", "dtype": "float32", "shape": [3]}
    assert owner.client.get("/api/v1/datasets/holdout/2/").json()["format"] == "parquet"


def test_a_file_that_is_no_dataset_is_refused(owner, tmp_path):
    (tmp_path / "x.bin").write_bytes(b"\x00\x01\x02" * 100)
    with (tmp_path / "x.bin").open("rb") as fh:
        response = owner.client.post("/api/v1/datasets/", {"file": fh, "name": "junk"}, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_dataset"
    assert not Dataset.objects.exists()


# --- S3 -----------------------------------------------------------------------------------------


def test_the_s3_backend_round_trips_an_artifact_through_moto_server(
    s3_server, settings, monkeypatch, fraud_model, publisher, viewer, tmp_path
):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    s3 = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    s3.create_bucket(Bucket="models")
    settings.AWS_ENDPOINT_URL = s3_server
    settings.ARTIFACT_STORE = "s3://models/registry"

    artifact = builders.tiny_onnx_model(tmp_path)
    mismatch = push(publisher.client, "fraud", artifact, {"sha256": "f" * 64})
    assert mismatch.status_code == 400
    assert s3.list_objects_v2(Bucket="models").get("KeyCount", 0) == 0

    created = push(publisher.client, "fraud", artifact)
    assert created.status_code == 201, created.content
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="models")["Contents"]]
    assert keys == [
        f"registry/artifacts/sha256/{created.json()['sha256'][:2]}/{created.json()['sha256'][2:4]}/{created.json()['sha256']}"
    ]

    # Reads stream the response body: django-storages' open() would hold the whole object in memory.
    from storages.backends.s3 import S3Storage

    monkeypatch.setattr(S3Storage, "_open", lambda *a, **k: pytest.fail("read through S3Storage.open"))
    download = viewer.client.get("/api/v1/models/fraud/versions/1/artifact/")
    assert b"".join(download.streaming_content) == artifact.read_bytes()
    assert download["X-Checksum-Sha256"] == created.json()["sha256"]
    from registry.storage import blob_local_path

    with blob_local_path(keys[0].removeprefix("registry/"), suffix=".onnx") as local:
        assert local.read_bytes() == artifact.read_bytes()
    s3.delete_object(Bucket="models", Key=keys[0])
    assert viewer.client.get("/api/v1/models/fraud/versions/1/artifact/").status_code == 410


# --- probes -------------------------------------------------------------------------------------


def test_health_readiness_and_metrics(client, fraud_model):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.json()
    assert set(ready.json()["checks"]) == {"database", "broker", "storage"}
    ModelVersionFactory(model=fraud_model, version=1)
    assert 'modelgate_versions{status="registered"} 1.0' in client.get("/metrics").content.decode()


def test_unknown_api_paths_answer_json_404(owner):
    response = owner.client.get("/api/v1/nothing-here/")
    assert response.status_code == 404
    assert json.loads(response.content)["error"]["code"] == "not_found"
