"""Reading dataset files: format detection, row counts, schemas and summary statistics, in one pass
and without loading them whole.

CSV is read in chunks, Parquet in record batches and NPZ array by array; a ``Profile`` folds each chunk
into per-column statistics (count, nulls, mean, std, min and max for numbers; distinct and top values
for categoricals), so the statistics cost one read, at registration, and are stored with the dataset.
"""

from __future__ import annotations

import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CSV_CHUNK_ROWS = 200_000
PARQUET_BATCH_ROWS = 200_000
TOP_VALUES = 10
# Categorical columns count every distinct value up to this many; past it, the rarest half is dropped
# each time (the top values stay right for any value more frequent than the dropped ones, and the
# statistics say the distinct count is a lower bound).
MAX_DISTINCT = 50_000


class DatasetRejected(Exception):
    pass


@dataclass(frozen=True)
class DatasetInfo:
    format: str  # csv | parquet | npz
    rows: int
    schema: list[dict]
    stats: dict = field(default_factory=dict)


# --- summary statistics --------------------------------------------------------------------------------


@dataclass
class _Numeric:
    count: int = 0
    nulls: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean (Chan et al.'s pairwise update)
    low: float = float("inf")
    high: float = float("-inf")

    def add(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=np.float64).ravel()
        present = values[~np.isnan(values)]
        self.nulls += values.size - present.size
        if not present.size:
            return
        n, mean = present.size, float(present.mean())
        m2 = float(((present - mean) ** 2).sum())
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total
        self.low = min(self.low, float(present.min()))
        self.high = max(self.high, float(present.max()))

    def summary(self) -> dict[str, Any]:
        if not self.count:
            return {"kind": "numeric", "count": 0, "nulls": self.nulls}
        return {
            "kind": "numeric",
            "count": self.count,
            "nulls": self.nulls,
            "mean": self.mean,
            "std": (self.m2 / (self.count - 1)) ** 0.5 if self.count > 1 else 0.0,
            "min": self.low,
            "max": self.high,
        }


@dataclass
class _Categorical:
    count: int = 0
    nulls: int = 0
    counts: Counter = field(default_factory=Counter)
    capped: bool = False

    def add(self, values: Any) -> None:
        import pandas as pd

        series = pd.Series(values, copy=False)
        missing = series.isna()
        self.nulls += int(missing.sum())
        present = series[~missing].astype(str)
        self.count += len(present)
        self.counts.update(present.value_counts(sort=False).to_dict())
        if len(self.counts) > MAX_DISTINCT:
            self.counts = Counter(dict(self.counts.most_common(MAX_DISTINCT // 2)))
            self.capped = True

    def summary(self) -> dict[str, Any]:
        return {
            "kind": "categorical",
            "count": self.count,
            "nulls": self.nulls,
            "distinct": len(self.counts),
            "distinct_is_lower_bound": self.capped,
            "top": [[value, n] for value, n in self.counts.most_common(TOP_VALUES)],
        }


class Profile:
    """Per-column statistics folded chunk by chunk; ``summary()`` is what the Dataset stores."""

    def __init__(self) -> None:
        self.columns: dict[str, _Numeric | _Categorical] = {}

    def add_column(self, name: str, values: Any, *, numeric: bool) -> None:
        column = self.columns.get(name)
        if column is None:
            column = self.columns[name] = _Numeric() if numeric else _Categorical()
        if isinstance(column, _Numeric) and not numeric:
            import pandas as pd

            # A column that looked numeric in the first chunk: what does not parse counts as null.
            values = pd.to_numeric(pd.Series(values, copy=False), errors="coerce").to_numpy(np.float64)
        column.add(values)

    def add_frame(self, frame: Any) -> None:
        import pandas as pd

        for name, series in frame.items():
            dtype = series.dtype
            numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
            self.add_column(str(name), series.to_numpy() if numeric else series, numeric=numeric)

    def summary(self) -> dict[str, Any]:
        return {"columns": {name: column.summary() for name, column in self.columns.items()}}


def _looks_parquet(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(4)
        if head != b"PAR1":
            return False
        fh.seek(-4, 2)
        return fh.read(4) == b"PAR1"


def _inspect_parquet(path: Path) -> DatasetInfo:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path)
    except Exception as exc:
        raise DatasetRejected(f"not a readable Parquet file: {exc}") from None
    schema = [{"name": f.name, "dtype": str(f.type)} for f in meta.schema_arrow]
    profile = Profile()
    try:
        for batch in meta.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            profile.add_frame(batch.to_pandas())
    except Exception as exc:
        raise DatasetRejected(f"not a readable Parquet file: {exc}") from None
    return DatasetInfo("parquet", meta.metadata.num_rows, schema, profile.summary())


def _profile_npy(
    archive: zipfile.ZipFile, member: zipfile.ZipInfo, name: str, shape: tuple, dtype: Any, profile: Profile
) -> None:
    """Fold one array into the profile, a slab at a time (a multi-column array counts all its values)."""
    numeric = dtype.kind in "iuf"
    left = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize  # what the header declares, no more
    slab = max(1, (8 << 20) // dtype.itemsize) * dtype.itemsize
    with archive.open(member) as fh:
        major, _minor = np.lib.format.read_magic(fh)
        reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        reader(fh)
        while left > 0 and (data := fh.read(min(slab, left))):
            left -= len(data)
            usable = len(data) - len(data) % dtype.itemsize
            profile.add_column(name, np.frombuffer(data[:usable], dtype=dtype), numeric=numeric)


def _inspect_npz(path: Path) -> DatasetInfo:
    schema, rows = [], None
    profile = Profile()
    try:
        with zipfile.ZipFile(path) as archive:
            for member in archive.infolist():
                if not member.filename.endswith(".npy"):
                    raise DatasetRejected(f"an NPZ file holds only .npy arrays, not {member.filename!r}")
                with archive.open(member) as fh:
                    major, _minor = np.lib.format.read_magic(fh)
                    reader = (
                        np.lib.format.read_array_header_1_0
                        if major == 1
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _fortran, dtype = reader(fh)
                if dtype.hasobject:
                    raise DatasetRejected(
                        f"array {member.filename!r} holds Python objects, which are refused"
                    )
                if not shape:
                    raise DatasetRejected(
                        f"array {member.filename!r} is a scalar; every array needs a row axis"
                    )
                if rows is not None and shape[0] != rows:
                    raise DatasetRejected(f"arrays disagree on the number of rows: {rows} and {shape[0]}")
                rows = shape[0]
                name = member.filename[: -len(".npy")]
                schema.append({"name": name, "dtype": str(dtype), "shape": list(shape[1:])})
                _profile_npy(archive, member, name, shape, dtype, profile)
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise DatasetRejected(f"not a readable NPZ file: {exc}") from None
    if rows is None:
        raise DatasetRejected("the NPZ file holds no arrays")
    return DatasetInfo("npz", rows, schema, profile.summary())


def _inspect_csv(path: Path) -> DatasetInfo:
    import pandas as pd

    rows, schema = 0, None
    profile = Profile()
    try:
        for chunk in pd.read_csv(path, chunksize=CSV_CHUNK_ROWS, low_memory=True):
            if schema is None:
                schema = [{"name": str(col), "dtype": str(dtype)} for col, dtype in chunk.dtypes.items()]
            rows += len(chunk)
            profile.add_frame(chunk)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DatasetRejected(f"not a readable CSV file: {exc}") from None
    if not schema:
        raise DatasetRejected("the CSV file has no columns")
    return DatasetInfo("csv", rows, schema, profile.summary())


def inspect_dataset(path: Path, *, filename: str = "") -> DatasetInfo:
    """Detect the format from the content and describe the dataset."""
    if _looks_parquet(path):
        return _inspect_parquet(path)
    if zipfile.is_zipfile(path):
        return _inspect_npz(path)
    with path.open("rb") as fh:
        head = fh.read(4096)
    if b"\x00" in head:
        raise DatasetRejected(f"{filename or 'the file'} is neither CSV, Parquet nor NPZ")
    return _inspect_csv(path)
