"""Runtime adapters: open a model artifact in its own runtime and run batched predictions.

One adapter per format (Keras 3, SavedModel, ONNX Runtime, TFLite), all behind the same small
:class:`Runtime` protocol so that gates, exports and shadows never branch on the format.
Conventions shared by every adapter, so the same model gives the same numbers in each format:

- inputs are batched on axis 0 and cast to the dtype the model declares (float32 in practice);
- a model with one input takes an array, a model with several takes ``{name: array}``;
- outputs come back as float32 numpy; one output gives an array, several give ``{name: array}``.

TensorFlow, Keras and ONNX Runtime are imported inside the functions that need them: importing
this module is cheap, and the web process never pays for TensorFlow.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from registry.artifact_checks import ArtifactRejected, extract_archive

__all__ = [
    "FORMATS",
    "ModelLoadError",
    "PredictionInputError",
    "Runtime",
    "Signature",
    "TensorSpec",
    "open_model",
    "signatures_compatible",
]

FORMATS = ("keras", "savedmodel", "onnx", "tflite")

Inputs = np.ndarray | dict[str, np.ndarray]
Outputs = np.ndarray | dict[str, np.ndarray]

# ONNX type strings -> numpy dtype names, so signatures read the same in every format.
_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(bfloat16)": "bfloat16",
    "tensor(int8)": "int8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(uint8)": "uint8",
    "tensor(uint16)": "uint16",
    "tensor(uint32)": "uint32",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "string",
}


class ModelLoadError(Exception):
    """The artifact does not load in its runtime; the message says why."""


class PredictionInputError(ValueError):
    """The inputs given to ``predict`` do not match the model's signature."""


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output; ``None`` marks an unknown dimension (the batch)."""

    name: str
    dtype: str
    shape: list[int | None]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(
            name=str(d["name"]),
            dtype=str(d["dtype"]),
            shape=[None if dim is None else int(dim) for dim in d["shape"]],
        )


@dataclass(frozen=True)
class Signature:
    """A model's inputs and outputs, in the order the model declares them."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def as_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.as_dict() for t in self.inputs],
            "outputs": [t.as_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Signature:
        return cls(
            inputs=[TensorSpec.from_dict(t) for t in d.get("inputs", [])],
            outputs=[TensorSpec.from_dict(t) for t in d.get("outputs", [])],
        )


class Runtime(Protocol):
    """A loaded model, ready to predict."""

    format: str
    name: str  # the runtime and its version, e.g. "onnxruntime 1.32.0"
    signature: Signature

    def predict(self, inputs: Inputs) -> Outputs:
        """Run one batch (axis 0) and return float32 outputs."""
        ...


# --------------------------------------------------------------------------------------
# Public functions


def open_model(path: Path, fmt: str, *, workdir: Path | None = None, threads: int | None = None) -> Runtime:
    """Load the artifact at ``path`` in the runtime for ``fmt``.

    A SavedModel may be given as its zip/tar.gz artifact (extracted safely into ``workdir``,
    or into a temporary directory owned by the runtime) or as a directory. ``threads`` caps
    the intra-op threads of ONNX Runtime and TFLite (TensorFlow's are process-wide).
    Raises :class:`ModelLoadError` when the model does not load.
    """
    path = Path(path)
    if fmt not in FORMATS:
        raise ModelLoadError(f"unknown model format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not path.exists():
        raise ModelLoadError(f"{path} does not exist")
    try:
        if fmt == "keras":
            return KerasRuntime(path)
        if fmt == "savedmodel":
            return SavedModelRuntime(path, workdir=workdir)
        if fmt == "onnx":
            return OnnxRuntime(path, threads=threads)
        return TFLiteRuntime(path, threads=threads)
    except ModelLoadError:
        raise
    except ArtifactRejected as exc:
        raise ModelLoadError(f"the {fmt} archive is refused: {exc.message}") from exc
    except Exception as exc:  # every runtime has its own exception zoo; the message is what matters
        raise ModelLoadError(f"the {fmt} model does not load: {type(exc).__name__}: {exc}") from exc


def signatures_compatible(candidate: Signature, baseline: Signature) -> tuple[bool, str]:
    """Can ``candidate`` take the same requests and give outputs shaped like ``baseline``?

    Inputs must match by name (by position when each side has a single input, since
    converters rename a lone input freely), with the same dtype and shape; ``None`` dims
    (the batch) match anything. Outputs are paired by name when both sides use the same
    names, by position otherwise (exporters rename outputs, e.g. to ``output_0``), and must
    have the same dtype and shape.
    Returns ``(ok, "")`` or ``(False, <the first difference>)``.
    """
    if len(candidate.inputs) != len(baseline.inputs):
        return False, (
            f"the candidate has {len(candidate.inputs)} input(s) "
            f"({_names(candidate.inputs)}), the baseline {len(baseline.inputs)} "
            f"({_names(baseline.inputs)})"
        )
    if len(candidate.inputs) == 1:
        pairs = [(candidate.inputs[0], baseline.inputs[0])]
    else:
        by_name = {t.name: t for t in candidate.inputs}
        missing = [t.name for t in baseline.inputs if t.name not in by_name]
        if missing:
            extra = sorted(set(by_name) - {t.name for t in baseline.inputs})
            return False, (
                f"input(s) {', '.join(missing)} missing from the candidate"
                + (f" (it has {', '.join(extra)} instead)" if extra else "")
            )
        pairs = [(by_name[t.name], t) for t in baseline.inputs]
    for cand, base in pairs:
        why = _spec_difference(cand, base, "input")
        if why:
            return False, why

    if len(candidate.outputs) != len(baseline.outputs):
        return False, (
            f"the candidate has {len(candidate.outputs)} output(s), the baseline {len(baseline.outputs)}"
        )
    cand_outputs = {t.name: t for t in candidate.outputs}
    if len(cand_outputs) == len(baseline.outputs) and set(cand_outputs) == {t.name for t in baseline.outputs}:
        output_pairs = [(cand_outputs[t.name], t) for t in baseline.outputs]
    else:
        output_pairs = list(zip(candidate.outputs, baseline.outputs, strict=True))
    for cand, base in output_pairs:
        why = _spec_difference(cand, base, "output")
        if why:
            return False, why
    return True, ""


def _names(specs: list[TensorSpec]) -> str:
    return ", ".join(t.name for t in specs) or "none"


def _spec_difference(cand: TensorSpec, base: TensorSpec, role: str) -> str:
    if cand.dtype != base.dtype:
        return f"{role} {base.name!r} is {cand.dtype} in the candidate, {base.dtype} in the baseline"
    if len(cand.shape) != len(base.shape):
        return (
            f"{role} {base.name!r} has rank {len(cand.shape)} in the candidate, "
            f"{len(base.shape)} in the baseline ({_shape(cand.shape)} vs {_shape(base.shape)})"
        )
    for axis, (c, b) in enumerate(zip(cand.shape, base.shape, strict=True)):
        if c is not None and b is not None and c != b:
            return (
                f"{role} {base.name!r} has shape {_shape(cand.shape)} in the candidate, "
                f"{_shape(base.shape)} in the baseline (axis {axis})"
            )
    return ""


def _shape(shape: list[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


# --------------------------------------------------------------------------------------
# Shared input/output handling


def _feed(signature: Signature, inputs: Inputs | Any) -> dict[str, np.ndarray]:
    """Map the caller's inputs onto the signature, cast to the declared dtypes, checked."""
    specs = signature.inputs
    if isinstance(inputs, dict):
        given = set(inputs)
        expected = {t.name for t in specs}
        if given != expected:
            raise PredictionInputError(f"expected inputs {sorted(expected)}, got {sorted(given)}")
        raw = {t.name: inputs[t.name] for t in specs}
    elif len(specs) == 1:
        raw = {specs[0].name: inputs}
    else:
        raise PredictionInputError(
            f"the model has {len(specs)} inputs ({_names(specs)}); pass a dict of arrays"
        )

    fed: dict[str, np.ndarray] = {}
    for spec in specs:
        try:
            array = np.asarray(raw[spec.name], dtype=_numpy_dtype(spec.dtype))
        except (TypeError, ValueError) as exc:
            raise PredictionInputError(f"input {spec.name!r}: {exc}") from exc
        _check_shape(spec, array)
        fed[spec.name] = array
    return fed


def _numpy_dtype(dtype: str) -> Any:
    return object if dtype == "string" else np.dtype(dtype)


def _check_shape(spec: TensorSpec, array: np.ndarray) -> None:
    if array.ndim != len(spec.shape) or any(
        d is not None and d != n for d, n in zip(spec.shape, array.shape, strict=False)
    ):
        raise PredictionInputError(
            f"input {spec.name!r} expects shape {_shape(spec.shape)} (batch first), got {list(array.shape)}"
        )


def _as_float32(value: Any) -> np.ndarray:
    array = np.asarray(value)
    # Strings and objects cannot become float32; hand them back as they are.
    return array.astype(np.float32, copy=False) if array.dtype.kind in "biuf" else array


def _collect(signature: Signature, outputs: dict[str, Any]) -> Outputs:
    """Order outputs by the signature; one output comes back as a bare array."""
    arrays = {t.name: _as_float32(outputs[t.name]) for t in signature.outputs}
    if len(arrays) == 1:
        return next(iter(arrays.values()))
    return arrays


def _import_tensorflow() -> Any:
    # TensorFlow logs a screenful of CUDA/oneDNN notices on import; the worker log only needs
    # errors. setdefault keeps an operator's explicit choice.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


# --------------------------------------------------------------------------------------
# Keras 3


class KerasRuntime:
    """A Keras 3 ``.keras`` file, loaded with ``safe_mode=True`` (no Python lambdas)."""

    format = "keras"

    def __init__(self, path: Path) -> None:
        _import_tensorflow()
        import keras

        # keras.saving.load_model insists on the ".keras" suffix, and artifacts are stored
        # under content addresses, so link the file under a name it accepts. The model is
        # fully read during load, so the link can go right after.
        with tempfile.TemporaryDirectory(prefix="modelgate-keras-") as tmp:
            local = path
            if path.suffix != ".keras":
                local = Path(tmp) / "model.keras"
                try:
                    local.symlink_to(path.resolve())
                except OSError:
                    shutil.copyfile(path, local)
            self._model = keras.saving.load_model(local, safe_mode=True, compile=False)

        model = self._model
        if not getattr(model, "inputs", None) or not getattr(model, "outputs", None):
            raise ModelLoadError(
                "the Keras model has no defined inputs/outputs (a subclassed model that was "
                "never built); save a Functional or Sequential model with an Input"
            )
        self.name = f"keras {keras.__version__} ({keras.backend.backend()} backend)"
        structure = getattr(model, "output", None)
        if isinstance(structure, dict):
            # keras.tree.flatten (hence model.outputs) orders dict outputs by key, and
            # model.export() names them by key.
            output_names = sorted(structure)
        else:
            # Named like model.export() names them, so a Keras model and its SavedModel/ONNX/
            # TFLite exports share one signature.
            output_names = [f"output_{i}" for i in range(len(model.outputs))]
        self.signature = Signature(
            inputs=[_keras_spec(t, t.name) for t in model.inputs],
            outputs=[_keras_spec(t, n) for t, n in zip(model.outputs, output_names, strict=True)],
        )

    def predict(self, inputs: Inputs) -> Outputs:
        import keras

        fed = _feed(self.signature, inputs)
        # Functional models take a dict keyed by input name, whether they were built from a
        # list or a dict of inputs; a lone input goes in bare.
        args: Any = next(iter(fed.values())) if len(fed) == 1 else fed
        result = self._model(args, training=False)
        # Flattened in the same order as model.outputs (dicts by sorted key).
        arrays = [keras.ops.convert_to_numpy(v) for v in keras.tree.flatten(result)]
        return _collect(
            self.signature, {t.name: a for t, a in zip(self.signature.outputs, arrays, strict=True)}
        )


def _keras_spec(tensor: Any, name: str) -> TensorSpec:
    return TensorSpec(
        name=name,
        dtype=str(tensor.dtype),
        shape=[None if d is None else int(d) for d in tensor.shape],
    )


# --------------------------------------------------------------------------------------
# TF SavedModel


class SavedModelRuntime:
    """A TF SavedModel's ``serving_default`` signature; inputs are fed by name."""

    format = "savedmodel"

    def __init__(self, path: Path, *, workdir: Path | None = None) -> None:
        tf = _import_tensorflow()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        directory = path if path.is_dir() else self._extract(path, workdir)

        # Keep the loaded object referenced: the signature function only holds weak
        # references to its variables, which would be collected with it.
        self._loaded = tf.saved_model.load(str(directory))
        signatures = getattr(self._loaded, "signatures", {})
        if "serving_default" not in signatures:
            raise ModelLoadError(
                "the SavedModel has no 'serving_default' signature "
                f"(it has: {', '.join(signatures) or 'none'}); export it with model.export()"
            )
        self._fn = signatures["serving_default"]
        _, input_specs = self._fn.structured_input_signature
        outputs = self._fn.structured_outputs
        if not isinstance(outputs, dict):  # pragma: no cover - TF always returns a dict here
            raise ModelLoadError("the serving signature does not return named outputs")
        self.name = f"tensorflow {tf.__version__} (SavedModel)"
        self.signature = Signature(
            inputs=[_tf_spec(name, spec) for name, spec in input_specs.items()],
            # The serving function's dict is unordered; output_0, output_1, ... is the order
            # model.export() and the converters use.
            outputs=[_tf_spec(name, outputs[name]) for name in sorted(outputs, key=_natural_key)],
        )

    def _extract(self, path: Path, workdir: Path | None) -> Path:
        with path.open("rb") as f:
            magic = f.read(4)
        if magic.startswith(b"\x1f\x8b"):
            packaging = "tar.gz"
        elif magic.startswith(b"PK"):
            packaging = "zip"
        else:
            raise ModelLoadError("the savedmodel artifact is neither a directory nor a zip or tar.gz archive")
        if workdir is not None:
            # A fresh directory per call: the caller owns workdir and may open several models.
            dest = Path(tempfile.mkdtemp(prefix="savedmodel-", dir=workdir))
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="modelgate-savedmodel-")
            dest = Path(self._tmp.name)
        return extract_archive(path, dest, packaging=packaging)

    def predict(self, inputs: Inputs) -> Outputs:
        tf = _import_tensorflow()
        fed = _feed(self.signature, inputs)
        result = self._fn(**{name: tf.constant(array) for name, array in fed.items()})
        return _collect(self.signature, {name: value.numpy() for name, value in result.items()})


def _natural_key(name: str) -> tuple[str, int]:
    head, _, tail = name.rpartition("_")
    return (head, int(tail)) if tail.isdigit() else (name, -1)


def _tf_spec(name: str, spec: Any) -> TensorSpec:
    dtype = "string" if spec.dtype.name == "string" else spec.dtype.name
    shape = [] if spec.shape.rank is None else [None if d is None else int(d) for d in spec.shape]
    return TensorSpec(name=name, dtype=dtype, shape=shape)


# --------------------------------------------------------------------------------------
# ONNX Runtime


class OnnxRuntime:
    """An ONNX model in ONNX Runtime, on the CPU execution provider."""

    format = "onnx"

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        _check_onnx(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0  # 0 lets ONNX Runtime pick
        options.inter_op_num_threads = 1
        # The intra-op threads spin between the parallel sections of a run (ONNX Runtime's default):
        # waking a sleeping thread for each layer made a small MLP 25-40% slower on big batches.
        # The gates decode their dataset before they predict, so nothing else wants that core then.
        options.log_severity_level = 3  # errors only
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.name = f"onnxruntime {ort.__version__}"
        self.signature = Signature(
            inputs=[_onnx_spec(i) for i in self._session.get_inputs()],
            outputs=[_onnx_spec(o) for o in self._session.get_outputs()],
        )

    def predict(self, inputs: Inputs) -> Outputs:
        fed = _feed(self.signature, inputs)
        names = [t.name for t in self.signature.outputs]
        values = self._session.run(names, fed)
        return _collect(self.signature, dict(zip(names, values, strict=True)))


def _check_onnx(path: Path) -> None:
    """Run ``onnx.checker`` on the file, before ONNX Runtime sees it.

    The web process only scans big uploads (``registry.artifact_checks.scan_onnx``) and
    leaves the full check to the worker, here. The path form of the checker reads the file
    itself, so it also works past the 2 GiB protobuf limit.
    """
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if len(reason) > 300:
            reason = reason[:297] + "..."
        raise ModelLoadError(f"the onnx model fails onnx.checker: {reason}") from exc


def _onnx_spec(arg: Any) -> TensorSpec:
    # Symbolic dims ("batch", "unk__6") and missing dims are unknown.
    shape = [d if isinstance(d, int) and d > 0 else None for d in (arg.shape or [])]
    return TensorSpec(name=arg.name, dtype=_ONNX_DTYPES.get(arg.type, arg.type), shape=shape)


# --------------------------------------------------------------------------------------
# TFLite


class TFLiteRuntime:
    """A TFLite flatbuffer in the TF Lite interpreter, resized to each batch."""

    format = "tflite"

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        tf = _import_tensorflow()
        with warnings.catch_warnings():
            # tf.lite.Interpreter warns about its move to ai_edge_litert, which is not
            # installed; the interpreter itself is what TF 2.19 ships and supports.
            warnings.simplefilter("ignore", UserWarning)
            # Read the bytes: the interpreter would otherwise keep the (temporary) file mapped.
            self._interpreter = tf.lite.Interpreter(model_content=path.read_bytes(), num_threads=threads)
        signatures = self._interpreter.get_signature_list()
        self._runner: Any = None
        if signatures:
            key = "serving_default" if "serving_default" in signatures else next(iter(signatures))
            self._runner = self._interpreter.get_signature_runner(key)
            input_details = self._runner.get_input_details()
            output_details = self._runner.get_output_details()
            # The runner's dicts are keyed by signature name; keep the signature's order.
            inputs = [_tflite_spec(n, input_details[n]) for n in signatures[key]["inputs"]]
            outputs = [_tflite_spec(n, output_details[n]) for n in signatures[key]["outputs"]]
        else:
            # Older converters write no signature: fall back to raw tensor names.
            inputs = [_tflite_spec(d["name"], d) for d in self._interpreter.get_input_details()]
            outputs = [_tflite_spec(d["name"], d) for d in self._interpreter.get_output_details()]
        self.name = f"tflite (tensorflow {tf.__version__})"
        self.signature = Signature(inputs=inputs, outputs=outputs)

    def predict(self, inputs: Inputs) -> Outputs:
        fed = _feed(self.signature, inputs)
        if self._runner is not None:
            # The signature runner resizes the input tensors to the batch and reallocates.
            result = self._runner(**fed)
            return _collect(self.signature, result)
        interpreter = self._interpreter
        details = {d["name"]: d for d in interpreter.get_input_details()}
        for name, array in fed.items():
            interpreter.resize_tensor_input(details[name]["index"], list(array.shape), strict=False)
        interpreter.allocate_tensors()
        for name, array in fed.items():
            interpreter.set_tensor(details[name]["index"], array)
        interpreter.invoke()
        out = {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
        return _collect(self.signature, out)


def _tflite_spec(name: str, detail: dict[str, Any]) -> TensorSpec:
    # shape_signature keeps -1 for dynamic dims; shape holds the current (batch 1) allocation.
    dims = detail.get("shape_signature")
    if dims is None or len(dims) == 0:
        dims = detail["shape"]
    dtype = np.dtype(detail["dtype"])
    return TensorSpec(
        name=name,
        dtype="string" if dtype.kind in "SUO" else dtype.name,
        shape=[None if int(d) < 0 else int(d) for d in dims],
    )
