"""Processes the fault and load tests may stop and start at will: a private Redis, a private PostgreSQL cluster
and a gunicorn web process, each on a free port of its own, so that breaking them touches nothing else
(the session's database and broker stay up for every other test)."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port, wait_port


class PrivateRedis:
    """A redis-server with no persistence: stopping it loses every queued message, the worst case."""

    def __init__(self, logdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.logdir = logdir
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = (self.logdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        wait_port(self.port)

    def kill(self) -> None:
        """SIGKILL: the queues, the unacknowledged messages and the connections all vanish at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        pytest.skip("no PostgreSQL server binaries under /usr/lib/postgresql")  # pragma: no cover
    return Path(found[-1]).parent


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (initdb) that a test may stop and start again."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        self.port = free_port()
        # Outside pytest's 0700 temp tree: the server runs as the postgres user when the tests run as root.
        self.datadir = Path(tempfile.mkdtemp(prefix="modelgate-faults-pg-"))
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/modelgate"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if os.geteuid() == 0:
            shutil.chown(self.datadir, "postgres", "postgres")

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run(
            str(self.bin / "initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )
        self.start()
        self._run(
            str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "modelgate"
        )

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.datadir / "server.log"),
            "-o", options, "-w", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)


class Web:
    """``gunicorn config.wsgi`` as in production: the test reaches it over HTTP only."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        log = (logdir / "web.log").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{self.port}",
                "--workers", "2", "--threads", "4", "--timeout", "120",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )  # fmt: skip
        self.log_path = logdir / "web.log"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"gunicorn not up: {self.log_path.read_text()[-3000:]}")

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


@pytest.fixture
def private_redis(tmp_path) -> Iterator[PrivateRedis]:
    redis = PrivateRedis(tmp_path)
    redis.start()
    yield redis
    redis.kill()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    postgres = PrivatePostgres()
    postgres.init()
    yield postgres
    postgres.destroy()


@pytest.fixture
def web_processes(tmp_path) -> Iterator[list[Web]]:
    """Web processes a test starts with ``Web(env, tmp_path)``; stopped at the end whatever happens."""
    started: list[Web] = []
    yield started
    for web in started:
        web.stop()
