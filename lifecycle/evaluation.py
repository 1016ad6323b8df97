"""Scoring a model on a registered dataset: chunked reading, batched prediction, metrics per slice.

The data is read in chunks (CSV, Parquet and NPZ alike) and fed to the model in batches; only the
labels, the model's outputs and the slice values are kept, so a dataset larger than memory still
works. Metrics come from scikit-learn.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle.policy import METRICS_HIGHER_IS_BETTER

CHUNK_ROWS = 50_000
BATCH_BYTES = 1 << 20
MAX_BATCH_ROWS = 16_384
CLASSIFICATION = {"accuracy", "precision", "recall", "f1", "roc_auc", "log_loss"}
CONFUSION = {"accuracy", "precision", "recall", "f1"}  # functions of the (label, class) counts alone


class EvaluationError(Exception):
    """The dataset cannot be scored by this model (a missing column, a shape that does not fit…)."""


@dataclass
class Chunk:
    features: np.ndarray  # [rows, n_features] float32
    labels: np.ndarray | None
    slices: dict[str, np.ndarray] = field(default_factory=dict)


# --- reading ------------------------------------------------------------------------------------------


def _columns_for(
    available: list[str],
    *,
    numeric: set[str],
    label: str,
    features: list[str] | None,
    slice_columns: list[str],
) -> list[str]:
    """The feature columns: those named, or every numeric column but the label and the slice columns."""
    if label not in available:
        raise EvaluationError(f"the dataset has no label column {label!r} (columns: {', '.join(available)})")
    for column in slice_columns:
        if column not in available:
            raise EvaluationError(f"the dataset has no slice column {column!r}")
    if features is None:
        features = [c for c in available if c != label and c not in slice_columns and c in numeric]
    missing = [c for c in features if c not in available]
    if missing:
        raise EvaluationError(f"the dataset has no feature columns {missing}")
    if not features:
        raise EvaluationError("no feature columns are left once the label and slice columns are set aside")
    return features


def _frame_chunk(frame: Any, features: list[str], label: str, slice_columns: list[str]) -> Chunk:
    try:
        matrix = frame[features].to_numpy(dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise EvaluationError(f"the feature columns are not all numeric: {exc}") from None
    return Chunk(
        features=matrix,
        labels=frame[label].to_numpy(),
        slices={c: frame[c].astype(str).to_numpy() for c in slice_columns},
    )


def _read_csv(
    path: Path, label: str, features: list[str] | None, slice_columns: list[str]
) -> Iterator[Chunk]:
    import pandas as pd

    sample = pd.read_csv(path, nrows=1000)
    numeric = {c for c, dtype in sample.dtypes.items() if pd.api.types.is_numeric_dtype(dtype)}
    chosen = _columns_for(
        list(sample.columns), numeric=numeric, label=label, features=features, slice_columns=slice_columns
    )
    wanted = [*chosen, label, *slice_columns]
    dtypes = {c: str for c in slice_columns}
    for frame in pd.read_csv(path, usecols=list(dict.fromkeys(wanted)), chunksize=CHUNK_ROWS, dtype=dtypes):
        yield _frame_chunk(frame, chosen, label, slice_columns)


def _read_parquet(
    path: Path, label: str, features: list[str] | None, slice_columns: list[str]
) -> Iterator[Chunk]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    schema = source.schema_arrow
    numeric = {
        f.name
        for f in schema
        if pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_boolean(f.type)
    }
    chosen = _columns_for(
        schema.names, numeric=numeric, label=label, features=features, slice_columns=slice_columns
    )
    wanted = list(dict.fromkeys([*chosen, label, *slice_columns]))
    for batch in source.iter_batches(batch_size=CHUNK_ROWS, columns=wanted):
        yield _frame_chunk(batch.to_pandas(), chosen, label, slice_columns)


class _NpyStream:
    """Rows of one array inside an NPZ archive, read sequentially without loading the array."""

    def __init__(self, archive: zipfile.ZipFile, member: str) -> None:
        self.handle = archive.open(member)
        version = np.lib.format.read_magic(self.handle)
        reader = (
            np.lib.format.read_array_header_1_0 if version[0] == 1 else np.lib.format.read_array_header_2_0
        )
        self.shape, fortran, self.dtype = reader(self.handle)
        if fortran or self.dtype.hasobject:
            raise EvaluationError(f"array {member!r} is Fortran-ordered or holds objects; save it C-ordered")
        self.row_items = int(np.prod(self.shape[1:], dtype=np.int64)) if len(self.shape) > 1 else 1

    def read(self, rows: int) -> np.ndarray:
        count = rows * self.row_items
        data = self.handle.read(count * self.dtype.itemsize)
        array = np.frombuffer(data, dtype=self.dtype)
        return array.reshape(-1, *self.shape[1:]) if len(self.shape) > 1 else array


def _read_npz(
    path: Path, label: str, features: list[str] | None, slice_columns: list[str]
) -> Iterator[Chunk]:
    with zipfile.ZipFile(path) as archive:
        names = [m[: -len(".npy")] for m in archive.namelist() if m.endswith(".npy")]
        chosen = _columns_for(
            names, numeric=set(names), label=label, features=features, slice_columns=slice_columns
        )
        streams = {
            name: _NpyStream(archive, f"{name}.npy")
            for name in dict.fromkeys([*chosen, label, *slice_columns])
        }
        total = streams[label].shape[0]
        done = 0
        while done < total:
            rows = min(CHUNK_ROWS, total - done)
            parts = {name: stream.read(rows) for name, stream in streams.items()}
            matrix = np.concatenate([parts[c].reshape(rows, -1).astype(np.float32) for c in chosen], axis=1)
            yield Chunk(
                features=matrix,
                labels=parts[label],
                slices={c: parts[c].astype(str) for c in slice_columns},
            )
            done += rows


READERS = {"csv": _read_csv, "parquet": _read_parquet, "npz": _read_npz}


def read_chunks(
    path: Path, fmt: str, *, label: str, features: list[str] | None = None, slice_columns: list[str] = ()
) -> Iterator[Chunk]:
    return READERS[fmt](path, label, features, list(slice_columns))


# --- predicting ---------------------------------------------------------------------------------------------


def _single_output(outputs: Any) -> np.ndarray:
    if isinstance(outputs, dict):
        if len(outputs) != 1:
            raise EvaluationError(
                f"the model has {len(outputs)} outputs; metric gates score single-output models"
            )
        outputs = next(iter(outputs.values()))
    return np.asarray(outputs, dtype=np.float32)


def batch_rows_for(features: np.ndarray) -> int:
    """Rows per model call: about 1 MiB of input (16,384 rows of 16 floats), at least one row.

    Bigger batches pay the runtime's per-call cost less often (a 5k-multiply-add MLP scored a million
    rows in 131 ms at 4,096 rows per call and 95 ms at 16,384), and a cap in bytes keeps wide rows
    (images) from making one huge batch.
    """
    row_bytes = max(1, int(np.prod(features.shape[1:], dtype=np.int64)) * features.itemsize)
    return int(min(MAX_BATCH_ROWS, max(1, BATCH_BYTES // row_bytes)))


def predict_batched(model: Any, features: np.ndarray, batch_rows: int | None = None) -> np.ndarray:
    """The model's outputs for every row, predicted in batches."""
    from lifecycle.runtimes import PredictionInputError

    expected = model.signature.inputs[0].shape if model.signature.inputs else None
    if expected and len(expected) == 2 and expected[1] not in (None, features.shape[1]):
        raise EvaluationError(
            f"the model expects {expected[1]} features but the dataset gives {features.shape[1]}"
        )
    batch_rows = batch_rows or batch_rows_for(features)
    outputs = None
    for start in range(0, len(features), batch_rows):
        try:
            part = _single_output(model.predict(features[start : start + batch_rows]))
        except PredictionInputError as exc:
            raise EvaluationError(str(exc)) from None
        if outputs is None:  # sized by the first batch; each batch is copied in while it is in cache
            outputs = np.empty((len(features), *part.shape[1:]), dtype=np.float32)
        if part.shape[1:] != outputs.shape[1:] or len(part) != min(batch_rows, len(features) - start):
            raise EvaluationError(
                f"the model answered {list(part.shape)} for {min(batch_rows, len(features) - start)} rows"
            )
        outputs[start : start + len(part)] = part
    return outputs if outputs is not None else np.zeros((0,), dtype=np.float32)


# --- metrics ----------------------------------------------------------------------------------------------------


def classes(outputs: np.ndarray) -> np.ndarray:
    """Probabilities to classes: argmax over several outputs, the 0.5 threshold for a single sigmoid."""
    found = _classes(outputs)
    return found.astype(np.int64) if found.dtype == bool else found


def _classes(outputs: np.ndarray) -> np.ndarray:
    """``classes``, as booleans where there are two classes (0 and 1)."""
    if outputs.ndim == 2 and outputs.shape[1] == 2:
        # argmax over two columns, written out: many times faster than argmax's short inner loop,
        # and the same answer, NaN included (argmax takes the first NaN, then the first maximum).
        first, second = outputs[:, 0], outputs[:, 1]
        with np.errstate(all="ignore"):  # inf - inf and overflow only send it down the exact path
            finite = np.isfinite(outputs.sum())  # one quick pass shows there is no NaN (nor infinity)
        if finite:
            return second > first
        return ~(first >= second) & ~np.isnan(first)
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        return outputs.argmax(axis=1)
    return outputs.reshape(-1) >= 0.5


def _scores(outputs: np.ndarray) -> np.ndarray:
    """Scores for roc_auc and log_loss: P(class 1) for binary outputs, the matrix for multiclass."""
    if outputs.ndim == 2 and outputs.shape[1] == 2:
        return outputs[:, 1]
    if outputs.ndim == 2 and outputs.shape[1] > 2:
        return outputs
    return outputs.reshape(-1)


def _confusion_metric(
    metric: str, y: np.ndarray, predicted: np.ndarray, multiclass: bool, weight: Any
) -> float:
    """accuracy, precision, recall or f1 with scikit-learn; ``weight`` counts each (label, class) row."""
    from sklearn import metrics as m

    if metric == "accuracy":
        return float(m.accuracy_score(y, predicted, sample_weight=weight))
    average = "macro" if multiclass or len(np.unique(y)) > 2 else "binary"
    fn = {"precision": m.precision_score, "recall": m.recall_score, "f1": m.f1_score}[metric]
    return float(fn(y, predicted, average=average, zero_division=0, sample_weight=weight))


def metric_value(metric: str, labels: np.ndarray, outputs: np.ndarray) -> float:
    """One metric with scikit-learn; raises EvaluationError when it is undefined on these rows."""
    from sklearn import metrics as m

    try:
        if metric in CLASSIFICATION:
            y = labels.astype(np.int64)
            multiclass = outputs.ndim == 2 and outputs.shape[1] > 2
            if metric in CONFUSION:
                return _confusion_metric(metric, y, classes(outputs), multiclass, None)
            if metric == "roc_auc":
                if len(np.unique(y)) < 2:
                    raise EvaluationError("roc_auc is undefined when the rows hold a single class")
                return float(
                    m.roc_auc_score(y, _scores(outputs), multi_class="ovr" if multiclass else "raise")
                )
            return float(
                m.log_loss(y, np.clip(_scores(outputs), 1e-7, 1 - 1e-7) if not multiclass else outputs)
            )
        y = labels.astype(np.float64)
        predicted = outputs.reshape(len(y), -1)[:, 0].astype(np.float64)
        if metric == "mse":
            return float(m.mean_squared_error(y, predicted))
        if metric == "rmse":
            return float(np.sqrt(m.mean_squared_error(y, predicted)))
        if metric == "mae":
            return float(m.mean_absolute_error(y, predicted))
        if metric == "r2":
            return float(m.r2_score(y, predicted))
    except (ValueError, TypeError) as exc:
        raise EvaluationError(f"{metric} cannot be computed on these rows: {exc}") from None
    raise EvaluationError(f"unknown metric {metric}")


def metric_by_slice(
    metric: str, labels: np.ndarray, outputs: np.ndarray, codes: np.ndarray | None = None, slices: int = 0
) -> list[float | EvaluationError]:
    """The metric on every row, then on the rows of each slice code 0..slices-1 (an error where undefined).

    accuracy, precision, recall and f1 depend only on how many rows have each (label, class) pair,
    so for those the rows are counted once per slice (one ``bincount``) and scikit-learn computes
    the metric from the counts, given as sample weights: the same numbers as on the rows
    themselves, without copying a masked million rows per slice.
    """
    if metric in CONFUSION:
        fast = _confusion_by_slice(metric, labels, outputs, codes, slices)
        if fast is not None:
            return fast
    results: list[float | EvaluationError] = []
    for mask in [None, *((codes == i) for i in range(slices))]:
        try:
            if mask is None:
                results.append(metric_value(metric, labels, outputs))
            else:
                results.append(metric_value(metric, labels[mask], outputs[mask]))
        except EvaluationError as exc:
            results.append(exc)
    return results


def _confusion_by_slice(
    metric: str, labels: np.ndarray, outputs: np.ndarray, codes: np.ndarray | None, slices: int
) -> list[float | EvaluationError] | None:
    try:
        y = np.asarray(labels).astype(np.int64, copy=False)
    except (ValueError, TypeError):
        return None  # the slow path gives the error its message
    if not len(y):
        return None
    predicted = _classes(outputs)
    two = predicted.dtype == bool  # classes 0 and 1: no need to look for their range
    low = int(min(y.min(), 0 if two else predicted.min()))
    width = int(max(y.max(), 1 if two else predicted.max())) - low + 1
    cells = width * width
    if cells * (slices + 1) > max(4 * len(y), 1 << 16):
        return None  # labels spread so wide that counting per pair gains nothing
    # index = ((code * width + label - low) * width + class - low, built in place: a million rows
    # go through each of these few steps once.
    sliced = codes is not None and slices
    index = np.multiply(codes, width, dtype=np.int64) if sliced else np.zeros(len(y), np.int64)
    index += y
    if low:
        index -= low
    index *= width
    index += predicted
    if low:
        index -= low
    if sliced:
        per_slice = np.bincount(index, minlength=slices * cells).reshape(slices, cells)
        tables = [per_slice.sum(axis=0), *per_slice]
    else:
        tables = [np.bincount(index, minlength=cells)]
    multiclass = outputs.ndim == 2 and outputs.shape[1] > 2
    results: list[float | EvaluationError] = []
    for counts in tables:
        present = np.flatnonzero(counts)
        try:
            results.append(
                _confusion_metric(
                    metric,
                    present // width + low,
                    present % width + low,
                    multiclass,
                    counts[present].astype(np.float64),
                )
            )
        except (ValueError, TypeError) as exc:
            results.append(EvaluationError(f"{metric} cannot be computed on these rows: {exc}"))
    return results


def higher_is_better(metric: str) -> bool:
    return METRICS_HIGHER_IS_BETTER[metric]
