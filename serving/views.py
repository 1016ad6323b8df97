"""Serving endpoints: the champion's predictions, and the traffic pool that shadows replay.

``predict`` is the hot path: one query finds the champion (and the caller's right to read the model),
the runtime comes from the per-process cache, and capture is a list append; the writes happen in the
capture buffer's thread. Everything else here is a thin view over ``lifecycle.traffic``.
"""

from __future__ import annotations

import json
import random
import time
import uuid

import orjson
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.exceptions import UnsupportedMediaType
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from lifecycle import runtimes, serving, traffic
from registry.api import parsers
from registry.api.parsers import JSONParser
from registry.api.views import model_for
from registry.errors import NotFound, ServiceError
from registry.models import Export, ModelRole, ModelVersion, RegisteredModel, TrafficRecord
from serving.capture import buffer

cache = serving.RuntimeCache(size=settings.MODELGATE_SERVING_CACHE_SIZE)


class InvalidInput(ServiceError):
    code = "invalid_input"


class ChampionUnavailable(ServiceError):
    status = 503
    code = "champion_unavailable"


def _champion_sql() -> str:
    v, m = ModelVersion._meta.db_table, RegisteredModel._meta.db_table
    e, r = Export._meta.db_table, ModelRole._meta.db_table
    return f"""
        SELECT v.id, v.version, v.model_id, v.format, v.artifact_key, m.policy,
            (SELECT e.artifact_key FROM {e} e
             WHERE e.version_id = v.id AND e.format = 'onnx' AND e.status = 'passed' LIMIT 1),
            EXISTS (SELECT 1 FROM {r} r WHERE r.model_id = v.model_id AND r.user_id = %s)
        FROM {v} v JOIN {m} m ON m.id = v.model_id
        WHERE m.name = %s AND v.status = 'production'
    """


CHAMPION_SQL = _champion_sql()
CHAMPION_FIELDS = ("id", "version", "model_id", "format", "artifact_key", "policy", "onnx_key", "has_role")


def _champion_fetch(user_id: int, name: str) -> tuple | None:
    with connection.cursor() as cursor:
        cursor.execute(CHAMPION_SQL, [user_id, name])
        return cursor.fetchone()


def _champion_row(name: str, user) -> dict | None:
    """The serving version of a model, its policy, its passed ONNX export, and whether ``user`` holds a
    role on the model: one query, written out because the ORM took longer to build it than the
    database to answer it (bench/serving_overhead.py)."""
    # Django would ping a reused connection (SELECT 1) before this query, a second round trip on the
    # hot path. Skip the ping; if the connection died meanwhile (a database restart), the query fails,
    # and it is retried once on a fresh connection.
    connection.health_check_done = True
    try:
        found = _champion_fetch(user.pk, name)
    except (OperationalError, InterfaceError):
        if connection.in_atomic_block:
            raise
        connection.close()
        found = _champion_fetch(user.pk, name)
    if found is None:
        return None
    row = dict(zip(CHAMPION_FIELDS, found, strict=True))
    if isinstance(row["policy"], str):  # SQLite hands JSON back as text
        row["policy"] = json.loads(row["policy"])
    row["allowed"] = bool(user.is_staff or row["has_role"])
    return row


def _signature(version_id: int) -> dict | None:
    return ModelVersion.objects.filter(pk=version_id).values_list("signature", flat=True).first()


def _sample_rate(policy: dict) -> float:
    try:
        return float((policy.get("shadow") or {}).get("sample_rate", 0.1))
    except (TypeError, ValueError, AttributeError):
        return 0.0


def _metadata(body: dict) -> dict:
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str | int | float | bool) and not (isinstance(v, str) and "\x00" in v)
        for v in metadata.values()
    ):
        raise InvalidInput("`metadata` must be an object of plain values (the request's slice fields)")
    if len(metadata) > 20 or any(len(str(k)) > 64 or len(str(v)) > 256 for k, v in metadata.items()):
        raise InvalidInput(
            "`metadata` holds at most 20 fields, names up to 64 and values up to 256 characters"
        )
    return metadata


def _request_id(body: dict) -> str:
    given = body.get("request_id")
    if given is None:
        return uuid.uuid4().hex
    if not isinstance(given, str) or not 1 <= len(given) <= traffic.REQUEST_ID_CHARS or "\x00" in given:
        raise InvalidInput(f"`request_id` must be a string of 1 to {traffic.REQUEST_ID_CHARS} characters")
    return given


def _json_body(request: Request) -> object:
    """The JSON body, decoded in one call (DRF's streaming parser took a tenth of a predict call).

    orjson reads it: a body of floats 14 us for 32 rows of 16, against 200 us for ``parsers.loads``, whose
    per-float check was a tenth of a predict call. orjson refuses NaN, Infinity and overflowing numbers
    itself; what it refuses is read again by ``parsers.loads`` for the message that names the problem.
    (orjson reads an integer beyond 64 bits as a float: here the inputs are cast to the model's dtype
    anyway, so only such a metadata value would read differently.)
    """
    content_type = request.content_type.split(";")[0].strip().lower()
    if content_type != "application/json":
        raise UnsupportedMediaType(content_type or "(none)")
    body = request.body
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return parsers.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None


class PredictView(APIView):
    parser_classes = [JSONParser]

    @extend_schema(
        request=inline_serializer(
            "PredictRequest",
            {
                "inputs": serializers.JSONField(help_text="a batch [[...], ...] or {input name: batch}"),
                "metadata": serializers.DictField(
                    required=False, help_text="slice fields, kept with captures"
                ),
                "request_id": serializers.CharField(required=False),
            },
        ),
        responses=inline_serializer(
            "PredictResponse",
            {
                "outputs": serializers.JSONField(),
                "model": serializers.CharField(),
                "version": serializers.IntegerField(),
                "request_id": serializers.CharField(),
                "captured": serializers.BooleanField(),
            },
        ),
    )
    def post(self, request: Request, name: str) -> Response:
        row = _champion_row(name, request.user) if request.user.is_authenticated else None
        if row is None or not row["allowed"]:
            model = model_for(request, name)  # 404 for no model, 403 for no role
            raise NotFound(
                f"{model.name} has no champion: no version is in production, so nothing serves predictions",
                code="no_champion",
            )
        body = _json_body(request)
        if not isinstance(body, dict) or "inputs" not in body:
            raise InvalidInput(
                'the body must be a JSON object with "inputs": a batch [[...], ...] or named batches'
            )
        metadata, request_id = _metadata(body), _request_id(body)
        artifact = serving.served_artifact(row["id"], row["artifact_key"], row["format"], row["onnx_key"])
        try:
            loaded = cache.get(artifact, signature=lambda: _signature(row["id"]))
        except runtimes.ModelLoadError as exc:
            raise ChampionUnavailable(f"{name} v{row['version']} does not load here: {exc}") from None
        try:
            arrays, rows = serving.parse_inputs(body["inputs"], loaded.signature)
        except serving.InputInvalid as exc:
            raise InvalidInput(str(exc)) from None
        if rows > settings.MODELGATE_PREDICT_MAX_ROWS:
            raise InvalidInput(f"at most {settings.MODELGATE_PREDICT_MAX_ROWS} rows per request, got {rows}")
        started = time.perf_counter()
        try:
            outputs = loaded.predict(arrays)
        except runtimes.PredictionInputError as exc:
            raise InvalidInput(
                f"{exc}; the model expects {serving.signature_text(loaded.signature)}"
            ) from None
        latency_ms = (time.perf_counter() - started) * 1000
        answer = serving.outputs_json(outputs)
        sampled = random.random() < _sample_rate(row["policy"])
        record = None
        if sampled:
            record = traffic.traffic_record(
                model_id=row["model_id"],
                request_id=request_id,
                source=TrafficRecord.Source.LIVE,
                inputs=arrays,
                rows=rows,
                outputs=outputs,
                served_by_id=row["id"],
                latency_ms=latency_ms,
                metadata=metadata,
                at=timezone.now(),
            )
        buffer.add(row["id"], record)
        return Response(
            {
                "outputs": answer,
                "model": name,
                "version": row["version"],
                "request_id": request_id,
                "captured": sampled,
            }
        )


class TrafficUploadView(APIView):
    parser_classes = [MultiPartParser]

    @extend_schema(
        request={
            "multipart/form-data": inline_serializer(
                "TrafficUpload",
                {"file": serializers.FileField(help_text="JSON Lines, or Parquet (*.parquet)")},
            )
        },
        responses=OpenApiTypes.OBJECT,
    )
    def post(self, request: Request, name: str) -> Response:
        model = model_for(request, name, "push")
        upload = request.FILES.get("file")
        if upload is None:
            raise traffic.TrafficInvalid(
                "send the records as the multipart field `file` (JSON Lines or Parquet)"
            )
        with upload.open("rb") as stream:
            result = traffic.traffic_upload(
                model=model, stream=stream, filename=upload.name or "", actor=request.user
            )
        return Response(
            {"records": result.records, "rows": result.rows, "labelled": result.labelled}, status=201
        )


class TrafficLabelsView(APIView):
    parser_classes = [JSONParser]

    @extend_schema(
        request=inline_serializer(
            "TrafficLabels",
            {
                "labels": serializers.ListField(
                    child=serializers.DictField(), help_text="[{request_id, labels}]"
                )
            },
        ),
        responses=OpenApiTypes.OBJECT,
    )
    def post(self, request: Request, name: str) -> Response:
        model = model_for(request, name, "push")
        body = request.data if isinstance(request.data, dict) else {}
        return Response(traffic.traffic_labels(model=model, items=body.get("labels")))
