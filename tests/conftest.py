"""Shared fixtures: named actors with real tokens, API clients, real Celery workers, a moto S3 server.

The suite runs against PostgreSQL and Redis (``make test`` sets DATABASE_URL and CELERY_BROKER_URL);
the workers are real ``celery worker`` processes on the test database, never eager mode.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient

from registry.auth import token_issue
from registry.models import ModelRole, ModelVersion, RegisteredModel, Role
from registry.storage import _store

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"rejected", "awaiting_approval", "production", "archived", "retired", "shadowing"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        raise pytest.UsageError(
            "the test suite runs on PostgreSQL and Redis: use `make test` (or set DATABASE_URL=postgres://.. "
            "and CELERY_BROKER_URL=redis://...)"
        )


@pytest.fixture(scope="session")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(autouse=True)
def _artifact_store(settings, artifact_dir: Path) -> None:
    """Every test stores artifacts in the session's directory, which the workers share."""
    settings.ARTIFACT_STORE = str(artifact_dir)
    _store.cache_clear()


@pytest.fixture(autouse=True)
def _dataset_cache(settings, tmp_path: Path) -> None:
    """Gates run in the test process decode datasets into a cache of their own, never into var/."""
    settings.MODELGATE_DATASET_CACHE_DIR = str(tmp_path / "dataset-cache")


# --- actors -------------------------------------------------------------------------------------


class Actor:
    """A named user with a real API token and a client that sends it."""

    def __init__(self, user, token: str) -> None:
        self.user, self.token = user, token
        self.client = APIClient()
        self.client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")

    @property
    def username(self) -> str:
        return self.user.username


@pytest.fixture
def make_actor(django_user_model) -> Callable[..., Actor]:
    def make(username: str, *, staff: bool = False) -> Actor:
        user = django_user_model.objects.create_user(
            username=username, password="pw-" + username, is_staff=staff
        )
        _, token = token_issue(user=user, name="tests")
        return Actor(user, token)

    return make


@pytest.fixture
def owner(make_actor) -> Actor:
    return make_actor("olivia")


@pytest.fixture
def publisher(make_actor) -> Actor:
    return make_actor("pablo")


@pytest.fixture
def approver(make_actor) -> Actor:
    return make_actor("alice")


@pytest.fixture
def viewer(make_actor) -> Actor:
    return make_actor("victor")


@pytest.fixture
def outsider(make_actor) -> Actor:
    return make_actor("oscar")


@pytest.fixture
def anonymous() -> APIClient:
    return APIClient()


@pytest.fixture
def fraud_model(owner: Actor, publisher: Actor, approver: Actor, viewer: Actor) -> RegisteredModel:
    """A model with one actor per role (the outsider has none)."""
    response = owner.client.post(
        "/api/v1/models/", {"name": "fraud", "description": "fraud detector"}, format="json"
    )
    assert response.status_code == 201, response.content
    model = RegisteredModel.objects.get(name="fraud")
    for actor, role in ((publisher, Role.PUBLISHER), (approver, Role.APPROVER), (viewer, Role.VIEWER)):
        ModelRole.objects.create(model=model, user=actor.user, role=role)
    return model


# --- pushing ------------------------------------------------------------------------------------


def push(client: APIClient, model: str, path: Path, metadata: dict | None = None, **headers: str):
    import json

    with path.open("rb") as fh:
        return client.post(
            f"/api/v1/models/{model}/versions/",
            {"artifact": fh, "metadata": json.dumps(metadata or {})},
            format="multipart",
            **{f"HTTP_{k.upper().replace('-', '_')}": v for k, v in headers.items()},
        )


def wait_for_status(
    model: str, version: int, statuses: set[str] = TERMINAL, timeout: float = 120
) -> ModelVersion:
    deadline = time.monotonic() + timeout
    while True:
        current = ModelVersion.objects.select_related("model").get(model__name=model, version=version)
        if current.status in statuses:
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"{model} v{version} is still {current.status} after {timeout}s")
        time.sleep(0.2)


# --- real processes -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port} after {timeout}s")


class Workers:
    """Real ``celery worker`` processes on the test database and the Redis broker."""

    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env, self.logdir = env, logdir
        self.procs: list[subprocess.Popen] = []

    def start(
        self,
        *,
        queues: str = "pipeline,gates,exports,shadow,maintenance",
        concurrency: int = 1,
        beat: bool = False,
        extra_env: dict[str, str] | None = None,
        argv: list[str] | None = None,
    ) -> subprocess.Popen:
        """Start a worker; ``argv`` replaces the whole ``celery ...`` command line (a deployment's own)."""
        index = len(self.procs)
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "config",
            "worker",
            "-Q",
            queues,
            "-c",
            str(concurrency),
            "--pool",
            "prefork",
            "-n",
            f"test{index}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "INFO",
        ]
        if beat:
            cmd += ["-B", "-s", str(self.logdir / f"beat-{index}")]
        if argv is not None:
            assert argv[0] == "celery", argv
            cmd = [sys.executable, "-m", *argv]
        log = (self.logdir / f"worker-{index}.log").open("ab")
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        self.procs.append(proc)
        self._wait_ready(index, b"beat: Starting" if cmd[5:6] == ["beat"] else b" ready.")
        return proc

    def log(self, proc: subprocess.Popen) -> str:
        return (self.logdir / f"worker-{self.procs.index(proc)}.log").read_text()

    def _wait_ready(self, index: int, marker: bytes, timeout: float = 90) -> None:
        path = self.logdir / f"worker-{index}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if marker in path.read_bytes():
                return
            if self.procs[index].poll() is not None:
                raise RuntimeError(f"worker exited: {path.read_text()[-3000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready: {path.read_text()[-3000:]}")

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        """Kill the worker's whole process group (the main process and its pool children)."""
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()


SLACK_SIGNING_SECRET = "test-signing-secret"
SLACK_BOT_TOKEN = "xoxb-test-token"


@pytest.fixture(scope="session")
def slack_server() -> Iterator:
    """A local stand-in for Slack's Web API, reached by the real slack_sdk client."""
    from tests.standins import Recorder, SlackHandler

    server = Recorder(SlackHandler)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _slack_settings(settings, slack_server) -> None:
    settings.SLACK_BOT_TOKEN = SLACK_BOT_TOKEN
    settings.SLACK_SIGNING_SECRET = SLACK_SIGNING_SECRET
    settings.SLACK_API_URL = f"{slack_server.url}/api/"
    slack_server.reset()


@pytest.fixture(scope="session")
def worker_env(
    django_db_setup, django_db_blocker, artifact_dir: Path, tmp_path_factory, slack_server
) -> dict[str, str]:
    with django_db_blocker.unblock():
        db = connection.settings_dict
    url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "ARTIFACT_STORE": str(artifact_dir),
        "MODELGATE_VAR_DIR": str(tmp_path_factory.mktemp("worker-var")),
        "PYTHONUNBUFFERED": "1",
        "SLACK_BOT_TOKEN": SLACK_BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SLACK_SIGNING_SECRET,
        "SLACK_API_URL": f"{slack_server.url}/api/",
        "MODELGATE_WEBHOOK_BACKOFF_SECONDS": "0.5",
        # Most tests start workers that consume every queue and never fork per task: importing TensorFlow
        # up front would only slow each start. tests/load/test_topology.py runs it as deployed.
        "MODELGATE_PRELOAD_RUNTIMES": "false",
    }
    return env


_shared: dict[str, Workers] = {}


@pytest.fixture(scope="session", autouse=True)
def _stop_shared_workers() -> Iterator[None]:
    yield
    for workers in _shared.values():
        workers.stop_all()


@pytest.fixture
def celery_workers(worker_env, tmp_path_factory, transactional_db) -> Workers:
    """Real workers shared by the tests that need them (started on first use); committed data only."""
    workers = _shared.get("session")
    if workers is None or not workers.procs:
        import redis

        redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
        workers = _shared["session"] = Workers(worker_env, tmp_path_factory.mktemp("worker-logs"))
        workers.start(concurrency=2)
    return workers


@pytest.fixture
def fresh_workers(worker_env, tmp_path, transactional_db) -> Iterator[Workers]:
    """Workers of this test alone, for tests that kill or reconfigure them; the shared ones are stopped
    first so that no other process takes this test's tasks."""
    import redis

    if "session" in _shared:
        _shared["session"].stop_all()
    redis.Redis.from_url(settings.CELERY_BROKER_URL).flushdb()
    workers = Workers(worker_env, tmp_path)
    yield workers
    workers.stop_all()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """A real S3 HTTP server (moto in server mode) on a free local port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


def _flush_with_retry() -> None:
    """Retry the between-tests TRUNCATE when it deadlocks with a worker still finishing a task of the
    previous test (the shared workers keep running across tests; PostgreSQL picks the flush as victim)."""
    from django.db import OperationalError
    from django.test import testcases

    original = testcases.TransactionTestCase._fixture_teardown

    def teardown(self) -> None:
        for attempt in range(5):
            try:
                return original(self)
            except Exception as exc:  # CommandError wraps the deadlock
                if attempt == 4 or not isinstance(exc.__cause__, OperationalError):
                    raise
                time.sleep(0.5 * (attempt + 1))
        return None

    testcases.TransactionTestCase._fixture_teardown = teardown


_flush_with_retry()
