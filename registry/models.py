"""The catalog: registered models, their versions, datasets, lineage links, aliases and the audit log.

Models hold fields, choices, constraints and cheap properties. Writes go through the services in
``registry/services.py`` and ``lifecycle/``; reads that are more than a one-liner through selectors.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone
from knox.models import AbstractAuthToken


class Role(models.TextChoices):
    VIEWER = "viewer"
    PUBLISHER = "publisher"
    APPROVER = "approver"
    OWNER = "owner"


class VersionStatus(models.TextChoices):
    REGISTERED = "registered"
    VALIDATING = "validating"
    REJECTED = "rejected"
    SHADOWING = "shadowing"
    AWAITING_APPROVAL = "awaiting_approval"
    PRODUCTION = "production"
    ARCHIVED = "archived"
    RETIRED = "retired"


class ArtifactFormat(models.TextChoices):
    KERAS = "keras"
    SAVEDMODEL = "savedmodel"
    ONNX = "onnx"
    TFLITE = "tflite"


class DatasetRole(models.TextChoices):
    TRAIN = "train"
    VALIDATION = "validation"
    TEST = "test"


class RegisteredModel(models.Model):
    name = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True, default="")
    tags = models.JSONField(default=list, blank=True)
    policy = models.JSONField(default=dict, blank=True)
    # The next version number to hand out. It is read and bumped under this row's lock inside the push
    # transaction, so numbers are gap-free: a push that rolls back gives its number back.
    next_version = models.PositiveIntegerField(default=1)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelRole(models.Model):
    """A user's role on one registered model. Staff users are admins of every model."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="roles")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="model_roles")
    role = models.CharField(max_length=16, choices=Role.choices)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "user", "role"], name="uniq_model_user_role")]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.model}"


class ModelVersion(models.Model):
    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    # Only lifecycle.states.version_transition writes status (and registration sets the first one).
    status = models.CharField(max_length=24, choices=VersionStatus.choices, default=VersionStatus.REGISTERED)
    status_reason = models.TextField(blank=True, default="")
    status_changed_at = models.DateTimeField(default=timezone.now)

    artifact_key = models.CharField(max_length=255, blank=True, default="")
    sha256 = models.CharField(max_length=64, db_index=True)
    size = models.BigIntegerField()
    format = models.CharField(max_length=16, choices=ArtifactFormat.choices)
    packaging = models.CharField(max_length=8, default="file")  # file | zip | tar.gz
    signature = models.JSONField(null=True, blank=True)

    source = models.JSONField(default=dict, blank=True)
    git_sha = models.CharField(max_length=64, blank=True, default="", db_index=True)
    params = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)  # as reported by CI: shown, never trusted
    tags = models.JSONField(default=list, blank=True)
    description = models.TextField(blank=True, default="")
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    # Pipeline bookkeeping. gate_attempt numbers validation runs (revalidate adds one). task_attempts
    # counts how often the current step was claimed without finishing; lease_expires_at is when a
    # claimed step is presumed lost (its worker died) so that the reconciler may hand it out again.
    gate_attempt = models.PositiveIntegerField(default=1)
    approval_round = models.PositiveIntegerField(default=0)  # bumped on each entry into awaiting_approval
    is_rollback = models.BooleanField(default=False)  # the current approval round is a rollback
    task_attempts = models.PositiveSmallIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)  # last time the reconciler re-sent it
    purged_at = models.DateTimeField(null=True, blank=True)
    # Retirement: set when the sweep warns that this version will be retired on ``retire_on``;
    # cleared when a use (or an exemption) cancels the warning.
    retirement_warned_at = models.DateTimeField(null=True, blank=True)
    retire_on = models.DateField(null=True, blank=True)

    class Meta:
        ordering = ["model_id", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["model", "version"], name="uniq_model_version"),
            models.UniqueConstraint(
                fields=["model", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="uniq_model_idempotency_key",
            ),
            # At most one production version per model, whatever the code above tries.
            models.UniqueConstraint(
                fields=["model"], condition=Q(status="production"), name="one_production_version_per_model"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "id"], name="version_status_id"),
            models.Index(fields=["model", "status"], name="version_model_status"),
            # Matches the "-created" and "created" sorts (selectors.VERSION_SORTS) to the last column.
            models.Index(fields=["created_at", "id"], name="version_created_at_id"),
            models.Index(fields=["size", "id"], name="version_size_id"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.version}"

    @property
    def label(self) -> str:
        return f"{self.model.name} v{self.version}"


class DirectUploadState(models.TextChoices):
    PENDING = "pending"  # parts are being sent to S3
    COMPLETING = "completing"  # claimed by one complete request: assembled, verified, registered
    COMPLETED = "completed"
    ABORTED = "aborted"
    FAILED = "failed"  # the assembled object was refused (checksum, size, artifact checks)


class DirectUpload(models.Model):
    """A presigned multipart upload of an artifact straight to S3 (registry.direct_uploads).

    Binds S3's upload id and the staging key to the model, the user and the declared size and sha256,
    so that only that user can complete it, once, into a version of that model.
    """

    id = models.UUIDField(primary_key=True)
    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="direct_uploads")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    s3_upload_id = models.CharField(max_length=1024)
    staging_key = models.CharField(max_length=255)
    filename = models.CharField(max_length=255)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    part_size = models.BigIntegerField()
    part_count = models.PositiveIntegerField()
    state = models.CharField(
        max_length=16, choices=DirectUploadState.choices, default=DirectUploadState.PENDING
    )
    error = models.TextField(blank=True, default="")
    version = models.ForeignKey(
        "ModelVersion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["state", "created_at"], name="direct_upload_state_created")]

    def __str__(self) -> str:
        return f"direct upload {self.id} of {self.filename} to {self.model_id}"


class Dataset(models.Model):
    name = models.SlugField(max_length=100)
    version = models.PositiveIntegerField()
    artifact_key = models.CharField(max_length=255)
    sha256 = models.CharField(max_length=64, db_index=True)
    size = models.BigIntegerField()
    format = models.CharField(max_length=16)  # csv | parquet | npz
    rows = models.BigIntegerField()
    schema = models.JSONField(default=list)  # [{"name", "dtype"}]
    # Per-column summary statistics, computed once at registration (registry.datasets.Profile):
    # {"columns": {name: {"kind", "count", "nulls", "mean", "std", "min", "max" | "distinct", "top"}}}
    stats = models.JSONField(default=dict, blank=True)
    description = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "-version"]
        constraints = [models.UniqueConstraint(fields=["name", "version"], name="uniq_dataset_version")]

    def __str__(self) -> str:
        return f"{self.name}:{self.version}"


class VersionDataset(models.Model):
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="dataset_links")
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="version_links")
    role = models.CharField(max_length=16, choices=DatasetRole.choices)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["version", "dataset", "role"], name="uniq_version_dataset_role")
        ]
        # "Which versions used this dataset": the search's dataset filter and the dataset page.
        indexes = [models.Index(fields=["dataset", "version"], name="versiondataset_dataset")]


class VersionParent(models.Model):
    """A lineage edge between versions: ``child`` was ``kind`` (fine_tuned_from, …) ``parent``."""

    child = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="parent_links")
    parent = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="child_links")
    kind = models.CharField(max_length=32, default="derived_from")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["child", "parent", "kind"], name="uniq_version_parent")
        ]


class Alias(models.Model):
    """A named pointer to one version of a model. ``champion`` is protected: only promotion moves it."""

    PROTECTED = frozenset({"champion"})

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="aliases")
    name = models.SlugField(max_length=64)
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="aliases")
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "name"], name="uniq_model_alias")]


class Promotion(models.Model):
    """What served, and from when: one row each time the serving version of a model changes."""

    class Kind(models.TextChoices):
        PROMOTE = "promote"
        ROLLBACK = "rollback"
        CLEAR = "clear"  # the champion was retired and nothing serves

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="promotions")
    version = models.ForeignKey(ModelVersion, null=True, on_delete=models.CASCADE, related_name="promotions")
    previous = models.ForeignKey(ModelVersion, null=True, on_delete=models.SET_NULL, related_name="+")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.PROMOTE)
    actor = models.CharField(max_length=150, blank=True, default="")
    reason = models.TextField(blank=True, default="")
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["model_id", "at", "id"]
        indexes = [models.Index(fields=["model", "at"], name="promotion_model_at")]


class Usage(models.Model):
    """Daily usage counters of a version; bumped with one upsert per batch, never read per request."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="usage")
    day = models.DateField()
    predictions = models.BigIntegerField(default=0)
    downloads = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "day"], name="uniq_usage_version_day")]


class TrafficRecord(models.Model):
    """One request's inputs, as served by the champion (``live``) or uploaded (``recorded``).

    Shadows replay these: the candidate runs on ``inputs``; ``outputs`` are the champion's answers as
    served by ``served_by``, reused when that version is the shadow's baseline. ``labels`` (ground truth,
    one per row) may arrive later, by ``request_id``; ``metadata`` holds the request's slice fields.

    Inputs and outputs are stored as raw array bytes, described by their layout (``lifecycle.traffic``
    packs and unpacks them): a shadow reads them ~35x faster than JSON (bench/serving_overhead.py).
    """

    class Source(models.TextChoices):
        LIVE = "live"
        RECORDED = "recorded"

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="traffic")
    request_id = models.CharField(max_length=64)
    source = models.CharField(max_length=8, choices=Source.choices)
    inputs = models.BinaryField()
    input_layout = models.CharField(max_length=2000)  # JSON: [[name, dtype, shape], ...]
    rows = models.PositiveIntegerField()
    outputs = models.BinaryField(null=True, blank=True)
    output_layout = models.CharField(max_length=2000, blank=True, default="")
    served_by = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    latency_ms = models.FloatField(null=True, blank=True)
    labels = models.JSONField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["model", "request_id"], name="uniq_traffic_model_request")
        ]
        indexes = [
            models.Index(fields=["model", "id"], name="traffic_model_id"),
            models.Index(fields=["model", "at"], name="traffic_model_at"),
        ]


class ShadowRun(models.Model):
    """A candidate answering beside the champion on the model's traffic, and the statistics it ends on.

    ``cursor`` is the last TrafficRecord id folded into ``stats``; both move in one transaction, so a
    batch is counted once whatever happens to the worker. ``summary`` is what people read.
    """

    class Status(models.TextChoices):
        RUNNING = "running"
        PASSED = "passed"
        FAILED = "failed"
        INSUFFICIENT = "insufficient"  # max_days passed before min_requests
        SUPERSEDED = "superseded"  # the baseline stopped serving; a new run pairs with the new champion
        CANCELLED = "cancelled"  # the candidate left shadowing (e.g. a required export failed)

    candidate = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="shadow_runs")
    baseline = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="+")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    sources = models.JSONField(default=list)  # ["live", "recorded"]
    since = models.DateTimeField()  # traffic at or after this joins the run's pool
    cursor = models.BigIntegerField(default=0)
    requests = models.PositiveIntegerField(default=0)
    rows = models.PositiveBigIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    stats = models.JSONField(default=dict, blank=True)  # accumulators (reservoirs, per-slice counts)
    summary = models.JSONField(default=dict, blank=True)  # agreement, diffs, shift, latency, slices…
    reason = models.TextField(blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["candidate"], condition=Q(status="running"), name="one_running_shadow_per_candidate"
            )
        ]
        indexes = [models.Index(fields=["status", "id"], name="shadow_status_id")]


class GateResult(models.Model):
    """One gate's outcome for one slice in one validation attempt. ``passed`` is None when not judged."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="gate_results")
    attempt = models.PositiveIntegerField()
    gate_index = models.PositiveSmallIntegerField()
    gate = models.CharField(max_length=32)
    metric = models.CharField(max_length=64, blank=True, default="")
    slice = models.CharField(max_length=200, blank=True, default="")
    value = models.FloatField(null=True, blank=True)
    baseline = models.FloatField(null=True, blank=True)
    threshold = models.FloatField(null=True, blank=True)
    passed = models.BooleanField(null=True)
    skipped_reason = models.TextField(blank=True, default="")
    rows = models.BigIntegerField(null=True, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["version_id", "attempt", "gate_index", "slice"]
        constraints = [
            models.UniqueConstraint(
                fields=["version", "attempt", "gate_index", "metric", "slice"], name="uniq_gate_result"
            )
        ]


class Export(models.Model):
    """One export branch of a version (onnx, tflite, tflite-dynamic, tfjs) and its parity check."""

    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        PASSED = "passed"
        FAILED = "failed"  # the conversion failed, or parity was missed
        NOT_APPLICABLE = "not_applicable"

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="exports")
    format = models.CharField(max_length=24)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    required = models.BooleanField(default=False)
    artifact_key = models.CharField(max_length=255, blank=True, default="")
    sha256 = models.CharField(max_length=64, blank=True, default="")
    size = models.BigIntegerField(null=True, blank=True)
    parity = models.JSONField(default=dict, blank=True)  # max/mean abs diff, atol, samples, passed
    runtime = models.CharField(max_length=100, blank=True, default="")
    convert_ms = models.FloatField(null=True, blank=True)
    check_ms = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    attempts = models.PositiveSmallIntegerField(default=0)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    purged_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["version_id", "format"]
        constraints = [
            models.UniqueConstraint(fields=["version", "format"], name="uniq_version_export_format")
        ]


class Approval(models.Model):
    """A sign-off decision: who, where (slack, web, api), when, and on what evidence."""

    class Decision(models.TextChoices):
        APPROVE = "approve"
        REJECT = "reject"

    class Channel(models.TextChoices):
        SLACK = "slack"
        WEB = "web"
        API = "api"

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="approvals")
    # Each entry into awaiting_approval opens a new round (a rollback or a restore asks again).
    round = models.PositiveIntegerField(default=1)
    decision = models.CharField(max_length=8, choices=Decision.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    actor_name = models.CharField(max_length=150)
    channel = models.CharField(max_length=8, choices=Channel.choices)
    comment = models.TextField(blank=True, default="")
    slack_user_id = models.CharField(max_length=32, blank=True, default="")
    slack_channel = models.CharField(max_length=32, blank=True, default="")
    slack_message_ts = models.CharField(max_length=32, blank=True, default="")
    evidence = models.JSONField(default=dict)  # the summary shown to the approver
    evidence_digest = models.CharField(max_length=64)  # sha256 of its canonical JSON
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["version_id", "round", "at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["version", "round", "actor_name"], name="uniq_approval_per_round_actor"
            )
        ]


class SlackIdentity(models.Model):
    """Maps a Slack user to a Modelgate user, so that a button click is a known person's decision."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="slack")
    slack_user_id = models.CharField(max_length=32, unique=True)
    team_id = models.CharField(max_length=32, blank=True, default="")


class SlackMessage(models.Model):
    """The approval request posted for one round, so that decisions can update it in place."""

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="slack_messages")
    round = models.PositiveIntegerField(default=1)
    channel = models.CharField(max_length=32)
    ts = models.CharField(max_length=32)
    posted_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "round"], name="uniq_slack_message_round")]


class SlackRequestSeen(models.Model):
    """Signatures of Slack requests already handled, to refuse a replay of the same request."""

    signature = models.CharField(max_length=100, unique=True)
    at = models.DateTimeField(default=timezone.now)


class Webhook(models.Model):
    """An owner's outgoing webhook: signed deliveries of chosen event kinds for one model."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=1000)
    events = models.JSONField(default=list)  # event kinds, e.g. ["version.promoted"]; [] means all
    secret = models.CharField(max_length=100)
    active = models.BooleanField(default=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)


class WebhookDelivery(models.Model):
    class State(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"  # gave up after the last retry

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=40)
    delivery_id = models.UUIDField(unique=True)
    payload = models.JSONField()
    state = models.CharField(max_length=12, choices=State.choices, default=State.PENDING)
    attempts = models.JSONField(default=list)  # [{"at", "status", "error", "ms"}]
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)


class EventKind(models.TextChoices):
    MODEL_CREATED = "model.created"
    MODEL_UPDATED = "model.updated"
    POLICY_CHANGED = "policy.changed"
    ROLE_GRANTED = "role.granted"
    VERSION_REGISTERED = "version.registered"
    VERSION_TRANSITIONED = "version.transitioned"
    GATES_COMPLETED = "gates.completed"
    STAGE_SKIPPED = "stage.skipped"
    TASK_RECLAIMED = "task.reclaimed"
    ALIAS_SET = "alias.set"
    ALIAS_DELETED = "alias.deleted"
    DATASET_REGISTERED = "dataset.registered"
    TOKEN_ISSUED = "token.issued"
    TOKEN_REVOKED = "token.revoked"
    VERSION_REVALIDATED = "version.revalidated"
    EXPORTS_COMPLETED = "exports.completed"
    EXPORT_COMPLETED = "export.completed"
    APPROVAL_RECORDED = "approval.recorded"
    APPROVAL_REFUSED = "approval.refused"
    VERSION_PROMOTED = "version.promoted"
    ROLLBACK_REQUESTED = "rollback.requested"
    SLACK_POSTED = "slack.posted"
    SLACK_REQUEST_REFUSED = "slack.refused"
    WEBHOOK_CREATED = "webhook.created"
    WEBHOOK_DELETED = "webhook.deleted"
    SLACK_IDENTITY_SET = "slack.identity_set"
    SHADOW_STARTED = "shadow.started"
    SHADOW_COMPLETED = "shadow.completed"
    SHADOW_ENDED = "shadow.ended"  # superseded by a promotion, or its candidate left shadowing
    TRAFFIC_UPLOADED = "traffic.uploaded"
    RETIREMENT_WARNED = "retirement.warned"
    RETIREMENT_CANCELLED = "retirement.cancelled"
    VERSION_PURGED = "version.purged"
    VERSION_RESTORED = "version.restored"
    VERSION_PINNED = "version.pinned"
    STORE_ORPHANS_DELETED = "store.orphans_deleted"  # blobs no record named, past the grace period


class Event(models.Model):
    """The append-only audit log. Every lifecycle action writes one in its own transaction."""

    kind = models.CharField(max_length=40, choices=EventKind.choices)
    model = models.ForeignKey(RegisteredModel, null=True, on_delete=models.CASCADE, related_name="events")
    version = models.ForeignKey(ModelVersion, null=True, on_delete=models.CASCADE, related_name="events")
    dataset = models.ForeignKey(Dataset, null=True, on_delete=models.CASCADE, related_name="events")
    actor = models.CharField(max_length=150)  # a username, or "system:<component>"
    data = models.JSONField(default=dict, blank=True)
    at = models.DateTimeField(default=timezone.now)
    # The hash chain (registry.audit): events are sealed in ``seq`` order shortly after they commit;
    # each sealed event carries the previous one's hash and its own, over its content and that hash.
    seq = models.BigIntegerField(null=True, blank=True, unique=True)
    prev_hash = models.CharField(max_length=64, blank=True, default="", db_default="")
    hash = models.CharField(max_length=64, blank=True, default="", db_default="")  # COPY writers omit both

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["version", "id"], name="event_version_id"),
            models.Index(fields=["id"], condition=Q(seq__isnull=True), name="event_unsealed"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} by {self.actor} at {self.at:%Y-%m-%d %H:%M:%S}"


class ApiToken(AbstractAuthToken):
    """An API token (knox): only its hash is stored; it expires and can be revoked on its own."""

    name = models.CharField(max_length=100, blank=True, default="")

    class Meta:
        ordering = ["-created"]
