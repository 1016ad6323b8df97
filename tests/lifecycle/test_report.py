"""The audit report: a promoted version from a real run of the whole pipeline (gates, exports, shadow and
a Slack approval) answers all seven questions with that run's numbers; so does a retired and purged one;
an edited evidence summary is flagged; the Markdown and the printable page carry the same numbers."""

from __future__ import annotations

import pandas as pd
import pytest
from django.test import Client

from lifecycle import retirement
from lifecycle.approval import evidence_digest
from registry.formatting import number_text
from registry.models import (
    Approval,
    Dataset,
    Export,
    GateResult,
    ModelVersion,
    Promotion,
    ShadowRun,
    SlackIdentity,
)
from tests.conftest import push, wait_for_status
from tests.country import FEATURES, country_frame, train_classifier
from tests.lifecycle.test_approval import CHANNEL, post_click, slack_click
from tests.lifecycle.test_pipeline import set_policy
from tests.serving.test_shadow import predict, rows

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.workers]

GATES = [
    {"kind": "loads"},
    {
        "kind": "metric",
        "metric": "accuracy",
        "dataset": "holdout",
        "label": "y",
        "slice_by": "country",
        "min": 0.0,  # BR is flipped: its accuracy is near 0, and that is fine here
    },
    {"kind": "no_regression", "metric": "accuracy", "dataset": "holdout", "label": "y", "max_drop": 0.5},
]
POLICY = {
    "gates": GATES,
    "exports": {"formats": ["onnx"], "required": ["onnx"]},
    "shadow": {
        "sample_rate": 1.0,
        "min_requests": 20,
        "min_agreement": 0.0,  # two differently trained models: the verdict is not what is tested here
        "max_p95_latency_ratio": 1000,
        "max_metric_drop": 1.0,
    },
    "approval": {"slack_channel": CHANNEL},
    "retirement": {"keep_last": 0, "purge_after_days": 0, "warn_days": 0},
}


def register(client, name: str, frame: pd.DataFrame, tmp_path) -> Dataset:
    path = tmp_path / f"{name}.csv"
    frame.to_csv(path, index=False)
    with path.open("rb") as fh:
        response = client.post("/api/v1/datasets/", {"file": fh, "name": name}, format="multipart")
    assert response.status_code == 201, response.content
    return Dataset.objects.get(name=name)


@pytest.fixture
def story(celery_workers, slack_server, fraud_model, owner, publisher, approver, viewer, tmp_path) -> dict:
    """v1 promoted through the API, then v2 through gates, an ONNX export, a live shadow and a Slack click."""
    SlackIdentity.objects.create(user=approver.user, slack_user_id="U_ALICE")
    train = country_frame(3000, seed=1)
    holdout_frame = country_frame(2000, seed=2)
    train_ds = register(owner.client, "country-train", train, tmp_path)
    holdout = register(owner.client, "holdout", holdout_frame, tmp_path)
    set_policy(owner, POLICY)
    metadata = {"datasets": [{"name": "country-train", "version": 1, "role": "train"}]}

    push(publisher.client, "fraud", train_classifier(train, tmp_path / "v1" / "m.keras", epochs=5), metadata)
    v1 = wait_for_status("fraud", 1, {"awaiting_approval", "rejected"}, timeout=180)
    assert v1.status == "awaiting_approval", v1.status_reason
    response = approver.client.post(
        "/api/v1/models/fraud/versions/1/approve/", {"comment": "first"}, format="json"
    )
    assert response.status_code == 201, response.content
    wait_for_status("fraud", 1, {"production"})

    push(
        publisher.client,
        "fraud",
        train_classifier(train, tmp_path / "v2" / "m.keras", epochs=30, seed=4),
        metadata,
    )
    assert wait_for_status("fraud", 2, {"shadowing", "rejected"}, timeout=180).status == "shadowing"
    data = rows(25)
    data = pd.DataFrame(data, columns=FEATURES).to_numpy()
    for i in range(25):
        assert predict(viewer.client, data[i : i + 1].tolist(), metadata={"country": "DE"}).status_code == 200
    v2 = wait_for_status("fraud", 2, {"awaiting_approval", "rejected"}, timeout=120)
    assert v2.status == "awaiting_approval", v2.status_reason
    slack_server.wait_for(lambda c: c["path"].endswith("chat.postMessage") and "fraud v2" in str(c["data"]))
    assert post_click(*slack_click(v2, "U_ALICE")).status_code == 200
    v2 = wait_for_status("fraud", 2, {"production"})
    return {
        "v1": ModelVersion.objects.get(pk=v1.pk),
        "v2": v2,
        "train": train_ds,
        "holdout": holdout,
        "frame": holdout_frame,
    }


def report(client, number: int, fmt: str = "") -> dict | str:
    response = client.get(
        f"/api/v1/models/fraud/versions/{number}/report/" + (f"?format={fmt}" if fmt else "")
    )
    assert response.status_code == 200, response.content
    return response.content.decode() if fmt == "md" else response.json()


def test_the_report_answers_the_seven_questions_with_the_run_s_numbers_flags_edited_evidence_and_survives_a_purge(
    story, owner, viewer
):
    v1, v2, holdout, frame = story["v1"], story["v2"], story["holdout"], story["frame"]
    body = report(viewer.client, 2)
    s = body["sections"]
    assert body["sha256"] == v2.sha256 and body["status"] == "production"

    # 1. datasets, with versions, sha256 and rows
    datasets = {(d["name"], d["role"]): d for d in s["datasets"]["items"]}
    assert set(datasets) == {("country-train", "train"), ("holdout", "validation")}
    assert datasets[("holdout", "validation")]["sha256"] == holdout.sha256
    assert datasets[("holdout", "validation")]["rows"] == 2000
    assert datasets[("country-train", "train")]["sha256"] == story["train"].sha256

    # 2. the validation data's statistics, computed at registration and equal to pandas' own
    (validation,) = s["validation_data"]["items"]
    features = validation["features"]
    for column in FEATURES:
        assert features[column]["mean"] == pytest.approx(float(frame[column].mean()), rel=1e-5)
        assert features[column]["std"] == pytest.approx(float(frame[column].std()), rel=1e-4)
        assert features[column]["min"] == pytest.approx(float(frame[column].min()))
        assert features[column]["nulls"] == 0 and features[column]["count"] == 2000
    top = dict(map(tuple, features["country"]["top"]))
    assert top == frame["country"].value_counts().to_dict()

    # 3. every gate result, per slice, as stored
    (attempt,) = s["gates"]["attempts"]
    stored = GateResult.objects.filter(version=v2).order_by("gate_index", "slice")
    assert [(r["gate"], r["slice"], r["value"], r["passed"]) for r in attempt["results"]] == [
        (g.gate, g.slice, g.value, g.passed) for g in stored
    ]
    assert {r["slice"] for r in attempt["results"] if r["gate"] == "metric"} == {
        "",
        *(f"country={c}" for c in ("US", "DE", "FR", "IN", "BR")),
    }

    # 4. against the model it replaced, on the same rows
    comparison = s["comparison"]
    assert comparison["replaced"]["version"] == 1
    regression = GateResult.objects.get(version=v2, gate="no_regression", slice="")
    (row,) = comparison["no_regression"]
    assert (row["value"], row["baseline"], row["champion"]) == (regression.value, regression.baseline, 1)
    run = ShadowRun.objects.get(candidate=v2)
    assert comparison["shadow"]["agreement"] == run.summary["agreement"]
    assert comparison["shadow"]["baseline"] == 1

    # 5. the shadow on real traffic
    (shadow,) = s["shadow"]["runs"]
    assert (shadow["status"], shadow["requests"], shadow["rows"]) == (run.status, run.requests, run.rows)
    assert shadow["requests"] >= 20 and shadow["diff"] == run.summary["diff"]
    assert shadow["latency_ms"] == run.summary["latency_ms"]

    # 6. who signed it off, where, when, on what evidence, and the digest checked
    (round_,) = s["sign_off"]["rounds"]
    (decision,) = round_["decisions"]
    stored_decision = Approval.objects.get(version=v2)
    assert (decision["actor"], decision["channel"], decision["slack"]["user"]) == (
        "alice",
        "slack",
        "U_ALICE",
    )
    assert decision["at"] == stored_decision.at.isoformat().replace("+00:00", "Z")
    assert decision["evidence_digest"] == stored_decision.evidence_digest
    assert decision["digest_matches"] is True and s["sign_off"]["digest_mismatches"] == 0

    # 7. promotion history
    promotion = Promotion.objects.get(version=v2)
    (served,) = s["history"]["served"]
    assert served["from"] == promotion.at.isoformat().replace("+00:00", "Z")
    assert (served["replaced"], served["until"]) == (1, None)
    assert s["history"]["retirement"] is None and s["history"]["bytes"]["purged"] is False

    # The model it replaced says what replaced it, and when; and it had no baseline of its own.
    first = report(viewer.client, 1)["sections"]
    assert first["history"]["served"][0]["replaced_by"] == 2
    assert first["history"]["served"][0]["until"] == served["from"]
    assert "first version: no baseline" in first["comparison"]["note"]
    assert first["shadow"]["note"].startswith("no shadow ran")
    assert first["sign_off"]["rounds"][0]["decisions"][0]["channel"] == "api"

    # The Markdown carries the same numbers.
    md = report(viewer.client, 2, "md")
    assert md.startswith("# Audit report: fraud v2")
    for n in range(1, 8):
        assert f"\n## {n}. " in md
    assert holdout.sha256 in md
    assert number_text(features["f0"]["mean"]) in md
    assert number_text(regression.value) in md and number_text(regression.baseline) in md
    assert number_text(run.summary["agreement"]) in md
    assert "| approve | alice | slack (C0123456, user U_ALICE) |" in md and "matches" in md
    assert "It replaced **v1**" in md

    # So does the printable page.
    browser = Client()
    browser.force_login(viewer.user)
    page = browser.get("/models/fraud/versions/2/report/")
    assert page.status_code == 200
    html = page.content.decode()
    assert (
        holdout.sha256 in html and number_text(regression.value) in html and 'data-testid="digest-ok"' in html
    )

    # Edited evidence after the fact: the report flags the digest mismatch, in every form.
    Approval.objects.filter(pk=stored_decision.pk).update(evidence={**stored_decision.evidence, "gates": []})
    tampered = report(viewer.client, 2)["sections"]["sign_off"]
    decision = tampered["rounds"][0]["decisions"][0]
    assert decision["digest_matches"] is False and tampered["digest_mismatches"] == 1
    assert decision["recomputed_digest"] == evidence_digest({**stored_decision.evidence, "gates": []})
    assert tampered["note"].startswith("WARNING")
    assert "MISMATCH" in report(viewer.client, 2, "md")
    assert 'data-testid="digest-mismatch"' in browser.get("/models/fraud/versions/2/report/").content.decode()

    # Retired, then purged: the report still answers, and says the bytes are gone and when.
    response = owner.client.post(
        "/api/v1/models/fraud/versions/1/retire/", {"comment": "no longer needed"}, format="json"
    )
    assert response.status_code == 200, response.content
    retirement.retirement_sweep()
    v1.refresh_from_db()
    assert v1.status == "retired" and v1.purged_at is not None
    after = report(viewer.client, 1)
    s1 = after["sections"]
    assert [d["name"] for d in s1["datasets"]["items"]] == ["country-train", "holdout"]
    assert s1["validation_data"]["items"][0]["features"]["f0"]["count"] == 2000
    assert s1["gates"]["attempts"][0]["results"]
    assert s1["sign_off"]["rounds"] and s1["history"]["served"][0]["replaced_by"] == 2
    assert s1["history"]["retirement"]["reason"] == "retired by olivia: no longer needed"
    assert s1["history"]["bytes"] == {
        "purged": True,
        "purged_at": v1.purged_at.isoformat().replace("+00:00", "Z"),
        "artifact": "deleted",
        "exports_purged": ["onnx"],
    }
    assert Export.objects.get(version=v1, format="onnx").purged_at is not None
    assert "its bytes were purged at" in s1["history"]["note"]
    md = report(viewer.client, 1, "md")
    assert f"Bytes: purged at {s1['history']['bytes']['purged_at']}" in md
    assert "Retired at" in md


def test_an_unknown_format_is_a_json_400_and_a_missing_version_a_404(fraud_model, viewer):
    response = viewer.client.get("/api/v1/models/fraud/versions/1/report/?format=pdf")
    assert response.status_code == 400 and response["Content-Type"] == "application/json"
    assert response.json()["error"]["fields"] == {"format": ["json or md"]}
    response = viewer.client.get("/api/v1/models/fraud/versions/9/report/?format=md")
    assert response.status_code == 404 and response.json()["error"]["message"] == "fraud has no version 9"
