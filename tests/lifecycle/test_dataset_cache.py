"""The gates worker's cache of decoded datasets: parsed once, memory-mapped after, always safe to lose."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from lifecycle import dataset_cache, evaluation, gates
from lifecycle.policy import policy_parse, policy_validate
from registry.services import Upload, dataset_register
from registry.storage import blob_delete
from tests.country import FEATURES, country_frame, write_formats

pytestmark = pytest.mark.django_db


@pytest.fixture
def cache(settings, tmp_path) -> Path:
    settings.MODELGATE_DATASET_CACHE_DIR = str(tmp_path / "cache")
    settings.MODELGATE_DATASET_CACHE_MB = 64
    return tmp_path / "cache"


@pytest.fixture
def parses(monkeypatch) -> list[str]:
    """Every time a dataset file is actually parsed, its format is appended here."""
    calls: list[str] = []
    real = evaluation.read_chunks

    def counting(path, fmt, **kwargs):
        calls.append(fmt)
        return real(path, fmt, **kwargs)

    monkeypatch.setattr(evaluation, "read_chunks", counting)
    monkeypatch.setattr(evaluation, "CHUNK_ROWS", 300)  # several chunks, so codes cross chunk bounds
    return calls


def register(path: Path, name: str, owner):
    upload = Upload(
        path=path,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        size=path.stat().st_size,
        filename=path.name,
    )
    return dataset_register(name=name, upload=upload, actor=owner.user)


@pytest.fixture
def frame():
    return country_frame(1000, seed=3)


@pytest.fixture
def datasets(frame, tmp_path, owner):
    paths = write_formats(frame, tmp_path)
    return {fmt: register(path, f"holdout-{fmt}", owner) for fmt, path in paths.items()}


def read(dataset, **kwargs):
    with dataset_cache.decoded(dataset, label="y", slice_columns=["country"], **kwargs) as data:
        return (
            data.from_cache,
            np.array(data.features),
            np.array(data.labels),
            {c: (np.array(codes), values) for c, (codes, values) in data.slices.items()},
        )


@pytest.mark.parametrize("fmt", ["csv", "parquet", "npz"])
def test_a_dataset_is_parsed_once_and_read_back_with_the_same_rows(cache, parses, datasets, frame, fmt):
    first = read(datasets[fmt])
    second = read(datasets[fmt])

    assert parses == [fmt]
    assert (first[0], second[0]) == (False, True)
    for parsed, cached in zip(first[1:3], second[1:3], strict=True):
        assert parsed.dtype == cached.dtype and (parsed == cached).all()
    assert np.allclose(second[1], frame[FEATURES].to_numpy(dtype=np.float32), atol=1e-6)
    assert (second[2] == frame["y"].to_numpy()).all()
    codes, values = second[3]["country"]
    assert values == sorted(frame["country"].unique())
    assert (np.asarray(values)[codes] == frame["country"].to_numpy()).all()
    with dataset_cache.decoded(datasets[fmt], label="y", slice_columns=["country"]) as data:
        assert data.slice_rows["country"] == [int((frame["country"] == v).sum()) for v in values]


def test_a_worker_process_keeps_its_mapping_until_the_entry_changes(cache, parses, datasets):
    def mapped():
        with dataset_cache.decoded(datasets["csv"], label="y", slice_columns=["country"]) as data:
            return data

    first, second = mapped(), mapped()
    # The same arrays: the second evaluation neither maps the files again nor faults their pages in.
    assert second.features is first.features and second.from_cache and not first.from_cache
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    for path in entry.iterdir():  # another worker evicted the entry, and it was built again
        path.unlink()
    entry.rmdir()
    third = mapped()
    assert parses == ["csv", "csv"] and third.features is not first.features
    assert (np.asarray(third.features) == np.asarray(first.features)).all()


def test_other_columns_make_another_entry(cache, parses, datasets):
    read(datasets["csv"])
    with dataset_cache.decoded(datasets["csv"], label="y", features=["f0", "f1"]) as data:
        assert data.features.shape == (1000, 2) and not data.from_cache and not data.slices
    assert parses == ["csv", "csv"]
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2


@pytest.mark.parametrize("damage", ["truncate", "meta", "missing"])
def test_a_damaged_entry_is_dropped_and_rebuilt(cache, parses, datasets, damage):
    expected = read(datasets["parquet"])
    (entry,) = [p for p in cache.iterdir() if not p.name.startswith(".")]
    if damage == "truncate":
        with (entry / "features.f32").open("r+b") as fh:
            fh.truncate(100)
    elif damage == "meta":
        (entry / "meta.json").write_text("{not json")
    else:
        (entry / "labels.npy").unlink()

    again = read(datasets["parquet"])

    assert parses == ["parquet", "parquet"] and again[0] is False
    assert (again[1] == expected[1]).all() and (again[2] == expected[2]).all()
    assert read(datasets["parquet"])[0] is True


def test_the_least_recently_used_entries_go_past_the_bound(cache, parses, datasets, settings):
    read(datasets["csv"])
    read(datasets["parquet"])
    entry_size = sum(f.stat().st_size for f in next(p for p in cache.iterdir() if p.is_dir()).iterdir())
    read(datasets["csv"])  # csv is now the most recently used
    os.utime(  # and by a clear margin, whatever the file system's timestamp resolution
        cache
        / dataset_cache.entry_key(datasets["parquet"], label="y", features=None, slice_columns=["country"])
        / "meta.json",
        (1, 1),
    )
    settings.MODELGATE_DATASET_CACHE_MB = (2 * entry_size + entry_size // 2) / (1024 * 1024)

    read(datasets["npz"])  # a third entry: the parquet one, least recently used, goes

    kept = {p.name for p in cache.iterdir() if not p.name.startswith(".")}
    key = {
        fmt: dataset_cache.entry_key(datasets[fmt], label="y", features=None, slice_columns=["country"])
        for fmt in datasets
    }
    assert kept == {key["csv"], key["npz"]}


def test_off_too_small_or_unwritable_only_costs_the_parsing(cache, parses, datasets, settings, frame):
    settings.MODELGATE_DATASET_CACHE_MB = 0
    assert read(datasets["csv"])[0] is False and read(datasets["csv"])[0] is False
    assert not cache.exists()

    settings.MODELGATE_DATASET_CACHE_MB = 1e-6  # smaller than any entry
    assert read(datasets["csv"])[0] is False
    assert [p for p in cache.iterdir() if not p.name.startswith(".")] == []

    settings.MODELGATE_DATASET_CACHE_MB = 64
    settings.MODELGATE_DATASET_CACHE_DIR = "/proc/modelgate-cannot-write-here"
    found = read(datasets["csv"])
    assert found[0] is False and (found[2] == frame["y"].to_numpy()).all()
    assert parses == ["csv"] * 4


def test_a_purged_dataset_is_not_read_from_the_cache(cache, parses, datasets):
    read(datasets["csv"])
    blob_delete(datasets["csv"].artifact_key)

    with pytest.raises(FileNotFoundError):
        read(datasets["csv"])


def test_two_workers_building_one_entry_at_once_both_get_whole_rows(cache, datasets, frame):
    results, errors = [], []

    def build():
        try:
            results.append(read(datasets["parquet"]))
        except Exception as exc:  # pragma: no cover - shown by the assertion below
            errors.append(exc)
        finally:
            from django.db import connection

            connection.close()

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    for _, features, labels, _slices in results:
        assert features.shape == (1000, 4) and (labels == frame["y"].to_numpy()).all()
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1
    assert [p for p in cache.iterdir() if p.name.startswith(".building-")] == []


def test_a_policy_decodes_its_datasets_ahead_one_entry_per_pass(cache, parses, datasets, settings):
    gate = {"dataset": "holdout-csv", "label": "y"}
    policy = policy_parse(
        policy_validate(
            {
                "gates": [
                    {**gate, "kind": "metric", "metric": "recall", "slice_by": "country", "min": 0.5},
                    {**gate, "kind": "no_regression", "metric": "accuracy", "max_drop": 0.1},
                    {
                        "kind": "metric",
                        "metric": "accuracy",
                        "dataset": "holdout-parquet",
                        "label": "y",
                        "min": 0.5,
                    },
                    {"kind": "loads"},
                ]
            }
        )
    )
    assert gates.datasets_warm(policy) == 2  # the two csv gates share one pass (and one entry)
    assert gates.datasets_warm(policy) == 0  # already decoded
    assert sorted(parses) == ["csv", "parquet"]
    # What the first push's gates then read: the entry the warm-up wrote, no parsing.
    with dataset_cache.decoded(datasets["csv"], label="y", slice_columns=["country"]) as data:
        assert data.from_cache
    assert sorted(parses) == ["csv", "parquet"]

    blob_delete(datasets["npz"].artifact_key)
    purged = policy_parse(
        policy_validate(
            {
                "gates": [
                    {
                        "kind": "metric",
                        "metric": "accuracy",
                        "dataset": "holdout-npz",
                        "label": "y",
                        "min": 0.5,
                    }
                ]
            }
        )
    )
    assert gates.datasets_warm(purged) == 0  # left to the gate, which rejects with the reason
    settings.MODELGATE_DATASET_CACHE_MB = 0.01  # smaller than the file: it would not be kept
    one = policy_parse(policy_validate({"gates": [{**gate, "kind": "metric", "metric": "f1", "min": 0.5}]}))
    assert gates.datasets_warm(one) == 0
    settings.MODELGATE_DATASET_CACHE_MB = 0
    assert (
        gates.datasets_warm(
            policy_parse(policy_validate({"gates": [{**gate, "kind": "metric", "metric": "f1", "min": 0.5}]}))
        )
        == 0
    )
    assert sorted(parses) == ["csv", "parquet"]  # with the cache off, nothing is decoded ahead
