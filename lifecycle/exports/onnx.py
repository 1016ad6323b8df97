"""ONNX: tf2onnx from the shared SavedModel, checked in ONNX Runtime.

An ONNX source is not converted: its own bytes are the export, re-checked like any other.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from lifecycle import runtimes
from lifecycle.exports.errors import ConversionFailed, not_the_models_fault


def converter_name(opset: int) -> str:
    import tf2onnx

    return f"tf2onnx {tf2onnx.__version__} (opset {opset})"


def convert(savedmodel: Path, out_dir: Path, *, opset: int) -> Path:
    """Convert the SavedModel's serving signature to ``out_dir/model.onnx``."""
    tf = runtimes._import_tensorflow()
    from tf2onnx import convert as tf2onnx_convert
    from tf2onnx import tf_loader

    out = out_dir / "model.onnx"
    try:
        # tf2onnx has no public from_saved_model(); these are the two calls its CLI
        # (`python -m tf2onnx.convert --saved-model dir --opset N`) makes, without a second process.
        graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
            str(savedmodel),
            None,
            None,
            tag="serve",
            signatures=["serving_default"],
            return_initialized_tables=True,
            return_tensors_to_rename=True,
        )
        with tf.device("/cpu:0"):
            tf2onnx_convert._convert_common(
                graph_def,
                name="modelgate-export",
                opset=opset,
                input_names=inputs,
                output_names=outputs,
                tensors_to_rename=renames,
                initialized_tables=tables,
                output_path=str(out),
            )
    except Exception as exc:
        if not_the_models_fault(exc):
            raise
        raise ConversionFailed("tf2onnx", _message(exc)) from exc
    return out


def passthrough(source: Path, out_dir: Path) -> Path:
    out = out_dir / "model.onnx"
    shutil.copyfile(source, out)
    return out


def open_runtime(path: Path) -> runtimes.Runtime:
    return runtimes.open_model(path, "onnx")


def _message(exc: Any) -> str:
    text = " ".join(str(exc).split())
    # tf2onnx's own checks read "make_sure failure: <why>".
    return text.removeprefix("make_sure failure: ") or type(exc).__name__
