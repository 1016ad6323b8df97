"""API shapes (DESIGN.md §4). Input serializers validate; output serializers only present."""

from __future__ import annotations

from typing import Any

from django.core.validators import RegexValidator
from rest_framework import serializers

from registry.api import parsers
from registry.errors import JSON_MAX_DEPTH, deep_path, nul_path
from registry.models import (
    Alias,
    Dataset,
    DatasetRole,
    Event,
    GateResult,
    ModelVersion,
    RegisteredModel,
    Role,
    VersionStatus,
)
from registry.selectors import VersionSearch

slug = RegexValidator(
    r"^[a-z0-9][a-z0-9_-]*$", "use lowercase letters, digits, '-' and '_', starting with a letter or digit"
)
hex64 = RegexValidator(r"^[0-9a-fA-F]{64}$", "a sha256 is 64 hexadecimal characters")


def _tags() -> serializers.ListField:
    return serializers.ListField(child=serializers.CharField(max_length=64), max_length=50, required=False)


# --- input --------------------------------------------------------------------------------------


class ModelCreateSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100, validators=[slug])
    description = serializers.CharField(required=False, allow_blank=True, max_length=10_000, default="")
    tags = _tags()
    policy = serializers.JSONField(required=False)


class ModelPatchSerializer(serializers.Serializer):
    description = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    tags = _tags()


class PolicySerializer(serializers.Serializer):
    """The policy document itself is free-form JSON checked by ``lifecycle.policy``."""

    def to_internal_value(self, data: Any) -> Any:
        return data


class RoleGrantSerializer(serializers.Serializer):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Role.choices)


class SourceSerializer(serializers.Serializer):
    git_sha = serializers.CharField(required=False, allow_blank=True, max_length=64)
    branch = serializers.CharField(required=False, allow_blank=True, max_length=255)
    ci_run_url = serializers.URLField(required=False, allow_blank=True, max_length=1000)
    author = serializers.CharField(required=False, allow_blank=True, max_length=150)
    repository = serializers.CharField(required=False, allow_blank=True, max_length=500)


class DatasetRefSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    version = serializers.JSONField(required=False, default="latest")
    role = serializers.ChoiceField(choices=DatasetRole.choices, default=DatasetRole.TRAIN)

    def validate_version(self, value: Any) -> Any:
        if value == "latest" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            return value
        raise serializers.ValidationError("a positive version number or 'latest'")


class ParentRefSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=100)
    version = serializers.IntegerField(min_value=1)
    kind = serializers.CharField(max_length=32, required=False, default="derived_from", validators=[slug])


class PushMetadataSerializer(serializers.Serializer):
    sha256 = serializers.CharField(required=False, validators=[hex64])
    source = SourceSerializer(required=False)
    params = serializers.DictField(required=False)
    metrics = serializers.DictField(child=serializers.FloatField(), required=False)
    tags = _tags()
    datasets = DatasetRefSerializer(many=True, required=False, max_length=100)
    parents = ParentRefSerializer(many=True, required=False, max_length=100)
    description = serializers.CharField(required=False, allow_blank=True, max_length=10_000)


class PushSerializer(serializers.Serializer):
    """The multipart push: the artifact file and a JSON ``metadata`` string."""

    artifact = serializers.FileField(allow_empty_file=False)
    metadata = serializers.CharField(required=False, default="{}", max_length=1_000_000)

    def validate_metadata(self, value: str) -> dict:
        return push_metadata(value)


def push_metadata(value: str | dict) -> dict:
    """A push's ``metadata``, as a JSON string (multipart) or an object (a JSON body), validated."""
    too_deep = f"metadata is nested too deeply: at most {JSON_MAX_DEPTH} levels of objects and lists"
    document = value
    if isinstance(value, str):
        try:
            document = parsers.loads(value or "{}")
        except RecursionError:  # Python's json gives up past its recursion limit
            raise serializers.ValidationError(too_deep) from None
        except ValueError as exc:  # not JSON, or a number jsonb cannot store (NaN, 1e999)
            raise serializers.ValidationError(f"metadata is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise serializers.ValidationError("metadata must be a JSON object")
    if where := deep_path(document, "metadata"):
        # Within the recursion limit a deep document parses, but every later reader (the renderer,
        # the pages, the report) would recurse through it again: refuse it here, once.
        raise serializers.ValidationError(f"{too_deep} ({where} is deeper)")
    if where := nul_path(document, "metadata"):
        raise serializers.ValidationError(f"{where} holds a NUL character, which cannot be stored")
    inner = PushMetadataSerializer(data=document)
    if not inner.is_valid():
        raise serializers.ValidationError(inner.errors)
    return inner.validated_data


class DirectUploadStartSerializer(serializers.Serializer):
    filename = serializers.CharField(
        max_length=255, help_text="the artifact's file name (its extension counts)"
    )
    size = serializers.IntegerField(min_value=1, max_value=5 * 1024**4, help_text="bytes")
    sha256 = serializers.CharField(validators=[hex64])


class DirectUploadPartURLSerializer(serializers.Serializer):
    part_number = serializers.IntegerField()
    size = serializers.IntegerField()
    url = serializers.CharField()


class DirectUploadOutSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    filename = serializers.CharField()
    size = serializers.IntegerField()
    sha256 = serializers.CharField()
    state = serializers.CharField()
    part_size = serializers.IntegerField()
    parts = DirectUploadPartURLSerializer(many=True)
    expires_at = serializers.DateTimeField()
    complete_url = serializers.CharField()


class DirectUploadPartSerializer(serializers.Serializer):
    part_number = serializers.IntegerField(min_value=1, max_value=10_000)
    etag = serializers.CharField(max_length=200)


class DirectUploadCompleteSerializer(serializers.Serializer):
    parts = DirectUploadPartSerializer(many=True, allow_empty=False, max_length=10_000)
    metadata = serializers.JSONField(required=False, default=dict, help_text="the same document as a push's")

    def validate_metadata(self, value: str | dict) -> dict:
        return push_metadata(value)


class DatasetUploadSerializer(serializers.Serializer):
    file = serializers.FileField(allow_empty_file=False)
    name = serializers.CharField(max_length=100, validators=[slug])
    version = serializers.IntegerField(min_value=1, required=False)
    description = serializers.CharField(required=False, allow_blank=True, max_length=10_000, default="")


class AliasSetSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1)


# --- output -------------------------------------------------------------------------------------


class ModelOutSerializer(serializers.ModelSerializer):
    champion = serializers.SerializerMethodField()
    counts = serializers.SerializerMethodField()

    class Meta:
        model = RegisteredModel
        fields = ["name", "description", "tags", "champion", "policy", "counts", "created_at"]

    def get_champion(self, obj: RegisteredModel) -> int | None:
        return self.context.get("champions", {}).get(obj.pk)

    def get_counts(self, obj: RegisteredModel) -> dict[str, int]:
        return self.context.get("counts", {}).get(obj.pk, {})

    def to_representation(self, instance: RegisteredModel) -> dict[str, Any]:
        # Every model get, create and list row is presented here. Building this serializer's fields
        # (ModelSerializer introspects the model and deep-copies them for each instance) cost about as
        # much CPU as the rest of a create's Python: so the same dict is built directly, and the fields
        # above only describe the shape to the schema. A test holds the two to the same output.
        return {
            "name": instance.name,
            "description": instance.description,
            "tags": instance.tags,
            "champion": self.get_champion(instance),
            "policy": instance.policy,
            "counts": self.get_counts(instance),
            "created_at": _datetime.to_representation(instance.created_at),
        }


_datetime = serializers.DateTimeField()  # unbound: presents a datetime as the API's other fields do


class GateOutSerializer(serializers.ModelSerializer):
    class Meta:
        model = GateResult
        fields = [
            "gate",
            "metric",
            "slice",
            "value",
            "baseline",
            "threshold",
            "passed",
            "skipped_reason",
            "attempt",
            "rows",
            "duration_ms",
            "details",
        ]


class VersionSummarySerializer(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    created_by = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "model",
            "version",
            "status",
            "status_reason",
            "sha256",
            "size",
            "format",
            "source",
            "tags",
            "created_by",
            "created_at",
            "status_changed_at",
        ]

    def get_created_by(self, obj: ModelVersion) -> str | None:
        return obj.created_by.get_username() if obj.created_by else None


class VersionOutSerializer(VersionSummarySerializer):
    datasets = serializers.SerializerMethodField()
    parents = serializers.SerializerMethodField()
    gates = GateOutSerializer(source="gate_results", many=True)
    exports = serializers.SerializerMethodField()
    shadow = serializers.SerializerMethodField()
    approvals = serializers.SerializerMethodField()
    aliases = serializers.SerializerMethodField()
    artifact_purged_at = serializers.DateTimeField(source="purged_at")

    class Meta(VersionSummarySerializer.Meta):
        fields = [
            *VersionSummarySerializer.Meta.fields,
            "signature",
            "params",
            "metrics",
            "description",
            "datasets",
            "parents",
            "gates",
            "gate_attempt",
            "approval_round",
            "exports",
            "shadow",
            "approvals",
            "aliases",
            "artifact_purged_at",
        ]

    def get_datasets(self, obj: ModelVersion) -> list[dict]:
        return [
            {"name": link.dataset.name, "version": link.dataset.version, "role": link.role}
            for link in obj.dataset_links.all()
        ]

    def get_parents(self, obj: ModelVersion) -> list[dict]:
        return [
            {"model": link.parent.model.name, "version": link.parent.version, "kind": link.kind}
            for link in obj.parent_links.all()
        ]

    def get_exports(self, obj: ModelVersion) -> list[dict]:
        return [
            {
                "format": e.format,
                "status": e.status,
                "required": e.required,
                "sha256": e.sha256,
                "size": e.size,
                "parity": e.parity,
                "runtime": e.runtime,
                "convert_ms": e.convert_ms,
                "check_ms": e.check_ms,
                "error": e.error,
            }
            for e in obj.exports.all()
        ]

    def get_shadow(self, obj: ModelVersion) -> dict | None:
        from lifecycle import shadow

        return shadow.shadow_json(shadow.shadow_latest(obj))

    def get_approvals(self, obj: ModelVersion) -> list[dict]:
        return [
            {
                "decision": a.decision,
                "actor": a.actor_name,
                "channel": a.channel,
                "comment": a.comment,
                "round": a.round,
                "evidence_digest": a.evidence_digest,
                "at": a.at.isoformat().replace("+00:00", "Z"),
            }
            for a in obj.approvals.all()
        ]

    def get_aliases(self, obj: ModelVersion) -> list[str]:
        return sorted(alias.name for alias in obj.aliases.all())


class DatasetOutSerializer(serializers.ModelSerializer):
    created_by = serializers.SerializerMethodField()

    class Meta:
        model = Dataset
        fields = [
            "name",
            "version",
            "sha256",
            "size",
            "format",
            "rows",
            "schema",
            "description",
            "created_by",
            "created_at",
        ]

    def get_created_by(self, obj: Dataset) -> str | None:
        return obj.created_by.get_username() if obj.created_by else None


class DatasetDetailSerializer(DatasetOutSerializer):
    """One dataset, with its per-column summary statistics (lists leave them out: they can be long)."""

    class Meta(DatasetOutSerializer.Meta):
        fields = [*DatasetOutSerializer.Meta.fields, "stats"]


class AliasOutSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="version.version")

    class Meta:
        model = Alias
        fields = ["name", "version", "updated_at"]


class EventOutSerializer(serializers.ModelSerializer):
    class Meta:
        model = Event
        fields = ["id", "kind", "actor", "data", "at"]


class HistoryEntrySerializer(serializers.Serializer):
    version = serializers.IntegerField(source="version.version", allow_null=True)
    previous = serializers.IntegerField(source="previous.version", allow_null=True)
    kind = serializers.CharField()
    actor = serializers.CharField()
    reason = serializers.CharField()
    at = serializers.DateTimeField()


class StatusFilterSerializer(serializers.Serializer):
    status = serializers.MultipleChoiceField(choices=VersionStatus.choices, required=False)
    tag = serializers.CharField(required=False, max_length=64)


class VersionSearchSerializer(StatusFilterSerializer):
    """The query parameters of a version search (``GET /versions/`` and a model's version list)."""

    model = serializers.ListField(child=serializers.SlugField(max_length=100), required=False, max_length=100)
    model_contains = serializers.CharField(required=False, max_length=100)
    alias = serializers.SlugField(required=False, max_length=64)
    dataset = serializers.RegexField(
        r"^[-a-zA-Z0-9_]{1,100}(:[0-9]{1,9})?$",
        required=False,
        error_messages={"invalid": "a dataset name, or name:version"},
    )
    git_sha = serializers.RegexField(
        r"^[0-9a-fA-F]{4,64}$",
        required=False,
        error_messages={"invalid": "4 to 64 hex digits (a prefix is enough)"},
    )
    created_after = serializers.DateTimeField(required=False)
    created_before = serializers.DateTimeField(required=False)
    sort = serializers.ChoiceField(choices=["-created", "created"], required=False, default="-created")

    def validate(self, attrs: dict) -> dict:
        after, before = attrs.get("created_after"), attrs.get("created_before")
        if after and before and after >= before:
            raise serializers.ValidationError({"created_before": ["must be later than created_after"]})
        return attrs

    def search(self) -> VersionSearch:
        data = self.validated_data
        return VersionSearch(
            models=tuple(data.get("model") or ()),
            model_contains=data.get("model_contains", ""),
            status=tuple(sorted(data.get("status") or ())),
            tag=data.get("tag", ""),
            alias=data.get("alias", ""),
            dataset=data.get("dataset", ""),
            git_sha=data.get("git_sha", ""),
            created_after=data.get("created_after"),
            created_before=data.get("created_before"),
        )
