"""TF.js: a graph model from the shared SavedModel, checked in Node with ``@tensorflow/tfjs``.

Only the *graph model* export is used. A Keras 3 model also converts to a TF.js *layers* model, but
TF.js then refuses to load it ("An InputLayer should be passed either a batchInputShape or an
inputShape"). The check runs ``tfjs_predict.mjs`` next to this file with Node and the pure-JS CPU
backend of ``@tensorflow/tfjs`` (installed by ``npm ci``; ``tfjs-node`` would download a native
library at install time). The export is stored and downloaded as one zip holding ``model.json`` and
its weight shards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from django.conf import settings

from lifecycle import runtimes
from lifecycle.exports.errors import ConversionFailed, not_the_models_fault

SCRIPT = Path(__file__).with_name("tfjs_predict.mjs")
PREDICT_TIMEOUT_SECONDS = 600
# Zip entries get a fixed timestamp, so that the same conversion packs to the same bytes.
_EPOCH = (1980, 1, 1, 0, 0, 0)
_TF_DTYPES = {"DT_FLOAT": "float32", "DT_INT32": "int32", "DT_BOOL": "bool", "DT_STRING": "string"}


def _import_tensorflowjs() -> None:
    runtimes._import_tensorflow()
    # tensorflowjs imports TensorFlow Decision Forests, whose welcome message imports IPython (not
    # installed) whenever stdout is not a terminal or a plain file: a captured stream, say.
    os.environ.setdefault("TFDF_DISABLE_WELCOME_MESSAGE", "1")


def converter_name() -> str:
    _import_tensorflowjs()
    import tensorflowjs

    return f"tensorflowjs {tensorflowjs.__version__} (graph model)"


def convert(savedmodel: Path, out_dir: Path) -> Path:
    """Convert to a graph model directory ``out_dir/tfjs`` (model.json and shards)."""
    _import_tensorflowjs()
    from tensorflowjs.converters import convert_tf_saved_model

    out = out_dir / "tfjs"
    try:
        convert_tf_saved_model(str(savedmodel), str(out), signature_def="serving_default")
    except Exception as exc:
        if not_the_models_fault(exc):
            raise
        raise ConversionFailed("tensorflowjs", " ".join(str(exc).split()) or type(exc).__name__) from exc
    if not (out / "model.json").is_file():
        raise ConversionFailed("tensorflowjs", "the converter wrote no model.json")
    return out


def pack(model_dir: Path, out_dir: Path) -> Path:
    """Zip the graph model (model.json first, then the shards) into one file, reproducibly."""
    archive = out_dir / "model.tfjs.zip"
    files = sorted(p for p in model_dir.iterdir() if p.is_file())
    files.sort(key=lambda p: p.name != "model.json")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files:
            info = zipfile.ZipInfo(path.name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    return archive


def node_binary() -> str:
    node = getattr(settings, "MODELGATE_NODE", "") or shutil.which("node")
    if not node:
        raise runtimes.ModelLoadError(
            "TF.js parity needs Node.js: install node (20 or later) and run `npm ci` in the project"
        )
    return node


def runtime_version() -> str:
    package = _tfjs_package()
    version = json.loads(package.read_text())["version"] if package else "?"
    return f"@tensorflow/tfjs {version} (cpu backend, node)"


def _tfjs_package() -> Path | None:
    for parent in SCRIPT.parents:
        candidate = parent / "node_modules" / "@tensorflow" / "tfjs" / "package.json"
        if candidate.is_file():
            return candidate
    return None


def open_runtime(path: Path) -> runtimes.Runtime:
    return TFJSRuntime(path)


class TFJSRuntime:
    """A TF.js graph model directory, run by Node on each ``predict`` (one process per batch)."""

    format = "tfjs"

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = Path(model_dir)
        manifest = self.model_dir / "model.json"
        if not manifest.is_file():
            raise runtimes.ModelLoadError("the TF.js export has no model.json")
        if _tfjs_package() is None:
            raise runtimes.ModelLoadError(
                "TF.js parity needs @tensorflow/tfjs: run `npm ci` in the project (make install does)"
            )
        self.node = node_binary()
        signature = json.loads(manifest.read_text()).get("signature") or {}
        self.signature = runtimes.Signature(
            inputs=[_spec(key, spec) for key, spec in (signature.get("inputs") or {}).items()],
            outputs=[
                _spec(key, spec)
                for key, spec in sorted(
                    (signature.get("outputs") or {}).items(), key=lambda kv: _natural(kv[0])
                )
            ],
        )
        self.name = runtime_version()

    def predict(self, inputs: runtimes.Inputs) -> runtimes.Outputs:
        fed = runtimes._feed(self.signature, inputs)
        request = {
            "inputs": {
                name: {"dtype": str(array.dtype), "shape": list(array.shape), "data": array.ravel().tolist()}
                for name, array in fed.items()
            }
        }
        with tempfile.TemporaryDirectory(prefix="modelgate-tfjs-") as tmp:
            inputs_path, outputs_path = Path(tmp) / "inputs.json", Path(tmp) / "outputs.json"
            inputs_path.write_text(json.dumps(request))
            done = subprocess.run(
                [self.node, str(SCRIPT), str(self.model_dir), str(inputs_path), str(outputs_path)],
                capture_output=True,
                text=True,
                timeout=PREDICT_TIMEOUT_SECONDS,
                env={**os.environ, "NODE_OPTIONS": ""},
                check=False,
            )
            if done.returncode != 0:
                lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
                raise runtimes.ModelLoadError(lines[-1] if lines else f"node exited with {done.returncode}")
            answer = json.loads(outputs_path.read_text())
        self.name = answer.get("runtime") or self.name
        outputs: dict[str, Any] = {
            name: np.asarray(value["data"], dtype=np.float32).reshape(value["shape"])
            for name, value in answer["outputs"].items()
        }
        return runtimes._collect(self.signature, outputs)


def _spec(key: str, spec: dict[str, Any]) -> runtimes.TensorSpec:
    dims = (spec.get("tensorShape") or {}).get("dim") or []
    return runtimes.TensorSpec(
        name=key,
        dtype=_TF_DTYPES.get(spec.get("dtype", ""), "float32"),
        shape=[None if int(d.get("size", -1)) < 0 else int(d["size"]) for d in dims],
    )


def _natural(name: str) -> tuple[str, int]:
    head, _, tail = name.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (name, -1)
