"""The deployment of docker-compose.yml, run on this machine with two of each worker.

The worker and beat command lines are read from docker-compose.yml itself, so the topology tested is the
one shipped. Each worker service runs twice, as on two hosts (``-n gates@host-a``, ``gates@host-b``),
beside one beat and a gunicorn, all on one Redis. Versions pushed at once go through gates, exports,
sign-off and shadowing; both workers of a queue take part, and every gate result and export exists once.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest
import yaml

from config.celery import QUEUES
from registry.models import Event, Export, GateResult, ModelVersion, ShadowRun
from tests import builders
from tests.conftest import ROOT, free_port, wait_for_status, wait_port
from tests.faults.test_duplicate_delivery import wait_for_export
from tests.lifecycle.test_pipeline import set_policy
from tests.processes import Web
from tests.serving.test_shadow import rows

pytestmark = pytest.mark.workers

HOSTS = ("host-a", "host-b")
CANDIDATES = 4


def compose_commands() -> dict[str, list[str]]:
    """Each Celery service's command from docker-compose.yml, with ``${VAR:-default}`` at its default."""
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    commands = {}
    for name, service in services.items():
        command = service.get("command")
        if isinstance(command, str):
            command = shlex.split(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", command))
        if command and command[0] == "celery":
            commands[name] = command
    return commands


def queues_of(command: list[str]) -> set[str]:
    return set(command[command.index("-Q") + 1].split(",")) if "-Q" in command else set()


@contextlib.contextmanager
def flower(env: dict[str, str], tmp_path) -> Iterator[str]:
    """Flower, as docs/operations.md runs it, on a free port; its API without a login for the test."""
    port = free_port()
    log = (tmp_path / "flower.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "flower", f"--port={port}", "--address=127.0.0.1"],
        cwd=ROOT,
        env={**env, "FLOWER_UNAUTHENTICATED_API": "true"},
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        wait_port(port, timeout=60)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)


def succeeded(log: str, task: str) -> int:
    return len(re.findall(rf"Task {re.escape(task)}\[[^\]]+\] succeeded", log))


def test_the_compose_topology_with_two_workers_per_queue_does_each_piece_of_work_once(
    fresh_workers, private_redis, web_processes, worker_env, fraud_model, owner, publisher, approver, tmp_path
):
    commands = compose_commands()
    workers = {name: cmd for name, cmd in commands.items() if cmd[3] == "worker"}
    assert set().union(*map(queues_of, workers.values())) == set(QUEUES)  # every queue has a consumer
    assert [name for name, cmd in commands.items() if cmd[3] == "beat"] == ["beat"]  # exactly one

    env = {
        **worker_env,
        "CELERY_BROKER_URL": private_redis.url,
        "MODELGATE_SHADOW_SECONDS": "2",
        "MODELGATE_PRELOAD_RUNTIMES": "true",  # as deployed
    }
    started: dict[tuple[str, str], subprocess.Popen] = {}
    for name, command in workers.items():
        for host in HOSTS:
            argv = [part.replace("%h", host) for part in command]
            started[name, host] = fresh_workers.start(argv=argv, extra_env=env)
    fresh_workers.start(argv=commands["beat"], extra_env=env)
    web = Web(env, tmp_path)
    web_processes.append(web)
    with flower(env, tmp_path) as url:  # the operator's view: every worker of every host answers
        workers_seen = httpx.get(f"{url}/api/workers", params={"refresh": "1"}, timeout=60).json()
    assert set(workers_seen) == {
        f"{cmd[cmd.index('-n') + 1].split('@')[0]}@{host}" for cmd in workers.values() for host in HOSTS
    }
    set_policy(
        owner,
        {
            "exports": {"formats": ["onnx"], "required": ["onnx"]},
            # The verdict is not what this test is about: any agreement and latency pass (a Keras candidate
            # whose ONNX export is not done yet runs in TensorFlow, 50 times slower than the ONNX champion).
            "shadow": {
                "sample_rate": 1.0,
                "min_requests": 20,
                "min_agreement": 0.0,
                "max_p95_latency_ratio": 1000,
            },
        },
    )

    # A champion first (its ONNX export will serve), then candidates pushed all at once.
    with web.client(publisher.token) as http, builders.tiny_keras_classifier(tmp_path / "0").open("rb") as fh:
        pushed = http.post("/api/v1/models/fraud/versions/", files={"artifact": fh}, data={"metadata": "{}"})
        assert pushed.status_code == 201, pushed.text
    wait_for_export(wait_for_status("fraud", 1, timeout=240), timeout=240)
    with web.client(approver.token) as http:
        assert http.post("/api/v1/models/fraud/versions/1/approve/", json={}).status_code == 201
    wait_for_status("fraud", 1, {"production"})

    artifacts = [builders.tiny_keras_classifier(tmp_path / str(n), seed=n) for n in range(1, CANDIDATES + 1)]

    def push(path) -> None:
        with web.client(publisher.token) as http, path.open("rb") as fh:
            response = http.post(
                "/api/v1/models/fraud/versions/", files={"artifact": fh}, data={"metadata": "{}"}
            )
            assert response.status_code == 201, response.text

    threads = [threading.Thread(target=push, args=(path,)) for path in artifacts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for number in range(2, CANDIDATES + 2):
        wait_for_status("fraud", number, {"shadowing", "awaiting_approval", "rejected"}, timeout=300)
    with web.client(publisher.token) as http:  # live traffic for the shadows, answered by the champion
        for row in rows(25, seed=5):
            assert (
                http.post("/api/v1/models/fraud/predict/", json={"inputs": [row.tolist()]}).status_code == 200
            )

    for number in range(1, CANDIDATES + 2):
        version = wait_for_status(
            "fraud", number, {"awaiting_approval", "rejected", "production"}, timeout=300
        )
        assert version.status in {"awaiting_approval", "production"}, version.status_reason
        assert wait_for_export(version, timeout=240).status == "passed"
        gates = list(GateResult.objects.filter(version=version).values_list("attempt", "gate"))
        assert sorted(gates) == [(1, "loads"), (1, "signature_compatible")]
        assert Export.objects.filter(version=version).count() == 1
        for kind in ("gates.completed", "export.completed"):
            assert Event.objects.filter(version=version, kind=kind).count() == 1, (number, kind)
        if number > 1:
            assert list(ShadowRun.objects.filter(candidate=version).values_list("status", flat=True)) == [
                "passed"
            ]
    assert ModelVersion.objects.filter(model=fraud_model).count() == CANDIDATES + 1

    # The work was shared: each of the two gates and exports workers did some of it.
    logs = {key: fresh_workers.log(proc) for key, proc in started.items()}
    for service, task in (
        ("worker-gates", "workers.tasks.run_gates"),
        ("worker-exports", "workers.exports.run_export"),
    ):
        done = {host: succeeded(logs[service, host], task) for host in HOSTS}
        assert all(done.values()) and sum(done.values()) >= CANDIDATES + 1, (service, done)
    shadow = sum(
        succeeded(logs["worker-shadow", host], "workers.shadow.evaluate_model_shadows") for host in HOSTS
    )
    assert shadow >= 1
    assert all(proc.poll() is None for proc in fresh_workers.procs), "a worker died"
    # The workers that open models import TensorFlow once, before forking a child per task; the others not.
    for (service, _), log in logs.items():
        assert ("preloaded tensorflow" in log) == (service != "worker-pipeline"), service
