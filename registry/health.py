"""Liveness, readiness and Prometheus metrics: what an operator's probes and dashboards read."""

from __future__ import annotations

import time

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


def _check(fn) -> dict:
    started = time.perf_counter()
    try:
        fn()
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
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
