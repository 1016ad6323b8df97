"""Auto-retirement and retention: warnings, grace, retirement, purge, restore; time moves by argument.

The sweep takes ``now``; nothing here sleeps. Usage rows are written as the counters would be.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from lifecycle import retirement
from registry.models import (
    Alias,
    Event,
    ModelVersion,
    Promotion,
    RegisteredModel,
    Usage,
    WebhookDelivery,
)
from registry.storage import blob_exists, blob_put
from tests.factories import ModelVersionFactory
from tests.lifecycle.test_pipeline import set_policy

pytestmark = pytest.mark.django_db(transaction=True)

DAY0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


def days(n: float) -> dt.datetime:
    return DAY0 + dt.timedelta(days=n)


def version(model, number: int, status: str = "archived", *, age_days: float = 40, **fields) -> ModelVersion:
    return ModelVersionFactory(
        model=model,
        version=number,
        status=status,
        created_at=days(-age_days),
        status_changed_at=days(-age_days),
        **fields,
    )


def use(v: ModelVersion, day: dt.datetime, *, predictions: int = 0, downloads: int = 1) -> None:
    Usage.objects.create(version=v, day=day.date(), predictions=predictions, downloads=downloads)


def champion(v: ModelVersion) -> None:
    Alias.objects.update_or_create(model=v.model, name="champion", defaults={"version": v})


def statuses(model) -> dict[int, str]:
    return dict(ModelVersion.objects.filter(model=model).values_list("version", "status"))


@pytest.fixture
def six(fraud_model, owner):
    """v1..v6: v6 serves (used yesterday), v5 was used 3 days ago, v1..v4 unused for 40 days."""
    set_policy(owner, {"retirement": {"keep_last": 3, "unused_days": 30, "warn_days": 7}})
    versions = {n: version(fraud_model, n) for n in range(1, 6)}
    versions[6] = version(fraud_model, 6, "production")
    champion(versions[6])
    use(versions[5], days(-3))
    use(versions[6], days(-1), predictions=500, downloads=0)
    return versions


def test_the_ghosts_are_warned_first_then_retired_after_the_grace_period(fraud_model, six):
    first = retirement.retirement_sweep(now=days(0))

    assert sorted(d.version for d in first.warned) == [1, 2]  # v3, v4 kept (newest 3), v5, v6 in use
    warned = ModelVersion.objects.get(model=fraud_model, version=1)
    assert warned.retire_on == dt.date(2026, 12, 8) and warned.status == "archived"
    event = Event.objects.get(kind="retirement.warned", version=warned)
    assert (
        event.data["reason"]
        == "v1 will be retired on 2026-12-08: never used since it was pushed on 2026-10-22"
    )

    assert retirement.retirement_sweep(now=days(6)).counts() == {
        "warned": 0,
        "cancelled": 0,
        "retired": 0,
        "purged": 0,
    }
    retirement.retirement_sweep(now=days(7))

    assert statuses(fraud_model) == {
        1: "retired",
        2: "retired",
        3: "archived",
        4: "archived",
        5: "archived",
        6: "production",
    }
    assert "retired as unused" in ModelVersion.objects.get(model=fraud_model, version=2).status_reason


def test_a_use_during_the_grace_period_cancels_the_warning_and_says_so(fraud_model, six):
    retirement.retirement_sweep(now=days(0))
    use(six[2], days(3))  # `modelgate download` of v2 on day 3

    retirement.retirement_sweep(now=days(7))

    assert statuses(fraud_model)[1] == "retired" and statuses(fraud_model)[2] == "archived"
    cancelled = Event.objects.get(kind="retirement.cancelled", version=six[2])
    assert cancelled.data["reason"] == "warning cancelled: used on 2026-12-04"
    assert ModelVersion.objects.get(pk=six[2].pk).retirement_warned_at is None


def test_running_the_sweep_twice_changes_nothing_the_second_time(fraud_model, six):
    retirement.retirement_sweep(now=days(0))
    events = Event.objects.count()

    again = retirement.retirement_sweep(now=days(0) + dt.timedelta(hours=5))

    assert again.counts() == {"warned": 0, "cancelled": 0, "retired": 0, "purged": 0}
    assert Event.objects.count() == events
    retirement.retirement_sweep(now=days(7))
    assert retirement.retirement_sweep(now=days(7.1)).counts()["retired"] == 0


def test_aliases_pins_and_the_pipeline_exempt_a_version(fraud_model, owner):
    set_policy(owner, {"retirement": {"keep_last": 0}})
    held = version(fraud_model, 1)
    Alias.objects.create(model=fraud_model, name="stable", version=held)
    version(fraud_model, 2, tags=["pinned"])
    version(fraud_model, 3, "awaiting_approval")
    version(fraud_model, 4, "shadowing")
    version(fraud_model, 5, age_days=3)  # pushed 3 days ago: not unused for 30 days yet
    version(fraud_model, 6, "rejected")

    plan = retirement.retirement_plan(now=days(0))

    assert [(d.version, d.action) for d in plan.decisions] == [(6, "warn")]


@pytest.mark.parametrize("retire_production", [True, False])
def test_a_production_version_nobody_calls_is_retired_and_the_champion_cleared(
    celery_workers, slack_server, fraud_model, owner, retire_production
):
    from lifecycle.webhooks import webhook_create

    set_policy(
        owner,
        {"retirement": {"retire_production": retire_production}, "approval": {"slack_channel": "C0OWNERS"}},
    )
    webhook_create(model=fraud_model, url="https://hooks.example.com/mg", events=[], actor="tests")
    ghost = version(fraud_model, 1, "production")
    champion(ghost)
    use(ghost, days(-45), predictions=10, downloads=0)

    retirement.retirement_sweep(now=days(0))
    retirement.retirement_sweep(now=days(7))

    ghost.refresh_from_db()
    if not retire_production:
        assert ghost.status == "production" and ghost.retirement_warned_at is None
        assert Alias.objects.filter(name="champion", version=ghost).exists()
        return
    assert ghost.status == "retired"
    assert "the model has no champion now" in ghost.status_reason
    assert not Alias.objects.filter(model=fraud_model, name="champion").exists()
    cleared = Promotion.objects.get(model=fraud_model, kind="clear")
    assert cleared.previous_id == ghost.pk and cleared.version is None
    told = WebhookDelivery.objects.filter(event="version.retired").get()
    assert "no champion" in told.payload["data"]["reason"]
    assert WebhookDelivery.objects.filter(event="version.retirement_warned").count() == 1
    # The owners' channel hears it twice, plainly: the warning, then the retirement.
    posts = slack_server.wait_for(
        lambda c: c["path"].endswith("chat.postMessage") and "no champion now" in json.dumps(c["data"])
    )
    assert posts[0]["data"]["channel"] == "C0OWNERS"
    assert any(
        "will be retired on 2026-12-08" in json.dumps(c["data"])
        and "it is the champion" in json.dumps(c["data"])
        for c in slack_server.calls
    )


def _bulk_versions(count: int, models: int = 10) -> None:
    owners = [RegisteredModel.objects.create(name=f"bulk-{i}", policy={}) for i in range(models)]
    old = days(-60)
    ModelVersion.objects.bulk_create(
        (
            ModelVersion(
                model=owners[i % models],
                version=i // models + 1,
                status="archived",
                sha256=f"{i:064x}",
                artifact_key=f"artifacts/x/{i}",
                size=1,
                format="onnx",
                created_at=old,
                status_changed_at=old,
            )
            for i in range(count)
        ),
        batch_size=10_000,
    )


def _queries(now: dt.datetime) -> tuple[int, retirement.SweepResult]:
    with CaptureQueriesContext(connection) as captured:
        result = retirement.retirement_sweep(now=now)
    return len(captured.captured_queries), result


def test_the_sweep_over_100000_versions_runs_in_a_constant_number_of_queries():
    _bulk_versions(1_000)
    small_warn, result = _queries(days(0))
    assert len(result.warned) == 1_000 - 10 * 3
    small_retire, result = _queries(days(7))
    assert len(result.retired) == 1_000 - 10 * 3
    ModelVersion.objects.all().delete()
    RegisteredModel.objects.all().delete()

    _bulk_versions(100_000)
    large_warn, result = _queries(days(0))
    assert len(result.warned) == 100_000 - 10 * 3
    large_retire, result = _queries(days(7))
    assert len(result.retired) == 100_000 - 10 * 3

    assert (large_warn, large_retire) == (small_warn, small_retire)


def _stored(v: ModelVersion, content: bytes) -> str:
    key = blob_put(io.BytesIO(content), sha256=hashlib.sha256(content).hexdigest())
    ModelVersion.objects.filter(pk=v.pk).update(artifact_key=key, sha256=hashlib.sha256(content).hexdigest())
    v.refresh_from_db()
    return key


def test_purge_deletes_the_bytes_keeps_shared_ones_and_the_records(fraud_model, owner, viewer):
    set_policy(owner, {"retirement": {"purge_after_days": 90}})
    gone = version(fraud_model, 1, "retired", age_days=100)
    shared = version(fraud_model, 2, "retired", age_days=100)
    live = version(fraud_model, 3, "archived", age_days=1)
    gone_key = _stored(gone, b"only v1 has these bytes")
    shared_key = _stored(shared, b"v2 and v3 share these")
    _stored(live, b"v2 and v3 share these")
    Event.objects.create(kind="version.registered", actor="tests", model=fraud_model, version=gone, data={})

    result = retirement.retirement_sweep(now=timezone.now())

    assert sorted(d.version for d in result.purged) == [1, 2]
    assert not blob_exists(gone_key) and blob_exists(shared_key)
    gone.refresh_from_db()
    assert gone.purged_at is not None and gone.status == "retired"
    purged = Event.objects.get(kind="version.purged", version=gone)
    assert purged.data["artifact"] == "deleted" and "over 90 days ago" in purged.data["reason"]
    assert Event.objects.get(kind="version.purged", version=shared).data["artifact"].startswith("kept")
    download = viewer.client.get("/api/v1/models/fraud/versions/1/artifact/")
    assert download.status_code == 410 and "purged" in download.json()["error"]["message"]
    # The tombstone keeps its story: metadata, events and lineage still answer.
    detail = viewer.client.get("/api/v1/models/fraud/versions/1/")
    assert detail.status_code == 200 and detail.json()["artifact_purged_at"]
    assert viewer.client.get("/api/v1/models/fraud/versions/1/lineage/").status_code == 200
    assert Event.objects.filter(version=gone, kind="version.registered").exists()
    assert retirement.retirement_sweep(now=timezone.now()).counts()["purged"] == 0


def test_restore_brings_a_retired_version_back_and_a_purged_one_only_with_identical_bytes(
    fraud_model, owner, viewer, tmp_path
):
    retired = version(fraud_model, 1, "retired", age_days=5)
    response = owner.client.post("/api/v1/models/fraud/versions/1/restore/", {}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "archived"
    assert Event.objects.filter(kind="version.restored", version=retired, actor="olivia").exists()
    assert (
        viewer.client.post("/api/v1/models/fraud/versions/1/restore/", {}, format="json").status_code == 403
    )

    purged = version(fraud_model, 2, "retired", age_days=200)
    content = b"the original bytes of v2"
    key = _stored(purged, content)
    retirement.retirement_sweep(now=timezone.now())
    assert not blob_exists(key)

    refused = owner.client.post("/api/v1/models/fraud/versions/2/restore/", {}, format="json")
    assert (
        refused.status_code == 409
        and "uploading the identical artifact" in refused.json()["error"]["message"]
    )
    wrong = tmp_path / "wrong.onnx"
    wrong.write_bytes(b"some other bytes")
    with wrong.open("rb") as fh:
        response = owner.client.post(
            "/api/v1/models/fraud/versions/2/restore/", {"artifact": fh}, format="multipart"
        )
    assert response.status_code == 400 and response.json()["error"]["code"] == "checksum_mismatch"
    assert ModelVersion.objects.get(pk=purged.pk).status == "retired"
    right = tmp_path / "right.onnx"
    right.write_bytes(content)
    with right.open("rb") as fh:
        response = owner.client.post(
            "/api/v1/models/fraud/versions/2/restore/", {"artifact": fh}, format="multipart"
        )
    assert response.status_code == 200, response.content
    purged.refresh_from_db()
    assert purged.status == "archived" and purged.purged_at is None and blob_exists(purged.artifact_key)
    assert owner.client.get("/api/v1/models/fraud/versions/2/artifact/").status_code == 200
    again = owner.client.post("/api/v1/models/fraud/versions/2/restore/", {}, format="json")
    assert again.status_code == 409


def test_the_dry_run_lists_what_the_sweep_then_does(fraud_model, six, owner):
    out = io.StringIO()
    call_command("retirement", "--dry-run", "--json", stdout=out)
    planned = {(d["version"], d["action"]) for d in json.loads(out.getvalue())["decisions"]}
    api = owner.client.get("/api/v1/retirement/candidates/").json()
    assert {(d["version"], d["action"]) for d in api["results"]} == planned

    done = retirement.retirement_sweep()

    assert planned == {(d.version, "warn") for d in done.warned} == {(1, "warn"), (2, "warn")}
    text = io.StringIO()
    call_command("retirement", "--dry-run", stdout=text)
    assert text.getvalue().strip().endswith("0 version(s) would change")


def test_a_manual_retire_of_the_champion_clears_it_and_is_audited(fraud_model, owner, publisher):
    v1 = version(fraud_model, 1, "production")
    champion(v1)
    assert (
        publisher.client.post("/api/v1/models/fraud/versions/1/retire/", {}, format="json").status_code == 403
    )

    response = owner.client.post(
        "/api/v1/models/fraud/versions/1/retire/", {"comment": "replaced upstream"}, format="json"
    )

    assert response.status_code == 200, response.content
    assert response.json()["status"] == "retired"
    assert "retired by olivia: replaced upstream" in response.json()["status_reason"]
    assert not Alias.objects.filter(model=fraud_model, name="champion").exists()


def test_the_sweep_can_be_switched_off_globally_or_per_model(fraud_model, owner, settings):
    churn = RegisteredModel.objects.create(name="churn", policy={"retirement": {"enabled": False}})
    for model in (fraud_model, churn):
        for number in range(1, 6):
            version(model, number)

    settings.MODELGATE_RETIREMENT_ENABLED = False
    assert retirement.retirement_sweep(now=days(0)).counts() == {
        "warned": 0,
        "cancelled": 0,
        "retired": 0,
        "purged": 0,
    }

    settings.MODELGATE_RETIREMENT_ENABLED = True
    warned = retirement.retirement_sweep(now=days(0)).warned
    assert {(d.model, d.version) for d in warned} == {("fraud", 1), ("fraud", 2)}  # churn opts out
