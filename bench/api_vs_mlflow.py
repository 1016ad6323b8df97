"""Modelgate's REST API against an MLflow tracking/registry server: create, get and paged search.

    .venv/bin/python bench/api_vs_mlflow.py            # ~5 minutes; prints a Markdown table

Both servers run on this machine, one after the other (never at the same time), on the same PostgreSQL
server with a database each (``bench_modelgate``, ``bench_mlflow``, created and dropped here) and with
the same number of worker processes (``--workers``, default 2). The load generator (bench/loadgen.py)
keeps ``--clients`` requests in flight (default 8) from one process on 127.0.0.1.

For each server:

1. ``--warmup-models`` models named ``warm-NNNNN`` are created (not measured);
2. create: ``--models`` models named ``bench-NNNNN`` are created (measured; this also seeds the data);
3. get: random ``bench-`` models are fetched by name for ``--duration`` seconds (after a warm-up);
4. search: each client walks the pages (50 a page) of the models whose name starts with ``bench-``,
   up to ``--search-pages`` deep, then starts again; each page is one request.

MLflow runs from its own virtualenv (``var/bench/mlflow-venv``, made here with ``--mlflow-version``).
Its server is MLflow's default (uvicorn) with the access log off, as gunicorn's is for Modelgate;
``--mlflow-server gunicorn`` (or ``both``) also measures MLflow's Flask app under gunicorn, with the same
worker class as Modelgate (sync, or gthread with ``--threads N``).
MLflow's telemetry and its GenAI job runner are switched off, and any HTTP(S) request it might make goes
to a dead proxy, so it fetches nothing while it runs.

Results: a JSON file (``--out``, default var/bench/api_vs_mlflow.json) and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

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
    modelgate_prepare,
    running,
    wait_http,
    write_json,
)
from loadgen import Client, run_phase

MLFLOW_VENV = BENCH_VAR / "mlflow-venv"
SEARCH_PREFIX = "bench-"


# --- targets: how each server spells the three operations ------------------------------------------


class Target:
    label = ""
    headers: dict[str, str] = {}
    create_status = 200

    def create(self, c: Client, name: str) -> bool:
        raise NotImplementedError

    def get(self, c: Client, name: str) -> bool:
        raise NotImplementedError

    def search_page(self, c: Client) -> bool:
        raise NotImplementedError


def _fail(c: Client, what: str, status: int, body: bytes) -> bool:
    c.state["error"] = f"{what}: HTTP {status} {body[:200]!r}"
    return False


class Modelgate(Target):
    label = "Modelgate"

    def __init__(self, token: str, pages: int) -> None:
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        self.pages = pages

    def create(self, c: Client, name: str) -> bool:
        status, body = c.call("POST", "/api/v1/models/", {"name": name})
        return status == 201 or _fail(c, "create", status, body)

    def get(self, c: Client, name: str) -> bool:
        status, body = c.call("GET", f"/api/v1/models/{name}/")
        return status == 200 or _fail(c, "get", status, body)

    def search_page(self, c: Client) -> bool:
        nxt, depth = c.state.get("next"), c.state.get("depth", 0)
        path = nxt or f"/api/v1/models/?{urlencode({'search': SEARCH_PREFIX})}"
        status, body = c.call("GET", path)
        if status != 200:
            return _fail(c, "search", status, body)
        doc = json.loads(body)
        if len(doc["results"]) != 50 and (nxt is None or doc.get("next")):
            return _fail(c, "search (short page)", status, body)
        link = doc.get("next")
        if link and depth + 1 < self.pages:
            parts = urlsplit(link)
            c.state["next"], c.state["depth"] = f"{parts.path}?{parts.query}", depth + 1
        else:
            c.state["next"], c.state["depth"] = None, 0
        return True


class MLflow(Target):
    def __init__(self, pages: int, flavour: str) -> None:
        self.label = f"MLflow ({flavour})"
        self.headers = {"Content-Type": "application/json", "Accept": "application/json"}
        self.pages = pages

    def create(self, c: Client, name: str) -> bool:
        status, body = c.call("POST", "/api/2.0/mlflow/registered-models/create", {"name": name})
        return status == 200 or _fail(c, "create", status, body)

    def get(self, c: Client, name: str) -> bool:
        status, body = c.call("GET", f"/api/2.0/mlflow/registered-models/get?name={quote(name)}")
        return status == 200 or _fail(c, "get", status, body)

    def search_page(self, c: Client) -> bool:
        token, depth = c.state.get("next"), c.state.get("depth", 0)
        params = {"filter": f"name LIKE '{SEARCH_PREFIX}%'", "max_results": "50"}
        if token:
            params["page_token"] = token
        status, body = c.call("GET", f"/api/2.0/mlflow/registered-models/search?{urlencode(params)}")
        if status != 200:
            return _fail(c, "search", status, body)
        doc = json.loads(body)
        if len(doc.get("registered_models", [])) != 50 and (token is None or doc.get("next_page_token")):
            return _fail(c, "search (short page)", status, body)
        nxt = doc.get("next_page_token")
        if nxt and depth + 1 < self.pages:
            c.state["next"], c.state["depth"] = nxt, depth + 1
        else:
            c.state["next"], c.state["depth"] = None, 0
        return True


# --- one server, all phases ---------------------------------------------------------------------------


def measure(target: Target, *, port: int, pid: int, args: argparse.Namespace) -> dict:
    common = {"port": port, "headers": target.headers, "server_pid": pid, "clients": args.clients}
    results = {}
    log(f"{target.label}: warm-up, {args.warmup_models} creates")
    run_phase("warm-up", lambda c, i: target.create(c, f"warm-{i:05d}"), count=args.warmup_models, **common)

    log(f"{target.label}: create x{args.models}")
    r = run_phase("create", lambda c, i: target.create(c, f"bench-{i:05d}"), count=args.models, **common)
    results["create"] = r.summary()

    names = [f"bench-{i:05d}" for i in range(args.models)]
    rng = random.Random(42)
    log(f"{target.label}: get for {args.duration}s")
    r = run_phase(
        "get",
        lambda c, i: target.get(c, rng.choice(names)),
        duration=args.duration,
        warmup=args.phase_warmup,
        **common,
    )
    results["get"] = r.summary()

    log(f"{target.label}: paged search for {args.duration}s")
    r = run_phase(
        "search",
        lambda c, i: target.search_page(c),
        duration=args.duration,
        warmup=args.phase_warmup,
        **common,
    )
    results["search"] = r.summary()
    for op, res in results.items():
        log(
            f"{target.label} {op}: {res['rps']} req/s, p50 {res['p50_ms']} ms, p99 {res['p99_ms']} ms, "
            f"errors {res['errors']} {res['first_error']}"
        )
    return results


def bench_modelgate(args: argparse.Namespace) -> dict:
    db = "bench_modelgate"
    url = db_recreate(db)
    env = modelgate_env(url, ARTIFACT_STORE=str(BENCH_VAR / "modelgate-artifacts"))
    code = args.modelgate_dir.resolve()
    try:
        log(f"Modelgate ({code}): migrate and issue a token")
        token = modelgate_prepare(env, cwd=code)
        port = free_port()
        cmd = [
            str(REPO / ".venv" / "bin" / "gunicorn"),
            "config.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(args.workers),
            *(["--threads", str(args.threads)] if args.threads > 1 else []),
            *args.modelgate_gunicorn_opts.split(),
        ]
        log_path = BENCH_VAR / "logs" / "modelgate-gunicorn.log"
        with running(cmd, env=env, log_path=log_path, cwd=code) as proc:
            wait_http(port, "/healthz", proc, log_path=log_path)
            results = measure(Modelgate(token, args.search_pages), port=port, pid=proc.pid, args=args)
        results["server"] = " ".join(["gunicorn", *cmd[1:2], *cmd[4:]])
        return results
    finally:
        if not args.keep_dbs:
            db_drop(db)


def mlflow_python() -> Path:
    return MLFLOW_VENV / "bin" / "python"


def ensure_mlflow(version: str) -> str:
    """Make var/bench/mlflow-venv with ``mlflow==version`` (once) and return the installed version."""
    py = mlflow_python()
    if py.exists():
        got = subprocess.run(
            [str(py), "-c", "import mlflow; print(mlflow.__version__)"],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout.strip()
        if got == version:
            return got
        log(f"mlflow-venv has MLflow {got or '(none)'}; installing {version}")
    else:
        log(f"creating {MLFLOW_VENV.relative_to(REPO)} with MLflow {version} (a few minutes, once)")
        python = shutil.which("python3.11") or sys.executable
        subprocess.run([python, "-m", "venv", str(MLFLOW_VENV)], check=True, timeout=120)
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", f"mlflow=={version}", "psycopg2-binary"],
        check=True,
        timeout=900,
    )
    return subprocess.run(
        [str(py), "-c", "import mlflow; print(mlflow.__version__)"],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout.strip()


def mlflow_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        # The GenAI job runner (huey consumers, periodic tasks) has nothing to do with the registry; it
        # would only take CPU from the server under test.
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        # Nothing may be fetched from outside: any HTTP(S) call MLflow makes goes to a closed port.
        HTTP_PROXY="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        NO_PROXY="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    return env


def bench_mlflow(args: argparse.Namespace, flavour: str) -> dict:
    db = "bench_mlflow"
    url = db_recreate(db)
    artifacts = BENCH_VAR / "mlflow-artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    try:
        port = free_port()
        cmd = [
            str(MLFLOW_VENV / "bin" / "mlflow"),
            "server",
            "--backend-store-uri",
            url.replace("postgres://", "postgresql+psycopg2://"),
            "--default-artifact-root",
            artifacts.as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
        ]
        if flavour == "uvicorn":
            cmd += ["--uvicorn-opts", "--no-access-log"]
        else:
            threads = f" --threads {args.threads}" if args.threads > 1 else ""
            cmd += ["--gunicorn-opts", f"--log-level warning{threads}"]
        log_path = BENCH_VAR / "logs" / f"mlflow-{flavour}.log"
        with running(cmd, env=mlflow_env(), log_path=log_path, cwd=BENCH_VAR) as proc:
            # The first start creates the schema (alembic migrations), which takes a while.
            wait_http(port, "/health", proc, timeout=300, log_path=log_path)
            results = measure(MLflow(args.search_pages, flavour), port=port, pid=proc.pid, args=args)
        results["server"] = " ".join(
            ["mlflow", *cmd[1:2], "--backend-store-uri postgresql://…", shlex.join(cmd[10:])]
        )
        return results
    finally:
        if not args.keep_dbs:
            db_drop(db)


# --- report -------------------------------------------------------------------------------------------


def medians(results: list[dict]) -> dict:
    """Per operation, the median of each figure over the rounds (and the per-round req/s)."""
    out: dict = {"server": results[0]["server"]}
    for op in ("create", "get", "search"):
        rs = [r[op] for r in results]
        med = {
            k: statistics.median(r[k] for r in rs)
            for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "other_load_cores")
        }
        med["errors"] = sum(r["errors"] for r in rs)
        med["requests"] = sum(r["requests"] for r in rs)
        med["cpu_ms_per_request"] = {
            k: statistics.median(r["cpu_ms_per_request"][k] for r in rs)
            for k in ("server", "postgres", "client")
        }
        med["rps_per_round"] = [r["rps"] for r in rs]
        med["first_error"] = next((r["first_error"] for r in rs if r["first_error"]), "")
        out[op] = med
    return out


def markdown(report: dict) -> str:
    runs = report["runs"]
    mg = runs["Modelgate"]
    rows = [
        "| operation | server | req/s (median) | req/s per round | p50 ms | p99 ms | errors "
        "| CPU ms/req: server / PostgreSQL / client | other load (cores) |",
        "|---|---|---:|---|---:|---:|---:|---|---:|",
    ]
    for op in ("create", "get", "search"):
        for label, res in runs.items():
            r = res[op]
            c = r["cpu_ms_per_request"]
            rows.append(
                f"| {op} | {label} | {r['rps']:.0f} | {', '.join(f'{x:.0f}' for x in r['rps_per_round'])} "
                f"| {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['errors']} | "
                f"{c['server']:.1f} / {c['postgres']:.1f} / {c['client']:.1f} | {r['other_load_cores']:.2f} |"
            )
    ratios = ["", "| operation | " + " | ".join(f"Modelgate ÷ {k}" for k in runs if k != "Modelgate") + " |"]
    ratios.append("|---|" + "---:|" * (len(runs) - 1))
    for op in ("create", "get", "search"):
        cells = [
            f"{mg[op]['rps'] / res[op]['rps']:.2f}×" if res[op]["rps"] else "n/a"
            for k, res in runs.items()
            if k != "Modelgate"
        ]
        ratios.append(f"| {op} | " + " | ".join(cells) + " |")
    return "\n".join(rows + ratios)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=int, default=2000, help="models created (and seeded) per server")
    p.add_argument("--warmup-models", type=int, default=100)
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (requests in flight)")
    p.add_argument("--workers", type=int, default=2, help="server worker processes, both servers")
    p.add_argument("--duration", type=float, default=20.0, help="measured seconds of get and of search")
    p.add_argument("--phase-warmup", type=float, default=3.0, help="unmeasured seconds before get/search")
    p.add_argument("--search-pages", type=int, default=5, help="pages each client walks before restarting")
    p.add_argument("--mlflow-version", default="3.17.2")
    p.add_argument("--mlflow-server", choices=["uvicorn", "gunicorn", "both", "none"], default="uvicorn")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="gunicorn threads per worker (gthread) for Modelgate and for MLflow's gunicorn flavour; 1: sync",
    )
    p.add_argument("--modelgate-gunicorn-opts", default="", help="extra gunicorn options for Modelgate")
    p.add_argument(
        "--modelgate-dir", type=Path, default=REPO, help="the Modelgate tree to run (a scratch copy)"
    )
    p.add_argument(
        "--rounds", type=int, default=2, help="servers measured in turn this many times; medians reported"
    )
    p.add_argument("--skip-modelgate", action="store_true")
    p.add_argument("--keep-dbs", action="store_true", help="leave the bench databases for inspection")
    p.add_argument("--out", type=Path, default=BENCH_VAR / "api_vs_mlflow.json")
    args = p.parse_args()

    started = time.time()
    report: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "args": vars(args) | {"out": str(args.out)},
    }
    report["machine"] = machine_facts()
    report["database"] = f"PostgreSQL at {PG_ADMIN_URL.split('@')[-1]}"
    flavours = {"both": ["uvicorn", "gunicorn"], "none": []}.get(args.mlflow_server, [args.mlflow_server])
    if flavours:
        report["machine"]["mlflow"] = ensure_mlflow(args.mlflow_version)
        report["machine"]["mlflow_packages"] = subprocess.run(
            [
                str(mlflow_python()),
                "-c",
                "import importlib.metadata as m; print(' '.join(f'{p} {m.version(p)}' for p in "
                "('uvicorn', 'fastapi', 'flask', 'gunicorn', 'sqlalchemy', 'psycopg2-binary')))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()
    rounds: dict[str, list] = {}
    for n in range(args.rounds):
        log(f"--- round {n + 1} of {args.rounds}")
        if not args.skip_modelgate:
            rounds.setdefault("Modelgate", []).append(bench_modelgate(args))
        for flavour in flavours:
            rounds.setdefault(f"MLflow ({flavour})", []).append(bench_mlflow(args, flavour))
    report["rounds"] = rounds
    report["runs"] = runs = {label: medians(results) for label, results in rounds.items()}
    report["elapsed_s"] = round(time.time() - started, 1)
    write_json(args.out, report)
    print(json.dumps(report["machine"], indent=2))
    if "Modelgate" in runs and len(runs) > 1:
        print(markdown(report))
    else:
        print(json.dumps(runs, indent=2))
    log(f"done in {report['elapsed_s']}s")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
