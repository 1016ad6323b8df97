"""The catalog at scale: pages and API lists with 100,000 versions across 1,000 models (issue #8).

    .venv/bin/python bench/catalog_scale.py                 # ~9 minutes; prints a Markdown table
    .venv/bin/python bench/catalog_scale.py --keep          # leave the seeded database for a rerun
    .venv/bin/python bench/catalog_scale.py --reuse --keep  # measure again without seeding (~8 min)
    .venv/bin/python bench/catalog_scale.py --reuse --only "model page"   # some endpoints only

1. A PostgreSQL database ``bench_scale`` is created, migrated and seeded in bulk (``bulk_create`` in
   batches): ``--models`` registered models, ``--versions`` versions, of which ``--big-versions`` belong
   to the model ``big`` and the rest are spread unevenly over the others. Statuses are what a year of
   pushes leaves behind: mostly archived, rejected and retired; one production version (the
   ``champion`` alias, its Promotion rows and approvals) on most models; ``--awaiting`` versions
   awaiting approval (the inbox), some already approved once; a few still in the pipeline. Versions
   carry tags, a git SHA, sources, params and metrics, dataset links, gate results and audit events,
   and are created over the past year. ``VACUUM ANALYZE`` ends the seed. ``--reuse`` skips all of
   this when the database is already seeded with the same sizes (migrations still run).
2. In this process, each endpoint is requested once through Django's test client to count its SQL
   statements and their time (and, for endpoints with query parameters, to check that the parameters
   changed the rows listed: a parameter the code does not know is flagged, not measured as a feature).
   The slowest statement of each endpoint over ``--explain-ms`` is run again under
   ``EXPLAIN (ANALYZE, BUFFERS)``.
3. gunicorn serves the same database (DEBUG off, ``--workers`` sync workers, or gthread workers with
   ``--threads N`` as in the Procfile); each endpoint gets
   ``--warmup`` unmeasured requests, then ``--requests`` sequential ones (p50, p99, max), and with
   ``--clients N`` the same number again from N concurrent clients.

UI pages are requested with a staff user's session cookie, API endpoints with the same user's token;
``VIEWER_ENDPOINTS`` are requested as ``reviewer``, a non-staff user with roles on some models.
The endpoint lists below are (label, path) pairs: add a line to measure another one. Paths may name
facts of the seed in braces ({big_champion}, {rare_tag}, ...; see ``seed``).

Results: a JSON file (``--out``, default var/bench/catalog_scale.json; ``--json`` also prints it) and
a Markdown table on stdout. The budget of issue #8 is a p99 under 200 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    BENCH_VAR,
    PG_ADMIN_URL,
    REPO,
    db_drop,
    db_recreate,
    free_port,
    log,
    machine_facts,
    modelgate_env,
    running,
    wait_http,
    write_json,
)
from loadgen import Client, _CpuSnapshot, _delta, run_phase

DB = "bench_scale"
BROKER = "redis://127.0.0.1:6379/13"
BUDGET_MS = 200.0

# (label, path). UI paths are requested with the staff session, /api/ paths with the staff token.
ENDPOINTS: list[tuple[str, str]] = [
    ("ui model list", "/"),
    ("ui model list, last page", "/?page={model_pages}"),
    ("ui model list, search", "/?q=model-09"),
    ("ui model page big", "/models/big/"),
    ("ui model page big, page 80", "/models/big/?page=80"),
    ("ui model page big, archived", "/models/big/?status=archived"),
    ("ui model page big, archived, page 40", "/models/big/?status=archived&page=40"),
    ("ui model page big, sort created", "/models/big/?sort=created"),
    ("ui model page big, sort status", "/models/big/?sort=status"),
    ("ui model page big, sort -size, page 80", "/models/big/?sort=-size&page=80"),
    ("ui model page, a typical model", "/models/{typical}/"),
    ("ui search", "/search/"),
    ("ui search, page 500", "/search/?page=500"),
    ("ui search, model name", "/search/?q=model-09"),
    ("ui search, awaiting", "/search/?status=awaiting_approval"),
    ("ui search, tag (rare)", "/search/?tag={rare_tag}"),
    ("ui search, dataset", "/search/?dataset={dataset_ref}"),
    ("ui search, git sha prefix", "/search/?git_sha={git_sha_prefix}"),
    ("ui search, date range", "/search/?created_after={month_ago}&created_before={week_ago}"),
    ("ui search, sort -size", "/search/?sort=-size"),
    ("ui inbox", "/inbox/"),
    ("ui inbox count", "/inbox/count/"),
    ("ui version page (awaiting)", "/models/big/versions/{big_awaiting}/"),
    ("ui version page (champion)", "/models/big/versions/{big_champion}/"),
    ("ui dataset page", "/datasets/{dataset}/2/"),
    ("api models", "/api/v1/models/"),
    ("api models, search", "/api/v1/models/?search=model-09"),
    ("api model big", "/api/v1/models/big/"),
    ("api big versions", "/api/v1/models/big/versions/"),
    ("api big versions, archived", "/api/v1/models/big/versions/?status=archived"),
    ("api big versions, sort created", "/api/v1/models/big/versions/?sort=created"),
    ("api versions", "/api/v1/versions/"),
    ("api versions, awaiting", "/api/v1/versions/?status=awaiting_approval"),
    ("api versions, tag (common)", "/api/v1/versions/?tag=release"),
    ("api versions, tag (rare)", "/api/v1/versions/?tag={rare_tag}"),
    # The search parameters of issue #8. A parameter the code does not know lists the same rows as the
    # path without it: the table flags it (values are chosen so that each one changes the first page).
    ("api versions, model", "/api/v1/versions/?model=big"),
    ("api versions, model_contains", "/api/v1/versions/?model_contains=model-09"),
    ("api versions, model + status", "/api/v1/versions/?model=big&status=archived"),
    ("api versions, alias champion", "/api/v1/versions/?alias=champion"),
    ("api versions, alias staging", "/api/v1/versions/?alias=staging"),
    ("api versions, dataset name", "/api/v1/versions/?dataset={dataset}"),
    ("api versions, dataset name:version", "/api/v1/versions/?dataset={dataset_ref}"),
    ("api versions, git_sha", "/api/v1/versions/?git_sha={git_sha}"),
    ("api versions, git_sha prefix", "/api/v1/versions/?git_sha={git_sha_prefix}"),
    (
        "api versions, created window",
        "/api/v1/versions/?created_after={window_after}&created_before={window_before}",
    ),
    ("api versions, sort created", "/api/v1/versions/?sort=created"),
    ("api versions, sort created + archived", "/api/v1/versions/?sort=created&status=archived"),
]

# The same, as ``reviewer``: not staff, a viewer of some models and an approver of fewer.
VIEWER_ENDPOINTS: list[tuple[str, str]] = [
    ("viewer ui model list", "/"),
    ("viewer ui inbox", "/inbox/"),
    ("viewer ui search", "/search/"),
    ("viewer ui dataset page", "/datasets/{dataset}/2/"),
    ("viewer api versions", "/api/v1/versions/"),
    ("viewer api versions, awaiting", "/api/v1/versions/?status=awaiting_approval"),
    ("viewer api versions, tag (rare)", "/api/v1/versions/?tag={rare_tag}"),
]

STAFF, VIEWER = "bench", "reviewer"


# --- seed ---------------------------------------------------------------------------------------------


def _hex(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(n * 4):0{n}x}"


def _plan_statuses(n: int, *, awaiting: bool, pipeline: bool, production: bool, rng: random.Random):
    """Statuses of versions 1..n (index 0 is v1) and the index of the production version (or None)."""
    from registry.models import VersionStatus as S

    statuses: list[str] = [""] * n
    top = n - 1
    if awaiting:
        statuses[top] = S.AWAITING_APPROVAL
        top -= 1
    elif pipeline:
        statuses[top] = rng.choice([S.REGISTERED, S.VALIDATING, S.SHADOWING])
        top -= 1
    prod = None
    if production and top >= 0:
        prod = max(0, top - rng.choice([0, 0, 0, 1, 2]))
        for i in range(prod + 1, top + 1):
            statuses[i] = S.REJECTED
        statuses[prod] = S.PRODUCTION
        older = prod
    else:
        older = top + 1
    for i in range(older):
        if i < older * 0.3:
            statuses[i] = S.RETIRED if rng.random() < 0.7 else S.ARCHIVED
        else:
            statuses[i] = S.ARCHIVED if rng.random() < 0.65 else S.REJECTED
    return statuses, prod


def seed(args: argparse.Namespace) -> dict:
    """Bulk-create the catalog; return the facts the endpoint paths refer to."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from registry.models import (
        Alias,
        Approval,
        Dataset,
        Event,
        EventKind,
        GateResult,
        ModelRole,
        ModelVersion,
        Promotion,
        RegisteredModel,
        Role,
        VersionDataset,
    )
    from registry.models import VersionStatus as S

    rng = random.Random(args.seed)
    now = timezone.now().replace(microsecond=0)
    year_ago = now - dt.timedelta(days=365)
    batch = args.batch
    timings: dict[str, float] = {}

    def timed(label: str, t0: float) -> None:
        timings[label] = round(time.perf_counter() - t0, 2)
        log(f"  {label}: {timings[label]} s")

    with transaction.atomic():
        t0 = time.perf_counter()
        users = get_user_model()
        names = [STAFF, VIEWER, "approver-1", "approver-2", *(f"ci-bot-{i}" for i in range(5))]
        users.objects.bulk_create(
            [
                users(username=n, is_staff=n == STAFF, is_superuser=n == STAFF, password="!", email="")
                for n in names
            ]
        )
        user = {u.username: u for u in users.objects.filter(username__in=names)}
        bots = [user[f"ci-bot-{i}"] for i in range(5)]

        # Models: big first, then model-0001 ... with an uneven number of versions each.
        n_models = args.models
        others = n_models - 1
        rest = args.versions - args.big_versions
        weights = [rng.lognormvariate(0, 1) for _ in range(others)]
        scale = (rest - others) / sum(weights)
        counts = [1 + int(w * scale) for w in weights]
        for i in range(rest - sum(counts)):
            counts[i % others] += 1
        counts = [args.big_versions, *counts]
        model_names = ["big", *(f"model-{i:04d}" for i in range(1, n_models))]
        topics = ["vision", "nlp", "tabular", "speech", "ranking", "fraud", "forecast"]
        models = [
            RegisteredModel(
                name=name,
                description=f"{topics[i % len(topics)]} model {name}",
                tags=sorted(
                    {topics[i % len(topics)], f"team-{i % 5}"} | ({"critical"} if i % 9 == 0 else set())
                ),
                policy={"approval": {"min_approvals": 2}} if i % 10 == 0 else {},
                next_version=counts[i] + 1,
                created_by=bots[i % 5],
                created_at=year_ago + dt.timedelta(days=rng.uniform(0, 30)),
            )
            for i, name in enumerate(model_names)
        ]
        RegisteredModel.objects.bulk_create(models, batch_size=batch)
        timed(f"{n_models} models", t0)

        t0 = time.perf_counter()
        datasets = [
            Dataset(
                name=f"ds-{topic}",
                version=v,
                artifact_key=f"datasets/ds-{topic}/{v}/data.parquet",
                sha256=_hex(rng, 64),
                size=rng.randint(10**6, 10**9),
                format="parquet",
                rows=rng.randint(10**4, 10**7),
                schema=[{"name": "x", "dtype": "float32"}, {"name": "y", "dtype": "int64"}],
                created_by=user["approver-1"],
                created_at=year_ago + dt.timedelta(days=120 * (v - 1)),
            )
            for topic in topics
            for v in (1, 2, 3)
        ]
        Dataset.objects.bulk_create(datasets)
        by_topic = {(d.name, d.version): d for d in datasets}

        roles = [ModelRole(model=m, user=bots[i % 5], role=Role.PUBLISHER) for i, m in enumerate(models)]
        roles += [ModelRole(model=m, user=user[VIEWER], role=Role.VIEWER) for m in models[1:301]]
        roles += [ModelRole(model=m, user=user[VIEWER], role=Role.APPROVER) for m in models[1:101]]
        ModelRole.objects.bulk_create(roles, batch_size=batch)

        awaiting_models = {0, *rng.sample(range(1, n_models), min(others, args.awaiting - 1))}
        formats = ["onnx", "onnx", "keras", "savedmodel", "tflite"]
        rare = set(rng.sample(range(args.versions), 25))
        # Plan every version first, then insert them in the order they were pushed, so that ids grow
        # with created_at across models as they do in a real registry (the -id orderings rely on it).
        plan: list[
            tuple[dt.datetime, int, int, str, bool]
        ] = []  # (created, model index, number, status, prod)
        for mi, (model, n) in enumerate(zip(models, counts, strict=True)):
            statuses, prod = _plan_statuses(
                n,
                awaiting=mi in awaiting_models,
                pipeline=mi not in awaiting_models and rng.random() < 0.03,
                production=rng.random() < 0.85 or mi == 0,
                rng=rng,
            )
            start = model.created_at
            end = now - dt.timedelta(hours=rng.uniform(1, 72))
            times = sorted(start + (end - start) * rng.random() for _ in range(n))
            plan += [(created, mi, idx + 1, statuses[idx], idx == prod) for idx, created in enumerate(times)]
        plan.sort()
        # What the later rows need of each version: (pk, model index, number, status, created, changed).
        info: list[tuple[int, int, int, str, dt.datetime, dt.datetime]] = []
        production: dict[int, int] = {}  # model index -> position in ``info``
        for first in range(0, len(plan), batch):
            chunk = plan[first : first + batch]
            rows = []
            for serial, (created, mi, number, status, _) in enumerate(chunk, start=first):
                model, bot, fmt = models[mi], bots[mi % 5], rng.choice(formats)
                tags = []
                if rng.random() < 0.5:
                    tags.append("nightly")
                if rng.random() < 0.2:
                    tags.append("release")
                if status in (S.AWAITING_APPROVAL, S.PRODUCTION):
                    tags.append("candidate")
                if serial in rare:
                    tags.append("hotfix-cve")
                changed = min(now, created + dt.timedelta(minutes=rng.uniform(10, 4 * 24 * 60)))
                rows.append(
                    ModelVersion(
                        model=model,
                        version=number,
                        status=status,
                        status_reason="" if status != S.REJECTED else "gate metric failed: accuracy",
                        status_changed_at=changed,
                        artifact_key=f"models/{model.name}/{number}/model.{fmt}",
                        sha256=_hex(rng, 64),
                        size=rng.randint(10**6, 5 * 10**8),
                        format=fmt,
                        packaging="zip" if fmt == "savedmodel" else "file",
                        source={
                            "ci_run_url": f"https://ci.example.com/runs/{serial}",
                            "branch": "main" if rng.random() < 0.8 else f"feature-{serial % 97}",
                            "author": bot.username,
                        },
                        git_sha=_hex(rng, 40),
                        params={"lr": round(rng.uniform(1e-4, 1e-2), 5), "epochs": rng.randint(5, 50)},
                        metrics={
                            "accuracy": round(rng.uniform(0.7, 0.99), 4),
                            "loss": round(rng.random(), 4),
                        },
                        tags=tags,
                        created_by=bot,
                        created_at=created,
                        approval_round=1 if status in (S.AWAITING_APPROVAL, S.PRODUCTION) else 0,
                        purged_at=changed if status == S.RETIRED and rng.random() < 0.5 else None,
                    )
                )
            ModelVersion.objects.bulk_create(rows, batch_size=batch)
            for v, (_, mi, _, _, is_prod) in zip(rows, chunk, strict=True):
                if is_prod:
                    production[mi] = len(info)
                info.append((v.pk, mi, v.version, v.status, v.created_at, v.status_changed_at))
        timed(f"{len(info)} versions", t0)

        t0 = time.perf_counter()
        aliases, promotions, approvals = [], [], []
        per_model: dict[int, list[int]] = {}
        for pos, row in enumerate(info):
            per_model.setdefault(row[1], []).append(pos)
        for mi, pos in production.items():
            pk, _, _, _, _, changed = info[pos]
            aliases.append(Alias(model=models[mi], name="champion", version_id=pk, updated_at=changed))
            earlier = [p for p in per_model[mi] if p < pos and info[p][3] == S.ARCHIVED]
            prev = info[earlier[-1]] if earlier else None
            if prev is not None:
                promotions.append(
                    Promotion(model=models[mi], version_id=prev[0], actor="approver-1", at=prev[5])
                )
            promotions.append(
                Promotion(
                    model=models[mi],
                    version_id=pk,
                    previous_id=prev[0] if prev else None,
                    actor="approver-1",
                    at=changed,
                )
            )
            approvals.append(_approval(Approval, pk, user["approver-1"], changed))
        awaiting_rows = [row for row in info if row[3] == S.AWAITING_APPROVAL]
        for k, row in enumerate(awaiting_rows):
            if k % 2 == 0:
                approvals.append(_approval(Approval, row[0], user["approver-1"], row[5]))
            if k < 10:  # decided by the staff user already: not in their inbox
                approvals.append(_approval(Approval, row[0], user[STAFF], row[5]))
            if k % 3 == 0:
                aliases.append(
                    Alias(model=models[row[1]], name="staging", version_id=row[0], updated_at=row[5])
                )
        Alias.objects.bulk_create(aliases, batch_size=batch)
        Promotion.objects.bulk_create(promotions, batch_size=batch)
        Approval.objects.bulk_create(approvals, batch_size=batch)
        timed(f"{len(aliases)} aliases, {len(promotions)} promotions, {len(approvals)} approvals", t0)

        t0 = time.perf_counter()
        links, gates = [], []
        n_links = n_gates = 0
        judged = {S.AWAITING_APPROVAL, S.PRODUCTION, S.SHADOWING}
        for pk, mi, _, status, created, _ in info:
            topic = topics[mi % len(topics)]
            ds_version = min(3, 1 + (created - year_ago).days // 120)
            links.append(
                VersionDataset(version_id=pk, dataset=by_topic[(f"ds-{topic}", ds_version)], role="train")
            )
            if rng.random() < 0.4:
                links.append(
                    VersionDataset(
                        version_id=pk, dataset=by_topic[(f"ds-{topic}", ds_version)], role="validation"
                    )
                )
            if status in judged or (status == S.REJECTED and rng.random() < 0.5) or rng.random() < 0.05:
                failed = status == S.REJECTED
                for gi, (gate, metric, slice_) in enumerate(
                    [
                        ("loads", "", ""),
                        ("metric", "accuracy", ""),
                        ("metric", "accuracy", "country=fr"),
                        ("no_regression", "accuracy", ""),
                    ]
                ):
                    value = rng.uniform(0.7, 0.99) if metric else None
                    gates.append(
                        GateResult(
                            version_id=pk,
                            attempt=1,
                            gate_index=gi,
                            gate=gate,
                            metric=metric,
                            slice=slice_,
                            value=value,
                            threshold=0.8 if metric else None,
                            passed=not (failed and gi == 1),
                            rows=10_000,
                            duration_ms=rng.uniform(50, 5000),
                            created_at=created,
                        )
                    )
            if len(links) >= batch:
                VersionDataset.objects.bulk_create(links, batch_size=batch)
                n_links += len(links)
                links.clear()
            if len(gates) >= batch:
                GateResult.objects.bulk_create(gates, batch_size=batch)
                n_gates += len(gates)
                gates.clear()
        VersionDataset.objects.bulk_create(links, batch_size=batch)
        GateResult.objects.bulk_create(gates, batch_size=batch)
        n_links += len(links)
        n_gates += len(gates)
        timed(f"{n_links} dataset links, {n_gates} gate results", t0)

        t0 = time.perf_counter()
        events: list = []
        n_events = 0
        for pk, mi, number, status, created, changed in info:
            model = models[mi]
            events.append(
                Event(
                    kind=EventKind.VERSION_REGISTERED,
                    model=model,
                    version_id=pk,
                    actor=bots[mi % 5].username,
                    data={"version": number},
                    at=created,
                )
            )
            if status != S.REGISTERED:
                events.append(
                    Event(
                        kind=EventKind.VERSION_TRANSITIONED,
                        model=model,
                        version_id=pk,
                        actor="system:pipeline",
                        data={"from": "validating", "to": status},
                        at=changed,
                    )
                )
            if len(events) >= batch:
                Event.objects.bulk_create(events, batch_size=batch)
                n_events += len(events)
                events.clear()
        Event.objects.bulk_create(events, batch_size=batch)
        n_events += len(events)
        timed(f"{n_events} events", t0)

    t0 = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    timed("VACUUM ANALYZE", t0)

    big_rows = [row for row in info if row[1] == 0]
    big_champion = next(row[2] for row in big_rows if row[3] == S.PRODUCTION)
    big_awaiting = next(row[2] for row in big_rows if row[3] == S.AWAITING_APPROVAL)
    typical = sorted(range(1, n_models), key=lambda i: counts[i])[others // 2]
    sha_of = ModelVersion.objects.filter(model=models[0], version=big_rows[len(big_rows) // 3][2])
    git_sha = sha_of.values_list("git_sha", flat=True).get()
    # A window of a few hours holds fewer versions than a page, so each bound changes the first page.
    window = info[len(info) * 2 // 3][4].replace(minute=0, second=0)
    facts = {
        "models": n_models,
        "versions": len(info),
        "big_versions": args.big_versions,
        "seed": args.seed,
        "big_champion": big_champion,
        "big_awaiting": big_awaiting,
        "typical": model_names[typical],
        "typical_versions": counts[typical],
        "largest_other_versions": max(counts[1:]),
        "model_pages": -(-n_models // 50),
        "rare_tag": "hotfix-cve",
        "dataset": f"ds-{topics[1]}",
        "dataset_ref": f"ds-{topics[1]}:2",
        "git_sha": git_sha,
        "git_sha_prefix": git_sha[:7],
        "month_ago": (now - dt.timedelta(days=30)).date().isoformat(),
        "week_ago": (now - dt.timedelta(days=7)).date().isoformat(),
        "window_after": window.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "window_before": (window + dt.timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "awaiting_versions": len(awaiting_rows),
        "status_counts": dict(collections_counter(row[3] for row in info)),
        "rows": {"dataset_links": n_links, "gate_results": n_gates, "events": n_events},
        "seed_timings_s": timings,
    }
    return facts


def collections_counter(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[item] = out.get(item, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _approval(Approval, version_id: int, actor, at: dt.datetime):
    evidence = {"gates": "3 passed, 0 skipped, 0 failed"}
    return Approval(
        version_id=version_id,
        round=1,
        decision="approve",
        actor=actor,
        actor_name=actor.username,
        channel="web",
        evidence=evidence,
        evidence_digest=hashlib.sha256(json.dumps(evidence, sort_keys=True).encode()).hexdigest(),
        at=at,
    )


MARKER = "bench_scale_seed"


def seeded_facts(args: argparse.Namespace) -> dict | None:
    """The facts of an earlier seed of the same sizes, when ``DB`` holds one."""
    import psycopg

    try:
        with psycopg.connect(f"{PG_ADMIN_URL}/{DB}", connect_timeout=5) as conn:
            row = conn.execute(f"SELECT facts FROM {MARKER}").fetchone()
    except psycopg.Error:
        return None
    if row is None:
        return None
    facts = row[0]
    wanted = {"models": args.models, "versions": args.versions, "big_versions": args.big_versions}
    return facts if all(facts.get(k) == v for k, v in wanted.items()) else None


def save_facts(facts: dict) -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE IF NOT EXISTS {MARKER} (facts jsonb NOT NULL)")
        cursor.execute(f"DELETE FROM {MARKER}")
        cursor.execute(f"INSERT INTO {MARKER} (facts) VALUES (%s)", [json.dumps(facts)])


# --- credentials -----------------------------------------------------------------------------------


def credentials() -> dict[str, dict[str, str]]:
    """Per user: a session cookie for the pages and an API token."""
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client as DjangoClient

    from registry.auth import token_issue

    out = {}
    for name in (STAFF, VIEWER):
        user = get_user_model().objects.get(username=name)
        client = DjangoClient()
        client.force_login(user)
        _, token = token_issue(user=user, name="bench-catalog-scale", days=1, actor="system:bench")
        out[name] = {
            "cookie": f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}",
            "token": token,
        }
    return out


def headers_for(path: str, cred: dict[str, str]) -> dict[str, str]:
    if path.startswith("/api/"):
        return {"Authorization": f"Bearer {cred['token']}", "Accept": "application/json"}
    return {"Cookie": cred["cookie"], "Accept": "text/html"}


# --- in-process: queries, changed rows, plans -------------------------------------------------------


def _fingerprint(path: str, body: bytes) -> object:
    """What a list shows: the (model, version) pairs of an API page, or the links of a page (pagination
    links, which carry the query string, left out)."""
    if path.startswith("/api/"):
        with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
            results = json.loads(body)["results"]
            return [(r.get("model"), r.get("version"), r.get("name")) for r in results]
        return body
    return [h for h in re.findall(rb'href="([^"]+)"', body) if b"?" not in h]


def _non_page_params(path: str) -> list[tuple[str, str]]:
    return [(k, v) for k, v in parse_qsl(urlsplit(path).query) if k not in {"page", "page_size", "cursor"}]


def inprocess(endpoints: list[tuple[str, str, str]], creds: dict, explain_ms: float) -> dict[str, dict]:
    from django.db import connection
    from django.test import Client as DjangoClient
    from django.test.utils import CaptureQueriesContext

    clients: dict[tuple[str, bool], DjangoClient] = {}

    def client(user: str, api: bool) -> DjangoClient:
        if (user, api) not in clients:
            cred = creds[user]
            if api:
                c = DjangoClient(
                    headers={"Authorization": f"Bearer {cred['token']}", "Accept": "application/json"},
                    raise_request_exception=False,
                )
            else:
                c = DjangoClient(raise_request_exception=False)
                c.cookies.load(cred["cookie"])
            clients[(user, api)] = c
        return clients[(user, api)]

    out: dict[str, dict] = {}
    for label, user, path in endpoints:
        c = client(user, path.startswith("/api/"))
        c.get(path)  # warm: imports, template compilation, the first query plans
        with CaptureQueriesContext(connection) as ctx:
            t0 = time.perf_counter()
            resp = c.get(path)
            wall = (time.perf_counter() - t0) * 1000
        queries = ctx.captured_queries
        slowest = max(queries, key=lambda q: float(q["time"]), default={"sql": "", "time": "0"})
        body = resp.content
        row = {
            "status": resp.status_code,
            "queries": len(queries),
            "db_ms": round(sum(float(q["time"]) for q in queries) * 1000, 1),
            "wall_ms": round(wall, 1),
            "bytes": len(body),
            "slowest_ms": round(float(slowest["time"]) * 1000, 1),
            "slowest_sql": slowest["sql"],
            "params_ignored": [],
            "statements": [(round(float(q["time"]) * 1000, 1), q["sql"][:300]) for q in queries],
        }
        # A parameter is flagged when the rows listed are the same without it (the others kept).
        query = parse_qsl(urlsplit(path).query)
        for key, _ in _non_page_params(path):
            others = "&".join(f"{k}={v}" for k, v in query if k != key)
            without = urlsplit(path).path + (f"?{others}" if others else "")
            if _fingerprint(path, c.get(without).content) == _fingerprint(path, body):
                row["params_ignored"].append(key)
        if row["slowest_ms"] >= explain_ms and slowest["sql"].lstrip().upper().startswith(("SELECT", "WITH")):
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + slowest["sql"])
                row["plan"] = "\n".join(r[0] for r in cursor.fetchall())
        out[label] = row
        flag = f" (same rows without {', '.join(row['params_ignored'])})" if row["params_ignored"] else ""
        log(
            f"  {label}: HTTP {row['status']}, {row['queries']} queries, {row['db_ms']} ms in SQL "
            f"(slowest {row['slowest_ms']} ms), {row['wall_ms']} ms{flag}"
        )
    connection.close()
    return out


# --- over HTTP --------------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def measure(port: int, pid: int, path: str, headers: dict[str, str], args: argparse.Namespace) -> dict:
    client = Client(port, headers)
    try:
        for _ in range(args.warmup):
            client.call("GET", path)
        latencies: list[float] = []
        errors, first_error = 0, ""
        before = _CpuSnapshot.take(pid)
        deadline = time.monotonic() + args.max_seconds
        for _ in range(args.requests):
            t0 = time.perf_counter()
            status, body = client.call("GET", path)
            latencies.append((time.perf_counter() - t0) * 1000)
            if status != 200:
                errors += 1
                first_error = first_error or f"HTTP {status} {body[:200]!r}"
            if time.monotonic() > deadline:
                break
        after = _CpuSnapshot.take(pid)
        elapsed = after.at - before.at
        server = _delta(before.server, after.server)
        postgres = _delta(before.postgres, after.postgres)
        client_cpu = after.client - before.client
        n = len(latencies)
        return {
            "requests": len(latencies),
            "errors": errors,
            "first_error": first_error,
            "p50_ms": round(_pct(latencies, 50), 1),
            "p90_ms": round(_pct(latencies, 90), 1),
            "p99_ms": round(_pct(latencies, 99), 1),
            "max_ms": round(max(latencies), 1),
            "mean_ms": round(statistics.fmean(latencies), 1),
            # CPU per request, which other load on the machine changes much less than wall time.
            "cpu_ms_per_request": {
                "server": round(server * 1000 / n, 1),
                "postgres": round(postgres * 1000 / n, 1),
                "client": round(client_cpu * 1000 / n, 1),
            },
            # Cores kept busy by processes outside the benchmark during the window.
            "other_load_cores": round(
                max(0.0, (after.machine - before.machine) - server - postgres - client_cpu) / elapsed, 2
            ),
        }
    finally:
        client.close()


def measure_concurrent(port: int, pid: int, path: str, headers: dict[str, str], args) -> dict:
    def op(c: Client, i: int | None) -> bool:
        status, body = c.call("GET", path)
        if status != 200:
            c.state["error"] = f"HTTP {status} {body[:200]!r}"
        return status == 200

    run_phase(
        "warm", op, port=port, headers=headers, server_pid=pid, clients=args.clients, count=args.clients * 2
    )
    r = run_phase(
        "load",
        op,
        port=port,
        headers=headers,
        server_pid=pid,
        clients=args.clients,
        count=args.requests,
        timeout=args.max_seconds,
    )
    return r.summary()


# --- report -----------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    clients = report["args"]["clients"]
    columns = [
        "endpoint",
        "path",
        "p50 ms",
        "p99 ms",
        "max ms",
        "n",
        "server CPU ms",
        "SQL queries",
        "SQL ms",
    ]
    if clients:
        columns.append(f"p50 / p99 ms, {clients} clients")
    columns.append("note")
    rule = ["---", "---", *["---:"] * (len(columns) - 3), "---"]
    rows = ["| " + " | ".join(columns) + " |", "|" + "|".join(rule) + "|"]
    for label, r in report["results"].items():
        h, q = r.get("http", {}), r.get("inprocess", {})
        notes = []
        if h.get("p99_ms", 0) > BUDGET_MS:
            notes.append(f"**p99 over {BUDGET_MS:.0f} ms**")
        if h.get("errors"):
            notes.append(f"{h['errors']} errors: {h['first_error'][:80]}")
        if q.get("status") not in (None, 200):
            notes.append(f"in-process HTTP {q['status']}")
        if q.get("params_ignored"):
            notes.append(f"same rows without `{'`, `'.join(q['params_ignored'])}` (not implemented?)")
        cells = [
            label,
            f"`{r['path']}`",
            f"{h.get('p50_ms', float('nan')):.0f}",
            f"{h.get('p99_ms', float('nan')):.0f}",
            f"{h.get('max_ms', float('nan')):.0f}",
            str(h.get("requests", "")),
            f"{h.get('cpu_ms_per_request', {}).get('server', float('nan')):.0f}",
            str(q.get("queries", "")),
            f"{q.get('db_ms', float('nan')):.0f}",
        ]
        if clients:
            c = r.get("concurrent", {})
            cells.append(f"{c.get('p50_ms', float('nan')):.0f} / {c.get('p99_ms', float('nan')):.0f}")
        cells.append("; ".join(notes))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def plans(report: dict) -> str:
    out = []
    for label, r in report["results"].items():
        q = r.get("inprocess", {})
        if q.get("plan"):
            out += [
                f"\n#### {label}: slowest statement {q['slowest_ms']} ms",
                "```sql",
                q["slowest_sql"][:2000],
                "```",
                "```",
                q["plan"],
                "```",
            ]
    return "\n".join(out)


def git_state(code: Path) -> str:
    with contextlib.suppress(Exception):
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=code, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=code,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head + (" (with uncommitted changes)" if dirty else "")
    return ""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, default=1000)
    p.add_argument("--versions", type=int, default=100_000)
    p.add_argument("--big-versions", type=int, default=5000, help="versions of the model 'big'")
    p.add_argument("--awaiting", type=int, default=300, help="versions awaiting approval (the inbox)")
    p.add_argument("--seed", type=int, default=8, help="random seed of the data")
    p.add_argument("--batch", type=int, default=2000, help="bulk_create batch size")
    p.add_argument("--requests", type=int, default=200, help="measured sequential requests per endpoint")
    p.add_argument("--warmup", type=int, default=10, help="unmeasured requests per endpoint first")
    p.add_argument("--max-seconds", type=float, default=40.0, help="time cap of one endpoint's requests")
    p.add_argument("--clients", type=int, default=0, help="also measure with N concurrent clients (0: no)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    p.add_argument("--threads", type=int, default=1, help="gunicorn threads per worker (gthread); 1: sync")
    p.add_argument("--only", default="", help="measure only endpoints whose label contains this text")
    p.add_argument("--explain-ms", type=float, default=20.0, help="EXPLAIN ANALYZE statements this slow")
    p.add_argument("--reuse", action="store_true", help="skip seeding when bench_scale is already seeded")
    p.add_argument("--keep", action="store_true", help="leave the bench_scale database in place")
    p.add_argument("--json", action="store_true", help="print the JSON results too")
    p.add_argument("--modelgate-dir", type=Path, default=REPO, help="the Modelgate tree to run")
    p.add_argument("--out", type=Path, default=BENCH_VAR / "catalog_scale.json")
    args = p.parse_args()

    started = time.time()
    code = args.modelgate_dir.resolve()
    report: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "args": vars(args) | {"out": str(args.out), "modelgate_dir": str(code)},
        "code": git_state(code),
        "machine": machine_facts(),
    }
    facts = seeded_facts(args) if args.reuse else None
    if facts is None:
        url = db_recreate(DB)
    else:
        log(f"reusing the seeded database {DB}")
        url = f"{PG_ADMIN_URL}/{DB}"
    try:
        env = modelgate_env(
            url, CELERY_BROKER_URL=BROKER, ARTIFACT_STORE=str(BENCH_VAR / "catalog-scale-artifacts")
        )
        os.environ.update(env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
        os.chdir(code)
        sys.path.insert(0, str(code))
        import django
        from django.core.management import call_command

        django.setup()
        log("migrate")
        call_command("migrate", verbosity=0, interactive=False)
        if facts is None:
            log(f"seeding {args.versions} versions across {args.models} models")
            t0 = time.perf_counter()
            facts = seed(args)
            facts["seed_seconds"] = round(time.perf_counter() - t0, 1)
            save_facts(facts)
            log(f"seeded in {facts['seed_seconds']} s")
        report["seed"] = facts
        creds = credentials()

        wanted = [(label, STAFF, path.format(**facts)) for label, path in ENDPOINTS]
        wanted += [(label, VIEWER, path.format(**facts)) for label, path in VIEWER_ENDPOINTS]
        wanted = [w for w in wanted if args.only in w[0]]
        results: dict[str, dict] = {label: {"path": path, "user": user} for label, user, path in wanted}
        report["results"] = results

        log("in-process: SQL per request")
        for label, row in inprocess(wanted, creds, args.explain_ms).items():
            results[label]["inprocess"] = row

        port = free_port()
        cmd = [
            str(REPO / ".venv" / "bin" / "gunicorn"),
            "config.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(args.workers),
            "--timeout",
            "120",
            *(["--threads", str(args.threads)] if args.threads > 1 else []),
        ]
        log_path = BENCH_VAR / "logs" / "catalog-scale-gunicorn.log"
        with running(cmd, env=env, log_path=log_path, cwd=code) as proc:
            wait_http(port, "/healthz", proc, log_path=log_path)
            for label, user, path in wanted:
                headers = headers_for(path, creds[user])
                results[label]["http"] = h = measure(port, proc.pid, path, headers, args)
                log(
                    f"  {label}: p50 {h['p50_ms']} ms, p99 {h['p99_ms']} ms, max {h['max_ms']} ms"
                    + (f", {h['errors']} errors: {h['first_error'][:120]}" if h["errors"] else "")
                )
                if args.clients:
                    results[label]["concurrent"] = c = measure_concurrent(port, proc.pid, path, headers, args)
                    log(f"  {label} x{args.clients}: p50 {c['p50_ms']} ms, p99 {c['p99_ms']} ms")
        report["server"] = " ".join(["gunicorn", *cmd[1:2], *cmd[4:]])
    finally:
        if not args.keep:
            db_drop(DB)
    report["elapsed_s"] = round(time.time() - started, 1)
    write_json(args.out, report)
    seed_facts = report["seed"]
    print(
        f"{seed_facts['versions']} versions across {seed_facts['models']} models "
        f"(big: {seed_facts['big_versions']}; {seed_facts['awaiting_versions']} awaiting approval); "
        f"seeded in {seed_facts.get('seed_seconds', '?')} s; {report['code']}\n"
    )
    loads = [r["http"]["other_load_cores"] for r in report["results"].values() if "http" in r]
    if loads:
        print(
            f"Other load on the {report['machine'].get('cores', '?')}-core machine while measuring: "
            f"median {statistics.median(loads):.2f} cores, max {max(loads):.2f}.\n"
        )
    print(markdown(report))
    print(plans(report))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    log(f"done in {report['elapsed_s']}s")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
