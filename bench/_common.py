"""Shared helpers for the benchmarks: servers as child processes, throwaway databases, machine facts.

Everything here is bounded: every wait has a timeout, and every process started is started in its own
session so that :func:`stop` can end it and all its children (gunicorn's or uvicorn's workers) by its
process-group id, never by name.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_VAR = REPO / "var" / "bench"
PROJECT_PYTHON = REPO / ".venv" / "bin" / "python"
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432")
REDIS_BROKER = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/14")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- databases ------------------------------------------------------------------------------------


def _admin_connect():
    import psycopg

    return psycopg.connect(f"{PG_ADMIN_URL}/postgres", autocommit=True, connect_timeout=5)


def db_recreate(name: str) -> str:
    """Drop and create database ``name``; return its URL."""
    with _admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_ADMIN_URL}/{name}"


def db_drop(name: str) -> None:
    with contextlib.suppress(Exception), _admin_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_version() -> str:
    with _admin_connect() as conn:
        return conn.execute("SHOW server_version").fetchone()[0]


# --- processes ------------------------------------------------------------------------------------


def start(cmd: list[str], *, env: dict[str, str], log_path: Path, cwd: Path = REPO) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    out = log_path.open("wb")
    log(f"start: {' '.join(cmd)}  (log: {log_path.relative_to(REPO)})")
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    """SIGTERM the process group the server leads, then SIGKILL what is left after ``timeout``."""
    if proc is None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None and pgid == proc.pid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    else:
        proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        if pgid is not None and pgid == proc.pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(5)
    # Workers may outlive the master by a moment; the group id is still ours to clean up.
    if pgid is not None and pgid == proc.pid:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


@contextlib.contextmanager
def running(
    cmd: list[str], *, env: dict[str, str], log_path: Path, cwd: Path = REPO
) -> Iterator[subprocess.Popen]:
    proc = start(cmd, env=env, log_path=log_path, cwd=cwd)
    try:
        yield proc
    finally:
        stop(proc)


def wait_http(
    port: int, path: str, proc: subprocess.Popen, *, timeout: float = 120.0, log_path: Path | None = None
) -> None:
    """Wait until GET ``path`` answers 200, failing early when the server process dies."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-3000:] if log_path else ""
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready\n{tail}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status == 200:
                return
            last = f"HTTP {resp.status}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.25)
    raise TimeoutError(f"127.0.0.1:{port}{path} not ready after {timeout:.0f}s ({last})")


def run(cmd: list[str], *, env: dict[str, str], timeout: float = 300.0, cwd: Path = REPO) -> str:
    result = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout


# --- Modelgate --------------------------------------------------------------------------------------


def modelgate_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "MODELGATE_"))}
    env.update(
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=REDIS_BROKER,
        DEBUG="false",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        MODELGATE_VAR_DIR=str(BENCH_VAR / "modelgate-var"),
    )
    env.update(extra)
    return env


def modelgate_prepare(env: dict[str, str], cwd: Path = REPO) -> str:
    """Migrate the bench database and return a fresh staff token."""
    run([str(PROJECT_PYTHON), "manage.py", "migrate", "--noinput", "-v", "0"], env=env, timeout=300, cwd=cwd)
    out = run(
        [str(PROJECT_PYTHON), "manage.py", "issue_token", "bench", "--create", "--staff"], env=env, cwd=cwd
    )
    return out.strip().splitlines()[-1].strip()


# --- the machine ------------------------------------------------------------------------------------


def machine_facts() -> dict[str, str]:
    facts: dict[str, str] = {"python": platform.python_version(), "kernel": platform.release()}
    with contextlib.suppress(Exception):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                facts["cpu"] = line.split(":", 1)[1].strip()
    facts["cores"] = str(os.cpu_count())
    with contextlib.suppress(Exception):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                facts["memory"] = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    with contextlib.suppress(Exception):
        facts["postgresql"] = postgres_version()
    with contextlib.suppress(Exception):
        versions = run(
            [
                str(PROJECT_PYTHON),
                "-c",
                "import django, rest_framework, gunicorn; "
                "print(django.get_version(), rest_framework.VERSION, gunicorn.__version__)",
            ],
            env=dict(os.environ),
            timeout=60,
        ).split()
        facts["django"], facts["djangorestframework"], facts["gunicorn"] = versions
    return facts


def write_json(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))
    log(f"results written to {path}")
