"""A small closed-loop load generator: N client threads, one keep-alive HTTP connection each.

``http.client`` is used directly because it is the cheapest Python client there is: on a 2-core machine
the load generator shares the CPU with the server under test and PostgreSQL, so every microsecond the
client spends is taken from the server. Each thread sends its next request as soon as the previous
answer is read (closed loop), so N is the number of requests in flight.

A phase is bounded either by a request count or by a duration (with an unmeasured warm-up before it).
Alongside the latencies it records the CPU time spent, over the measured window, by the server's process
tree, by PostgreSQL and by the load generator itself, so the cost per request can be split three ways.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, http.client.BadStatusLine)


class Client:
    """One keep-alive connection; reconnects when the server closed it (gunicorn's sync workers do)."""

    def __init__(self, port: int, headers: dict[str, str]) -> None:
        self.port = port
        self.headers = headers
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.state: dict[str, Any] = {}
        self.bytes_in = 0

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=self.headers)
                resp = self.conn.getresponse()
                payload = resp.read()
                self.bytes_in += len(payload)
                return resp.status, payload
            except RETRYABLE:
                # A keep-alive connection the server had already closed: one fresh connection, once.
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


# An operation runs one request on a client and says whether it succeeded; ``i`` numbers the request
# within a count-bounded phase (None in a duration-bounded one).
Operation = Callable[[Client, "int | None"], bool]


def _cpu_by_pid(processes: list[psutil.Process]) -> dict[int, float]:
    """CPU seconds (user + system) per process; processes that vanish meanwhile are left out."""
    found: dict[int, float] = {}
    for p in processes:
        try:
            t = p.cpu_times()
            found[p.pid] = t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def _delta(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU used between two snapshots by the processes alive at the second one (a process that exited in
    between is not counted, rather than counted negative; a new one counts from its start)."""
    return sum(max(0.0, cpu - before.get(pid, 0.0)) for pid, cpu in after.items())


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _postgres() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["name"]):
        if p.info["name"] and p.info["name"].startswith("postgres"):
            found.append(p)
    return found


_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (everything but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / _TICK


@dataclass
class _CpuSnapshot:
    server: dict[int, float]
    postgres: dict[int, float]
    client: float
    machine: float
    at: float

    @classmethod
    def take(cls, server_pid: int) -> _CpuSnapshot:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            _cpu_by_pid(_tree(server_pid)),
            _cpu_by_pid(_postgres()),
            usage.ru_utime + usage.ru_stime,
            machine_busy_seconds(),
            time.perf_counter(),
        )


@dataclass
class PhaseResult:
    name: str
    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(repr=False)
    cpu_ms_per_request: dict[str, float]
    bytes_per_response: float
    other_load: float  # cores kept busy during the window by processes outside the benchmark
    first_error: str = ""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "seconds": round(self.seconds, 2),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.pct(50), 2),
            "p90_ms": round(self.pct(90), 2),
            "p99_ms": round(self.pct(99), 2),
            "max_ms": round(max(self.latencies_ms, default=float("nan")), 2),
            "cpu_ms_per_request": {k: round(v, 2) for k, v in self.cpu_ms_per_request.items()},
            "bytes_per_response": round(self.bytes_per_response),
            "other_load_cores": round(self.other_load, 2),
            "first_error": self.first_error,
        }


def run_phase(
    name: str,
    op: Operation,
    *,
    port: int,
    headers: dict[str, str],
    server_pid: int,
    clients: int,
    count: int | None = None,
    duration: float | None = None,
    warmup: float = 0.0,
    timeout: float = 300.0,
) -> PhaseResult:
    """Run ``op`` from ``clients`` threads, either ``count`` times in all or for ``duration`` seconds.

    ``timeout`` bounds a count phase too: whatever happens, no thread starts a request after it.
    """
    if (count is None) == (duration is None):
        raise ValueError("give exactly one of count and duration")
    lock = threading.Lock()
    counter = itertools.count()
    samples: list[tuple[float, float, bool]] = []  # (start, latency seconds, ok)
    errors: list[str] = []
    bytes_in = [0]
    start_at = time.perf_counter() + 0.2  # all threads start together
    measure_from = start_at + warmup if duration is not None else start_at
    measure_to = measure_from + duration if duration is not None else start_at + timeout
    snapshots: dict[str, _CpuSnapshot] = {}

    def snapshot_at(label: str, when: float) -> None:
        delay = when - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        snapshots[label] = _CpuSnapshot.take(server_pid)

    def worker() -> None:
        client = Client(port, headers)
        local: list[tuple[float, float, bool]] = []
        delay = start_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        try:
            while True:
                i = None
                if count is not None:
                    with lock:
                        i = next(counter)
                    if i >= count:
                        break
                t0 = time.perf_counter()
                if t0 >= measure_to:
                    break
                try:
                    ok = op(client, i)
                except Exception as exc:  # a refused connection or a timeout is an error, not a crash
                    ok = False
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                local.append((t0, time.perf_counter() - t0, ok))
                if not ok and "error" in client.state:
                    with lock:
                        errors.append(client.state.pop("error"))
        finally:
            client.close()
            with lock:
                samples.extend(local)
                bytes_in[0] += client.bytes_in

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    timers = []
    if duration is not None:
        timers = [
            threading.Thread(target=snapshot_at, args=("from", measure_from), daemon=True),
            threading.Thread(target=snapshot_at, args=("to", measure_to), daemon=True),
        ]
    else:
        snapshot_at("from", start_at)
    for t in threads + timers:
        t.start()
    hard_stop = time.monotonic() + (warmup + (duration or timeout) + 90)
    for t in threads + timers:
        t.join(max(0.1, hard_stop - time.monotonic()))
    ended = time.perf_counter()
    if any(t.is_alive() for t in threads):
        raise TimeoutError(f"{name}: client threads still running after the phase's hard limit")
    if count is not None:
        snapshots["to"] = _CpuSnapshot.take(server_pid)
        window = samples
        seconds = max(t0 + lat for t0, lat, _ in window) - start_at if window else ended - start_at
    else:
        window = [s for s in samples if s[0] >= measure_from and s[0] + s[1] <= measure_to]
        seconds = measure_to - measure_from
    n = len(window)
    a, b = snapshots["from"], snapshots["to"]
    used = {
        "server": _delta(a.server, b.server),
        "postgres": _delta(a.postgres, b.postgres),
        "client": b.client - a.client,
    }
    cpu = {k: v * 1000 / n if n else 0.0 for k, v in used.items()}
    ours = sum(used.values())
    span = b.at - a.at
    other = max(0.0, (b.machine - a.machine) - ours) / span if span > 0 else 0.0
    return PhaseResult(
        name=name,
        requests=sum(1 for s in window if s[2]),
        errors=sum(1 for s in window if not s[2]),
        seconds=seconds,
        latencies_ms=[lat * 1000 for _, lat, ok in window if ok],
        cpu_ms_per_request=cpu,
        bytes_per_response=bytes_in[0] / max(1, len(samples)),
        other_load=other,
        first_error=errors[0][:300] if errors else "",
    )
