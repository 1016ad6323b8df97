"""Where a Modelgate API request spends its time: queries per request, time in the database, a profile.

    .venv/bin/python bench/profile_modelgate.py [--requests 500] [--profile get]

The requests go straight into the WSGI application in this process (no socket, no gunicorn), on a
throwaway PostgreSQL database ``bench_modelgate_profile`` with the settings of the HTTP benchmark
(DEBUG off, a persistent connection). For each operation it prints the mean wall time per request, the
number of SQL statements, the time spent waiting for them and the CPU time of this process (which,
unlike wall time, other load on the machine hardly changes); with ``--profile OP`` it also prints the
functions that take the most CPU time (cProfile with a CPU-time clock).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, db_drop, db_recreate, modelgate_env, modelgate_prepare

DB = "bench_modelgate_profile"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=500, help="requests per operation")
    p.add_argument("--models", type=int, default=2000)
    p.add_argument("--profile", choices=["create", "get", "search", "none"], default="none")
    p.add_argument("--top", type=int, default=35)
    p.add_argument("--sort", choices=["cumulative", "tottime"], default="cumulative")
    p.add_argument("--keep-db", action="store_true")
    p.add_argument(
        "--modelgate-dir", type=Path, default=REPO, help="the Modelgate tree to run (a scratch copy)"
    )
    args = p.parse_args()

    url = db_recreate(DB)
    try:
        env = modelgate_env(url)
        code = args.modelgate_dir.resolve()
        token = modelgate_prepare(env, cwd=code)
        os.environ.update(env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
        os.chdir(code)
        sys.path.insert(0, str(code))
        return run(args, token)
    finally:
        if not args.keep_db:
            db_drop(DB)


def run(args: argparse.Namespace, token: str) -> int:
    from django.db import connection

    from config.wsgi import application

    auth = f"Bearer {token}"

    def call(method: str, path: str, body: bytes = b"", query: str = "") -> tuple[str, bytes]:
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "127.0.0.1:8000",
            "HTTP_AUTHORIZATION": auth,
            "HTTP_ACCEPT": "application/json",
            "CONTENT_TYPE": "application/json" if body else "",
            "CONTENT_LENGTH": str(len(body)) if body else "",
            "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.version": (1, 0),
        }
        status: list[str] = []
        chunks = application(environ, lambda s, h, exc_info=None: status.append(s))
        payload = b"".join(chunks)
        if hasattr(chunks, "close"):
            chunks.close()
        return status[0], payload

    stats = {"queries": 0, "db_s": 0.0, "sql": []}

    def wrapper(execute, sql, params, many, context):
        t0 = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            stats["db_s"] += time.perf_counter() - t0
            stats["queries"] += 1
            if len(stats["sql"]) < 40:
                stats["sql"].append(sql[:160])

    # Seed (not measured).
    for i in range(args.models):
        status, body = call("POST", "/api/v1/models/", json.dumps({"name": f"seed-{i:05d}"}).encode())
        assert status.startswith("201"), (status, body[:300])

    ops = {
        "create": lambda i: call("POST", "/api/v1/models/", json.dumps({"name": f"bench-{i:05d}"}).encode()),
        "get": lambda i: call("GET", f"/api/v1/models/seed-{i % args.models:05d}/"),
        "search": lambda i: call("GET", "/api/v1/models/", query="search=seed-"),
        "healthz": lambda i: call("GET", "/healthz"),
    }
    report = {}
    for name, op in ops.items():
        for i in range(20):  # warm
            op(10_000 + i if name == "create" else i)
        stats.update(queries=0, db_s=0.0, sql=[])
        profiler = cProfile.Profile(time.process_time) if args.profile == name else None  # CPU, not wall
        with connection.execute_wrapper(wrapper):
            t0, c0 = time.perf_counter(), time.process_time()
            if profiler:
                profiler.enable()
            for i in range(args.requests):
                status, body = op(i)
                if not status[:1] == "2":
                    raise SystemExit(f"{name}: {status} {body[:300]!r}")
            if profiler:
                profiler.disable()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        n = args.requests
        report[name] = {
            "ms_per_request": round(wall * 1000 / n, 3),
            "cpu_ms_per_request": round(cpu * 1000 / n, 3),
            "queries_per_request": round(stats["queries"] / n, 2),
            "db_ms_per_request": round(stats["db_s"] * 1000 / n, 3),
            "python_ms_per_request": round((wall - stats["db_s"]) * 1000 / n, 3),
        }
        print(f"{name:8s} {report[name]}")
        per = max(1, round(stats["queries"] / n))
        for sql in stats["sql"][per * 3 : per * 4]:  # one request's statements, after a few
            print(f"           {sql}")
        if profiler:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(args.sort).print_stats(args.top)
            print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
