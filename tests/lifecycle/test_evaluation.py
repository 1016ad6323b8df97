"""Reading datasets for the gates: the same rows from CSV, Parquet and NPZ, in chunks; metrics."""

from __future__ import annotations

import numpy as np
import pytest

from lifecycle import evaluation
from tests.country import FEATURES, country_frame, write_formats


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluation, "CHUNK_ROWS", 300)  # several chunks from 1,000 rows
    frame = country_frame(1000, seed=3)
    write_formats(frame, tmp_path)
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


@pytest.mark.parametrize("metric", sorted(evaluation.CONFUSION))
@pytest.mark.parametrize("classes", [1, 2, 3])
def test_metrics_per_slice_from_counts_equal_scikit_learn_on_the_rows_themselves(metric, classes):
    rng = np.random.default_rng(classes)
    rows = 5000
    labels = (
        rng.integers(-1, 1 + max(classes, 2) - 1, size=rows) if classes == 3 else rng.integers(0, 2, rows)
    )
    outputs = rng.random((rows, max(classes, 1)), dtype=np.float32)
    outputs[::97] = np.nan  # a model that answers NaN now and then: argmax's choice is kept
    codes = rng.integers(0, 4, size=rows).astype(np.int32)
    codes[codes == 3] = 2  # slice 3 has no rows: its metric is an error, as on an empty mask
    if classes == 3:
        labels = labels + 1  # 0..2, as the outputs' columns

    fast = evaluation.metric_by_slice(metric, labels, outputs, codes, 4)
    slow = [evaluation.metric_value(metric, labels, outputs)]
    for code in range(4):
        mask = codes == code
        try:
            slow.append(evaluation.metric_value(metric, labels[mask], outputs[mask]))
        except evaluation.EvaluationError as exc:
            slow.append(exc)

    assert len(fast) == 5
    for got, want in zip(fast, slow, strict=True):
        if isinstance(want, Exception):
            assert isinstance(got, evaluation.EvaluationError)
        else:
            assert got == pytest.approx(want, abs=1e-12)


def test_two_column_outputs_pick_the_class_argmax_would_nan_and_ties_included():
    rng = np.random.default_rng(0)
    outputs = rng.random((10_000, 2), dtype=np.float32)
    outputs[::7, 0] = np.nan
    outputs[::11, 1] = np.nan
    outputs[::13] = 0.5
    outputs[::17] = [np.inf, np.inf]
    outputs[5::17] = [-np.inf, 1.0]
    assert (evaluation.classes(outputs) == outputs.argmax(axis=1)).all()
    finite = np.nan_to_num(outputs, nan=0.25, posinf=0.75, neginf=0.0)  # the quick path, ties kept
    assert (evaluation.classes(finite) == finite.argmax(axis=1)).all()
    assert evaluation.classes(finite).dtype == np.int64


def test_a_model_that_answers_the_wrong_number_of_rows_is_an_evaluation_error():
    class Short:
        signature = None

        def predict(self, batch):
            return np.zeros((len(batch) - 1, 2), np.float32)

    Short.signature = type("S", (), {"inputs": []})()
    with pytest.raises(evaluation.EvaluationError, match=r"answered \[9, 2\] for 10 rows"):
        evaluation.predict_batched(Short(), np.zeros((10, 3), np.float32), batch_rows=10)
