"""Serving and shadow overhead: ``/predict`` against a bare onnxruntime call, and shadow rows/s against a
bare batched onnxruntime loop.

    .venv/bin/python bench/serving_overhead.py [--requests 2000] [--batch 1,32] [--records 20000,100000]
        [--hidden 256] [--json]

Needs PostgreSQL on 127.0.0.1:5432 (``BENCH_PG_URL``); the broker is Redis db 14 (``BENCH_BROKER_URL``),
used only to drop the shadow wake-ups nobody consumes here.

1. A throwaway database ``modelgate_bench_serving`` gets a model whose champion is an ONNX MLP (16
   features -> ``--hidden`` -> ``--hidden`` -> 2 softmax; ``bench/gates_throughput.write_onnx``).
2. gunicorn serves Modelgate (one gthread worker, one thread, keep-alive) and one client sends
   ``--requests`` sequential ``POST /predict`` calls of ``--batch`` rows over a kept-alive connection,
   after 200 warm-up calls, with the policy's ``shadow.sample_rate`` at 0 (capture off), 0.1 (the
   default) and 1 (every request captured). Each call is timed at the client (request written to
   response read).
3. Baseline: the same model in an onnxruntime session in this process, with the options the serving
   cache uses (one intra-op thread, no spinning), ``session.run`` on the same batch, timed the same way.
4. Shadow: ``--records`` traffic records of 10 rows each (each count in turn: 20,000 make one short
   task of about 0.4 s, whose fixed costs, the lease, the set-up and the final checkpoint, weigh ~7%;
   100,000 a replay's steady state, as the shadow queue folds for up to 20 s a task) are bulk-inserted,
   once with the champion's outputs captured (the shadow reuses them and runs only the candidate) and
   once without (it runs both). ``lifecycle.shadow.shadow_evaluate`` folds them all (``min_requests``
   above the count, so no verdict), timed end to end: reading the records, decoding the JSON, running the models, latency
   probes, statistics and the compare-and-set write per batch. Baseline: the same rows as one float32
   array in memory, run through the candidate (and the champion for the second case) in calls of
   ``shadow.PREDICT_ROWS`` rows, as the shadow calls them.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (
    BENCH_VAR,
    PROJECT_PYTHON,
    db_drop,
    db_recreate,
    free_port,
    log,
    machine_facts,
    modelgate_env,
    modelgate_prepare,
    running,
    wait_http,
    write_json,
)
from gates_throughput import write_onnx

DB = "modelgate_bench_serving"
ROUNDS = 5  # shadow rounds; the ratio is the median round's (one fold of 0.4 s varies by ±10% here)
N_FEATURES = 16


def mlp(hidden: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    sizes = [N_FEATURES, hidden, hidden, 2]
    return [
        (
            (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32),
            (rng.normal(size=(b,)) * 0.1).astype(np.float32),
        )
        for a, b in itertools.pairwise(sizes)
    ]


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "mean": statistics.fmean(ordered),
    }


def setup(store: Path, workdir: Path, hidden: int) -> dict:
    """Model, champion v1 and candidate v2 through the services (this process talks to the bench DB)."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from lifecycle.states import version_transition
    from registry.models import Alias, ModelVersion
    from registry.services import Upload, model_create, model_version_register

    user = get_user_model().objects.get(username="bench")
    model = model_create(name="bench", description="serving bench", policy={}, actor=user)
    versions = []
    for number, seed in ((1, 1), (2, 2)):
        path = write_onnx(mlp(hidden, seed), workdir / f"v{number}.onnx")
        upload = Upload(
            path=path,
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            size=path.stat().st_size,
            filename=path.name,
        )
        version, _ = model_version_register(model=model, upload=upload, metadata={}, actor=user)
        ModelVersion.objects.filter(pk=version.pk).update(
            status="validating",
            signature={
                "inputs": [{"name": "features", "dtype": "float32", "shape": [None, N_FEATURES]}],
                "outputs": [{"name": "output_0", "dtype": "float32", "shape": [None, 2]}],
            },
        )
        versions.append((version, path))
    champion = versions[0][0]
    for to in ("awaiting_approval", "production"):
        version_transition(version_id=champion.pk, to=to, actor="bench")
    Alias.objects.create(model=model, name="champion", version=champion)
    return {"model": model, "champion": versions[0], "candidate": versions[1]}


def set_sample_rate(model, rate: float, **shadow) -> None:
    from lifecycle.policy import policy_validate

    model.policy = policy_validate({"shadow": {"sample_rate": rate, **shadow}}, check_datasets=False)
    model.save(update_fields=["policy"])


def bare_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def time_bare(path: Path, batch: np.ndarray, n: int) -> list[float]:
    session = bare_session(path)
    for _ in range(200):
        session.run(None, {"features": batch})
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        session.run(None, {"features": batch})
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def time_predict(port: int, token: str, batch: np.ndarray, n: int) -> tuple[list[float], int]:
    body = json.dumps({"inputs": batch.tolist()})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    samples, captured = [], 0
    for i in range(n + 200):
        started = time.perf_counter()
        conn.request("POST", "/api/v1/models/bench/predict/", body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        elapsed = (time.perf_counter() - started) * 1000
        if response.status != 200:
            raise RuntimeError(f"predict answered {response.status}: {data[:300]!r}")
        if i >= 200:
            samples.append(elapsed)
            captured += json.loads(data)["captured"]
    conn.close()
    return samples, captured


def bench_shadow(
    ctx: dict, records: int, reuse: bool, rows_per_record: int = 10, profile: bool = False
) -> dict:
    from django.db import connection

    from lifecycle import shadow
    from lifecycle.traffic import traffic_record
    from registry.models import ShadowRun, TrafficRecord

    model, (champion, champ_path), (candidate, cand_path) = ctx["model"], ctx["champion"], ctx["candidate"]
    TrafficRecord.objects.filter(model=model).delete()
    ShadowRun.objects.all().delete()
    candidate.refresh_from_db()
    if candidate.status != "shadowing":
        from lifecycle.states import version_transition

        version_transition(version_id=candidate.pk, to="shadowing", actor="bench")
    set_sample_rate(model, 0.0, min_requests=records * 10)
    rng = np.random.default_rng(3)
    data = rng.normal(size=(records * rows_per_record, N_FEATURES)).astype(np.float32)
    champ_out = bare_session(champ_path).run(None, {"features": data})[0] if reuse else None
    TrafficRecord.objects.bulk_create(
        (
            traffic_record(
                model_id=model.pk,
                request_id=f"r{i}",
                source="live",
                inputs=data[i * rows_per_record : (i + 1) * rows_per_record],
                rows=rows_per_record,
                outputs=champ_out[i * rows_per_record : (i + 1) * rows_per_record] if reuse else None,
                served_by_id=champion.pk if reuse else None,
            )
            for i in range(records)
        ),
        batch_size=2000,
    )
    # As an upload does (lifecycle.traffic), and as autovacuum would soon after: without statistics
    # the planner guesses a handful of rows and sorts the whole pool for every batch.
    with connection.cursor() as cursor:
        cursor.execute(f"ANALYZE {TrafficRecord._meta.db_table}")
    cand = bare_session(cand_path)
    champ = bare_session(champ_path)
    # The bare loop calls the model on as many rows per call as the shadow does (PREDICT_ROWS), which
    # is also the fastest call size measured for this model: bigger calls (20,000 rows) were ~15%
    # slower, their activations no longer fitting in cache.
    step = shadow.PREDICT_ROWS
    timings = []
    # ROUNDS rounds, each a fresh shadow run over the same records and then the bare loop, so that a
    # burst of other load on the machine lands on both sides; the ratio is the median round's.
    for _ in range(ROUNDS):
        ShadowRun.objects.filter(status="running").update(status="cancelled")
        run = ShadowRun.objects.create(
            candidate=candidate, baseline=champion, since=candidate.created_at.replace(year=2000)
        )
        profiler = None
        if profile and not timings:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.001)
            profiler.start()
        started = time.perf_counter()
        shadow.shadow_evaluate(run.pk, budget=3600)
        elapsed = time.perf_counter() - started
        if profiler is not None:
            profiler.stop()
            print(profiler.output_text(unicode=False, color=False), file=sys.stderr)
        run.refresh_from_db()
        assert run.requests == records, (run.requests, records)
        # Bare: the same rows in memory, the same batches, the same models.
        started = time.perf_counter()
        for lo in range(0, len(data), step):
            chunk = data[lo : lo + step]
            cand.run(None, {"features": chunk})
            if not reuse:
                champ.run(None, {"features": chunk})
        timings.append((elapsed, time.perf_counter() - started))
    elapsed, bare = sorted(timings, key=lambda t: t[1] / t[0])[ROUNDS // 2]
    rows = len(data)
    return {
        "records": records,
        "rows": rows,
        "champion_outputs_reused": reuse,
        "shadow_rows_per_s": rows / elapsed,
        "bare_rows_per_s": rows / bare,
        "ratio": bare / elapsed,
        "shadow_s": elapsed,
        "bare_s": bare,
        "rounds": [{"shadow_s": a, "bare_s": b} for a, b in timings],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--records", default="20000,100000", help="record counts, each a shadow bench")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", choices=["predict", "shadow"], help="run one half of the bench")
    parser.add_argument(
        "--profile", action="store_true", help="print a pyinstrument profile of one shadow fold"
    )
    args = parser.parse_args()

    url = db_recreate(DB)
    workdir = Path(tempfile.mkdtemp(prefix="modelgate-bench-serving-"))
    store = workdir / "artifacts"
    env = modelgate_env(url, ARTIFACT_STORE=str(store), MODELGATE_VAR_DIR=str(workdir / "var"))
    results: dict = {"machine": machine_facts(), "hidden": args.hidden, "predict": [], "shadow": []}
    try:
        token = modelgate_prepare(env)
        os.environ.update(env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
        ctx = setup(store, workdir, args.hidden)
        port = free_port()
        log_path = BENCH_VAR / "serving-gunicorn.log"
        cmd = [
            str(PROJECT_PYTHON.parent / "gunicorn"),
            "config.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--threads",
            "1",
            "--worker-class",
            "gthread",
            "--keep-alive",
            "30",
        ]
        with running(cmd, env=env, log_path=log_path) as proc:
            wait_http(port, "/healthz", proc, log_path=log_path)
            for rows in [] if args.only == "shadow" else (int(b) for b in args.batch.split(",")):
                batch = np.random.default_rng(rows).normal(size=(rows, N_FEATURES)).astype(np.float32)
                bare = percentiles(time_bare(ctx["champion"][1], batch, args.requests))
                for rate in (0.0, 0.1, 1.0):
                    set_sample_rate(ctx["model"], rate)
                    samples, captured = time_predict(port, token, batch, args.requests)
                    api = percentiles(samples)
                    row = {
                        "batch": rows,
                        "sample_rate": rate,
                        "captured": captured,
                        "predict_ms": api,
                        "bare_ms": bare,
                        "overhead_p50_ms": api["p50"] - bare["p50"],
                        "overhead_p99_ms": api["p99"] - bare["p99"],
                    }
                    results["predict"].append(row)
                    log(
                        f"batch {rows:>3} capture {rate:<4}: predict p50 {api['p50']:.3f} ms p99 {api['p99']:.3f} ms"
                        f" | bare p50 {bare['p50']:.3f} p99 {bare['p99']:.3f} | overhead p50 "
                        f"{row['overhead_p50_ms']:.3f} ms"
                    )
        bench_shadow(ctx, 200, True)  # warm-up: model loads and imports, as in a long-lived worker
        for records in [] if args.only == "predict" else (int(n) for n in args.records.split(",")):
            for reuse in (True, False):
                row = bench_shadow(ctx, records, reuse, profile=args.profile)
                results["shadow"].append(row)
                log(
                    f"shadow, {records:,} records (reuse={reuse}): {row['shadow_rows_per_s']:,.0f} rows/s vs "
                    f"bare {row['bare_rows_per_s']:,.0f} rows/s = {row['ratio']:.2f}x "
                    f"(rounds {' '.join(format(r['bare_s'] / r['shadow_s'], '.2f') for r in row['rounds'])})"
                )
    finally:
        from django.db import connections

        connections.close_all()
        db_drop(DB)
    write_json(BENCH_VAR / "serving_overhead.json", results)
    if args.json:
        print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
