"""TFLite: ``TFLiteConverter.from_saved_model`` with builtin ops only, checked in the TFLite interpreter.

Builtin ops only (no Select TF ops, no custom ops): a model that needs an op TFLite phones do not have
fails here, at export time, with the converter's reason, rather than on a phone. Two variants:

- ``tflite``: float32, the model as trained;
- ``tflite-dynamic``: dynamic-range quantisation (weights stored as int8, dequantised on the fly). It
  is about four times smaller and differs from the float model by more than rounding, hence its own,
  looser parity tolerance (``exports.parity_atol_quantized``).
"""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

from lifecycle import runtimes
from lifecycle.exports.errors import ConversionFailed, not_the_models_fault


def converter_name(*, quantized: bool) -> str:
    tf = runtimes._import_tensorflow()
    mode = "builtin ops, dynamic-range quantised" if quantized else "builtin ops"
    return f"tf.lite.TFLiteConverter (tensorflow {tf.__version__}, {mode})"


def convert(savedmodel: Path, out_dir: Path, *, quantized: bool = False) -> Path:
    tf = runtimes._import_tensorflow()
    out = out_dir / ("model.dynamic.tflite" if quantized else "model.tflite")
    try:
        converter = tf.lite.TFLiteConverter.from_saved_model(
            str(savedmodel), signature_keys=["serving_default"]
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantized:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # no representative dataset: dynamic range
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flatbuffer = converter.convert()
    except Exception as exc:
        if not_the_models_fault(exc):
            raise
        raise ConversionFailed("TFLite converter", _message(exc)) from exc
    out.write_bytes(flatbuffer)
    return out


def passthrough(source: Path, out_dir: Path) -> Path:
    out = out_dir / "model.tflite"
    shutil.copyfile(source, out)
    return out


def open_runtime(path: Path) -> runtimes.Runtime:
    return runtimes.open_model(path, "tflite")


# An MLIR diagnostic: "<loc>: error: loc(callsite(...)): 'tf.ResizeBicubic' op is neither a custom op…".
_DIAGNOSTIC = re.compile(r"error: (?:loc\(.*\)\): )?(?P<why>[^\n]+)")
# The summary of ops that would need TF Select (the full TensorFlow runtime) on the phone.
_SELECT_OPS = re.compile(r"^TF Select ops: (?P<ops>.+)$", re.MULTILINE)


def _message(exc: Exception) -> str:
    """The converter's reasons without its MLIR dump and source locations (internal call sites)."""
    text = str(exc)
    reasons = [
        m.group("why").strip()
        for m in _DIAGNOSTIC.finditer(text)
        if not m.group("why").startswith("failed while converting")
    ]
    if select := _SELECT_OPS.search(text):
        reasons.append(f"ops with no TFLite builtin kernel: {select.group('ops').strip()}")
    if reasons:
        return "; ".join(dict.fromkeys(reasons))
    return " ".join(text.split()) or type(exc).__name__
