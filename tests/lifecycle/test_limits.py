"""Model-opening tasks run under memory and CPU-time limits: a model that allocates without bound is
stopped and its version rejected, and the worker pool goes on with the next model."""

from __future__ import annotations

import multiprocessing
import resource
import signal
import time

import pytest

from registry.models import GateResult
from tests import builders
from tests.conftest import push, wait_for_status
from tests.lifecycle.test_pipeline import set_policy
from workers.limits import model_limits


@pytest.mark.workers
def test_a_model_that_allocates_without_bound_is_rejected_and_the_pool_goes_on(
    fresh_workers, fraud_model, owner, publisher, tmp_path
):
    # 1 GiB for the task's heap; the model wants 3 GiB for each prediction (this machine has them).
    worker = fresh_workers.start(concurrency=1, extra_env={"MODELGATE_TASK_MEMORY_MB": "1024"})
    set_policy(owner, {"gates": [{"kind": "loads"}, {"kind": "latency", "p95_ms": 60000, "runs": 5}]})

    push(publisher.client, "fraud", builders.runaway_onnx_model(tmp_path / "bad"))
    rejected = wait_for_status("fraud", 1, {"awaiting_approval", "rejected"}, timeout=120)

    assert rejected.status == "rejected"
    assert "latency: the model fails to run" in rejected.status_reason
    assert "allocate" in rejected.status_reason, rejected.status_reason
    latency = GateResult.objects.get(version=rejected, gate="latency")
    assert latency.passed is False and "allocate" in latency.details["error"]

    # The same worker takes the next model.
    push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path / "good"))
    assert (
        wait_for_status("fraud", 2, {"awaiting_approval", "rejected"}, timeout=60).status
        == "awaiting_approval"
    )
    assert worker.poll() is None


def _busy(seconds: float) -> None:
    deadline = time.process_time() + seconds
    while time.process_time() < deadline:
        pass


def _spin_inside(cpu_seconds: int, spin: float) -> None:
    with model_limits(memory_mb=0, cpu_seconds=cpu_seconds):
        _busy(spin)


def _spin_after(cpu_seconds: int, spin: float) -> None:
    with model_limits(memory_mb=0, cpu_seconds=cpu_seconds):
        _busy(0.1)
    _busy(spin)  # the limit was lifted with the block


def _allocate(memory_mb: int, inside: bool, out) -> None:
    import numpy as np

    def grab() -> str:
        try:
            np.ones(512 * 1024 * 1024 // 8)  # 512 MiB, touched
            return "ok"
        except MemoryError:
            return "MemoryError"

    # The limit counts the whole process: leave the heap this fork already has (a full test run's is
    # large) plus ``memory_mb`` of headroom.
    status = open("/proc/self/status").read()  # noqa: SIM115
    data_mb = int(status.split("VmData:")[1].split()[0]) // 1024
    if inside:
        with model_limits(memory_mb=data_mb + memory_mb, cpu_seconds=0):
            out.put(grab())
    out.put(grab())
    out.put(resource.getrlimit(resource.RLIMIT_DATA)[0] == resource.RLIM_INFINITY)


def run(target, *args) -> int:
    process = multiprocessing.get_context("fork").Process(target=target, args=args)
    process.start()
    process.join(60)
    return process.exitcode


def test_a_task_past_its_cpu_time_is_killed_by_sigxcpu_and_the_limit_ends_with_the_task():
    assert run(_spin_inside, 1, 4.0) == -signal.SIGXCPU
    assert run(_spin_after, 1, 2.5) == 0


def test_the_memory_limit_fails_an_allocation_inside_the_task_and_is_lifted_after_it():
    queue = multiprocessing.get_context("fork").Queue()
    assert run(_allocate, 256, True, queue) == 0
    assert [queue.get(timeout=5) for _ in range(3)] == ["MemoryError", "ok", True]
