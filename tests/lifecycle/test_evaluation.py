"""Reading datasets for the gates: the same rows from CSV, Parquet and NPZ, in chunks; metrics."""

from __future__ import annotations

import numpy as np
import pytest

from lifecycle import evaluation
from tests.country import FEATURES, country_frame


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation, "CHUNK_ROWS", 300)  # several chunks from 1,000 rows
    frame = country_frame(1000, seed=3)
    frame.to_csv(tmp_path / "d.csv", index=False)
    frame.to_parquet(tmp_path / "d.parquet")
    np.savez(
        tmp_path / "d.npz",
        **{name: frame[name].to_numpy() for name in FEATURES},
        y=frame["y"].to_numpy(),
        country=frame["country"].to_numpy().astype("U2"),
    )
    return frame, tmp_path


@pytest.mark.parametrize("fmt", ["csv", "parquet", "npz"])
def test_every_format_gives_the_same_rows_in_chunks_without_the_string_column(files, fmt):
    frame, root = files
    chunks = list(evaluation.read_chunks(root / f"d.{fmt}", fmt, label="y", slice_columns=["country"]))

    assert [len(c.labels) for c in chunks] == [300, 300, 300, 100]
    features = np.concatenate([c.features for c in chunks])
    assert features.shape == (1000, 4)  # country is a slice column; nothing else is a string
    assert np.allclose(features, frame[FEATURES].to_numpy(dtype=np.float32), atol=1e-6)
    assert (np.concatenate([c.labels for c in chunks]) == frame["y"].to_numpy()).all()
    assert (np.concatenate([c.slices["country"] for c in chunks]) == frame["country"].to_numpy()).all()


def test_without_a_slice_column_the_string_column_is_left_out_of_the_features(files):
    _, root = files
    chunk = next(evaluation.read_chunks(root / "d.parquet", "parquet", label="y"))
    assert chunk.features.shape[1] == 4


def test_a_missing_label_column_is_a_clear_error(files):
    _, root = files
    with pytest.raises(evaluation.EvaluationError, match="no label column 'target'"):
        next(evaluation.read_chunks(root / "d.csv", "csv", label="target"))


def test_classification_outputs_become_classes_by_argmax_or_the_sigmoid_threshold():
    labels = np.array([0, 1, 1, 0])
    softmax = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]], dtype=np.float32)
    sigmoid = np.array([[0.1], [0.8], [0.4], [0.3]], dtype=np.float32)
    assert evaluation.metric_value("accuracy", labels, softmax) == 0.75
    assert evaluation.metric_value("accuracy", labels, sigmoid) == 0.75
    assert evaluation.metric_value("recall", labels, softmax) == 0.5
    assert evaluation.metric_value("roc_auc", labels, softmax) == 1.0
    assert evaluation.metric_value("rmse", np.array([1.0, 3.0]), np.array([[2.0], [3.0]])) == pytest.approx(
        0.7071, abs=1e-4
    )
    with pytest.raises(evaluation.EvaluationError, match="single class"):
        evaluation.metric_value("roc_auc", np.array([1, 1]), np.array([[0.2, 0.8], [0.1, 0.9]]))
