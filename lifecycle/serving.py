"""Loaded models for serving and shadowing: which artifact answers, and a per-process cache of runtimes.

A version answers from its ONNX export in ONNX Runtime when that export passed its parity check (the
fastest runtime we have, and proven to give the source's numbers), otherwise from its own artifact in
its own runtime. The cache holds a few loaded versions per process, keyed by what was loaded, so a
promotion (a new champion) or a newly passed export is picked up by the next request without a
restart, while requests already running finish on the runtime they started with.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle import runtimes
from registry.models import Export, ModelVersion
from registry.storage import blob_local_path

log = logging.getLogger(__name__)

SUFFIX = {"keras": ".keras", "onnx": ".onnx", "tflite": ".tflite"}


class InputInvalid(ValueError):
    """The request's inputs do not fit the model; the message names the expected signature."""


@dataclass(frozen=True)
class ServedArtifact:
    """What answers for a version: its ONNX export when it passed parity, else its own artifact."""

    version_id: int
    key: str
    format: str
    via: str  # "onnx export" or "source"

    @property
    def cache_key(self) -> tuple[int, str]:
        return (self.version_id, self.key)


def served_artifact(version_id: int, artifact_key: str, fmt: str, onnx_key: str | None) -> ServedArtifact:
    if onnx_key and fmt != "onnx":
        return ServedArtifact(version_id, onnx_key, "onnx", "onnx export")
    return ServedArtifact(version_id, artifact_key, fmt, "source")


def served_artifact_of(version: ModelVersion) -> ServedArtifact:
    onnx_key = (
        Export.objects.filter(version=version, format="onnx", status=Export.Status.PASSED)
        .values_list("artifact_key", flat=True)
        .first()
    )
    return served_artifact(version.pk, version.artifact_key, version.format, onnx_key)


@dataclass
class Loaded:
    """A loaded runtime and what it needs to answer like its source model."""

    artifact: ServedArtifact
    runtime: runtimes.Runtime
    signature: runtimes.Signature  # the source model's signature: what callers send
    workdir: str | None = None
    lock: threading.Lock | None = field(default=None)  # ONNX Runtime sessions are thread-safe; others not

    def predict(self, inputs: Any) -> Any:
        feed = _positional(inputs, self.signature, self.runtime.signature)
        if self.lock is None:
            return self.runtime.predict(feed)
        with self.lock:
            return self.runtime.predict(feed)

    def close(self) -> None:
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _positional(inputs: Any, source: runtimes.Signature, served: runtimes.Signature) -> Any:
    """Named inputs use the source model's names; an ONNX export may name them differently."""
    if not isinstance(inputs, dict) or [t.name for t in source.inputs] == [t.name for t in served.inputs]:
        return inputs
    if set(inputs) != {t.name for t in source.inputs}:
        return inputs  # the runtime's own check names what is expected
    return {s.name: inputs[t.name] for t, s in zip(source.inputs, served.inputs, strict=False)}


def load(artifact: ServedArtifact, signature: dict | None) -> Loaded:
    workdir = tempfile.mkdtemp(prefix="modelgate-serve-")
    try:
        with blob_local_path(artifact.key, suffix=SUFFIX.get(artifact.format, "")) as path:
            runtime = runtimes.open_model(Path(path), artifact.format, workdir=Path(workdir), threads=1)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    source = runtimes.Signature.from_dict(signature) if signature else runtime.signature
    lock = None if artifact.format == "onnx" else threading.Lock()
    return Loaded(artifact, runtime, source, workdir, lock)


class RuntimeCache:
    """A small LRU of loaded versions; loads happen once per key, other callers wait for them."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._items: OrderedDict[tuple[int, str], Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[int, str], threading.Lock] = {}

    def get(self, artifact: ServedArtifact, signature: dict | Callable[[], dict | None] | None) -> Loaded:
        """The loaded runtime for ``artifact``; ``signature`` (or a function that reads it, called only on
        a miss) is the source model's, which callers' inputs follow."""
        key = artifact.cache_key
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                hit = self._items.get(key)
            if hit is not None:
                return hit
            started = time.perf_counter()
            loaded = load(artifact, signature() if callable(signature) else signature)
            log.info(
                "loaded version %s (%s, %s) in %.0f ms",
                artifact.version_id,
                artifact.via,
                loaded.runtime.name,
                (time.perf_counter() - started) * 1000,
            )
            with self._lock:
                self._items[key] = loaded
                self._loading.pop(key, None)
                # Another key of the same version (the source, before its ONNX export passed) is stale.
                for stale in [k for k in self._items if k[0] == key[0] and k != key]:
                    self._items.pop(stale).close()
                while len(self._items) > self.size:
                    _, evicted = self._items.popitem(last=False)
                    evicted.close()  # a request still using it holds the runtime object itself
            return loaded

    def clear(self) -> None:
        with self._lock:
            for loaded in self._items.values():
                loaded.close()
            self._items.clear()


# --- inputs and outputs ------------------------------------------------------------------------------


def signature_text(signature: runtimes.Signature) -> str:
    def spec(t: runtimes.TensorSpec) -> str:
        dims = ", ".join("N" if d is None else str(d) for d in t.shape)
        return f"{t.name}: {t.dtype}[{dims}]"

    return ", ".join(spec(t) for t in signature.inputs)


def parse_inputs(raw: Any, signature: runtimes.Signature) -> tuple[Any, int]:
    """JSON inputs to arrays of the declared dtypes and shapes; also the batch size (rows).

    A list is the batch of a single-input model; an object maps input names to batches. A single row
    (one rank less than the model takes) is accepted as a batch of one.
    """
    expected = f"the model expects {signature_text(signature)} (N: the batch)"
    if isinstance(raw, dict):
        names = {t.name for t in signature.inputs}
        if set(raw) != names:
            raise InputInvalid(f"inputs must name {sorted(names)}, got {sorted(raw)}; {expected}")
        arrays = {t.name: _array(raw[t.name], t, expected) for t in signature.inputs}
        counts = {a.shape[0] for a in arrays.values()}
        if len(counts) != 1:
            raise InputInvalid(f"every input must have the same batch size, got {sorted(counts)}")
        return arrays, counts.pop()
    if not isinstance(raw, list):
        raise InputInvalid(f"inputs must be a list (a batch) or an object of named batches; {expected}")
    if len(signature.inputs) != 1:
        raise InputInvalid(f"the model has {len(signature.inputs)} inputs: pass an object; {expected}")
    array = _array(raw, signature.inputs[0], expected)
    return array, array.shape[0]


def _array(value: Any, spec: runtimes.TensorSpec, expected: str) -> np.ndarray:
    dtype = np.float32 if spec.dtype in {"float32", "float16", "float64", "bfloat16"} else spec.dtype
    try:
        array = np.asarray(value, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise InputInvalid(
            f"input {spec.name!r} is not a numeric array of {spec.dtype}; {expected}"
        ) from None
    if array.ndim == len(spec.shape) - 1 and array.ndim >= 1:
        array = array[np.newaxis]
    if array.ndim != len(spec.shape) or any(
        d is not None and d != n for d, n in zip(spec.shape, array.shape, strict=False)
    ):
        raise InputInvalid(f"input {spec.name!r} has shape {list(array.shape)}; {expected}")
    if array.shape[0] == 0:
        raise InputInvalid(f"input {spec.name!r} is an empty batch; {expected}")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise InputInvalid(f"input {spec.name!r} holds NaN, null or infinite values; {expected}")
    return array


def outputs_json(outputs: Any) -> Any:
    if isinstance(outputs, dict):
        return {name: np.asarray(value).tolist() for name, value in outputs.items()}
    return np.asarray(outputs).tolist()
