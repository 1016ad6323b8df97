"""Secrets never reach a log line or an API answer.

Each secret gets a distinctive value; the test then walks the paths most likely to leak one: the
webhook endpoints (a hook's secret is shown once, at creation, by design), error answers (400, 404,
500), /readyz while its dependencies fail, the schema, a failing webhook delivery and failing Slack
calls. Every response body and every log record (root logger at DEBUG) is searched for every secret.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.db import OperationalError
from django.test import Client

from lifecycle import slack, webhooks
from registry import health
from registry.models import ModelVersion, WebhookDelivery
from tests import builders
from tests.conftest import free_port, push

pytestmark = pytest.mark.django_db

SECRETS = {
    "SECRET_KEY": "django-secret-k3y-MARKER-1f0c",
    "SLACK_BOT_TOKEN": "xoxb-bot-t0ken-MARKER-77aa",
    "SLACK_SIGNING_SECRET": "signing-s3cret-MARKER-9be1",
    "AWS_SECRET_ACCESS_KEY": "aws-s3cret-acc3ss-MARKER-42d5",
    "DATABASE_PASSWORD": "db-passw0rd-MARKER-c3c3",
    "BROKER_PASSWORD": "br0ker-passw0rd-MARKER-5e5e",
}


class Seen:
    """Every response body the test received, to search once at the end."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, str]] = []

    def add(self, label: str, response) -> dict | str:
        text = b"".join(response.streaming_content) if response.streaming else response.content
        self.bodies.append((label, text.decode(errors="replace")))
        try:
            return json.loads(text)
        except ValueError:
            return text.decode(errors="replace")


@pytest.fixture
def seen() -> Seen:
    return Seen()


@pytest.fixture
def secrets_set(settings, monkeypatch) -> None:
    settings.SECRET_KEY = SECRETS["SECRET_KEY"]
    settings.SLACK_BOT_TOKEN = SECRETS["SLACK_BOT_TOKEN"]
    settings.SLACK_SIGNING_SECRET = SECRETS["SLACK_SIGNING_SECRET"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAMARKER")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRETS["AWS_SECRET_ACCESS_KEY"])
    # The live connection is already open: a new password only matters to what reads the setting.
    monkeypatch.setitem(settings.DATABASES["default"], "PASSWORD", SECRETS["DATABASE_PASSWORD"])


def assert_no_secret(seen: Seen, caplog: pytest.LogCaptureFixture, *, also: dict[str, str]) -> None:
    secrets = {**SECRETS, **also}
    logs = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''} {getattr(r, 'request', '')}" for r in caplog.records
    )
    for name, value in secrets.items():
        assert value not in logs, f"{name} is in the logs"
        for label, body in seen.bodies:
            assert value not in body, f"{name} is in the answer to {label}"
    assert seen.bodies and caplog.records  # the test did look at something


class _SlackFailing(BaseHTTPRequestHandler):
    """Slack's Web API refusing every call, as it does for a revoked token."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"ok": False, "error": "invalid_auth"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def slack_refusing():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlackFailing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/"
    server.shutdown()
    server.server_close()


def test_no_secret_reaches_a_log_or_an_answer(
    secrets_set,
    seen,
    caplog,
    settings,
    monkeypatch,
    owner,
    publisher,
    approver,
    fraud_model,
    tmp_path,
    slack_refusing,
):
    caplog.set_level(logging.DEBUG)

    # 1. Webhooks: the secret is in the creation answer only (docs/webhooks.md), then never again.
    created = owner.client.post(
        "/api/v1/models/fraud/webhooks/", {"url": f"http://127.0.0.1:{free_port()}/hook"}, format="json"
    )
    assert created.status_code == 201, created.content
    hook_secret = created.json()["secret"]
    seen.add("GET webhooks", owner.client.get("/api/v1/models/fraud/webhooks/"))
    ping = owner.client.post(f"/api/v1/models/fraud/webhooks/{created.json()['id']}/ping/")
    seen.add("POST ping", ping)

    page = Client()
    page.force_login(owner.user)
    shown_once = page.post("/models/fraud/webhooks/", {"url": "https://example.com/other", "events": []})
    assert shown_once.status_code == 302
    first_view = page.get("/models/fraud/")
    ui_secret = fraud_model.webhooks.get(url="https://example.com/other").secret
    assert ui_secret in first_view.content.decode()  # shown once, by design
    seen.add("the model page, second view", page.get("/models/fraud/"))

    # 2. A failing delivery (nothing listens on the hook's port): its attempts and its logs.
    delivery = WebhookDelivery.objects.get(delivery_id=ping.json()["delivery"])
    webhooks.webhook_deliver(delivery.pk)
    delivery.refresh_from_db()
    assert delivery.attempts and delivery.attempts[0]["error"]
    seen.bodies.append(("the delivery's attempts", json.dumps(delivery.attempts)))
    seen.add("the model page with the failed delivery", page.get("/models/fraud/"))

    # 3. Error answers: 400, 404, 405, a refused Slack signature, and a 500.
    seen.add("400", owner.client.put("/api/v1/models/fraud/policy/", b"{", content_type="application/json"))
    seen.add("404", owner.client.get("/api/v1/nothing-here/"))
    seen.add("404 page", page.get("/nothing-here/"))
    seen.add("405", owner.client.delete("/api/v1/models/"))
    seen.add("401 slack", Client().post("/slack/interactions/", {"payload": "{}"}))
    from registry.api import views

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(views.ModelListView, "get", explode)
    crashing = Client(raise_request_exception=False, HTTP_AUTHORIZATION=f"Bearer {owner.token}")
    crashed = crashing.get("/api/v1/models/")
    assert crashed.status_code == 500
    seen.add("500", crashed)
    seen.add(
        "500 page", Client(raise_request_exception=False).get("/api/v1/models/", HTTP_ACCEPT="text/html")
    )

    # 4. /readyz while every dependency fails, with errors that carry credentials in URLs.
    settings.AWS_ENDPOINT_URL = f"http://127.0.0.1:{free_port()}"
    settings.ARTIFACT_STORE = "s3://models/registry"
    broker_url = f"redis://:{SECRETS['BROKER_PASSWORD']}@127.0.0.1:{free_port()}/0"

    def database_down() -> None:
        # What a driver says when the server refuses: the DSN, password included, in the message.
        raise OperationalError(
            f"connection to postgres://modelgate:{SECRETS['DATABASE_PASSWORD']}@db:5432/modelgate failed"
        )

    def broker_down() -> None:
        raise ConnectionError(f"Error 111 connecting to {broker_url}. Connection refused.")

    monkeypatch.setattr(health, "_database", database_down)
    monkeypatch.setattr(health, "_broker", broker_down)
    from registry.storage import _store

    _store.cache_clear()
    ready = seen.add("readyz", Client().get("/readyz"))
    assert ready["status"] == "unavailable"
    assert all(not check["ok"] for check in ready["checks"].values()), ready
    assert "***@" in ready["checks"]["database"]["error"]

    # 5. A push while the store is unreachable (503), and the schema.
    seen.add("push, store down", push(publisher.client, "fraud", builders.tiny_onnx_model(tmp_path)))
    assert not ModelVersion.objects.exists()
    seen.add("schema", Client().get("/api/v1/schema/"))

    # 6. Slack failing: refused by the API (a revoked token), then unreachable.
    settings.SLACK_API_URL = slack_refusing
    assert slack.notify("C0123456", "hello") is False
    settings.SLACK_API_URL = f"http://127.0.0.1:{free_port()}/api/"
    assert slack.notify("C0123456", "hello") is False

    logged = {record.name for record in caplog.records}
    assert {"lifecycle.slack", "django.request"} <= logged, logged  # the failures were logged
    assert any(name.startswith("slack_sdk") for name in logged), logged  # with slack_sdk's DEBUG lines
    assert_no_secret(seen, caplog, also={"the webhook's secret": hook_secret, "the UI hook's": ui_secret})


def test_readyz_redacts_credentials_in_urls_and_configured_secrets(settings) -> None:
    settings.SLACK_BOT_TOKEN = SECRETS["SLACK_BOT_TOKEN"]
    text = health.redact(
        f"could not reach redis://user:{SECRETS['BROKER_PASSWORD']}@cache:6379/0 with {SECRETS['SLACK_BOT_TOKEN']}"
    )
    assert text == "could not reach redis://***@cache:6379/0 with ***"
