"""The audit report of a version: JSON by default, Markdown with ``?format=md`` (or Accept: text/markdown)."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from lifecycle.report import report_markdown, version_report
from registry.api.views import model_for
from registry.models import ModelVersion

FORMATS = {"json", "md"}


class MarkdownRenderer(BaseRenderer):
    media_type = "text/markdown"
    format = "md"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        if isinstance(data, str):
            return data.encode(self.charset)
        # An error raised before the view answered: keep it JSON, whatever was asked.
        response = (renderer_context or {}).get("response")
        if response is not None:
            response["Content-Type"] = "application/json"
        return JSONRenderer().render(data)


class VersionReportView(APIView):
    renderer_classes = [JSONRenderer, MarkdownRenderer]

    def perform_content_negotiation(self, request: Request, force: bool = False):
        wanted = request.query_params.get("format")
        if not force and wanted is not None and wanted not in FORMATS:
            # DRF would answer an unknown ?format= with a bare 404; say what is accepted instead. (With
            # force, DRF is rendering that very error: it falls back to JSON.)
            raise ValidationError({"format": ["json or md"]})
        return super().perform_content_negotiation(request, force)

    @extend_schema(
        parameters=[OpenApiParameter("format", str, enum=sorted(FORMATS))],
        responses={(200, "application/json"): OpenApiTypes.OBJECT, (200, "text/markdown"): OpenApiTypes.STR},
    )
    def get(self, request: Request, name: str, version: int) -> Response:
        model = model_for(request, name)
        found = (
            ModelVersion.objects.select_related("model", "created_by")
            .filter(model=model, version=version)
            .first()
        )
        if found is None:
            raise NotFound(f"{name} has no version {version}")
        report = version_report(found)
        if request.accepted_renderer.format == "md":
            return Response(report_markdown(report), content_type="text/markdown; charset=utf-8")
        return Response(report)
