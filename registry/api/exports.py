"""REST API of the export branches: a version's exports, and the download of one of them.

``GET /models/{name}/versions/{v}/exports/`` lists every export with its parity numbers;
``GET …/exports/{format}/artifact/`` streams a passed export (TF.js as one zip holding model.json and
its shards) and counts as a download of the version, like the artifact itself, for retirement.
"""

from __future__ import annotations

from django.http import StreamingHttpResponse
from django.urls import path
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from lifecycle.exports import FORMATS
from registry.api.views import stream_blob, version_for
from registry.errors import Conflict, Gone
from registry.models import Export


class ExportOutSerializer(serializers.ModelSerializer):
    """One export branch: ``parity`` holds max_abs_diff, mean_abs_diff, atol, passed, samples, inputs,
    reference (the source runtime) and converter; ``runtime`` is the target runtime and its version."""

    class Meta:
        model = Export
        fields = [
            "format",
            "status",
            "required",
            "sha256",
            "size",
            "parity",
            "runtime",
            "error",
            "convert_ms",
            "check_ms",
            "attempts",
            "created_at",
            "finished_at",
        ]


class ExportListView(APIView):
    @extend_schema(responses=ExportOutSerializer(many=True))
    def get(self, request: Request, name: str, version: int) -> Response:
        v = version_for(request, name, version)
        exports = Export.objects.filter(version=v).order_by("format")
        return Response(ExportOutSerializer(exports, many=True).data)


class ExportArtifactView(APIView):
    # The URL kwarg is not called `format`: DRF reads that one as a format suffix (json, api) and
    # answers 404 for any other value before the view runs.
    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    def get(self, request: Request, name: str, version: int, export_format: str) -> StreamingHttpResponse:
        v = version_for(request, name, version)
        export = Export.objects.filter(version=v, format=export_format).first()
        if export is None:
            known = ", ".join(FORMATS)
            raise NotFound(
                f"{v.label} has no {export_format} export"
                + (
                    ""
                    if export_format in FORMATS
                    else f" ({export_format!r} is not an export format: {known})"
                )
            )
        if export.status != Export.Status.PASSED or not export.artifact_key:
            why = f": {export.error}" if export.error else ""
            raise Conflict(
                f"the {export_format} export of {v.label} is {export.status}{why}; "
                "only a passed export can be downloaded",
                code=f"export_{export.status}",
            )
        if export.purged_at:
            raise Gone(f"the {export_format} export of {v.label} was purged on {export.purged_at:%Y-%m-%d}")
        return stream_blob(
            key=export.artifact_key,
            sha256=export.sha256,
            size=export.size,
            filename=f"{v.model.name}-v{v.version}{FORMATS[export_format].extension}",
            version_id=v.pk,
        )


# For registry/api/urls.py: `*exports.urlpatterns` (paths relative to /api/v1/).
urlpatterns = [
    path(
        "models/<slug:name>/versions/<int:version>/exports/",
        ExportListView.as_view(),
        name="version-exports",
    ),
    path(
        "models/<slug:name>/versions/<int:version>/exports/<str:export_format>/artifact/",
        ExportArtifactView.as_view(),
        name="export-artifact",
    ),
]
