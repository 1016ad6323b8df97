"""Liveness, readiness and Prometheus metrics: what an operator's probes and dashboards read."""

from __future__ import annotations

import os
import re
import time

from django.conf import settings
from django.db import connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from registry.models import ModelVersion, RegisteredModel
from registry.storage import store


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")


def _secrets() -> list[str]:
    database = settings.DATABASES["default"]
    values = [
        settings.SECRET_KEY,
        database.get("PASSWORD") or "",
        settings.SLACK_BOT_TOKEN,
        settings.SLACK_SIGNING_SECRET,
        os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
    ]
    return [value for value in values if len(value) >= 4]


def redact(text: str) -> str:
    """An error message as /readyz may show it: no ``user:password@`` in URLs, no configured secret.

    Drivers put connection strings in their errors (a broker or database URL with its password), and
    /readyz is public; so is whatever a probe logs.
    """
    text = _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)
    for secret in _secrets():
        text = text.replace(secret, "***")
    return text


def _check(fn) -> dict:
    started = time.perf_counter()
    try:
        fn()
    except Exception as exc:
        return {"ok": False, "error": redact(f"{type(exc).__name__}: {exc}")[:300]}
    return {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _broker() -> None:
    from config.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


def _storage() -> None:
    store().exists("readyz-probe")


@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _check(_database), "broker": _check(_broker), "storage": _check(_storage)}
    ready = all(c["ok"] for c in checks.values())
    return JsonResponse(
        {"status": "ready" if ready else "unavailable", "checks": checks}, status=200 if ready else 503
    )


class CatalogCollector:
    """Gauges read from the catalog at scrape time: one grouped query."""

    def collect(self):
        versions = GaugeMetricFamily("modelgate_versions", "Model versions by status", labels=["status"])
        for row in ModelVersion.objects.values("status").annotate(n=Count("id")).order_by():
            versions.add_metric([row["status"]], row["n"])
        yield versions
        yield GaugeMetricFamily(
            "modelgate_models", "Registered models", value=RegisteredModel.objects.count()
        )


@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    registry = CollectorRegistry()
    registry.register(CatalogCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
