"""Catalog reads that are more than a one-liner."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import connection
from django.db.models import Count, Prefetch, QuerySet
from django.db.models.expressions import RawSQL

from registry.models import (
    Alias,
    Approval,
    Export,
    GateResult,
    ModelRole,
    ModelVersion,
    Promotion,
    RegisteredModel,
    Role,
    VersionDataset,
    VersionParent,
)

# What each role may do on a model. Staff users may do everything.
ROLE_GRANTS: dict[str, frozenset[str]] = {
    "read": frozenset({Role.VIEWER, Role.PUBLISHER, Role.APPROVER, Role.OWNER}),
    "push": frozenset({Role.PUBLISHER, Role.OWNER}),
    "approve": frozenset({Role.APPROVER, Role.OWNER}),
    "manage": frozenset({Role.OWNER}),
}


def user_can(user: AbstractBaseUser, model: RegisteredModel, action: str) -> bool:
    if not user.is_authenticated:
        return False
    if user.is_staff:
        return True
    return ModelRole.objects.filter(model=model, user=user, role__in=ROLE_GRANTS[action]).exists()


def models_visible_to(user: AbstractBaseUser) -> QuerySet[RegisteredModel]:
    models = RegisteredModel.objects.all()
    if user.is_staff:
        return models
    return models.filter(pk__in=ModelRole.objects.filter(user=user).values("model_id"))


def tagged(queryset: QuerySet, tag: str, field_name: str = "tags") -> QuerySet:
    """Filter rows whose JSON list of tags holds ``tag``, on PostgreSQL and SQLite alike."""
    if connection.vendor == "postgresql":
        return queryset.filter(**{f"{field_name}__contains": [tag]})
    table = queryset.model._meta.db_table
    return queryset.filter(
        pk__in=RawSQL(
            f'SELECT t.id FROM "{table}" t, json_each(t."{field_name}") j WHERE j.value = %s', [tag]
        )
    )


def model_status_counts(model: RegisteredModel) -> dict[str, int]:
    rows = ModelVersion.objects.filter(model=model).values("status").annotate(n=Count("id")).order_by()
    return {row["status"]: row["n"] for row in rows}


def model_champion(model: RegisteredModel) -> ModelVersion | None:
    alias = Alias.objects.filter(model=model, name="champion").select_related("version").first()
    return alias.version if alias else None


def version_detail_queryset() -> QuerySet[ModelVersion]:
    """Versions with everything the detail view shows, in a fixed number of queries."""
    return ModelVersion.objects.select_related("model", "created_by").prefetch_related(
        Prefetch("dataset_links", queryset=VersionDataset.objects.select_related("dataset")),
        Prefetch("parent_links", queryset=VersionParent.objects.select_related("parent__model")),
        Prefetch("gate_results", queryset=GateResult.objects.order_by("attempt", "gate_index", "slice")),
        Prefetch("aliases", queryset=Alias.objects.only("id", "name", "version_id")),
        Prefetch("exports", queryset=Export.objects.order_by("format")),
        Prefetch("approvals", queryset=Approval.objects.order_by("round", "at", "id")),
    )


def version_list(
    *,
    model: RegisteredModel | None = None,
    user: AbstractBaseUser | None = None,
    status: list[str] | None = None,
    tag: str | None = None,
) -> QuerySet[ModelVersion]:
    versions = ModelVersion.objects.select_related("model", "created_by")
    if model is not None:
        versions = versions.filter(model=model)
    elif user is not None and not user.is_staff:
        versions = versions.filter(model__in=ModelRole.objects.filter(user=user).values("model_id"))
    if status:
        versions = versions.filter(status__in=status)
    if tag:
        versions = tagged(versions, tag)
    return versions


def version_get(model: RegisteredModel, number: int) -> ModelVersion | None:
    return version_detail_queryset().filter(model=model, version=number).first()


def served_at(model: RegisteredModel, at: dt.datetime) -> Promotion | None:
    """The promotion in force at ``at``: its version served then (None: nothing had been promoted)."""
    return (
        Promotion.objects.filter(model=model, at__lte=at)
        .select_related("version", "previous")
        .order_by("-at", "-id")
        .first()
    )


# --- lineage ------------------------------------------------------------------------------------


@dataclass
class LineageGraph:
    nodes: list[dict[str, Any]] = field(default_factory=list)
    edges: list[dict[str, Any]] = field(default_factory=list)


_WALK = {
    # Each step follows one parent link; UNION drops repeats, so diamonds do not multiply rows.
    "up": """
        WITH RECURSIVE walk(id, depth) AS (
            SELECT CAST(%s AS BIGINT), 0
            UNION
            SELECT p.parent_id, w.depth + 1 FROM registry_versionparent p JOIN walk w ON p.child_id = w.id
            WHERE w.depth < %s
        ) SELECT id, MIN(depth) FROM walk GROUP BY id
    """,
    "down": """
        WITH RECURSIVE walk(id, depth) AS (
            SELECT CAST(%s AS BIGINT), 0
            UNION
            SELECT p.child_id, w.depth + 1 FROM registry_versionparent p JOIN walk w ON p.parent_id = w.id
            WHERE w.depth < %s
        ) SELECT id, MIN(depth) FROM walk GROUP BY id
    """,
}


def _walk(version_id: int, direction: str, depth: int) -> dict[int, int]:
    with connection.cursor() as cursor:
        cursor.execute(_WALK[direction], [version_id, depth])
        return {row[0]: row[1] for row in cursor.fetchall()}


def lineage_graph(version: ModelVersion, *, direction: str = "both", depth: int = 5) -> LineageGraph:
    """The lineage around ``version`` as nodes and edges, in a constant number of queries whatever the depth.

    Versions are reached through parent links (one recursive CTE per direction); datasets and exports
    hang off the versions found. Node ids are ``version:<model>:<n>``, ``dataset:<name>:<n>`` and
    ``export:<model>:<n>:<format>``.
    """
    found: dict[int, int] = {version.pk: 0}
    if direction in {"up", "both"}:
        for pk, hops in _walk(version.pk, "up", depth).items():
            found[pk] = min(found.get(pk, hops), hops)
    if direction in {"down", "both"}:
        for pk, hops in _walk(version.pk, "down", depth).items():
            found[pk] = min(found.get(pk, hops), hops)

    graph = LineageGraph()
    versions = (
        ModelVersion.objects.filter(pk__in=found)
        .select_related("model")
        .only("id", "version", "status", "format", "sha256", "created_at", "model__name")
    )
    ids: dict[int, str] = {}
    for v in versions:
        ids[v.pk] = f"version:{v.model.name}:{v.version}"
        graph.nodes.append(
            {
                "id": ids[v.pk],
                "type": "version",
                "model": v.model.name,
                "version": v.version,
                "status": v.status,
                "format": v.format,
                "depth": found[v.pk],
                "root": v.pk == version.pk,
            }
        )
    for link in VersionParent.objects.filter(child_id__in=found, parent_id__in=found).only(
        "child_id", "parent_id", "kind"
    ):
        graph.edges.append({"source": ids[link.parent_id], "target": ids[link.child_id], "kind": link.kind})
    seen_datasets: set[int] = set()
    for link in VersionDataset.objects.filter(version_id__in=found).select_related("dataset"):
        ds = link.dataset
        node_id = f"dataset:{ds.name}:{ds.version}"
        if ds.pk not in seen_datasets:
            seen_datasets.add(ds.pk)
            graph.nodes.append(
                {
                    "id": node_id,
                    "type": "dataset",
                    "name": ds.name,
                    "version": ds.version,
                    "sha256": ds.sha256,
                    "rows": ds.rows,
                }
            )
        graph.edges.append({"source": node_id, "target": ids[link.version_id], "kind": link.role})
    for export in Export.objects.filter(version_id__in=found).only(
        "id", "version_id", "format", "status", "sha256"
    ):
        node_id = f"export:{ids[export.version_id].removeprefix('version:')}:{export.format}"
        graph.nodes.append(
            {
                "id": node_id,
                "type": "export",
                "format": export.format,
                "status": export.status,
                "sha256": export.sha256,
            }
        )
        graph.edges.append({"source": ids[export.version_id], "target": node_id, "kind": "exported_to"})
    return graph
