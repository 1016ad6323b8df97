"""Small local HTTP servers the tests start in place of the outside world: Slack, webhook receivers.

They are real HTTP servers, reached by the real clients (slack_sdk, requests) over loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def record(self, call: dict[str, Any]) -> None:
        with self.lock:
            self.calls.append(call)

    def reset(self) -> None:
        with self.lock:
            self.calls.clear()

    def wait_for(self, predicate, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [c for c in self.calls if predicate(c)]
            if found:
                return found
            time.sleep(0.1)
        raise AssertionError(f"no matching call after {timeout}s; calls: {[c['path'] for c in self.calls]}")

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def _body(handler: BaseHTTPRequestHandler) -> tuple[bytes, dict[str, Any]]:
    raw = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
    kind = handler.headers.get("Content-Type", "")
    if "json" in kind:
        return raw, json.loads(raw or b"{}")
    parsed = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
    for key in ("blocks", "attachments"):
        if isinstance(parsed.get(key), str):
            parsed[key] = json.loads(parsed[key])
    return raw, parsed


class SlackHandler(BaseHTTPRequestHandler):
    """Answers chat.postMessage and chat.update like Slack, and accepts response_url posts."""

    server: Recorder

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        _raw, data = _body(self)
        path = self.path.split("?")[0]
        self.server.record({"path": path, "data": data, "auth": self.headers.get("Authorization", "")})
        if path.endswith("/chat.postMessage"):
            with self.server.lock:
                ts = f"{1_700_000_000 + len(self.server.calls)}.000100"
            reply = {
                "ok": True,
                "channel": data.get("channel"),
                "ts": ts,
                "message": {"text": data.get("text", "")},
            }
        elif path.endswith("/chat.update"):
            reply = {
                "ok": True,
                "channel": data.get("channel"),
                "ts": data.get("ts"),
                "text": data.get("text", ""),
            }
        else:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"ok")
            return
        body = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class WebhookHandler(BaseHTTPRequestHandler):
    """Records deliveries; fails the first ``server.fail_first`` of them with a 500."""

    server: Recorder

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            failing = getattr(self.server, "fail_first", 0) > 0
            if failing:
                self.server.fail_first -= 1
        self.server.record(
            {
                "path": self.path,
                "body": raw,
                "headers": dict(self.headers),
                "answered": 500 if failing else 200,
            }
        )
        self.send_response(500 if failing else 200)
        self.end_headers()


def slack_signature(secret: str, timestamp: str, body: str) -> str:
    """How Slack signs a request: v0=HMAC-SHA256(secret, "v0:{timestamp}:{body}")."""
    return "v0=" + hmac.new(secret.encode(), f"v0:{timestamp}:{body}".encode(), hashlib.sha256).hexdigest()
