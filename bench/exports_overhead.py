"""Export overhead: the conversions alone against the whole export task (conversion + parity + storage).

    .venv/bin/python bench/exports_overhead.py [--repeat 3] [--models dense,conv2d,mlp] [--samples 32]
        [--json] [--modelgate-dir /tmp/scratch-copy]

Everything runs in this process, in a temporary directory removed at the end (also on Ctrl-C or
SIGTERM): an SQLite database, the artifact store and the var directory live there, and the Celery
broker is ``memory://``, so no server is needed. Node and ``@tensorflow/tfjs`` (``npm ci``) are needed
for the TF.js check, as in production.

1. Three Keras models are built and registered with ``registry.services.model_version_register``:
   ``dense`` (the tests' tiny classifier, 4 -> 8 -> 2), ``conv2d`` (8x8x1 image, Conv2D 16 + Dense 32,
   the tests' small_conv2d_keras_model) and ``mlp`` (64 -> 512 -> 512 -> 10, ~300k parameters).
2. For each model and format, each run times, in turn:
   - **conversion alone**: what a bare script would do: load the .keras file, ``model.export()`` to a
     SavedModel, and run the format's converter (tf2onnx opset 17, ``TFLiteConverter`` builtin ops
     with and without dynamic-range quantisation, ``tensorflowjs`` graph model) into a temporary
     directory;
   - **whole task**: ``lifecycle.exports.export_run`` on a fresh Export row, with the worker's cached
     SavedModel removed first so that it pays for the same ``model.export()``: the claim, the
     conversion, the parity check (the source model and the export each run on ``--samples`` inputs
     in their own runtime: onnxruntime, the TFLite interpreter, Node + @tensorflow/tfjs), the zip of
     the TF.js directory, the content-addressed store, and the database writes.
   The ratio is the median of the per-run ratios (whole / conversion), so a burst of other load
   lands on both sides. The breakdown comes from the Export row (``convert_ms``, ``check_ms``); "rest"
   is whole minus both: claim, storage, events.
3. Per version, the four formats share one SavedModel (the worker caches it by the source's sha256):
   the conversions alone (one ``model.export()`` + four converters) against the four tasks run one
   after another from a cold cache.

A warm-up pass (not timed) pays for the imports (TensorFlow, tf2onnx, tensorflowjs, onnxruntime) and
Node's first start, which a worker pays once, before its first export.
"""

from __future__ import annotations

import argparse
import hashlib
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

REPO = Path(__file__).resolve().parent.parent
FORMATS = ["onnx", "tflite", "tflite-dynamic", "tfjs"]


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
    node = shutil.which("node")
    node_version = (
        subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip() if node else "-"
    )
    return f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, Node {node_version}"


def setup_django(tmp: Path, tree: Path) -> None:
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite3'}",
            "MODELGATE_VAR_DIR": str(tmp / "var"),
            "ARTIFACT_STORE": str(tmp / "artifacts"),
            "CELERY_BROKER_URL": "memory://",
            "LOG_LEVEL": "WARNING",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "TFDF_DISABLE_WELCOME_MESSAGE": "1",
        }
    )
    sys.path.insert(0, str(tree))
    os.chdir(tree)
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


# --- models ---------------------------------------------------------------------------------------


def build_models(names: list[str], root: Path) -> dict[str, Path]:
    from tests import builders

    paths: dict[str, Path] = {}
    for name in names:
        if name == "dense":
            paths[name] = builders.tiny_keras_classifier(root / "dense")
        elif name == "conv2d":
            paths[name] = builders.small_conv2d_keras_model(root / "conv2d")
        elif name == "mlp":
            paths[name] = wide_mlp(root / "mlp" / "mlp.keras")
    return paths


def wide_mlp(path: Path) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(64,), name="features")
    hidden = keras.layers.Dense(512, activation="relu")(inputs)
    hidden = keras.layers.Dense(512, activation="relu")(hidden)
    outputs = keras.layers.Dense(10, activation="softmax")(hidden)
    path.parent.mkdir(parents=True, exist_ok=True)
    keras.Model(inputs, outputs).save(path)
    return path


def register(name: str, path: Path, samples: int):
    from lifecycle.policy import policy_validate
    from registry.models import RegisteredModel
    from registry.services import Upload, model_version_register

    policy = policy_validate(
        {"exports": {"formats": FORMATS, "parity_samples": samples}}, check_datasets=False
    )
    model = RegisteredModel.objects.create(name=f"bench-{name}", policy=policy)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    upload = Upload(path=path, sha256=digest, size=path.stat().st_size, filename=path.name)
    version, _ = model_version_register(model=model, upload=upload, metadata={}, actor=None)
    return version


def parameters(path: Path) -> int:
    import keras

    return int(keras.saving.load_model(path, compile=False).count_params())


# --- measurements ---------------------------------------------------------------------------------


def convert_alone(source: Path, fmt: str, tmp: Path) -> float:
    """A bare script's conversion: .keras -> model.export() -> the converter. Seconds."""
    from lifecycle.exports import FORMATS as REGISTRY
    from lifecycle.exports.savedmodel import _export_keras
    from lifecycle.policy import Exports

    work = Path(tempfile.mkdtemp(prefix="alone-", dir=tmp))
    try:
        started = time.perf_counter()
        savedmodel = _export_keras(source, work / "savedmodel")
        (work / "out").mkdir()
        REGISTRY[fmt].convert(savedmodel, work / "out", Exports())
        return time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)


def convert_all_alone(source: Path, tmp: Path) -> float:
    """One model.export() shared by the four converters. Seconds."""
    from lifecycle.exports import FORMATS as REGISTRY
    from lifecycle.exports.savedmodel import _export_keras
    from lifecycle.policy import Exports

    work = Path(tempfile.mkdtemp(prefix="alone-", dir=tmp))
    try:
        started = time.perf_counter()
        savedmodel = _export_keras(source, work / "savedmodel")
        for fmt in FORMATS:
            out = work / fmt
            out.mkdir()
            REGISTRY[fmt].convert(savedmodel, out, Exports())
        return time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)


def forget_savedmodel(version) -> None:
    from lifecycle.exports.savedmodel import cache_root

    shutil.rmtree(cache_root() / version.sha256, ignore_errors=True)


def whole_task(version, fmt: str):
    """export_run on a fresh row; returns (seconds, the finished Export)."""
    from lifecycle.exports import export_run
    from registry.models import Export

    Export.objects.filter(version=version, format=fmt).delete()
    export = Export.objects.create(version=version, format=fmt)
    started = time.perf_counter()
    finished = export_run(export.pk)
    elapsed = time.perf_counter() - started
    if finished is None or finished.status != "passed":
        raise RuntimeError(f"{fmt} export of {version} did not pass: {finished and finished.error}")
    return elapsed, finished


def run(args: argparse.Namespace, tmp: Path) -> dict:
    setup_django(tmp, args.modelgate_dir)
    from registry.storage import blob_local_path

    log("building the models")
    paths = build_models(args.models, tmp / "models")
    versions = {name: register(name, path, args.samples) for name, path in paths.items()}
    sources = {}
    for name, version in versions.items():
        with blob_local_path(version.artifact_key, suffix=".keras") as local:
            sources[name] = Path(local)

    log("warm-up (imports, Node's first start)")
    first = next(iter(versions))
    for fmt in FORMATS:
        convert_alone(sources[first], fmt, tmp)
        forget_savedmodel(versions[first])
        whole_task(versions[first], fmt)

    rows = []
    for name, version in versions.items():
        for fmt in FORMATS:
            alone, whole, ratios, convert_ms, check_ms, size = [], [], [], [], [], 0
            for run_index in range(args.repeat):
                a = convert_alone(sources[name], fmt, tmp)
                forget_savedmodel(version)
                w, export = whole_task(version, fmt)
                alone.append(a)
                whole.append(w)
                ratios.append(w / a)
                convert_ms.append(export.convert_ms)
                check_ms.append(export.check_ms)
                size = export.size
                log(f"{name} {fmt} run {run_index + 1}: alone {a:.2f} s, task {w:.2f} s ({w / a:.2f}x)")
            w_med, c_med, k_med = (
                statistics.median(whole),
                statistics.median(convert_ms),
                statistics.median(check_ms),
            )
            rows.append(
                {
                    "model": name,
                    "format": fmt,
                    "conversion_s": statistics.median(alone),
                    "task_s": w_med,
                    "ratio": statistics.median(ratios),
                    "task_convert_s": c_med / 1000,
                    "task_check_s": k_med / 1000,
                    "task_rest_ms": w_med * 1000 - c_med - k_med,
                    "size": size,
                }
            )

    per_version = []
    for name, version in versions.items():
        alone, whole = [], []
        for _ in range(args.repeat):
            alone.append(convert_all_alone(sources[name], tmp))
            forget_savedmodel(version)
            started = time.perf_counter()
            for fmt in FORMATS:
                whole_task(version, fmt)
            whole.append(time.perf_counter() - started)
        per_version.append(
            {
                "model": name,
                "conversion_s": statistics.median(alone),
                "tasks_s": statistics.median(whole),
                "ratio": statistics.median(w / a for w, a in zip(whole, alone, strict=True)),
            }
        )
    return {
        "machine": machine(),
        "load_average": os.getloadavg(),
        "repeat": args.repeat,
        "samples": args.samples,
        "parameters": {name: parameters(path) for name, path in paths.items()},
        "rows": rows,
        "per_version": per_version,
    }


def render(report: dict) -> str:
    lines = [
        f"Machine: {report['machine']}; load average at the end {report['load_average'][0]:.2f}; "
        f"median of {report['repeat']} runs; parity on {report['samples']} samples.",
        "",
        "| model (params) | format | conversion alone | whole task | ratio | in the task: convert / check / rest | size |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for row in report["rows"]:
        params = report["parameters"][row["model"]]
        lines.append(
            f"| {row['model']} ({params:,}) | {row['format']} | {row['conversion_s']:.2f} s | {row['task_s']:.2f} s "
            f"| {row['ratio']:.2f}x | {row['task_convert_s']:.2f} s / {row['task_check_s']:.2f} s / "
            f"{row['task_rest_ms']:.0f} ms | {row['size'] / 1024:.0f} KiB |"
        )
    lines += [
        "",
        "| model | 4 conversions, one SavedModel | 4 export tasks, one cached SavedModel | ratio |",
        "|---|---:|---:|---:|",
    ]
    for row in report["per_version"]:
        lines.append(
            f"| {row['model']} | {row['conversion_s']:.2f} s | {row['tasks_s']:.2f} s | {row['ratio']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is reported")
    p.add_argument("--models", default="dense,conv2d,mlp", help="comma-separated: dense, conv2d, mlp")
    p.add_argument("--samples", type=int, default=32, help="parity samples (exports.parity_samples)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    p.add_argument("--modelgate-dir", type=Path, default=REPO, help="the Modelgate tree to import")
    args = p.parse_args()
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models or not set(args.models) <= {"dense", "conv2d", "mlp"} or args.repeat < 1:
        p.error("--models takes dense, conv2d and/or mlp; --repeat at least 1")
    args.modelgate_dir = args.modelgate_dir.resolve()

    # SIGTERM unwinds like Ctrl-C, so that the temporary directory is removed either way.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    tmp = Path(tempfile.mkdtemp(prefix="modelgate-bench-exports-"))
    try:
        report = run(args, tmp)
    finally:
        try:
            from django.db import connections

            connections.close_all()
        except Exception:
            pass
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
