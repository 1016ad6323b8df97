"""Reading dataset files: format detection, row counts and schemas, without loading them whole.

CSV is read in chunks; Parquet answers from its footer; NPZ from each array's header.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CSV_CHUNK_ROWS = 200_000


class DatasetRejected(Exception):
    pass


@dataclass(frozen=True)
class DatasetInfo:
    format: str  # csv | parquet | npz
    rows: int
    schema: list[dict]


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
    schema = [{"name": field.name, "dtype": str(field.type)} for field in meta.schema_arrow]
    return DatasetInfo("parquet", meta.metadata.num_rows, schema)


def _inspect_npz(path: Path) -> DatasetInfo:
    schema, rows = [], None
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
                schema.append(
                    {"name": member.filename[: -len(".npy")], "dtype": str(dtype), "shape": list(shape[1:])}
                )
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise DatasetRejected(f"not a readable NPZ file: {exc}") from None
    if rows is None:
        raise DatasetRejected("the NPZ file holds no arrays")
    return DatasetInfo("npz", rows, schema)


def _inspect_csv(path: Path) -> DatasetInfo:
    import pandas as pd

    rows, schema = 0, None
    try:
        for chunk in pd.read_csv(path, chunksize=CSV_CHUNK_ROWS, low_memory=True):
            if schema is None:
                schema = [{"name": str(col), "dtype": str(dtype)} for col, dtype in chunk.dtypes.items()]
            rows += len(chunk)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DatasetRejected(f"not a readable CSV file: {exc}") from None
    if not schema:
        raise DatasetRejected("the CSV file has no columns")
    return DatasetInfo("csv", rows, schema)


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
