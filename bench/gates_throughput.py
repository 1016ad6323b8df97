"""Gate evaluation throughput: rows/s of a metric gate end to end, against a bare onnxruntime loop.

    .venv/bin/python bench/gates_throughput.py [--rows 1000000] [--repeat 3] [--formats csv,parquet]
        [--hidden 64] [--profile] [--json] [--modelgate-dir /tmp/scratch-copy]

Everything runs in this process, in a temporary directory that is removed at the end (also on Ctrl-C
or SIGTERM): an SQLite database, the artifact store and the var directory live there, and the Celery
broker is ``memory://``, so no server is needed.

1. It writes a dataset of ``--rows`` rows (``f0``..``f15`` float, ``country`` with five values, ``y``)
   as CSV and as Parquet, and registers both with ``registry.services.dataset_register``.
2. It builds an ONNX MLP with ``onnx.helper`` (16 inputs -> MatMul+Relu 64 -> MatMul+Relu 64 ->
   MatMul -> 2 softmax outputs; ``--hidden`` sets the width, for a costlier model) and registers it
   with ``registry.services.model_version_register``.
3. For each format it sets a policy with one ``metric`` gate (accuracy, ``slice_by: country``) and times
   ``lifecycle.gates.gates_evaluate(version)`` end to end: model load, dataset read, predictions and
   metrics per slice. The first evaluation of each dataset parses it and fills the dataset cache
   (``lifecycle.dataset_cache``, in the temporary directory); it is timed apart, and the later runs
   read the cache, as every evaluation after a host's first does. Then, from an empty cache again,
   the warm-up a policy write has a gates worker run (``lifecycle.gates.datasets_warm``) is timed,
   and the first push after it.
4. Baseline: the same rows loaded into one float32 numpy array beforehand (not timed), then a bare
   loop of ``session.run`` over batches of 4096 rows, with the thread settings of
   ``lifecycle.runtimes.OnnxRuntime`` (intra-op threads chosen by onnxruntime, one inter-op thread);
   and the same loop at the gate's own rows per call (``evaluation.batch_rows_for``), so that the
   share of the figure that is only a bigger batch shows.
5. Breakdown of a later evaluation: a cache hit alone (every page touched), ``predict_batched`` alone
   through the runtime adapter, and the per-slice metrics alone (``gates._dataset_outcomes`` on scored
   rows); also ``evaluation.read_chunks`` alone, the parse a first evaluation pays. "other" is what
   the end-to-end time leaves: opening the model, the database, and the noise between separate
   timings (on a busy machine it can come out negative). Each timed part starts after a 0.3 s pause,
   so that the previous session's spinning threads do not take CPU from it.

Every figure is the median of ``--repeat`` runs. Each run times the bare loop and then
``gates_evaluate`` on every format, and the ratio is the median of the per-run ratios, so a burst of
other load on the machine lands on both sides of it. The page cache is warm (the files were just
written). The CPU column is this process's CPU time (every thread), which other load changes less than
wall time; the load average is printed so that a busy machine shows.
``--profile`` adds a pyinstrument profile of one ``gates_evaluate`` per format (``pip install
pyinstrument``). ``--modelgate-dir`` imports Modelgate from another tree (a scratch copy with a change
to try) instead of this checkout.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
FEATURES = [f"f{i}" for i in range(16)]
COUNTRIES = np.array(["US", "DE", "FR", "IN", "BR"])
BATCH = 4096
GOAL = 0.8


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}"


# --- data and model -------------------------------------------------------------------------------


def mlp_weights(seed: int = 0, hidden: int = 64) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    sizes = [len(FEATURES), hidden, hidden, 2]
    return [
        (
            (rng.normal(size=(n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(np.float32),
            (rng.normal(size=(n_out,)) * 0.1).astype(np.float32),
        )
        for n_in, n_out in itertools.pairwise(sizes)
    ]


def mlp_numpy(weights: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    """The logits, in numpy, to make labels that the model mostly gets right."""
    out = x
    for i, (w, b) in enumerate(weights):
        out = out @ w + b
        if i < len(weights) - 1:
            np.maximum(out, 0, out=out)
    return out


def write_onnx(weights: list[tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    from onnx import TensorProto, checker, helper, numpy_helper

    nodes, initializers, current = [], [], "features"
    for i, (w, b) in enumerate(weights):
        initializers += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [
            helper.make_node("MatMul", [current, f"W{i}"], [f"mm{i}"]),
            helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"z{i}"]),
        ]
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i}"]))
            current = f"h{i}"
    nodes.append(helper.make_node("Softmax", [f"z{len(weights) - 1}"], ["output_0"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "bench_mlp",
        inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", len(FEATURES)])],
        outputs=[helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["batch", 2])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8, producer_name="modelgate-bench"
    )
    checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def make_data(rows: int, weights, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features (rounded to 5 decimals, as they are written), countries, and labels: the model's own
    class, flipped for 5% of the rows and for 20% of BR, so that the slices differ."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(size=(rows, len(FEATURES))), 5)  # float64: written as short decimals
    country = COUNTRIES[rng.choice(len(COUNTRIES), size=rows, p=[0.4, 0.2, 0.15, 0.15, 0.1])]
    y = np.empty(rows, dtype=np.int64)
    for start in range(0, rows, 200_000):
        part = x[start : start + 200_000].astype(np.float32)
        y[start : start + 200_000] = mlp_numpy(weights, part).argmax(axis=1)
    flip = rng.random(rows) < np.where(country == "BR", 0.2, 0.05)
    y = np.where(flip, 1 - y, y)
    return x, country, y


def write_files(x: np.ndarray, country: np.ndarray, y: np.ndarray, workdir: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    columns = {name: pa.array(x[:, i]) for i, name in enumerate(FEATURES)}
    table = pa.table({**columns, "country": pa.array(country.astype(object)), "y": pa.array(y)})
    paths = {"csv": workdir / "bench.csv", "parquet": workdir / "bench.parquet"}
    pacsv.write_csv(table, paths["csv"], write_options=pacsv.WriteOptions(quoting_style="none"))
    pq.write_table(table, paths["parquet"])
    return paths


def upload(path: Path):
    from registry.services import Upload

    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return Upload(path=path, sha256=digest.hexdigest(), size=path.stat().st_size, filename=path.name)


# --- measurements ---------------------------------------------------------------------------------


def onnx_session(path: Path):
    """A session with lifecycle.runtimes.OnnxRuntime's options."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 0
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def settle() -> None:
    """Let the last session's intra-op threads stop spinning: ONNX Runtime's threads busy-wait for a
    while after a run, and that took ~15 ms of CPU from whichever measurement came next."""
    time.sleep(0.3)


def bare_loop(session, x: np.ndarray, batch: int = BATCH) -> tuple[float, float]:
    """Wall and CPU seconds (CPU counts every thread of this process, onnxruntime's included)."""
    settle()
    started, cpu = time.perf_counter(), time.process_time()
    for start in range(0, len(x), batch):
        session.run(None, {"features": x[start : start + batch]})
    return time.perf_counter() - started, time.process_time() - cpu


def time_gates(version_pk: int) -> tuple[float, float, object]:
    from lifecycle.gates import gates_evaluate
    from registry.models import ModelVersion

    version = ModelVersion.objects.select_related("model").get(pk=version_pk)
    settle()
    started, cpu = time.perf_counter(), time.process_time()
    result = gates_evaluate(version)
    return time.perf_counter() - started, time.process_time() - cpu, result


def time_read(path: Path, fmt: str) -> tuple[float, int]:
    from lifecycle import evaluation

    started, rows = time.perf_counter(), 0
    for chunk in evaluation.read_chunks(path, fmt, label="y", slice_columns=["country"]):
        rows += len(chunk.labels)
    return time.perf_counter() - started, rows


def time_cache_read(dataset) -> float:
    """A hit in the dataset cache, every page of it touched (as the model and the metrics will)."""
    from lifecycle import dataset_cache

    started = time.perf_counter()
    with dataset_cache.decoded(dataset, label="y", slice_columns=["country"]) as data:
        assert data.from_cache
        float(data.features[:, 0].sum()), int(data.labels.sum()), int(data.slices["country"][0].sum())
    return time.perf_counter() - started


def time_predict(runtime, chunks: list[np.ndarray]) -> tuple[float, np.ndarray]:
    from lifecycle import evaluation

    started = time.perf_counter()
    outputs = np.concatenate([evaluation.predict_batched(runtime, chunk) for chunk in chunks])
    return time.perf_counter() - started, outputs


def time_load(path: Path) -> float:
    from lifecycle import runtimes

    started = time.perf_counter()
    runtimes.open_model(path, "onnx")
    return time.perf_counter() - started


def time_metrics(gate, dataset, labels, outputs, country) -> float:
    import pandas as pd

    from lifecycle import gates

    codes, values = pd.factorize(country, sort=True)
    scored = gates._Scored(
        dataset=dataset,
        labels=labels,
        candidate=outputs,
        champion=None,
        slices={"country": (codes.astype(np.int32), list(values))},
        slice_rows={"country": np.bincount(codes, minlength=len(values)).tolist()},
    )
    started = time.perf_counter()
    gates._dataset_outcomes(0, gate, scored, ctx=None)
    return time.perf_counter() - started


# --- main -----------------------------------------------------------------------------------------


def setup_django(tmp: Path, tree: Path) -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
            "MODELGATE_VAR_DIR": str(tmp / "var"),
            "ARTIFACT_STORE": str(tmp / "artifacts"),
            "CELERY_BROKER_URL": "memory://",
            "LOG_LEVEL": "WARNING",
        }
    )
    sys.path.insert(0, str(tree))
    os.chdir(tree)  # Celery's Django fixup puts the working directory first on sys.path
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    # A worker has paid for these imports before its first version; the timings must not include them.
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401
    import sklearn.metrics  # noqa: F401

    import lifecycle.gates  # noqa: F401


def run(args: argparse.Namespace, tmp: Path) -> dict:
    setup_django(tmp, args.modelgate_dir.resolve())
    from django.contrib.auth import get_user_model

    from lifecycle import dataset_cache, evaluation, gates, runtimes
    from lifecycle.policy import policy_parse, policy_validate
    from registry import services
    from registry.models import ModelVersion

    rows = args.rows
    log(f"generating {rows:,} rows and writing CSV and Parquet under {tmp}")
    weights = mlp_weights(hidden=args.hidden)
    x, country, y = make_data(rows, weights)
    paths = write_files(x, country, y, tmp)
    x = np.ascontiguousarray(x, dtype=np.float32)  # what the readers hand to the model
    model_path = write_onnx(weights, tmp / "mlp.onnx")
    sizes = {fmt: path.stat().st_size for fmt, path in paths.items()}

    user = get_user_model().objects.create_user("bench", password=None)
    datasets = {}
    for fmt in args.formats:
        started = time.perf_counter()
        datasets[fmt] = services.dataset_register(name=f"bench-{fmt}", upload=upload(paths[fmt]), actor=user)
        log(
            f"registered dataset bench-{fmt} ({sizes[fmt] / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s"
        )

    def gate_for(fmt: str) -> dict:
        return {
            "kind": "metric",
            "metric": "accuracy",
            "dataset": f"bench-{fmt}",
            "label": "y",
            "slice_by": "country",
            "min": 0.5,
        }

    first = args.formats[0]
    model = services.model_create(
        name="bench-mlp", actor=user, policy=policy_validate({"gates": [gate_for(first)]})
    )
    version, _ = services.model_version_register(
        model=model, upload=upload(model_path), metadata={}, actor=user
    )

    # Inputs for the breakdown and the baseline, built once and not timed.
    country_str = country.astype(object)  # what the readers give: an array of Python str
    session = onnx_session(model_path)
    runtime = runtimes.open_model(model_path, "onnx")
    bare_loop(session, x[: BATCH * 4])  # warm both up
    time_predict(runtime, [x[: BATCH * 4]])

    report: dict = {
        "load_average_before": os.getloadavg()[0],
        "rows": rows,
        "repeat": args.repeat,
        "machine": machine(),
        "onnxruntime": runtime.name,
        "hidden": args.hidden,
        "tree": str(Path(evaluation.__file__).resolve().parent.parent),
        "file_mb": {fmt: round(sizes[fmt] / 1e6, 1) for fmt in args.formats},
        "formats": {},
    }

    def use(fmt: str) -> None:
        services.model_policy_set(model=model, actor=user, policy=policy_validate({"gates": [gate_for(fmt)]}))

    # Interleaved: each repeat times the bare loop and then gates_evaluate on every format, so that a
    # burst of other load on the machine hits both sides of a ratio rather than one of them.
    base_runs: list[tuple[float, float]] = []
    same_batch_runs: list[tuple[float, float]] = []
    gate_runs: dict[str, list] = {fmt: [] for fmt in args.formats}
    errors: dict[str, str] = {}
    first_runs: dict[str, tuple[float, float]] = {}
    warm_runs: dict[str, tuple[float, float, float]] = {}
    for fmt in args.formats:
        # The first evaluation on a worker host parses the file and fills the dataset cache; it is
        # timed apart (against a bare loop run just before it), and every later run reads the cache.
        log(f"first evaluation of bench-{fmt}: parses the file and fills the dataset cache")
        use(fmt)
        bare = bare_loop(session, x)
        wall, _cpu, _ = time_gates(version.pk)
        first_runs[fmt] = (wall, bare[0] / wall)
    # As in service: writing the policy has a gates worker decode its dataset (pipeline.policy_written),
    # timed from an empty cache, and the first push then reads it decoded.
    shutil.rmtree(dataset_cache.cache_dir(), ignore_errors=True)
    dataset_cache._mapped.clear()
    for fmt in args.formats:
        log(f"bench-{fmt} again from an empty cache: the policy write's warm-up, then the first push")
        use(fmt)
        started = time.perf_counter()
        gates.datasets_warm(policy_parse(model.policy))
        warm = time.perf_counter() - started
        bare = bare_loop(session, x)
        wall, _cpu, _ = time_gates(version.pk)
        warm_runs[fmt] = (warm, wall, bare[0] / wall)
    for i in range(args.repeat):
        log(f"run {i + 1}/{args.repeat}: bare loop, then gates_evaluate on {', '.join(args.formats)}")
        base_runs.append(bare_loop(session, x))
        # The same loop at the gate's own rows per call, which are more than BATCH: how much of the
        # gate's figure is the bigger batch rather than the reading and the metrics.
        same_batch_runs.append(bare_loop(session, x, evaluation.batch_rows_for(x)))
        for fmt in args.formats:
            if fmt in errors:
                continue
            use(fmt)
            try:
                gate_runs[fmt].append(time_gates(version.pk))
            except Exception as exc:  # report it and carry on with the other format
                errors[fmt] = f"{type(exc).__name__}: {exc}"
                log(f"{fmt}: gates_evaluate raised {errors[fmt]}")
    report["baseline_s"] = statistics.median(t for t, _ in base_runs)
    report["baseline_cpu_s"] = statistics.median(c for _, c in base_runs)
    report["same_batch_s"] = statistics.median(t for t, _ in same_batch_runs)
    report["gate_batch"] = evaluation.batch_rows_for(x)

    for fmt in args.formats:
        entry: dict = {}
        report["formats"][fmt] = entry
        if fmt in errors:
            entry["error"] = errors[fmt]
            continue
        runs = gate_runs[fmt]
        entry["first_s"], entry["first_ratio"] = first_runs[fmt]
        entry["warm_s"], entry["after_warm_s"], entry["after_warm_ratio"] = warm_runs[fmt]
        entry["runs_s"] = [round(t, 4) for t, _, _ in runs]
        entry["bare_runs_s"] = [round(t, 4) for t, _ in base_runs]
        entry["total_s"] = statistics.median(t for t, _, _ in runs)
        entry["total_cpu_s"] = statistics.median(c for _, c, _ in runs)
        entry["ratio"] = statistics.median(b[0] / g[0] for b, g in zip(base_runs, runs, strict=True))
        entry["same_batch_ratio"] = statistics.median(
            b[0] / g[0] for b, g in zip(same_batch_runs, runs, strict=True)
        )
        outcomes = runs[-1][2].outcomes
        entry["outcomes"] = [
            {"slice": o.slice or "(all)", "value": o.value, "rows": o.rows, "passed": o.passed}
            for o in outcomes
            if o.gate == "metric"
        ]
        entry["failed"] = [o.reason for o in outcomes if o.passed is False]

        log(f"{fmt}: breakdown (parse alone, cache read alone, predict alone, metrics alone)")
        use(fmt)
        gate = policy_parse(ModelVersion.objects.get(pk=version.pk).model.policy).gates[0]
        parts: dict[str, list[float]] = {"parse": [], "read": [], "predict": [], "metrics": [], "load": []}
        for _ in range(args.repeat):
            parts["parse"].append(time_read(paths[fmt], fmt)[0])
            parts["read"].append(time_cache_read(datasets[fmt]))
            seconds, outputs = time_predict(runtime, [x])
            parts["predict"].append(seconds)
            parts["metrics"].append(time_metrics(gate, datasets[fmt], y, outputs, country_str))
            parts["load"].append(time_load(model_path))
        for part, values in parts.items():
            entry[f"{part}_s"] = statistics.median(values)
        entry["other_s"] = entry["total_s"] - entry["read_s"] - entry["predict_s"] - entry["metrics_s"]

        if args.profile:
            from pyinstrument import Profiler

            use(fmt)
            profiler = Profiler(interval=0.001)
            profiler.start()
            try:
                time_gates(version.pk)
            finally:
                profiler.stop()
            entry["profile"] = profiler.output_text(unicode=False, color=False, show_all=False)
    report["load_average_after"] = os.getloadavg()[0]
    return report


def render(report: dict) -> str:
    rows = report["rows"]
    base_rate = rows / report["baseline_s"]
    lines = [
        f"rows: {rows:,}   MLP 16-{report['hidden']}-{report['hidden']}-2   machine: {report['machine']}   "
        f"{report['onnxruntime']}   "
        f"median of {report['repeat']} runs   tree: {report['tree']}",
        f"1-minute load average: {report['load_average_before']:.2f} before, "
        f"{report['load_average_after']:.2f} after"
        + (
            " (above the core count: other work was competing, the wall times are inflated)"
            if max(report["load_average_before"], report["load_average_after"]) > (os.cpu_count() or 1)
            else ""
        ),
        "",
        "| measurement | wall (s) | rows/s | vs baseline | CPU (s) |",
        "|---|---:|---:|---:|---:|",
        f"| bare onnxruntime loop, batches of {BATCH}, rows already in numpy | "
        f"{report['baseline_s']:.2f} | {base_rate:,.0f} | 1.00x | {report['baseline_cpu_s']:.2f} |",
        f"| the same loop at the gate's {report['gate_batch']} rows per call | {report['same_batch_s']:.3f} | "
        f"{rows / report['same_batch_s']:,.0f} | {report['baseline_s'] / report['same_batch_s']:.2f}x | |",
    ]
    for fmt, entry in report["formats"].items():
        if "error" in entry:
            lines.append(
                f"| gates_evaluate, {fmt} ({report['file_mb'][fmt]} MB) | failed: {entry['error']} | | | |"
            )
            continue
        lines.append(
            f"| gates_evaluate, {fmt} ({report['file_mb'][fmt]} MB), first evaluation (parses, fills the cache) | "
            f"{entry['first_s']:.2f} | {rows / entry['first_s']:,.0f} | {entry['first_ratio']:.2f}x | |"
        )
        lines.append(
            f"| the policy write's warm-up on a gates worker, {fmt} (parses, fills the cache) | "
            f"{entry['warm_s']:.2f} | | | |"
        )
        lines.append(
            f"| gates_evaluate, {fmt}, the first push after that warm-up | "
            f"{entry['after_warm_s']:.3f} | {rows / entry['after_warm_s']:,.0f} | {entry['after_warm_ratio']:.2f}x | |"
        )
        lines.append(
            f"| gates_evaluate, {fmt} ({report['file_mb'][fmt]} MB), later evaluations (cache) | "
            f"{entry['total_s']:.3f} | "
            f"{rows / entry['total_s']:,.0f} | **{entry['ratio']:.2f}x** | {entry['total_cpu_s']:.2f} |"
        )
    for fmt, entry in report["formats"].items():
        if "error" in entry:
            continue
        total = entry["total_s"]
        lines += [
            "",
            f"breakdown of a later evaluation, {fmt} (each part timed alone; other = total - the three):",
            "",
        ]
        lines += ["| part | time (s) | share |", "|---|---:|---:|"]
        for part in ("read", "predict", "metrics", "other"):
            lines.append(f"| {part} | {entry[f'{part}_s']:.3f} | {entry[f'{part}_s'] / total:.0%} |")
        lines.append(f"| (first evaluation only: parsing the file) | {entry['parse_s']:.2f} | |")
        lines.append(
            f"runs (s): bare {', '.join(map(str, entry['bare_runs_s']))}; "
            f"gates_evaluate {', '.join(map(str, entry['runs_s']))}"
        )
        lines.append(f"| (of other: opening the model, onnx.checker + session) | {entry['load_s']:.2f} | |")
        values = ", ".join(
            f"{o['slice']}={o['value']:.4f}" for o in entry["outcomes"] if o["value"] is not None
        )
        lines += ["", f"accuracy: {values}"]
        if entry["failed"]:
            lines.append(f"failed gates: {entry['failed']}")
    lines.append("")
    for fmt, entry in report["formats"].items():
        if "error" in entry:
            lines.append(f"{fmt}: gates_evaluate failed: {entry['error']}")
            continue
        ratio = entry["ratio"]
        verdict = "meets" if ratio >= GOAL else "misses"
        lines.append(
            f"{fmt}: {ratio:.2f}x the bare loop once the dataset is decoded, {verdict} the goal of {GOAL}x "
            f"(first push after the policy's warm-up: {entry['after_warm_ratio']:.2f}x; first evaluation "
            f"on a host without one: {entry['first_ratio']:.2f}x; against the loop at the gate's own batch "
            f"size: {entry['same_batch_ratio']:.2f}x)"
        )
    for fmt, entry in report["formats"].items():
        if entry.get("profile"):
            lines += ["", f"--- pyinstrument profile of one gates_evaluate, {fmt} ---", entry["profile"]]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
    p.add_argument("--formats", default="csv,parquet", help="comma-separated: csv, parquet")
    p.add_argument(
        "--hidden", type=int, default=64, help="width of the MLP's two hidden layers (a costlier model)"
    )
    p.add_argument("--profile", action="store_true", help="add a pyinstrument profile per format")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    p.add_argument("--modelgate-dir", type=Path, default=REPO, help="the Modelgate tree to import")
    args = p.parse_args()
    args.formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if not set(args.formats) <= {"csv", "parquet"} or not args.formats:
        p.error("--formats takes csv and/or parquet")
    if args.rows < BATCH * 4 or args.repeat < 1:
        p.error(f"--rows must be at least {BATCH * 4} and --repeat at least 1")

    # SIGTERM unwinds like Ctrl-C, so that the temporary directory is removed either way.
    signal.signal(signal.SIGTERM, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="modelgate-bench-gates-"))
    try:
        report = run(args, tmp)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            pass
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
