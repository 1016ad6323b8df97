"""Retirement endpoints: retire and restore a version, and the sweep's candidates for operators."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from lifecycle import retirement
from registry import selectors
from registry.api.parsers import JSONParser
from registry.api.serializers import VersionOutSerializer
from registry.api.views import _upload, version_for


def _version_body(version) -> dict:
    return VersionOutSerializer(selectors.version_get(version.model, version.version)).data


class VersionRetireView(APIView):
    parser_classes = [JSONParser]

    @extend_schema(
        request=inline_serializer("RetireRequest", {"comment": serializers.CharField(required=False)}),
        responses=VersionOutSerializer,
    )
    def post(self, request: Request, name: str, version: int) -> Response:
        v = version_for(request, name, version, "manage")
        comment = request.data.get("comment", "") if isinstance(request.data, dict) else ""
        if not isinstance(comment, str) or len(comment) > 5000:
            raise serializers.ValidationError({"comment": ["a string of at most 5000 characters"]})
        return Response(
            _version_body(retirement.version_retire(version=v, actor=request.user, comment=comment))
        )


class VersionRestoreView(APIView):
    parser_classes = [JSONParser, MultiPartParser]

    @extend_schema(
        request={
            "multipart/form-data": inline_serializer(
                "RestoreUpload",
                {"artifact": serializers.FileField(help_text="a purged version's identical bytes")},
            ),
            "application/json": None,
        },
        responses=VersionOutSerializer,
    )
    def post(self, request: Request, name: str, version: int) -> Response:
        v = version_for(request, name, version, "manage")
        uploaded = request.FILES.get("artifact")
        upload = _upload(uploaded) if uploaded is not None else None
        return Response(
            _version_body(retirement.version_restore(version=v, actor=request.user, upload=upload))
        )


class RetirementCandidatesView(APIView):
    @extend_schema(responses=OpenApiTypes.OBJECT)
    def get(self, request: Request) -> Response:
        """What the sweep would do now (warn, retire, cancel, purge) and why, on the models you can see."""
        plan = retirement.retirement_plan()
        visible = set(selectors.models_visible_to(request.user).values_list("name", flat=True))
        decisions = [d.as_dict() for d in plan.decisions if d.model in visible]
        return Response({"today": plan.today.isoformat(), "count": len(decisions), "results": decisions})
