"""Serving and auto-shadow on real workers: the champion answers, candidates shadow it on live and
replayed traffic, and the verdict moves them on."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import threading
import time

import numpy as np
import pytest
from django.db import connections

from lifecycle import approval, shadow
from lifecycle.traffic import traffic_record
from registry.models import ModelVersion, ShadowRun, TrafficRecord, Usage
from serving.capture import buffer
from tests import builders
from tests.conftest import push, wait_for_status
from tests.lifecycle.test_pipeline import set_policy

pytestmark = pytest.mark.django_db(transaction=True)

CHANNEL = "C0SHADOW"


def shadow_policy(**shadow_rules) -> dict:
    return {
        "gates": [{"kind": "loads"}, {"kind": "signature_compatible"}],
        "shadow": {
            "sample_rate": 1.0,
            "min_requests": 20,
            "min_agreement": 0.95,
            # Two tiny models in one process: their latency ratio is noise, not a finding.
            "max_p95_latency_ratio": 50,
            **shadow_rules,
        },
        "approval": {"slack_channel": CHANNEL},
    }


def promote(approver, number: int) -> ModelVersion:
    version = wait_for_status("fraud", number, {"awaiting_approval", "rejected"})
    assert version.status == "awaiting_approval", version.status_reason
    response = approver.client.post(f"/api/v1/models/fraud/versions/{number}/approve/", {}, format="json")
    assert response.status_code == 201, response.content
    return wait_for_status("fraud", number, {"production"})


def rows(n: int, *, disagree: float = 0.0, seed: int = 0) -> np.ndarray:
    """Rows whose x0 lies in (0, 1] for a ``disagree`` share: threshold 0 and threshold 1 part there."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    x0 = np.where(rng.random(n) < 0.5, rng.uniform(-3, -0.1, n), rng.uniform(1.1, 3, n))
    inside = np.arange(n) < round(disagree * n)
    x0[inside] = rng.uniform(0.05, 0.95, inside.sum())
    x[:, 0] = x0
    return x


def predict(client, inputs, **extra):
    return client.post("/api/v1/models/fraud/predict/", {"inputs": inputs, **extra}, format="json")


@pytest.fixture
def champion(celery_workers, fraud_model, owner, publisher, approver, tmp_path) -> ModelVersion:
    set_policy(owner, shadow_policy())
    push(publisher.client, "fraud", builders.threshold_onnx_classifier(tmp_path / "1", shift=0.0))
    return promote(approver, 1)


def test_a_better_or_equal_candidate_shadows_the_champion_on_live_traffic_then_awaits_approval(
    champion, publisher, viewer, slack_server, tmp_path
):
    # The same decision rule, other bytes: it agrees with v1 on every row.
    push(publisher.client, "fraud", builders.threshold_onnx_classifier(tmp_path / "2", scale=1.0001))
    candidate = wait_for_status("fraud", 2, {"shadowing", "rejected", "awaiting_approval"})
    assert candidate.status == "shadowing", candidate.status_reason
    run = candidate.shadow_runs.get()
    assert (run.baseline_id, run.status) == (champion.pk, "running")

    data = rows(25)
    for i in range(25):
        response = predict(
            viewer.client, data[i : i + 1].tolist(), metadata={"country": "DE" if i % 2 else "FR"}
        )
        assert response.status_code == 200, response.content
        assert response.json()["version"] == 1  # the shadow never answers
        assert response.json()["captured"] is True

    passed = wait_for_status("fraud", 2, {"awaiting_approval", "rejected"}, timeout=90)
    assert passed.status == "awaiting_approval", passed.status_reason
    run.refresh_from_db()
    assert run.status == "passed" and run.requests >= 20
    assert run.summary["agreement"] == 1.0 and run.summary["errors"] == 0
    assert set(run.summary["slices"]["country"]) == {"DE", "FR"}
    assert run.summary["latency_ms"]["candidate"]["p95"] is not None
    assert run.summary["shift"]["ks"] is not None
    assert passed.status_reason.startswith("shadow passed:")
    # The approvers see the shadow's numbers.
    post = slack_server.wait_for(
        lambda c: c["path"].endswith("chat.postMessage") and "fraud v2" in json.dumps(c["data"])
    )[0]
    blocks = json.dumps(post["data"]["blocks"])
    assert "shadow passed" in blocks and "agreement 100.0%" in blocks
    detail = viewer.client.get("/api/v1/models/fraud/versions/2/").json()
    assert detail["shadow"]["status"] == "passed" and detail["shadow"]["baseline"] == 1
    # Served predictions count toward the champion's usage.
    buffer.flush()
    assert sum(Usage.objects.filter(version=champion).values_list("predictions", flat=True)) == 25


def test_a_candidate_that_disagrees_on_30_percent_of_traffic_is_rejected_with_the_figure(
    champion, publisher, viewer, tmp_path
):
    push(publisher.client, "fraud", builders.threshold_onnx_classifier(tmp_path / "2", shift=1.0))
    wait_for_status("fraud", 2, {"shadowing"})

    response = predict(viewer.client, rows(200, disagree=0.3).tolist())  # one request of 200 rows
    assert response.status_code == 200
    for batch in np.array_split(rows(190, disagree=0.3, seed=1), 19):
        assert predict(viewer.client, batch.tolist()).status_code == 200

    rejected = wait_for_status("fraud", 2, {"rejected", "awaiting_approval"}, timeout=90)
    assert rejected.status == "rejected"
    assert "agreement 70.0%" in rejected.status_reason, rejected.status_reason
    assert rejected.shadow_runs.get().status == "failed"


def test_a_jsonl_upload_alone_completes_a_shadow_and_its_labels_compare_the_models(
    champion, owner, publisher, tmp_path
):
    push(publisher.client, "fraud", builders.threshold_onnx_classifier(tmp_path / "2", scale=1.0001))
    wait_for_status("fraud", 2, {"shadowing"})
    data = rows(30, seed=4)
    lines = [
        json.dumps({"inputs": [row.tolist()], "labels": [int(row[0] > 0)], "metadata": {"channel": "web"}})
        for row in data
    ]
    upload = io.BytesIO("\n".join(lines).encode())
    upload.name = "replay.jsonl"

    response = publisher.client.post("/api/v1/models/fraud/traffic/", {"file": upload}, format="multipart")

    assert response.status_code == 201, response.content
    assert response.json() == {"records": 30, "rows": 30, "labelled": 30}
    done = wait_for_status("fraud", 2, {"awaiting_approval", "rejected"}, timeout=90)
    assert done.status == "awaiting_approval", done.status_reason
    run = done.shadow_runs.get()
    assert run.requests == 30 and not TrafficRecord.objects.filter(source="live").exists()
    labelled = run.summary["labelled"]
    assert labelled["metric"] == "accuracy" and labelled["rows"] == 30
    assert labelled["candidate"] == labelled["champion"] == 1.0 and labelled["worse"] is False


def test_the_champion_swap_on_promotion_takes_effect_on_the_next_call_and_no_request_fails(
    champion, owner, publisher, approver, viewer, tmp_path
):
    set_policy(owner, {**shadow_policy(), "shadow": {"enabled": False}})
    push(publisher.client, "fraud", builders.threshold_onnx_classifier(tmp_path / "2", shift=1.0))
    wait_for_status("fraud", 2, {"awaiting_approval"})
    answers: list[tuple[int, int]] = []
    stop = threading.Event()
    one = [[0.5, 0.0, 0.0, 0.0]]  # class 1 for v1 (x0 > 0), class 0 for v2 (x0 <= 1)

    def loop() -> None:
        from rest_framework.test import APIClient

        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {viewer.token}")
        try:
            while not stop.is_set():
                response = predict(client, one)
                answers.append((response.status_code, response.json().get("version")))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=loop) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        promote(approver, 2)
        after = predict(viewer.client, one)
    finally:
        stop.set()
        for thread in threads:
            thread.join()

    assert after.status_code == 200 and after.json()["version"] == 2
    assert np.argmax(after.json()["outputs"][0]) == 0
    assert answers and all(code == 200 for code, _ in answers), {a for a in answers if a[0] != 200}
    assert {v for _, v in answers} <= {1, 2}


def test_capture_loses_no_sampled_request_under_8_concurrent_clients(fraud_model, owner, viewer, tmp_path):
    set_policy(owner, {**shadow_policy(), "shadow": {"sample_rate": 0.5}})
    champion = served_champion(fraud_model, tmp_path)
    captured: list[bool] = []
    lock = threading.Lock()

    def client_loop() -> None:
        from rest_framework.test import APIClient

        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {viewer.token}")
        try:
            for batch in np.array_split(rows(50, seed=threading.get_ident() % 1000), 25):
                response = predict(client, batch.tolist())
                assert response.status_code == 200
                with lock:
                    captured.append(response.json()["captured"])
        finally:
            connections.close_all()

    threads = [threading.Thread(target=client_loop) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    buffer.flush()

    assert len(captured) == 200 and 0 < sum(captured) < 200
    assert TrafficRecord.objects.filter(source="live", served_by=champion).count() == sum(captured)
    assert TrafficRecord.objects.filter(source="live").values("request_id").distinct().count() == sum(
        captured
    )
    assert sum(Usage.objects.filter(version=champion).values_list("predictions", flat=True)) == 200


def served_champion(model, tmp_path) -> ModelVersion:
    """A production v1 of ``model`` with a real ONNX artifact, put there without the pipeline."""
    from tests.lifecycle.test_pipeline import make_champion

    version = version_from(model, builders.threshold_onnx_classifier(tmp_path), 1)
    make_champion(version)
    return ModelVersion.objects.get(pk=version.pk)


def version_from(model, path, number: int) -> ModelVersion:
    """Register ``path`` as version ``number`` and mark it validated (gates run elsewhere)."""
    from registry.services import Upload, model_version_register

    upload = Upload(
        path=path,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        size=path.stat().st_size,
        filename=path.name,
    )
    version, _ = model_version_register(model=model, upload=upload, metadata={}, actor=model.created_by)
    ModelVersion.objects.filter(pk=version.pk).update(
        status="validating",  # as if its gates had run
        signature={
            "inputs": [{"name": "features", "dtype": "float32", "shape": [None, 4]}],
            "outputs": [{"name": "output_0", "dtype": "float32", "shape": [None, 2]}],
        },
    )
    version.refresh_from_db()
    assert version.version == number
    return version


def test_predict_refuses_a_wrong_shape_naming_the_signature_and_404s_without_a_champion(
    fraud_model, owner, viewer, outsider, tmp_path
):
    none = predict(viewer.client, [[1, 2, 3, 4]])
    assert none.status_code == 404
    assert none.json()["error"]["code"] == "no_champion" and "no champion" in none.json()["error"]["message"]
    assert predict(viewer.client, [[1, 2, 3, 4]]).status_code == 404
    assert (
        viewer.client.post("/api/v1/models/nope/predict/", {"inputs": [[1]]}, format="json").status_code
        == 404
    )

    served_champion(fraud_model, tmp_path)
    wrong = predict(viewer.client, [[1, 2, 3]])
    assert wrong.status_code == 400
    assert wrong.json()["error"]["code"] == "invalid_input"
    assert "features: float32[N, 4]" in wrong.json()["error"]["message"]
    for bad in (
        [["a", "b", "c", "d"]],
        [[1, 2], [3]],
        "x",
        [[float("nan")] * 4] if False else [[None] * 4],
        [],
    ):
        response = predict(viewer.client, bad)
        assert response.status_code == 400, (bad, response.content)
        assert "features: float32[N, 4]" in response.json()["error"]["message"] or bad == "x"
    assert viewer.client.post("/api/v1/models/fraud/predict/", {"x": 1}, format="json").status_code == 400
    broken = viewer.client.post("/api/v1/models/fraud/predict/", "{not json", content_type="application/json")
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]
    form = viewer.client.post("/api/v1/models/fraud/predict/", "inputs=1", content_type="text/plain")
    assert form.status_code == 415 and form.json()["error"]["message"]
    assert predict(outsider.client, [[1, 2, 3, 4]]).status_code == 403
    ok = predict(viewer.client, [0.5, 0, 0, 0])  # one row without the batch axis
    assert ok.status_code == 200 and len(ok.json()["outputs"]) == 1


def test_a_promotion_ends_the_shadows_against_the_old_champion_and_re_pairs_them(fraud_model, tmp_path):
    from tests.factories import ModelVersionFactory
    from tests.lifecycle.test_pipeline import make_champion

    old = ModelVersionFactory(model=fraud_model, version=1, status="validating")
    make_champion(old)
    candidates = [ModelVersionFactory(model=fraud_model, version=n, status="validating") for n in (2, 3)]
    runs = [shadow.shadow_start(version=c, champion=old, actor="tests") for c in candidates]
    new = ModelVersionFactory(model=fraud_model, version=4, status="awaiting_approval")

    approval.version_promote(version=new, actor="tests")

    for run, candidate in zip(runs, candidates, strict=True):
        run.refresh_from_db()
        assert run.status == "superseded" and "v4 was promoted" in run.reason
        fresh = ShadowRun.objects.get(candidate=candidate, status="running")
        assert fresh.baseline_id == new.pk and fresh.since == run.since
    assert ShadowRun.objects.filter(status="running").count() == 2


@pytest.mark.parametrize("on_insufficient", ["reject", "approve_anyway"])
def test_too_little_traffic_at_max_days_rejects_unless_the_policy_approves_anyway(
    fraud_model, owner, on_insufficient
):
    from tests.factories import ModelVersionFactory
    from tests.lifecycle.test_pipeline import make_champion

    set_policy(owner, {**shadow_policy(), "shadow": {"max_days": 2, "on_insufficient": on_insufficient}})
    old = ModelVersionFactory(model=fraud_model, version=1, status="validating")
    make_champion(old)
    candidate = ModelVersionFactory(model=fraud_model, version=2, status="validating")
    run = shadow.shadow_start(version=candidate, champion=old, actor="tests")

    assert shadow.shadow_conclude(run.pk, now=run.started_at + dt.timedelta(days=1)).status == "running"
    shadow.shadow_conclude(run.pk, now=run.started_at + dt.timedelta(days=2, seconds=1))

    run.refresh_from_db()
    candidate.refresh_from_db()
    assert run.status == "insufficient"
    assert "insufficient shadow traffic: 0 of 1000 requests after 2 days" in run.reason
    if on_insufficient == "reject":
        assert candidate.status == "rejected" and candidate.status_reason.startswith(
            "insufficient shadow traffic"
        )
    else:
        assert candidate.status == "awaiting_approval"
        assert "sends it to the approvers anyway" in approval.evidence_summary(candidate)["shadow"]["warning"]


def test_the_verdict_fails_on_latency_errors_and_a_worse_labelled_metric():
    from lifecycle.policy import policy_parse

    policy = policy_parse({"shadow": {"min_agreement": 0.9, "max_p95_latency_ratio": 1.5}})
    summary = {
        "agreement": 0.95,
        "rows": 100,
        "errors": 2,
        "error_samples": ["request r1: ValueError: boom"],
        "latency_ms": {"candidate": {"p95": 3.0}, "champion": {"p95": 1.0}, "p95_ratio": 3.0},
        "labelled": {
            "metric": "accuracy",
            "rows": 50,
            "candidate": 0.8,
            "champion": 0.9,
            "max_drop": 0.01,
            "worse": True,
        },
    }
    failures = shadow._failures(summary, policy)
    assert len(failures) == 3
    assert "3.00× the champion's" in failures[0] and "2 request(s) failed" in failures[1]
    assert "accuracy is 0.8000 against the champion's 0.9000" in failures[2]
    assert (
        shadow._failures({**summary, "errors": 0, "labelled": None, "latency_ms": {"p95_ratio": 1.0}}, policy)
        == []
    )


def test_two_evaluations_at_once_count_every_record_exactly_once(fraud_model, owner, tmp_path):
    set_policy(owner, {**shadow_policy(), "shadow": {"min_requests": 10_000}})
    champion = served_champion(fraud_model, tmp_path / "1")
    candidate = version_from(fraud_model, builders.threshold_onnx_classifier(tmp_path / "2", scale=1.0001), 2)
    run = shadow.shadow_start(version=candidate, champion=champion, actor="tests")
    data = rows(1200, seed=9)
    TrafficRecord.objects.bulk_create(
        traffic_record(model_id=fraud_model.pk, request_id=f"r{i}", inputs=row[np.newaxis], rows=1)
        for i, row in enumerate(data)
    )

    def evaluate() -> None:
        try:
            shadow.shadow_evaluate(run.pk)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=evaluate) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deadline = time.monotonic() + 60  # a shared worker may hold the lease; it counts the same way
    while ShadowRun.objects.get(pk=run.pk).requests < 1200 and time.monotonic() < deadline:
        shadow.shadow_evaluate(run.pk)
        time.sleep(0.2)

    run.refresh_from_db()
    assert (run.requests, run.rows, run.status) == (1200, 1200, "running")
    assert run.cursor == TrafficRecord.objects.order_by("-id").first().pk
    assert run.summary["agreement"] == 1.0


def test_predict_prefers_a_passed_onnx_export_and_picks_it_up_without_a_restart(
    fraud_model, viewer, tmp_path
):
    from lifecycle.states import version_transition
    from registry.models import Alias, Export
    from registry.storage import blob_put

    keras = version_from(fraud_model, builders.tiny_keras_classifier(tmp_path / "source"), 1)
    for to in ("awaiting_approval", "production"):
        version_transition(version_id=keras.pk, to=to, actor="tests")
    Alias.objects.create(model=fraud_model, name="champion", version=keras)
    one = [[0.5, 0.0, 0.0, 0.0]]
    from_keras = predict(viewer.client, one).json()["outputs"][0]
    # An "export" that answers differently (softmax([0, x0 - 1])), so the test can tell who answered.
    export_path = builders.threshold_onnx_classifier(tmp_path / "export", shift=1.0)
    with export_path.open("rb") as fh:
        key = blob_put(fh, sha256=hashlib.sha256(export_path.read_bytes()).hexdigest(), kind="exports")
    export = Export.objects.create(version=keras, format="onnx", status="running", artifact_key=key)
    assert predict(viewer.client, one).json()["outputs"][0] == from_keras  # not passed yet: the source

    Export.objects.filter(pk=export.pk).update(status="passed")

    answer = predict(viewer.client, one)
    assert answer.status_code == 200 and answer.json()["version"] == 1
    assert np.allclose(answer.json()["outputs"][0], [0.6224593, 0.3775407], atol=1e-6)  # the export answers


@pytest.mark.django_db(transaction=True)
def test_batches_of_many_row_records_are_cut_by_rows_read_ahead_and_each_record_is_folded_once(
    fraud_model, owner, tmp_path, monkeypatch
):
    # Small bounds, so that 300 records make many batches, some cut by their rows rather than their
    # count; committed records (transaction=True), so the read-ahead thread's connection sees them.
    monkeypatch.setattr(shadow, "BATCH_RECORDS", 40)
    monkeypatch.setattr(shadow, "BATCH_ROWS", 100)
    monkeypatch.setattr(shadow, "PREDICT_ROWS", 16)
    batches: list[int] = []
    real = shadow._batch

    def counting(run, after, limit=0, layouts=shadow.NO_LAYOUTS):
        columns, more = real(run, after, limit, layouts)
        batches.append(sum(columns["rows"]))
        return columns, more

    monkeypatch.setattr(shadow, "_batch", counting)
    set_policy(owner, {**shadow_policy(), "shadow": {"min_requests": 10_000}})
    champion = served_champion(fraud_model, tmp_path / "1")
    candidate = version_from(fraud_model, builders.threshold_onnx_classifier(tmp_path / "2", scale=1.0001), 2)
    run = shadow.shadow_start(version=candidate, champion=champion, actor="tests")
    sizes = [1 + (i * 7) % 13 for i in range(300)]  # 1..13 rows per record
    data = rows(sum(sizes), seed=4)
    ends = np.cumsum(sizes)
    TrafficRecord.objects.bulk_create(
        traffic_record(
            model_id=fraud_model.pk,
            request_id=f"r{i}",
            inputs=data[end - size : end],
            rows=size,
            metadata={"country": "BR" if i % 3 == 0 else "US"} if i % 2 else {},
        )
        for i, (size, end) in enumerate(zip(sizes, ends, strict=True))
    )
    deadline = time.monotonic() + 60  # a shared worker may hold the lease; it counts the same way
    while ShadowRun.objects.get(pk=run.pk).requests < 300 and time.monotonic() < deadline:
        shadow.shadow_evaluate(run.pk, budget=60)
        time.sleep(0.2)

    run.refresh_from_db()
    assert (run.requests, run.rows) == (300, sum(sizes))
    assert run.cursor == TrafficRecord.objects.order_by("-id").first().pk
    assert run.summary["agreement"] == 1.0
    with_metadata = [i for i in range(300) if i % 2]
    slices = run.summary["slices"]["country"]
    assert slices["BR"]["rows"] == sum(sizes[i] for i in with_metadata if i % 3 == 0)
    assert slices["US"]["rows"] == sum(sizes[i] for i in with_metadata if i % 3)
    if batches:  # this process folded (not a shared worker): its batches kept to the row bound
        assert max(batches) < 100 + 13 and len(batches) > 300 // 40


def test_a_model_answering_the_wrong_number_of_rows_is_an_error_per_request_not_a_crash():
    class OneRow:  # answers one row whatever it is given
        def predict(self, inputs):
            return np.zeros((1, 2), np.float32)

    records = [
        {
            "id": i,
            "request_id": f"r{i}",
            "inputs": np.ones((3, 4), np.float32).tobytes(),
            "input_layout": '[["", "<f4", [3, 4]]]',
            "rows": 3,
            "outputs": None,
            "output_layout": "",
            "served_by_id": None,
            "metadata": {},
        }
        for i in range(4)
    ]
    batch = shadow.Batch.of(records)
    batch.reuse, batch.inputs = False, shadow._stack(records)

    judged = shadow._judge(batch, OneRow(), OneRow(), baseline_id=1, classifier=True, tol=0.01)

    assert judged.rows == 0
    assert judged.errors == [f"request r{i}: a model answered 1 rows for 3" for i in range(4)]


def test_the_batch_reader_returns_every_field_as_stored_when_layouts_and_metadata_change(fraud_model):
    # The reader asks PostgreSQL to leave out the layouts it already knows and empty metadata; what it
    # hands on must be the records exactly, whatever layouts it guessed.
    wide, narrow = np.ones((2, 4), np.float32), np.arange(3, dtype=np.float64).reshape(3, 1)
    made = [
        traffic_record(model_id=fraud_model.pk, request_id="a", inputs=wide, rows=2),
        traffic_record(model_id=fraud_model.pk, request_id="b", inputs=wide, rows=2, outputs=wide[:, :2]),
        traffic_record(model_id=fraud_model.pk, request_id="c", inputs=narrow, rows=3, metadata={"k": "v"}),
        traffic_record(model_id=fraud_model.pk, request_id="d", inputs={"x": wide, "y": wide}, rows=2),
        traffic_record(model_id=fraud_model.pk, request_id="e", inputs=wide, rows=2),
    ]
    TrafficRecord.objects.bulk_create(made)
    stored = list(TrafficRecord.objects.filter(model=fraud_model).order_by("id").values(*shadow.FIELDS))
    for record in stored:
        record["inputs"] = bytes(record["inputs"])
        record["outputs"] = None if record["outputs"] is None else bytes(record["outputs"])
    run = ShadowRun(candidate=ModelVersion(model=fraud_model), since=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))

    for layouts in (shadow.NO_LAYOUTS, (stored[0]["input_layout"], stored[1]["output_layout"])):
        columns, more = shadow._batch(run, 0, 10, layouts)
        read = shadow.Batch(columns, more).records
        for record in read:
            record["inputs"] = bytes(record["inputs"])
            record["outputs"] = None if record["outputs"] is None else bytes(record["outputs"])
        assert (read, more) == (stored, False)
    columns, more = shadow._batch(run, stored[1]["id"], 2, layouts)
    assert (columns["request_id"], more) == (["c", "d"], True)


def test_a_batch_is_cut_by_its_bytes_after_the_record_that_reaches_the_bound(fraud_model, monkeypatch):
    # Records of 32 input bytes (and 8 output bytes on every other one); a bound of 100 bytes for a
    # full batch keeps the records until the one that reaches it, and says more may follow.
    monkeypatch.setattr(shadow, "BATCH_BYTES", 100)
    wide = np.ones((2, 4), np.float32)
    TrafficRecord.objects.bulk_create(
        traffic_record(
            model_id=fraud_model.pk,
            request_id=f"r{i}",
            inputs=wide,
            rows=2,
            outputs=wide[:, :1] if i % 2 else None,
        )
        for i in range(6)
    )
    run = ShadowRun(candidate=ModelVersion(model=fraud_model), since=dt.datetime(2000, 1, 1, tzinfo=dt.UTC))

    columns, more = shadow._batch(run, 0, shadow.BATCH_RECORDS)

    assert (columns["request_id"], more) == (["r0", "r1", "r2"], True)  # 0, 32, 72 bytes before each
    assert [None if o is None else len(o) for o in columns["outputs"]] == [None, 8, None]
    assert bytes(columns["inputs"][2]) == wide.tobytes()
    assert shadow.unpack_many(columns["inputs"], columns["input_layout"]).shape == (6, 4)
    assert shadow.unpack_many(columns["outputs"], columns["output_layout"]) is None  # some have none


def test_the_reservoir_keeps_a_uniform_sample_of_every_row_folded_across_batches():
    from scipy import stats as sps

    rng, sample, seen = np.random.default_rng(7), {}, 0
    for size in [500, 1500, 3000, 50_000, 7, 45_000]:  # 100,007 rows, the first batches filling it
        values = np.arange(seen, seen + size, dtype=np.float64)
        shadow._reservoir(sample, {"v": values, "w": -values}, seen, rng)
        seen += size
    kept = np.asarray(sample["v"])
    assert len(kept) == shadow.RESERVOIR and len(set(kept.tolist())) == shadow.RESERVOIR
    assert sample["w"] == (-kept).tolist()  # the same rows in every column
    # Uniform over all rows, late ones included (a reservoir that stopped replacing fails this).
    assert sps.kstest(kept / seen, "uniform").pvalue > 0.01
    assert (kept >= 55_007).mean() == pytest.approx(45_000 / seen, abs=0.05)


def test_the_short_switch_interval_ends_with_the_reader_even_when_its_close_is_interrupted(monkeypatch):
    import sys

    before = sys.getswitchinterval()
    reader = shadow._Reader(ShadowRun())
    assert sys.getswitchinterval() == pytest.approx(shadow.READER_SWITCH_INTERVAL)
    assert before > shadow.READER_SWITCH_INTERVAL
    real = reader.pool.shutdown

    def shutdown(wait=True):
        real(wait=True)
        raise RuntimeError("soft time limit")  # as Celery's lands while the shutdown waits

    monkeypatch.setattr(reader.pool, "shutdown", shutdown)
    with pytest.raises(RuntimeError):
        reader.close()
    assert sys.getswitchinterval() == before
