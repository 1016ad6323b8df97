"""Decoded datasets, kept on the gates worker's disk so that a dataset is parsed once, not per push.

A registered dataset never changes, and CI scores every push on the same validation sets, while
parsing a CSV costs more than a small model's whole inference. So the first evaluation of a dataset
(for a given label, feature list and slice columns) on a worker host writes what the gates read:

- ``features.f32``: the feature matrix, float32, row-major, exactly the rows the readers give;
- ``labels.npy``: the label column as the reader gave it;
- ``slice-<i>.npy``: per slice column, int32 codes into its sorted values (kept in ``meta.json``,
  with each value's row count).

Later evaluations memory-map those files: no parsing, no copy, and the model reads its batches
straight from the page cache. A worker process keeps its last few entries mapped (``MAPPED_ENTRIES``),
so that its next evaluation of the same dataset does not even fault the pages in again; a mapping is
dropped when its entry's files change, and it holds the disk space of an evicted entry until then. An entry is built in a private directory and renamed into place, so a
reader never sees half of one, and two workers building the same entry at once both end up with a
whole one. The cache is bounded by ``MODELGATE_DATASET_CACHE_MB`` (least recently used entries go
first; 0 turns it off, and each evaluation then decodes into a temporary directory). Everything in it
can be deleted at any time: a damaged, missing or unwritable entry only costs the parsing again.

The dataset's bytes are still asked for on a hit: a dataset whose bytes were purged rejects, as it
would without the cache.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from django.conf import settings

from lifecycle import evaluation
from registry.models import Dataset
from registry.storage import blob_exists, blob_local_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # bump when the layout or the readers' semantics change: old entries are ignored
MAPPED_ENTRIES = 4  # entries a worker process keeps mapped between evaluations
META = "meta.json"
STALE_BUILD_SECONDS = 6 * 3600


@dataclass
class Decoded:
    """One dataset as the gates read it; the arrays may be memory-mapped (valid inside ``decoded``)."""

    features: np.ndarray  # [rows, n_features] float32, C-contiguous
    labels: np.ndarray
    slices: dict[str, tuple[np.ndarray, list[str]]]  # column -> (int32 codes, sorted values)
    slice_rows: dict[str, list[int]]  # column -> rows per value, in the order of the values
    from_cache: bool


_mapped: OrderedDict[str, tuple[tuple, Decoded]] = OrderedDict()  # entry -> (its files' identity, arrays)
_mapped_lock = threading.Lock()


def cache_dir() -> Path:
    return Path(settings.MODELGATE_DATASET_CACHE_DIR)


def cache_limit_bytes() -> int:
    return max(0, int(float(settings.MODELGATE_DATASET_CACHE_MB) * 1024 * 1024))


def entry_key(dataset: Dataset, *, label: str, features: list[str] | None, slice_columns: list[str]) -> str:
    spec = [FORMAT_VERSION, dataset.sha256, dataset.format, label, features, sorted(slice_columns)]
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:40]


@contextlib.contextmanager
def decoded(
    dataset: Dataset, *, label: str, features: list[str] | None = None, slice_columns: list[str] = ()
) -> Iterator[Decoded]:
    """The dataset decoded for these columns: from the cache when it is there, else parsed (and kept).

    Raises ``FileNotFoundError`` when the dataset's bytes are not in the store, and
    ``evaluation.EvaluationError`` when the columns do not fit the file.
    """
    slice_columns = sorted(set(slice_columns))
    key = entry_key(dataset, label=label, features=features, slice_columns=slice_columns)
    limit = cache_limit_bytes()
    root = cache_dir()
    if limit:
        entry = root / key
        found = _load_mapped(entry, slice_columns)
        if found is not None:
            # Purged bytes must still reject: ask the store, which is one cheap call.
            if not blob_exists(dataset.artifact_key):
                raise FileNotFoundError(dataset.artifact_key)
            with contextlib.suppress(OSError):
                os.utime(entry / META)  # recently used
            log.info("dataset %s: decoded rows read from the cache (%s)", dataset, key)
            yield found
            return
    workdir = _workdir(root if limit else None)
    try:
        started = time.perf_counter()
        _build(dataset, workdir, label=label, features=features, slice_columns=slice_columns)
        log.info("dataset %s: parsed in %.2f s", dataset, time.perf_counter() - started)
        kept = limit and _adopt(workdir, root / key, limit)
        found = _load_mapped(root / key, slice_columns) if kept else _load(workdir, slice_columns)
        if found is None:  # deleted between the rename and the read (an operator clearing the cache):
            # the task fails and its retry decodes again
            raise RuntimeError("the decoded dataset vanished while it was being read")
        yield dataclasses.replace(found, from_cache=False)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _workdir(root: Path | None) -> Path:
    if root is not None:
        try:
            root.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=".building-", dir=root))
        except OSError as exc:  # unwritable: the evaluation goes on without the cache
            log.warning(
                "dataset cache %s is not writable (%s); decoding into a temporary directory", root, exc
            )
    return Path(tempfile.mkdtemp(prefix="modelgate-dataset-"))


def _build(
    dataset: Dataset, out: Path, *, label: str, features: list[str] | None, slice_columns: list[str]
) -> None:
    """Read the dataset once, in chunks, and write the entry's files into ``out``."""
    import pandas as pd  # the gates worker's import, never the web process's

    labels: list[np.ndarray] = []
    codes: dict[str, list[np.ndarray]] = {c: [] for c in slice_columns}
    values: dict[str, dict[str, int]] = {c: {} for c in slice_columns}
    rows, width = 0, None
    with (
        blob_local_path(dataset.artifact_key, suffix=f".{dataset.format}") as path,
        (out / "features.f32").open("wb") as matrix,
    ):
        for chunk in evaluation.read_chunks(
            Path(path), dataset.format, label=label, features=features, slice_columns=slice_columns
        ):
            block = np.ascontiguousarray(chunk.features, dtype=np.float32)
            if width is None:
                width = block.shape[1]
            matrix.write(block.data)
            labels.append(np.asarray(chunk.labels))
            for column in slice_columns:
                # Codes per chunk, then onto one running dictionary of the column's values.
                local, uniques = pd.factorize(chunk.slices[column])
                known = values[column]
                remap = np.fromiter(
                    (known.setdefault(v, len(known)) for v in uniques), np.int32, len(uniques)
                )
                codes[column].append(remap[local] if len(local) else local.astype(np.int32))
            rows += len(block)
    if not rows:
        raise evaluation.EvaluationError(f"dataset {dataset} has no rows")
    np.save(out / "labels.npy", np.concatenate(labels), allow_pickle=False)
    slice_values, slice_rows = {}, {}
    for i, column in enumerate(slice_columns):
        # Sorted values, as the gate reports its slices; codes renumbered to match.
        names = list(values[column])
        order = np.argsort(np.asarray(names, dtype=object), kind="stable")
        rank = np.empty(len(names), np.int32)
        rank[order] = np.arange(len(names), dtype=np.int32)
        ranked = rank[np.concatenate(codes[column])]
        np.save(out / f"slice-{i}.npy", ranked, allow_pickle=False)
        slice_values[column] = [names[j] for j in order]
        slice_rows[column] = np.bincount(ranked, minlength=len(names)).tolist()
    meta = {
        "format_version": FORMAT_VERSION,
        "dataset": f"{dataset.name}:{dataset.version}",
        "sha256": dataset.sha256,
        "rows": rows,
        "width": width,
        "slice_columns": slice_columns,
        "slice_values": slice_values,
        "slice_rows": slice_rows,
    }
    # The meta file is written last: an entry without it is unfinished and never read.
    (out / META).write_text(json.dumps(meta))


def _identity(entry: Path) -> tuple | None:
    """What tells one build of an entry from another: its meta, and each file's inode and size."""
    try:
        files = [(entry / name).stat() for name in sorted(os.listdir(entry)) if name != META]
        return ((entry / META).read_bytes(), *((f.st_dev, f.st_ino, f.st_size) for f in files))
    except OSError:
        return None


def _load_mapped(entry: Path, slice_columns: list[str]) -> Decoded | None:
    """``_load``, reusing this process's mapping of the entry while its files are the same ones."""
    identity = _identity(entry)
    if identity is None:
        return None
    key = str(entry)
    with _mapped_lock:
        kept = _mapped.get(key)
        if kept is not None and kept[0] == identity:
            _mapped.move_to_end(key)
            return kept[1]
    found = _load(entry, slice_columns)
    with _mapped_lock:
        _mapped.pop(key, None)
        if found is not None:
            _mapped[key] = (identity, found)
            while len(_mapped) > MAPPED_ENTRIES:
                _mapped.popitem(last=False)
    return found


def _load(entry: Path, slice_columns: list[str]) -> Decoded | None:
    """The entry's arrays, memory-mapped; None (and the entry removed) when it is missing or damaged."""
    try:
        meta = json.loads((entry / META).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        meta = None
    try:
        if not meta or meta.get("format_version") != FORMAT_VERSION or meta["slice_columns"] != slice_columns:
            raise ValueError("meta.json does not describe this entry")
        rows, width = int(meta["rows"]), int(meta["width"])
        if (entry / "features.f32").stat().st_size != rows * width * 4:
            raise ValueError("features.f32 has the wrong size")
        features = np.memmap(entry / "features.f32", dtype=np.float32, mode="r", shape=(rows, width))
        labels = np.load(entry / "labels.npy", mmap_mode="r", allow_pickle=False)
        slices, slice_rows = {}, {}
        for i, column in enumerate(slice_columns):
            codes = np.load(entry / f"slice-{i}.npy", mmap_mode="r", allow_pickle=False)
            names = [str(v) for v in meta["slice_values"][column]]
            counts = [int(n) for n in meta["slice_rows"][column]]
            if (
                len(codes) != rows
                or len(counts) != len(names)
                or sum(counts) != rows
                or (rows and int(codes.max()) >= len(names))
            ):
                raise ValueError(f"slice-{i}.npy does not fit")
            slices[column], slice_rows[column] = (codes, names), counts
        if len(labels) != rows:
            raise ValueError("labels.npy has the wrong length")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("dataset cache entry %s is damaged (%s); it is dropped and rebuilt", entry.name, exc)
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return Decoded(features=features, labels=labels, slices=slices, slice_rows=slice_rows, from_cache=True)


def _size(entry: Path) -> int:
    with contextlib.suppress(OSError):
        return sum(f.stat().st_size for f in entry.iterdir())
    return 0


def _adopt(built: Path, entry: Path, limit: int) -> bool:
    """Move a finished entry into the cache, within the bound; False when it is not kept."""
    size = _size(built)
    if size > limit:
        return False
    try:
        built.rename(entry)
    except OSError:
        # Another worker renamed the same entry into place first: theirs is as good as ours.
        return (entry / META).exists()
    _evict(entry.parent, limit, keep=entry)
    return True


def _evict(root: Path, limit: int, *, keep: Path) -> None:
    """Least recently used entries go until the cache fits its bound."""
    entries, now = [], time.time()
    for path in root.iterdir():
        if path.name.startswith(".building-"):
            # A worker killed while building left this behind; a live build takes minutes, not hours.
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > STALE_BUILD_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
            continue
        if path == keep or not path.is_dir():
            continue
        with contextlib.suppress(OSError):
            entries.append(((path / META).stat().st_mtime, path))
    total = _size(keep) + sum(_size(path) for _, path in entries)
    for _, path in sorted(entries):
        if total <= limit:
            break
        total -= _size(path)
        shutil.rmtree(path, ignore_errors=True)
