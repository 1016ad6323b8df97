"""PostgreSQL restarted under a stream of API calls.

While the database is down every call gets a 503 with ``Retry-After`` (never a 500) and ``/readyz`` says
which dependency is missing. Once it is back, the same gunicorn and Celery processes carry on: no
restart, and nothing a client was told was saved is missing.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import httpx
import psycopg
import pytest

from tests import builders
from tests.conftest import ROOT
from tests.processes import Web

pytestmark = pytest.mark.workers


@dataclass
class Call:
    at: float
    kind: str
    name: str
    status: int
    retry_after: str | None


class Stream:
    """Clients creating and listing models without a pause, as CI jobs and dashboards would."""

    def __init__(self, url: str, token: str, clients: int = 3) -> None:
        self.url, self.token = url, token
        self.calls: list[Call] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def __enter__(self) -> Stream:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def _run(self, index: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=30) as http:
            n = 0
            while not self.stop.is_set():
                n += 1
                name = f"stream-{index}-{n}"
                self._record("create", name, http.post("/api/v1/models/", json={"name": name}))
                self._record("list", name, http.get("/api/v1/models/"))
                time.sleep(0.02)

    def _record(self, kind: str, name: str, response: httpx.Response) -> None:
        self.calls.append(
            Call(time.monotonic(), kind, name, response.status_code, response.headers.get("Retry-After"))
        )


def manage(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_a_postgres_restart_gives_503s_then_recovers_without_restarting_web_or_workers(
    private_postgres, private_redis, fresh_workers, web_processes, worker_env, tmp_path
):
    env = {
        **worker_env,
        "DATABASE_URL": private_postgres.url,
        "CELERY_BROKER_URL": private_redis.url,
        "MODELGATE_RECONCILE_SECONDS": "1",
        "MODELGATE_RECONCILE_GRACE_SECONDS": "2",
    }
    manage(env, "migrate", "--noinput", "--verbosity", "0")
    token = manage(env, "issue_token", "ci", "--create", "--staff").strip().splitlines()[-1]
    fresh_workers.start(concurrency=1, beat=True, extra_env=env)
    web = Web(env, tmp_path)
    web_processes.append(web)

    with Stream(web.url, token) as stream:
        time.sleep(2)
        private_postgres.stop()
        down_at = time.monotonic()
        time.sleep(1)
        ready_down = httpx.get(f"{web.url}/readyz", timeout=30)
        time.sleep(2)
        starting_at = time.monotonic()
        private_postgres.start()  # returns once it accepts connections
        up_at = time.monotonic()
        time.sleep(4)

    statuses = {call.status for call in stream.calls}
    assert statuses <= {200, 201, 503}, statuses
    outage = [c for c in stream.calls if down_at + 0.5 < c.at < starting_at]
    assert outage and all(c.status == 503 and c.retry_after for c in outage)
    assert ready_down.status_code == 503
    assert not ready_down.json()["checks"]["database"]["ok"]
    assert ready_down.json()["checks"]["broker"]["ok"]
    # Recovered within a second of the restart, by the same processes.
    after = [c for c in stream.calls if c.at > up_at + 1]
    assert after and all(c.status in {200, 201} for c in after), [c for c in after if c.status >= 300]
    assert web.proc.poll() is None and all(p.poll() is None for p in fresh_workers.procs)

    # Nothing the clients were told was saved is missing, and nothing is half-written.
    with psycopg.connect(private_postgres.url.replace("postgres://", "postgresql://")) as db:
        rows = db.execute(
            "SELECT m.name, count(r.id) FROM registry_registeredmodel m "
            "LEFT JOIN registry_modelrole r ON r.model_id = m.id AND r.role = 'owner' GROUP BY m.name"
        ).fetchall()
    owners = dict(rows)
    created = {c.name for c in stream.calls if c.kind == "create" and c.status == 201}
    assert created and created <= set(owners)
    assert all(count == 1 for count in owners.values()), owners

    # The worker that lived through the restart validates a push made afterwards.
    with httpx.Client(base_url=web.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
        assert http.post("/api/v1/models/", json={"name": "after"}).status_code == 201
        with builders.tiny_onnx_model(tmp_path).open("rb") as fh:
            pushed = http.post(
                "/api/v1/models/after/versions/", files={"artifact": fh}, data={"metadata": "{}"}
            )
        assert pushed.status_code == 201, pushed.text
        deadline = time.monotonic() + 120
        while (status := http.get("/api/v1/models/after/versions/1/").json()["status"]) in {
            "registered",
            "validating",
        }:
            assert time.monotonic() < deadline, status
            time.sleep(0.3)
    assert status == "awaiting_approval"
