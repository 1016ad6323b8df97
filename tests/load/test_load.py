"""Load on a real gunicorn: 50 concurrent pushes, 200 concurrent ``predict`` clients for 60 s, and 20
concurrent approvals over 20 versions. No answer is a 5xx and every count matches; the latencies
(p50, p99) are written to ``test-results/load.json`` for docs/benchmarks.md, never asserted."""

from __future__ import annotations

import json
import threading
import time

import pytest

from bench.loadgen import Client, run_phase
from registry.models import Alias, Event, ModelRole, ModelVersion, Promotion, Role, TrafficRecord, Usage
from tests import builders
from tests.conftest import ROOT
from tests.lifecycle.test_approval import awaiting
from tests.lifecycle.test_pipeline import set_policy
from tests.processes import Web
from tests.serving.test_shadow import rows, served_champion, shadow_policy

pytestmark = pytest.mark.django_db(transaction=True)

RESULTS = ROOT / "test-results" / "load.json"


def record(name: str, latencies_ms: list[float], statuses: dict[int, int], seconds: float) -> None:
    ordered = sorted(latencies_ms)

    def pct(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))], 1)

    RESULTS.parent.mkdir(exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[name] = {
        "requests": len(ordered),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(seconds, 1),
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": round(ordered[-1], 1),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def concurrently(n: int, call) -> tuple[list[tuple[int, float]], float]:
    """Run ``call(i)`` from ``n`` threads released together; each returns an HTTP status."""
    barrier = threading.Barrier(n)
    out: list[tuple[int, float]] = [(0, 0.0)] * n

    def run(i: int) -> None:
        barrier.wait()
        started = time.perf_counter()
        status = call(i)
        out[i] = (status, (time.perf_counter() - started) * 1000)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    return out, time.perf_counter() - started


def tally(statuses: list[int]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return counts


def test_fifty_concurrent_pushes_over_http_make_versions_one_to_fifty(
    web_processes, private_redis, worker_env, fraud_model, publisher, tmp_path
):
    web = Web({**worker_env, "CELERY_BROKER_URL": private_redis.url}, tmp_path)  # nobody validates them
    web_processes.append(web)
    artifacts = [builders.tiny_onnx_model(tmp_path / str(i), seed=i) for i in range(50)]

    def push(i: int) -> int:
        with web.client(publisher.token) as http, artifacts[i].open("rb") as fh:
            return http.post(
                "/api/v1/models/fraud/versions/", files={"artifact": fh}, data={"metadata": "{}"}
            ).status_code

    results, seconds = concurrently(50, push)

    statuses = [status for status, _ in results]
    record("push, 50 concurrent", [ms for _, ms in results], tally(statuses), seconds)
    assert statuses == [201] * 50
    numbers = sorted(ModelVersion.objects.filter(model=fraud_model).values_list("version", flat=True))
    assert numbers == list(range(1, 51))
    assert Event.objects.filter(model=fraud_model, kind="version.registered").count() == 50


def test_two_hundred_predict_clients_for_a_minute_get_no_5xx_and_every_call_is_counted(
    web_processes, worker_env, fraud_model, owner, viewer, tmp_path
):
    set_policy(owner, shadow_policy(sample_rate=1.0))
    champion = served_champion(fraud_model, tmp_path)
    web = Web(worker_env, tmp_path)
    web_processes.append(web)
    inputs = [row.tolist() for row in rows(64, seed=3)]
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def predict(client: Client, i: int | None) -> bool:
        row = inputs[threading.get_ident() % len(inputs)]
        status, body = client.call("POST", "/api/v1/models/fraud/predict/", {"inputs": [row]})
        with lock:
            statuses[status] = statuses.get(status, 0) + 1
        if status != 200:
            client.state["error"] = f"{status}: {body[:200]!r}"
        return status == 200

    headers = {"Authorization": f"Bearer {viewer.token}", "Content-Type": "application/json"}
    phase = run_phase(
        "predict",
        predict,
        port=web.port,
        headers=headers,
        server_pid=web.proc.pid,
        clients=200,
        duration=60,
        warmup=0,
    )
    web.stop()  # a graceful stop flushes the capture buffer and the usage counters

    record("predict, 200 clients, 60 s", phase.latencies_ms, statuses, phase.seconds)
    assert set(statuses) == {200}, (statuses, phase.first_error)
    served = statuses[200]
    assert served > 200
    assert Usage.objects.get(version=champion).predictions == served
    assert TrafficRecord.objects.filter(model=fraud_model, source="live").count() == served


def test_twenty_concurrent_approvals_over_twenty_versions_leave_one_champion_and_twenty_promotions(
    web_processes, worker_env, fraud_model, make_actor, tmp_path
):
    approvers = [make_actor(f"approver{i}") for i in range(20)]
    ModelRole.objects.bulk_create(
        ModelRole(model=fraud_model, user=actor.user, role=Role.APPROVER) for actor in approvers
    )
    versions = [awaiting(fraud_model, n) for n in range(1, 21)]
    web = Web(worker_env, tmp_path)
    web_processes.append(web)

    def approve(i: int) -> int:
        with web.client(approvers[i].token) as http:
            return http.post(
                f"/api/v1/models/fraud/versions/{versions[i].version}/approve/", json={}
            ).status_code

    results, seconds = concurrently(20, approve)

    statuses = [status for status, _ in results]
    record("approve, 20 concurrent over 20 versions", [ms for _, ms in results], tally(statuses), seconds)
    assert statuses == [201] * 20
    final = dict(ModelVersion.objects.filter(model=fraud_model).values_list("version", "status"))
    assert sorted(final.values()) == ["archived"] * 19 + ["production"]
    champion = Alias.objects.get(model=fraud_model, name="champion").version
    assert champion.status == "production"
    promotions = list(Promotion.objects.filter(model=fraud_model).order_by("id"))
    assert len(promotions) == 20 and len({p.version_id for p in promotions}) == 20
    # The history is one chain: each promotion replaced the one before it.
    assert [p.previous_id for p in promotions] == [None] + [p.version_id for p in promotions[:-1]]
    assert promotions[-1].version_id == champion.pk
