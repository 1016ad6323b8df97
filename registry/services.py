"""Catalog services: every write to the catalog goes through one of these functions.

They take keyword-only arguments, run in a transaction and write their audit Event in it. The API, the
pages and the workers all call them; none re-implements them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from registry import artifact_checks, datasets
from registry.errors import ChecksumMismatch, Conflict, NotFound, ServiceError
from registry.events import Actor, event_record
from registry.models import (
    Alias,
    Dataset,
    EventKind,
    ModelRole,
    ModelVersion,
    RegisteredModel,
    Role,
    Usage,
    VersionDataset,
    VersionParent,
    VersionStatus,
)
from registry.storage import blob_adopt, blob_local_path, blob_put

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upload:
    """A streamed upload on local disk, hashed on the way in.

    ``staged_key`` names a copy already in the store (a direct upload to S3): registration then moves
    that object to its content address instead of uploading the local file again.
    """

    path: Path
    sha256: str
    size: int
    filename: str
    staged_key: str | None = None


# --- models -------------------------------------------------------------------------------------


def model_create(
    *, name: str, actor: AbstractBaseUser, description: str = "", tags: list[str] | None = None, policy: dict
) -> RegisteredModel:
    """Create a registered model; its creator becomes its owner. ``policy`` is already validated.

    One transaction for the model, the owner role and the audit event; the unique name is the check
    (an IntegrityError is the 409), so there is no racy exists() before it.
    """
    try:
        with transaction.atomic():
            model = RegisteredModel.objects.create(
                name=name, description=description, tags=tags or [], policy=policy, created_by=actor
            )
            ModelRole.objects.create(model=model, user=actor, role=Role.OWNER)
            event_record(
                kind=EventKind.MODEL_CREATED, actor=actor, model=model, data={"name": name, "policy": policy}
            )
    except IntegrityError:
        raise Conflict(f"a model named {name!r} already exists", code="exists") from None
    return model


@transaction.atomic
def model_update(*, model: RegisteredModel, actor: Actor, **changes: Any) -> RegisteredModel:
    """Change a model's description and tags; the event records old and new values."""
    old = {field: getattr(model, field) for field in changes}
    for field, value in changes.items():
        setattr(model, field, value)
    model.save(update_fields=list(changes))
    event_record(kind=EventKind.MODEL_UPDATED, actor=actor, model=model, data={"old": old, "new": changes})
    return model


@transaction.atomic
def model_policy_set(*, model: RegisteredModel, actor: Actor, policy: dict) -> RegisteredModel:
    """Store a validated policy; the change is audited with the old and new documents."""
    old = model.policy
    model.policy = policy
    model.save(update_fields=["policy"])
    event_record(kind=EventKind.POLICY_CHANGED, actor=actor, model=model, data={"old": old, "new": policy})
    return model


@transaction.atomic
def model_role_grant(*, model: RegisteredModel, username: str, role: str, actor: Actor) -> ModelRole:
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise NotFound(f"no user named {username!r}")
    grant, _ = ModelRole.objects.get_or_create(model=model, user=user, role=role)
    event_record(kind=EventKind.ROLE_GRANTED, actor=actor, model=model, data={"user": username, "role": role})
    return grant


# --- versions -----------------------------------------------------------------------------------


def _resolve_datasets(specs: list[dict]) -> list[tuple[Dataset, str]]:
    resolved, missing = [], []
    for spec in specs:
        found = Dataset.objects.filter(name=spec["name"])
        if spec.get("version") not in (None, "latest"):
            found = found.filter(version=spec["version"])
        dataset = found.order_by("-version").first()
        if dataset is None:
            missing.append(f"{spec['name']}:{spec.get('version') or 'latest'}")
        else:
            resolved.append((dataset, spec.get("role") or "train"))
    if missing:
        raise ServiceError(
            f"unknown datasets: {', '.join(missing)}",
            fields={"metadata.datasets": [f"no dataset {m}" for m in missing]},
        )
    return resolved


def _resolve_parents(specs: list[dict]) -> list[tuple[ModelVersion, str]]:
    resolved, missing = [], []
    for spec in specs:
        parent = ModelVersion.objects.filter(model__name=spec["model"], version=spec["version"]).first()
        if parent is None:
            missing.append(f"{spec['model']}:{spec['version']}")
        else:
            resolved.append((parent, spec.get("kind") or "derived_from"))
    if missing:
        raise ServiceError(
            f"unknown parent versions: {', '.join(missing)}",
            fields={"metadata.parents": [f"no version {m}" for m in missing]},
        )
    return resolved


def _idempotent_replay(model: RegisteredModel, key: str | None, sha256: str) -> ModelVersion | None:
    if not key:
        return None
    existing = ModelVersion.objects.filter(model=model, idempotency_key=key).first()
    if existing is not None and existing.sha256 != sha256:
        raise Conflict(
            "this Idempotency-Key was already used for a different artifact; use a new key for a new push",
            code="idempotency_conflict",
        )
    return existing


def model_version_register(
    *,
    model: RegisteredModel,
    upload: Upload,
    metadata: dict[str, Any],
    actor: AbstractBaseUser,
    idempotency_key: str | None = None,
) -> tuple[ModelVersion, bool]:
    """Register a pushed artifact as the next version of ``model``; returns (version, created).

    1. Check the client's sha256 and the artifact's content, before anything is written.
    2. Return the existing version for a retried ``Idempotency-Key``.
    3. Store the bytes under their content address (outside the transaction: a slow upload to S3 must
       not hold the model's row lock; an orphan blob from a failed step 4 is harmless and shared). A
       direct upload's staged object is moved there instead.
    4. Under the model's row lock: allocate the next number, write the version, its links and its event.
    """
    claimed = metadata.get("sha256")
    if claimed and claimed.lower() != upload.sha256:
        raise ChecksumMismatch(
            f"sha256 mismatch: the metadata says {claimed} but the received bytes hash to {upload.sha256}",
            fields={"metadata.sha256": ["does not match the uploaded bytes"]},
        )
    replay = _idempotent_replay(model, idempotency_key, upload.sha256)
    if replay is not None:
        return replay, False
    try:
        info = artifact_checks.inspect_artifact(upload.path, filename=upload.filename)
    except artifact_checks.ArtifactRejected as exc:
        raise ServiceError(
            f"artifact refused: {exc.message}", code=exc.code, fields={"artifact": [exc.message]}
        ) from None
    dataset_links = _resolve_datasets(metadata.get("datasets") or [])
    parent_links = _resolve_parents(metadata.get("parents") or [])

    if upload.staged_key:
        key = blob_adopt(upload.staged_key, sha256=upload.sha256)
    else:
        with upload.path.open("rb") as fh:
            key = blob_put(fh, sha256=upload.sha256)

    with transaction.atomic():
        # The row lock serialises pushes to one model: numbers are allocated in order and gap-free,
        # and two retries of one Idempotency-Key cannot both pass the replay check.
        locked = RegisteredModel.objects.select_for_update().get(pk=model.pk)
        replay = _idempotent_replay(locked, idempotency_key, upload.sha256)
        if replay is not None:
            return replay, False
        number = locked.next_version
        RegisteredModel.objects.filter(pk=locked.pk).update(next_version=F("next_version") + 1)
        source = metadata.get("source") or {}
        version = ModelVersion.objects.create(
            model=locked,
            version=number,
            artifact_key=key,
            sha256=upload.sha256,
            size=upload.size,
            format=info.format,
            packaging=info.packaging,
            source=source,
            git_sha=(source.get("git_sha") or "")[:64],
            params=metadata.get("params") or {},
            metrics=metadata.get("metrics") or {},
            tags=metadata.get("tags") or [],
            description=metadata.get("description") or "",
            idempotency_key=idempotency_key,
            created_by=actor,
        )
        VersionDataset.objects.bulk_create(
            [VersionDataset(version=version, dataset=ds, role=role) for ds, role in dataset_links]
        )
        VersionParent.objects.bulk_create(
            [VersionParent(child=version, parent=parent, kind=kind) for parent, kind in parent_links]
        )
        event_record(
            kind=EventKind.VERSION_REGISTERED,
            actor=actor,
            version=version,
            data={
                "sha256": upload.sha256,
                "size": upload.size,
                "format": info.format,
                "details": info.details,
            },
        )
    return version, True


def version_usage_add(*, version_id: int, predictions: int = 0, downloads: int = 0) -> None:
    """Bump today's usage counters with one upsert (a cheap UPDATE, an INSERT on the first use of a day)."""
    day = timezone.now().date()
    updated = Usage.objects.filter(version_id=version_id, day=day).update(
        predictions=F("predictions") + predictions, downloads=F("downloads") + downloads
    )
    if not updated:
        try:
            with transaction.atomic():
                Usage.objects.create(
                    version_id=version_id, day=day, predictions=predictions, downloads=downloads
                )
        except IntegrityError:  # another request created today's row first
            Usage.objects.filter(version_id=version_id, day=day).update(
                predictions=F("predictions") + predictions, downloads=F("downloads") + downloads
            )


# --- aliases ------------------------------------------------------------------------------------


def _check_alias_name(name: str) -> None:
    if name in Alias.PROTECTED:
        raise ServiceError(
            f"the {name!r} alias is moved only by promotion (approve a version instead)",
            code="protected_alias",
        )


@transaction.atomic
def alias_set(*, model: RegisteredModel, name: str, version: ModelVersion, actor: Actor) -> Alias:
    _check_alias_name(name)
    if version.status == VersionStatus.RETIRED:
        raise Conflict(f"{version.label} is retired; restore it before pointing an alias at it")
    alias = Alias.objects.select_for_update().filter(model=model, name=name).first()
    old = alias.version.version if alias else None
    if alias is None:
        alias = Alias.objects.create(model=model, name=name, version=version)
    else:
        alias.version, alias.updated_at = version, timezone.now()
        alias.save(update_fields=["version", "updated_at"])
    event_record(
        kind=EventKind.ALIAS_SET,
        actor=actor,
        version=version,
        data={"alias": name, "old": old, "new": version.version},
    )
    return alias


@transaction.atomic
def alias_delete(*, model: RegisteredModel, name: str, actor: Actor) -> None:
    _check_alias_name(name)
    alias = Alias.objects.select_for_update().filter(model=model, name=name).select_related("version").first()
    if alias is None:
        raise NotFound(f"{model.name} has no alias {name!r}")
    event_record(
        kind=EventKind.ALIAS_DELETED,
        actor=actor,
        version=alias.version,
        data={"alias": name, "old": alias.version.version},
    )
    alias.delete()


# --- datasets -----------------------------------------------------------------------------------


def dataset_register(
    *, name: str, upload: Upload, actor: AbstractBaseUser, version: int | None = None, description: str = ""
) -> Dataset:
    """Register a dataset file (CSV, Parquet or NPZ) as ``name`` at ``version`` (the next one if None)."""
    try:
        info = datasets.inspect_dataset(upload.path, filename=upload.filename)
    except datasets.DatasetRejected as exc:
        raise ServiceError(
            f"dataset refused: {exc}", code="bad_dataset", fields={"file": [str(exc)]}
        ) from None
    with upload.path.open("rb") as fh:
        key = blob_put(fh, sha256=upload.sha256, kind="datasets")
    for _ in range(5):
        number = (
            version
            or (
                Dataset.objects.filter(name=name)
                .order_by("-version")
                .values_list("version", flat=True)
                .first()
                or 0
            )
            + 1
        )
        try:
            with transaction.atomic():
                dataset = Dataset.objects.create(
                    name=name,
                    version=number,
                    artifact_key=key,
                    sha256=upload.sha256,
                    size=upload.size,
                    format=info.format,
                    rows=info.rows,
                    schema=info.schema,
                    stats=info.stats,
                    description=description,
                    created_by=actor,
                )
                event_record(
                    kind=EventKind.DATASET_REGISTERED,
                    actor=actor,
                    dataset=dataset,
                    data={"name": name, "version": number, "sha256": upload.sha256, "rows": info.rows},
                )
                return dataset
        except IntegrityError:
            if version is not None:
                raise Conflict(f"dataset {name}:{version} already exists", code="exists") from None
    raise Conflict(f"could not allocate a version for dataset {name}; try again", code="busy")


def dataset_stats_fill(*, datasets_to_fill: Iterable[Dataset] | None = None) -> tuple[int, list[str]]:
    """Compute the summary statistics of datasets registered before they were kept (or of those given).

    Returns how many were filled and the problems met (a dataset whose bytes are gone is reported, not
    fatal). Each dataset is read once, in chunks, as at registration.
    """
    if datasets_to_fill is None:
        datasets_to_fill = Dataset.objects.filter(stats={}).order_by("id").iterator()
    filled, problems = 0, []
    for dataset in datasets_to_fill:
        try:
            with blob_local_path(dataset.artifact_key, suffix=f".{dataset.format}") as path:
                info = datasets.inspect_dataset(Path(path))
        except FileNotFoundError:
            problems.append(f"{dataset}: its bytes are not in the store")
            continue
        except datasets.DatasetRejected as exc:
            problems.append(f"{dataset}: {exc}")
            continue
        Dataset.objects.filter(pk=dataset.pk).update(stats=info.stats)
        filled += 1
    return filled, problems
