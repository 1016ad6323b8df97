"""Push → awaiting_approval wall time for a small Keras model with every export branch.

    .venv/bin/python bench/push_to_approval.py [--pushes 5] [--formats onnx,tflite,tfjs]

The deployment of docker-compose.yml on this machine, on PostgreSQL and Redis (the bench database
``bench_pipeline``, the broker ``BENCH_BROKER_URL``): gunicorn, one worker per queue group with the
compose file's options (``--max-tasks-per-child 1`` for gates and exports, so every task starts a fresh
child and imports TensorFlow again, as in production), and beat. Artifacts go to a temporary directory.

A first push warms the processes up (imports, the first TensorFlow start); it is not counted. Then
``--pushes`` pushes, one after another, each a freshly trained 4 → 8 → 2 classifier. For each, it records
the time from the start of the upload until the version is ``awaiting_approval`` (the gates passed and
the approvers were asked) and until every export has passed its parity check. The exports run beside
the approval request, so the second figure is when the version is ready to promote with all its formats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _common import (
    BENCH_VAR,
    PROJECT_PYTHON,
    REDIS_BROKER,
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

WORKERS = {
    "pipeline": ["-Q", "pipeline,maintenance", "--concurrency", "2"],
    "gates": ["-Q", "gates", "--concurrency", "1", "--max-tasks-per-child", "1"],
    "exports": ["-Q", "exports", "--concurrency", "1", "--max-tasks-per-child", "1"],
    "shadow": ["-Q", "shadow", "--concurrency", "1"],
}
DONE = {"passed", "failed", "not_applicable"}


def keras_model(path: Path, seed: int) -> Path:
    import keras
    import numpy as np

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model = keras.Sequential(
        [
            keras.Input(shape=(4,), name="features"),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, verbose=0)
    model.save(path)
    return path


def push_and_time(http: httpx.Client, path: Path, number: int, formats: list[str]) -> dict:
    started = time.perf_counter()
    with path.open("rb") as fh:
        response = http.post(
            "/api/v1/models/bench/versions/", files={"artifact": fh}, data={"metadata": "{}"}
        )
    response.raise_for_status()
    uploaded = time.perf_counter() - started
    awaiting = exported = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        version = http.get(f"/api/v1/models/bench/versions/{number}/").json()
        now = time.perf_counter() - started
        if version["status"] == "rejected":
            raise RuntimeError(f"v{number} rejected: {version.get('status_reason')}")
        if awaiting is None and version["status"] == "awaiting_approval":
            awaiting = now
        exports = {e["format"]: e for e in version["exports"]}
        if (
            exported is None
            and set(exports) >= set(formats)
            and all(e["status"] in DONE for e in exports.values())
        ):
            failed = {f: e["error"] for f, e in exports.items() if e["status"] != "passed"}
            if failed:
                raise RuntimeError(f"v{number}: exports failed: {failed}")
            exported = now
        if awaiting is not None and exported is not None:
            break
        time.sleep(0.1)
    else:
        raise TimeoutError(f"v{number} did not finish in 300 s")
    return {
        "version": number,
        "upload_s": round(uploaded, 2),
        "awaiting_approval_s": round(awaiting, 2),
        "exports_done_s": round(exported, 2),
        "exports": {
            f: {"convert_ms": e["convert_ms"], "check_ms": e["check_ms"]} for f, e in exports.items()
        },
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pushes", type=int, default=5)
    p.add_argument("--formats", default="onnx,tflite,tfjs")
    p.add_argument("--out", type=Path, default=BENCH_VAR / "push_to_approval.json")
    args = p.parse_args()
    formats = args.formats.split(",")

    import redis

    redis.Redis.from_url(REDIS_BROKER).flushdb()
    database = db_recreate("bench_pipeline")
    results = []
    with tempfile.TemporaryDirectory(prefix="modelgate-bench-") as tmp:
        work = Path(tmp)
        env = modelgate_env(database, ARTIFACT_STORE=str(work / "artifacts"), LOG_LEVEL="INFO")
        token = modelgate_prepare(env)
        port = free_port()
        logs = BENCH_VAR / "push_to_approval"
        web_cmd = [str(PROJECT_PYTHON), "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}",
                   "--workers", "2", "--threads", "4"]  # fmt: skip
        celery = [str(PROJECT_PYTHON), "-m", "celery", "-A", "config"]
        from contextlib import ExitStack

        with ExitStack() as stack:
            web = stack.enter_context(running(web_cmd, env=env, log_path=logs / "web.log"))
            for name, options in WORKERS.items():
                cmd = [*celery, "worker", "-n", f"{name}@bench", *options, "-l", "INFO"]
                stack.enter_context(running(cmd, env=env, log_path=logs / f"worker-{name}.log"))
            beat = [*celery, "beat", "-l", "INFO", "-s", str(work / "beat-schedule")]
            stack.enter_context(running(beat, env=env, log_path=logs / "beat.log"))
            wait_http(port, "/healthz", web, log_path=logs / "web.log")

            with httpx.Client(
                base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}, timeout=120
            ) as http:
                http.post("/api/v1/models/", json={"name": "bench"}).raise_for_status()
                http.put(
                    "/api/v1/models/bench/policy/",
                    json={"exports": {"formats": formats, "required": formats}},
                ).raise_for_status()
                log("warm-up push")
                push_and_time(http, keras_model(work / "warm.keras", 0), 1, formats)
                for i in range(args.pushes):
                    row = push_and_time(http, keras_model(work / f"m{i}.keras", i + 1), i + 2, formats)
                    log(json.dumps(row))
                    results.append(row)
    db_drop("bench_pipeline")

    awaiting = [r["awaiting_approval_s"] for r in results]
    exported = [r["exports_done_s"] for r in results]
    report = {
        "machine": machine_facts(),
        "formats": formats,
        "runs": results,
        "awaiting_approval_s": {"median": statistics.median(awaiting), "max": max(awaiting)},
        "exports_done_s": {"median": statistics.median(exported), "max": max(exported)},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(args.out, report)
    print("| push | upload | → awaiting_approval | → all exports passed |")
    print("|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| v{r['version']} | {r['upload_s']} s | {r['awaiting_approval_s']} s | {r['exports_done_s']} s |"
        )
    print(
        f"| median | | {report['awaiting_approval_s']['median']} s | {report['exports_done_s']['median']} s |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
