"""REST API v1. Views validate, call one service and serialize; the rules live elsewhere."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from pathlib import Path

from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from lifecycle.pipeline import policy_written, version_push, version_revalidate
from lifecycle.policy import policy_validate
from registry import direct_uploads, selectors, services
from registry.api import serializers as s
from registry.errors import Gone
from registry.models import Alias, Dataset, Event, ModelVersion, RegisteredModel
from registry.storage import blob_chunks, blob_exists


class ModelCursor(CursorPagination):
    ordering = "name"
    page_size = 50
    max_page_size = 500
    page_size_query_param = "page_size"


class VersionCursor(CursorPagination):
    ordering = "-version"
    page_size = 50
    max_page_size = 500
    page_size_query_param = "page_size"


class IdCursor(CursorPagination):
    ordering = "-id"
    page_size = 50
    max_page_size = 500
    page_size_query_param = "page_size"


class EventCursor(IdCursor):
    ordering = "id"


def model_for(request: Request, name: str, action: str = "read") -> RegisteredModel:
    """The one access helper: 404 for a model that does not exist, 403 for a missing role."""
    model = RegisteredModel.objects.filter(name=name).first()
    if model is None:
        raise NotFound(f"no model named {name!r}")
    if not selectors.user_can(request.user, model, action):
        if action != "read" and selectors.user_can(request.user, model, "read"):
            raise PermissionDenied(f"you need the {_ROLE_FOR[action]} role on {name} to do this")
        raise PermissionDenied(f"you have no role on {name}")
    return model


_ROLE_FOR = {"push": "publisher", "approve": "approver", "manage": "owner"}


def version_for(request: Request, name: str, number: int, action: str = "read") -> ModelVersion:
    model = model_for(request, name, action)
    version = selectors.version_get(model, number)
    if version is None:
        raise NotFound(f"{name} has no version {number}")
    return version


def model_context(models: list[RegisteredModel]) -> dict:
    """Champions and per-status counts for a page of models, as ``ModelOutSerializer`` reads them."""
    return selectors.model_summaries(models)


def _model_response(model: RegisteredModel, code: int = 200, *, new: bool = False) -> Response:
    # A model created this instant has no versions and no champion: no need to ask the database.
    context = {"counts": {}, "champions": {}} if new else model_context([model])
    return Response(s.ModelOutSerializer(model, context=context).data, status=code)


class ModelListView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("search", str), OpenApiParameter("tag", str)],
        responses=s.ModelOutSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        models = selectors.models_visible_to(request.user)
        if search := request.query_params.get("search"):
            models = models.filter(name__icontains=search[:100])
        if tag := request.query_params.get("tag"):
            models = selectors.tagged(models, tag[:64])
        paginator = ModelCursor()
        page = paginator.paginate_queryset(models, request, view=self)
        return paginator.get_paginated_response(
            s.ModelOutSerializer(page, many=True, context=model_context(page)).data
        )

    @extend_schema(request=s.ModelCreateSerializer, responses={201: s.ModelOutSerializer})
    def post(self, request: Request) -> Response:
        form = s.ModelCreateSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        policy = policy_validate(data.get("policy") or {})
        model = services.model_create(
            name=data["name"],
            description=data["description"],
            tags=data.get("tags"),
            policy=policy,
            actor=request.user,
        )
        policy_written(model)
        return _model_response(model, status.HTTP_201_CREATED, new=True)


class ModelDetailView(APIView):
    @extend_schema(responses=s.ModelOutSerializer)
    def get(self, request: Request, name: str) -> Response:
        return _model_response(model_for(request, name))

    @extend_schema(request=s.ModelPatchSerializer, responses=s.ModelOutSerializer)
    def patch(self, request: Request, name: str) -> Response:
        model = model_for(request, name, "manage")
        form = s.ModelPatchSerializer(data=request.data, partial=True)
        form.is_valid(raise_exception=True)
        if form.validated_data:
            model = services.model_update(model=model, actor=request.user, **form.validated_data)
        return _model_response(model)


class ModelPolicyView(APIView):
    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, name: str) -> Response:
        model = model_for(request, name)
        return Response(policy_validate(model.policy, check_datasets=False))

    @extend_schema(request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT)
    def put(self, request: Request, name: str) -> Response:
        model = model_for(request, name, "manage")
        model = services.model_policy_set(
            model=model, actor=request.user, policy=policy_validate(request.data)
        )
        policy_written(model)
        return Response(model.policy)


class ModelRolesView(APIView):
    @extend_schema(request=s.RoleGrantSerializer, responses={201: s.RoleGrantSerializer})
    def post(self, request: Request, name: str) -> Response:
        model = model_for(request, name, "manage")
        form = s.RoleGrantSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        services.model_role_grant(model=model, actor=request.user, **form.validated_data)
        return Response(form.validated_data, status=status.HTTP_201_CREATED)


SEARCH_PARAMETERS = [
    OpenApiParameter("status", str, many=True),
    OpenApiParameter("tag", str),
    OpenApiParameter("alias", str),
    OpenApiParameter("dataset", str, description="a dataset name, or name:version, that the version used"),
    OpenApiParameter("git_sha", str, description="the source's git sha, or a prefix of 4 or more hex digits"),
    OpenApiParameter("created_after", OpenApiTypes.DATETIME),
    OpenApiParameter("created_before", OpenApiTypes.DATETIME),
    OpenApiParameter(
        "sort", str, enum=["-created", "created"], description="push order, newest first by default"
    ),
]


def _search(request: Request) -> tuple[selectors.VersionSearch, str]:
    params = request.query_params
    form = s.VersionSearchSerializer(
        data={
            # An empty parameter (a form's blank field) means no filter.
            **{k: v for k, v in params.items() if v and k not in {"status", "model", "cursor", "page_size"}},
            "status": [v for v in params.getlist("status") if v],
            **({"model": models} if (models := [v for v in params.getlist("model") if v]) else {}),
        }
    )
    form.is_valid(raise_exception=True)
    return form.search(), form.validated_data["sort"]


class VersionListView(APIView):
    parser_classes = [MultiPartParser]

    @extend_schema(parameters=SEARCH_PARAMETERS, responses=s.VersionSummarySerializer(many=True))
    def get(self, request: Request, name: str) -> Response:
        model = model_for(request, name)
        search, sort = _search(request)
        versions = selectors.version_search(search, model=model)
        paginator = VersionCursor()
        paginator.ordering = "version" if sort == "created" else "-version"
        page = paginator.paginate_queryset(versions, request, view=self)
        return paginator.get_paginated_response(s.VersionSummarySerializer(page, many=True).data)

    @extend_schema(
        request={"multipart/form-data": s.PushSerializer},
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER)],
        responses={201: s.VersionOutSerializer, 200: s.VersionOutSerializer},
    )
    def post(self, request: Request, name: str) -> Response:
        model = model_for(request, name, "push")
        form = s.PushSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        artifact = form.validated_data["artifact"]
        key = _idempotency_key(request)
        version, created = version_push(
            model=model,
            upload=_upload(artifact),
            metadata=form.validated_data["metadata"],
            actor=request.user,
            idempotency_key=key,
        )
        version = selectors.version_get(model, version.version)
        headers = {} if created else {"Idempotent-Replayed": "true"}
        return Response(s.VersionOutSerializer(version).data, status=status.HTTP_201_CREATED, headers=headers)


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and not (1 <= len(key) <= 255):
        raise ValidationError({"Idempotency-Key": ["between 1 and 255 characters"]})
    return key


def _upload(uploaded) -> services.Upload:
    return services.Upload(
        path=Path(uploaded.temporary_file_path()),
        sha256=uploaded.sha256,
        size=uploaded.size,
        filename=uploaded.name or "",
    )


class DirectUploadListView(APIView):
    @extend_schema(request=s.DirectUploadStartSerializer, responses={201: s.DirectUploadOutSerializer})
    def post(self, request: Request, name: str) -> Response:
        model = model_for(request, name, "push")
        form = s.DirectUploadStartSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        started = direct_uploads.direct_upload_start(model=model, actor=request.user, **form.validated_data)
        upload = started.upload
        body = {
            "id": upload.id,
            "filename": upload.filename,
            "size": upload.size,
            "sha256": upload.sha256,
            "state": upload.state,
            "part_size": upload.part_size,
            "parts": [
                {
                    "part_number": n,
                    "size": min(upload.part_size, upload.size - (n - 1) * upload.part_size),
                    "url": url,
                }
                for n, url in enumerate(started.urls, start=1)
            ],
            "expires_at": upload.expires_at,
            "complete_url": f"/api/v1/models/{model.name}/uploads/{upload.id}/complete/",
        }
        return Response(s.DirectUploadOutSerializer(body).data, status=status.HTTP_201_CREATED)


class DirectUploadCompleteView(APIView):
    @extend_schema(
        request=s.DirectUploadCompleteSerializer,
        parameters=[OpenApiParameter("Idempotency-Key", str, OpenApiParameter.HEADER)],
        responses={201: s.VersionOutSerializer},
    )
    def post(self, request: Request, name: str, upload: uuid.UUID) -> Response:
        model = model_for(request, name, "push")
        form = s.DirectUploadCompleteSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        key = _idempotency_key(request)
        version, created = direct_uploads.direct_upload_complete(
            model=model,
            actor=request.user,
            upload_id=upload,
            parts=[(p["part_number"], p["etag"]) for p in form.validated_data["parts"]],
            register=functools.partial(
                version_push,
                model=model,
                metadata=form.validated_data["metadata"],
                actor=request.user,
                idempotency_key=key,
            ),
            idempotency_key=key,
        )
        version = selectors.version_get(model, version.version)
        headers = {} if created else {"Idempotent-Replayed": "true"}
        return Response(s.VersionOutSerializer(version).data, status=status.HTTP_201_CREATED, headers=headers)


class DirectUploadDetailView(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, name: str, upload: uuid.UUID) -> Response:
        model = model_for(request, name, "push")
        direct_uploads.direct_upload_abort(model=model, actor=request.user, upload_id=upload)
        return Response(status=status.HTTP_204_NO_CONTENT)


class VersionDetailView(APIView):
    @extend_schema(responses=s.VersionOutSerializer)
    def get(self, request: Request, name: str, version: int) -> Response:
        return Response(s.VersionOutSerializer(version_for(request, name, version)).data)


def stream_blob(*, key: str, sha256: str, size: int, filename: str, version_id: int) -> StreamingHttpResponse:
    if not blob_exists(key):
        raise Gone("the artifact's bytes are no longer in the store")
    response = StreamingHttpResponse(blob_chunks(key), content_type="application/octet-stream")
    response["Content-Length"] = str(size)
    response["X-Checksum-Sha256"] = sha256
    response["Digest"] = f"sha-256={sha256}"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    services.version_usage_add(version_id=version_id, downloads=1)
    return response


_EXTENSION = {"keras": ".keras", "onnx": ".onnx", "tflite": ".tflite", "savedmodel": ".zip"}


class VersionArtifactView(APIView):
    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    def get(self, request: Request, name: str, version: int) -> StreamingHttpResponse:
        v = version_for(request, name, version)
        if v.purged_at:
            raise Gone(f"{v.label}'s artifact was purged on {v.purged_at:%Y-%m-%d} by the retention policy")
        ext = ".tar.gz" if v.packaging == "tar.gz" else _EXTENSION[v.format]
        return stream_blob(
            key=v.artifact_key,
            sha256=v.sha256,
            size=v.size,
            filename=f"{v.model.name}-v{v.version}{ext}",
            version_id=v.pk,
        )


class VersionRevalidateView(APIView):
    @extend_schema(request=None, responses={202: s.VersionOutSerializer})
    def post(self, request: Request, name: str, version: int) -> Response:
        v = version_for(request, name, version, "push")
        version_revalidate(version=v, actor=request.user)
        return Response(s.VersionOutSerializer(selectors.version_get(v.model, v.version)).data, status=202)


class VersionLineageView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("direction", str, enum=["up", "down", "both"]),
            OpenApiParameter("depth", int),
        ],
        responses=OpenApiTypes.OBJECT,
    )
    def get(self, request: Request, name: str, version: int) -> Response:
        v = version_for(request, name, version)
        direction = request.query_params.get("direction", "both")
        if direction not in {"up", "down", "both"}:
            raise ValidationError({"direction": ["one of up, down, both"]})
        try:
            depth = int(request.query_params.get("depth", 5))
        except ValueError:
            raise ValidationError({"depth": ["a whole number"]}) from None
        if not 0 <= depth <= 100:
            raise ValidationError({"depth": ["between 0 and 100"]})
        graph = selectors.lineage_graph(v, direction=direction, depth=depth)
        return Response(
            {
                "root": f"version:{name}:{version}",
                "direction": direction,
                "depth": depth,
                "nodes": graph.nodes,
                "edges": graph.edges,
            }
        )


class VersionEventsView(APIView):
    @extend_schema(responses=s.EventOutSerializer(many=True))
    def get(self, request: Request, name: str, version: int) -> Response:
        v = version_for(request, name, version)
        paginator = EventCursor()
        page = paginator.paginate_queryset(Event.objects.filter(version=v), request, view=self)
        return paginator.get_paginated_response(s.EventOutSerializer(page, many=True).data)


class AliasListView(APIView):
    @extend_schema(responses=s.AliasOutSerializer(many=True))
    def get(self, request: Request, name: str) -> Response:
        model = model_for(request, name)
        aliases = Alias.objects.filter(model=model).select_related("version").order_by("name")
        return Response(s.AliasOutSerializer(aliases, many=True).data)


class AliasDetailView(APIView):
    @extend_schema(request=s.AliasSetSerializer, responses=s.AliasOutSerializer)
    def put(self, request: Request, name: str, alias: str) -> Response:
        model = model_for(request, name, "manage")
        form = s.AliasSetSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        target = ModelVersion.objects.filter(model=model, version=form.validated_data["version"]).first()
        if target is None:
            raise NotFound(f"{name} has no version {form.validated_data['version']}")
        result = services.alias_set(model=model, name=alias, version=target, actor=request.user)
        return Response(s.AliasOutSerializer(result).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, name: str, alias: str) -> Response:
        model = model_for(request, name, "manage")
        services.alias_delete(model=model, name=alias, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class HistoryView(APIView):
    @extend_schema(parameters=[OpenApiParameter("at", OpenApiTypes.DATETIME)], responses=OpenApiTypes.OBJECT)
    def get(self, request: Request, name: str) -> Response:
        model = model_for(request, name)
        at_text = request.query_params.get("at")
        if at_text:
            try:
                at = parse_datetime(at_text.replace(" ", "+"))
            except ValueError:  # well-formed but impossible, e.g. a UTC offset of -21:42
                at = None
            if at is None:
                raise ValidationError({"at": ["an ISO 8601 date and time, e.g. 2026-11-23T14:02:00Z"]})
            if at.tzinfo is None:
                at = at.replace(tzinfo=dt.UTC)
            try:
                # In UTC before the database sees it: PostgreSQL refuses offsets beyond ±15:59, which
                # Python accepts (e.g. -21:54).
                at = at.astimezone(dt.UTC)
            except OverflowError:
                raise ValidationError({"at": ["out of range once converted to UTC"]}) from None
            entry = selectors.served_at(model, at)
            serving = entry.version.version if entry and entry.version else None
            return Response(
                {
                    "at": at.isoformat(),
                    "version": serving,
                    "promotion": s.HistoryEntrySerializer(entry).data if entry else None,
                }
            )
        entries = model.promotions.select_related("version", "previous").order_by("at", "id")
        return Response({"history": s.HistoryEntrySerializer(entries, many=True).data})


class CrossVersionListView(APIView):
    @extend_schema(
        parameters=[
            OpenApiParameter("model", str, many=True, description="exact model names"),
            OpenApiParameter("model_contains", str, description="part of a model name, any case"),
            *SEARCH_PARAMETERS,
        ],
        responses=s.VersionSummarySerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        search, sort = _search(request)
        versions = selectors.version_search(search, user=request.user)
        paginator = IdCursor()
        paginator.ordering = "id" if sort == "created" else "-id"
        page = paginator.paginate_queryset(versions, request, view=self)
        return paginator.get_paginated_response(s.VersionSummarySerializer(page, many=True).data)


class DatasetListView(APIView):
    parser_classes = [MultiPartParser]

    @extend_schema(parameters=[OpenApiParameter("name", str)], responses=s.DatasetOutSerializer(many=True))
    def get(self, request: Request) -> Response:
        datasets = Dataset.objects.select_related("created_by")
        if name := request.query_params.get("name"):
            datasets = datasets.filter(name=name[:100])
        paginator = IdCursor()
        page = paginator.paginate_queryset(datasets, request, view=self)
        return paginator.get_paginated_response(s.DatasetOutSerializer(page, many=True).data)

    @extend_schema(
        request={"multipart/form-data": s.DatasetUploadSerializer}, responses={201: s.DatasetDetailSerializer}
    )
    def post(self, request: Request) -> Response:
        form = s.DatasetUploadSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        data = form.validated_data
        dataset = services.dataset_register(
            name=data["name"],
            upload=_upload(data["file"]),
            version=data.get("version"),
            description=data["description"],
            actor=request.user,
        )
        return Response(s.DatasetDetailSerializer(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetailView(APIView):
    @extend_schema(responses=s.DatasetDetailSerializer)
    def get(self, request: Request, name: str, version: int) -> Response:
        return Response(
            s.DatasetDetailSerializer(get_object_or_404(Dataset, name=name, version=version)).data
        )
