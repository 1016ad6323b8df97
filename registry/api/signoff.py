"""Sign-off endpoints: approve, reject, rollback, webhooks, and Slack's interactivity Request URL."""

from __future__ import annotations

import logging

from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from lifecycle import approval, slack, webhooks
from lifecycle.pipeline import enqueue_on_commit
from registry import selectors
from registry.api.errors import error_body
from registry.api.serializers import VersionOutSerializer
from registry.api.views import model_for, version_for
from registry.errors import Conflict, NotFound
from registry.events import event_record
from registry.models import Approval, EventKind, ModelVersion, Webhook

log = logging.getLogger(__name__)
RESPOND = "workers.approvals.slack_respond"


class DecisionSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, max_length=5000, default="")


class DecisionOutSerializer(serializers.Serializer):
    decision = serializers.CharField(source="approval.decision")
    created = serializers.BooleanField()
    quorum = serializers.CharField()
    version = VersionOutSerializer()


def _decide(request: Request, name: str, number: int, decision: str) -> Response:
    form = DecisionSerializer(data=request.data)
    form.is_valid(raise_exception=True)
    version = version_for(request, name, number)
    # A refusal raises ApprovalRefused (audited by approval_record); the error handler answers 403.
    result = approval.approval_record(
        version_id=version.pk,
        user=request.user,
        decision=decision,
        channel=Approval.Channel.API,
        comment=form.validated_data["comment"],
    )
    fresh = selectors.version_get(result.version.model, result.version.version)
    body = {
        "decision": result.approval.decision,
        "created": result.created,
        "quorum": str(result.quorum),
        "version": VersionOutSerializer(fresh).data,
    }
    return Response(body, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)


class ApproveView(APIView):
    @extend_schema(
        request=DecisionSerializer, responses={201: DecisionOutSerializer, 200: DecisionOutSerializer}
    )
    def post(self, request: Request, name: str, version: int) -> Response:
        return _decide(request, name, version, Approval.Decision.APPROVE)


class RejectView(APIView):
    @extend_schema(
        request=DecisionSerializer, responses={201: DecisionOutSerializer, 200: DecisionOutSerializer}
    )
    def post(self, request: Request, name: str, version: int) -> Response:
        return _decide(request, name, version, Approval.Decision.REJECT)


class RollbackView(APIView):
    @extend_schema(request=DecisionSerializer, responses={202: VersionOutSerializer})
    def post(self, request: Request, name: str) -> Response:
        model = model_for(request, name, "approve")
        form = DecisionSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        target = approval.rollback_request(
            model=model, actor=request.user, comment=form.validated_data["comment"]
        )
        return Response(VersionOutSerializer(selectors.version_get(model, target.version)).data, status=202)


class WebhookSerializer(serializers.ModelSerializer):
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=webhooks.EVENTS), required=False, default=list
    )

    class Meta:
        model = Webhook
        fields = ["id", "url", "events", "active", "created_at"]
        read_only_fields = ["id", "active", "created_at"]


class WebhookListView(APIView):
    @extend_schema(responses=WebhookSerializer(many=True))
    def get(self, request: Request, name: str) -> Response:
        model = model_for(request, name, "manage")
        return Response(WebhookSerializer(model.webhooks.order_by("id"), many=True).data)

    @extend_schema(request=WebhookSerializer, responses={201: WebhookSerializer})
    def post(self, request: Request, name: str) -> Response:
        model = model_for(request, name, "manage")
        form = WebhookSerializer(data=request.data)
        form.is_valid(raise_exception=True)
        hook = webhooks.webhook_create(model=model, actor=request.user, **form.validated_data)
        # The secret is shown once, at creation: receivers need it to verify signatures.
        return Response(
            {**WebhookSerializer(hook).data, "secret": hook.secret}, status=status.HTTP_201_CREATED
        )


def _hook_for(request: Request, name: str, hook_id: int) -> Webhook:
    model = model_for(request, name, "manage")
    hook = model.webhooks.filter(pk=hook_id).first()
    if hook is None:
        raise NotFound(f"{name} has no webhook {hook_id}")
    return hook


class WebhookDetailView(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request: Request, name: str, hook_id: int) -> Response:
        webhooks.webhook_delete(hook=_hook_for(request, name, hook_id), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookPingView(APIView):
    @extend_schema(request=None, responses={202: None})
    def post(self, request: Request, name: str, hook_id: int) -> Response:
        hook = _hook_for(request, name, hook_id)
        with transaction.atomic():
            # Only this hook gets the ping, whatever events it subscribes to.
            deliveries = webhooks.webhooks_emit(
                event="ping", model=hook.model, data={"hook": hook.pk}, only=hook
            )
        return Response({"delivery": str(deliveries[0].delivery_id)}, status=status.HTTP_202_ACCEPTED)


# --- Slack ------------------------------------------------------------------------------------------------------


def _ephemeral(click: slack.Click, text: str) -> None:
    if click.response_url:
        enqueue_on_commit(RESPOND, click.response_url, text)


@csrf_exempt
@require_POST
def slack_interactions(request: HttpRequest) -> HttpResponse:
    """Slack's interactivity Request URL. Answers at once; Slack API calls happen in tasks."""
    try:
        slack.verify(request.body, request.headers)
    except slack.BadRequest as exc:
        event_record(
            kind=EventKind.SLACK_REQUEST_REFUSED,
            actor="slack:unverified",
            data={"reason": str(exc), "timestamp": request.headers.get("X-Slack-Request-Timestamp", "")},
        )
        return JsonResponse(error_body("invalid_signature", str(exc)), status=401)
    try:
        click = slack.parse(request.POST.get("payload", ""))
    except slack.BadRequest as exc:
        return JsonResponse(error_body("bad_payload", str(exc)), status=400)
    if click.action not in {"approve", "reject"}:
        return HttpResponse(status=200)
    version = (
        ModelVersion.objects.select_related("model")
        .filter(model__name=click.model, version=click.version)
        .first()
    )
    if version is None:
        _ephemeral(click, f"{click.model} v{click.version} does not exist (any more).")
        return HttpResponse(status=200)
    user = slack.user_for(click)
    slack_ids = {"user_id": click.slack_user, "channel": click.channel, "ts": click.ts}
    if user is None:
        reason = "your Slack account is not linked to a Modelgate user"
        approval.approval_refusal_record(
            version=version, actor=f"slack:{click.slack_user}", channel="slack", reason=reason, data=slack_ids
        )
        _ephemeral(click, f"You cannot sign off {version.label}: {reason}.")
        return HttpResponse(status=200)
    if click.round != version.approval_round:
        _ephemeral(click, f"This request for {version.label} is out of date; open the version page.")
        return HttpResponse(status=200)
    try:
        result = approval.approval_record(
            version_id=version.pk,
            user=user,
            decision=click.action,
            channel=Approval.Channel.SLACK,
            slack=slack_ids,
        )
    except approval.ApprovalRefused as exc:  # audited by approval_record
        _ephemeral(click, f"You cannot sign off {version.label}: {exc.message}.")
        return HttpResponse(status=200)
    except Conflict as exc:
        _ephemeral(click, exc.message)
        return HttpResponse(status=200)
    if not result.created:
        _ephemeral(click, f"You already decided on {version.label} ({result.approval.decision}).")
    return HttpResponse(status=200)
