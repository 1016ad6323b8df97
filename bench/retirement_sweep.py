"""The retirement sweep at scale: time and queries over 100,000 versions.

    .venv/bin/python bench/retirement_sweep.py [--versions 100000] [--models 10] [--json]

Needs PostgreSQL on 127.0.0.1:5432 (``BENCH_PG_URL``). A throwaway database gets ``--models`` models
and ``--versions`` archived versions spread over them, all pushed 60 days ago and never used, so that
the sweep has the most to do: on day 0 it warns all but the newest three of each model, on day 7 it
retires them, and on day 8 it finds nothing (the idle sweep every day after). Each sweep is timed end
to end (reading, deciding, the bulk writes and their events) and its queries are counted. The same
runs on 1,000 versions show that the query count does not grow with the catalog.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (
    BENCH_VAR,
    db_drop,
    db_recreate,
    log,
    machine_facts,
    modelgate_env,
    modelgate_prepare,
    write_json,
)

DB = "modelgate_bench_retirement"
DAY0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


def populate(versions: int, models: int) -> float:
    from registry.models import ModelVersion, RegisteredModel

    ModelVersion.objects.all().delete()
    RegisteredModel.objects.filter(name__startswith="bulk-").delete()
    started = time.perf_counter()
    owners = [RegisteredModel.objects.create(name=f"bulk-{i}", policy={}) for i in range(models)]
    old = DAY0 - dt.timedelta(days=60)
    ModelVersion.objects.bulk_create(
        (
            ModelVersion(
                model=owners[i % models],
                version=i // models + 1,
                status="archived",
                sha256=f"{i:064x}",
                artifact_key=f"artifacts/x/{i}",
                size=1,
                format="onnx",
                created_at=old,
                status_changed_at=old,
            )
            for i in range(versions)
        ),
        batch_size=10_000,
    )
    return time.perf_counter() - started


def sweep(day: float) -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from lifecycle import retirement

    now = DAY0 + dt.timedelta(days=day)
    with CaptureQueriesContext(connection) as captured:
        started = time.perf_counter()
        result = retirement.retirement_sweep(now=now)
        elapsed = time.perf_counter() - started
    return {"day": day, "seconds": elapsed, "queries": len(captured.captured_queries), **result.counts()}


def plan_only() -> dict:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from lifecycle import retirement

    with CaptureQueriesContext(connection) as captured:
        started = time.perf_counter()
        plan = retirement.retirement_plan(now=DAY0 + dt.timedelta(days=8))
        elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "queries": len(captured.captured_queries), "decisions": len(plan.decisions)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", type=int, default=100_000)
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    url = db_recreate(DB)
    workdir = Path(tempfile.mkdtemp(prefix="modelgate-bench-retirement-"))
    env = modelgate_env(url, ARTIFACT_STORE=str(workdir / "a"), MODELGATE_VAR_DIR=str(workdir / "v"))
    results: dict = {"machine": machine_facts(), "runs": []}
    try:
        modelgate_prepare(env)
        os.environ.update(env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
        import django

        django.setup()
        for count in (1_000, args.versions):
            created = populate(count, args.models)
            run = {"versions": count, "populate_s": created, "sweeps": [sweep(0), sweep(7), sweep(8)]}
            run["plan_only"] = plan_only()
            results["runs"].append(run)
            for s in run["sweeps"]:
                log(
                    f"{count:>7} versions, day {s['day']:>3}: {s['seconds']:.2f} s, {s['queries']} queries, "
                    f"warned {s['warned']}, retired {s['retired']}"
                )
            log(
                f"{count:>7} versions, plan only: {run['plan_only']['seconds']:.2f} s, {run['plan_only']['queries']} queries"
            )
    finally:
        from django.db import connections

        connections.close_all()
        db_drop(DB)
    write_json(BENCH_VAR / "retirement_sweep.json", results)
    if args.json:
        print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
