"""Runtime adapters: loading each format, signatures and numeric agreement (lifecycle.runtimes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lifecycle.runtimes import (
    ModelLoadError,
    PredictionInputError,
    Runtime,
    Signature,
    TensorSpec,
    open_model,
    signatures_compatible,
)
from tests import builders

REPO_ROOT = Path(__file__).resolve().parents[2]
N_FEATURES = 4

EXPECTED_SIGNATURE = Signature(
    inputs=[TensorSpec("features", "float32", [None, N_FEATURES])],
    outputs=[TensorSpec("output_0", "float32", [None, 2])],
)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One trained classifier in every format (TensorFlow is imported once, here)."""
    tmp = tmp_path_factory.mktemp("runtimes")
    keras_path = builders.tiny_keras_classifier(tmp, n_features=N_FEATURES, seed=3, epochs=3)
    return {
        "keras": keras_path,
        "savedmodel_zip": builders.keras_model_to_savedmodel_zip(keras_path, tmp / "zip"),
        "savedmodel_tar": builders.keras_model_to_savedmodel_zip(
            keras_path, tmp / "tar", tar=True, top_dir="m"
        ),
        "onnx": builders.keras_model_to_onnx(keras_path, tmp / "onnx"),
        "tflite": builders.keras_model_to_tflite(keras_path, tmp / "tflite"),
    }


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(42).normal(size=(7, N_FEATURES)).astype(np.float32)


FORMATS = [
    ("keras", "keras"),
    ("savedmodel_zip", "savedmodel"),
    ("savedmodel_tar", "savedmodel"),
    ("onnx", "onnx"),
    ("tflite", "tflite"),
]


def _open(artifacts: dict[str, Path], key: str, fmt: str, tmp_path: Path) -> Runtime:
    return open_model(artifacts[key], fmt, workdir=tmp_path)


@pytest.mark.parametrize(("key", "fmt"), FORMATS, ids=[k for k, _ in FORMATS])
def test_each_format_loads_and_reads_the_same_signature(
    artifacts: dict[str, Path], key: str, fmt: str, tmp_path: Path
) -> None:
    runtime = _open(artifacts, key, fmt, tmp_path)
    assert runtime.format == fmt
    assert runtime.signature == EXPECTED_SIGNATURE
    assert any(char.isdigit() for char in runtime.name)  # the runtime names its version


@pytest.mark.parametrize(("key", "fmt"), FORMATS[1:], ids=[k for k, _ in FORMATS[1:]])
def test_every_format_agrees_with_keras_within_1e_5(
    artifacts: dict[str, Path], batch: np.ndarray, key: str, fmt: str, tmp_path: Path
) -> None:
    reference = open_model(artifacts["keras"], "keras").predict(batch)
    runtime = _open(artifacts, key, fmt, tmp_path)
    for rows in (batch, batch[:1]):  # the TFLite tensors are resized per batch, both ways
        out = runtime.predict(rows)
        assert isinstance(out, np.ndarray)
        assert out.dtype == np.float32
        assert out.shape == (len(rows), 2)
        np.testing.assert_allclose(out, reference[: len(rows)], rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def two_input_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("two-inputs")
    keras_path = builders.two_input_keras_model(tmp)
    return {
        "keras": keras_path,
        "savedmodel": builders.keras_model_to_savedmodel_zip(keras_path, tmp / "zip"),
        "onnx": builders.keras_model_to_onnx(keras_path, tmp / "onnx"),
        "tflite": builders.keras_model_to_tflite(keras_path, tmp / "tflite"),
    }


def test_named_inputs_and_several_outputs_agree_across_formats(
    two_input_artifacts: dict[str, Path], tmp_path: Path
) -> None:
    rng = np.random.default_rng(0)
    inputs = {
        "age": rng.normal(size=(5, 3)).astype(np.float32),
        "country": rng.normal(size=(5, 2)).astype(np.float32),
    }
    runtimes = {fmt: open_model(path, fmt, workdir=tmp_path) for fmt, path in two_input_artifacts.items()}
    reference = runtimes["keras"].predict(inputs)
    assert isinstance(reference, dict)
    assert {k: v.shape for k, v in reference.items()} == {"output_0": (5, 2), "output_1": (5, 1)}
    for fmt, runtime in runtimes.items():
        assert [t.name for t in runtime.signature.inputs] == ["age", "country"], fmt
        assert signatures_compatible(runtime.signature, runtimes["keras"].signature) == (True, ""), fmt
        out = runtime.predict(inputs)
        assert isinstance(out, dict), fmt
        for name, expected in reference.items():
            np.testing.assert_allclose(out[name], expected, rtol=0, atol=1e-5, err_msg=f"{fmt} {name}")
    with pytest.raises(PredictionInputError, match="pass a dict"):
        runtimes["onnx"].predict(inputs["age"])


def test_predictions_are_probabilities(artifacts: dict[str, Path], batch: np.ndarray) -> None:
    out = open_model(artifacts["onnx"], "onnx").predict(batch)
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)


def test_inputs_may_be_a_dict_or_plain_lists(artifacts: dict[str, Path], batch: np.ndarray) -> None:
    runtime = open_model(artifacts["keras"], "keras")
    expected = runtime.predict(batch)
    np.testing.assert_array_equal(runtime.predict({"features": batch}), expected)
    np.testing.assert_allclose(runtime.predict(batch.astype(np.float64).tolist()), expected, atol=1e-7)


def test_a_keras_file_stored_under_another_name_still_loads(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    blob = tmp_path / "3f2a9c-content-address"
    shutil.copyfile(artifacts["keras"], blob)
    assert open_model(blob, "keras").signature == EXPECTED_SIGNATURE


def test_a_savedmodel_directory_loads_as_is(
    artifacts: dict[str, Path], tmp_path: Path, batch: np.ndarray
) -> None:
    zipped = open_model(artifacts["savedmodel_zip"], "savedmodel", workdir=tmp_path)
    extracted = [p.parent for p in tmp_path.rglob("saved_model.pb")]
    assert len(extracted) == 1  # extracted under the caller's workdir
    from_dir = open_model(extracted[0], "savedmodel")
    np.testing.assert_array_equal(from_dir.predict(batch), zipped.predict(batch))


def test_a_savedmodel_archive_without_workdir_uses_its_own_temporary_directory(
    artifacts: dict[str, Path], batch: np.ndarray
) -> None:
    runtime = open_model(artifacts["savedmodel_tar"], "savedmodel")
    assert runtime.predict(batch).shape == (7, 2)


def test_a_keras_lambda_model_is_refused_by_safe_mode(tmp_path: Path) -> None:
    # The upload check refuses it first; this is the second line of defence in the worker.
    with pytest.raises(ModelLoadError, match="lambda"):
        open_model(builders.keras_with_lambda(tmp_path), "keras")


def test_a_hostile_savedmodel_archive_is_refused_on_extraction(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"refused.*escapes"):
        open_model(builders.zip_slip_savedmodel(tmp_path), "savedmodel", workdir=tmp_path)
    assert not (tmp_path.parent / "evil.sh").exists()


@pytest.mark.parametrize("fmt", ["keras", "savedmodel", "onnx", "tflite"])
def test_a_file_of_the_wrong_format_raises_model_load_error(tmp_path: Path, fmt: str) -> None:
    wrong = builders.fake_savedmodel_zip(tmp_path) if fmt == "onnx" else builders.tiny_onnx_model(tmp_path)
    with pytest.raises(ModelLoadError, match=f"the {fmt}"):
        open_model(wrong, fmt, workdir=tmp_path)


def test_an_unknown_format_or_missing_file_raises_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="unknown model format"):
        open_model(builders.tiny_onnx_model(tmp_path), "pickle")
    with pytest.raises(ModelLoadError, match="does not exist"):
        open_model(tmp_path / "missing.onnx", "onnx")


def test_an_onnx_model_the_upload_scan_accepted_still_meets_onnx_checker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Big uploads only get the streaming scan in the web process; the worker runs the checker.
    from registry import artifact_checks

    invalid = builders.invalid_onnx_graph(tmp_path)
    monkeypatch.setattr(artifact_checks, "ONNX_FULL_CHECK_BYTES", 0)
    assert artifact_checks.inspect_artifact(invalid).details["checked"] == "streaming-scan"

    import onnxruntime

    def no_session(*args: object, **kwargs: object) -> None:
        raise AssertionError("the checker must run before ONNX Runtime opens the model")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_session)
    with pytest.raises(ModelLoadError, match=r"fails onnx.checker: .*nowhere"):
        open_model(invalid, "onnx")


def test_a_large_onnx_model_passes_the_checker_and_loads(tmp_path: Path) -> None:
    runtime = open_model(builders.large_onnx_model(tmp_path, raw_mib=2), "onnx", threads=1)
    assert runtime.signature == EXPECTED_SIGNATURE


def test_the_tiny_onnx_model_fits_a_keras_classifier_signature(tmp_path: Path) -> None:
    runtime = open_model(builders.tiny_onnx_model(tmp_path, n_features=N_FEATURES), "onnx", threads=1)
    assert runtime.signature == EXPECTED_SIGNATURE
    assert runtime.name.startswith("onnxruntime ")
    out = runtime.predict(np.ones((3, N_FEATURES), np.float32))
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-6)


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        (np.ones((3, N_FEATURES + 1), np.float32), r"expects shape \[\?, 4\].*got \[3, 5\]"),
        (np.ones(N_FEATURES, np.float32), r"batch first"),
        ({"wrong": np.ones((1, N_FEATURES), np.float32)}, r"expected inputs \['features'\]"),
        ([["a", "b", "c", "d"]], r"input 'features'"),
    ],
    ids=["wrong_width", "unbatched", "wrong_name", "not_numbers"],
)
def test_bad_inputs_raise_prediction_input_error(tmp_path: Path, inputs: object, match: str) -> None:
    runtime = open_model(builders.tiny_onnx_model(tmp_path), "onnx")
    with pytest.raises(PredictionInputError, match=match):
        runtime.predict(inputs)  # type: ignore[arg-type]


def test_importing_the_runtimes_does_not_import_tensorflow() -> None:
    script = (
        "import sys\n"
        "import lifecycle.runtimes\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'onnxruntime') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=True, timeout=120)


# --------------------------------------------------------------------------------------
# signatures_compatible


def _sig(*inputs: TensorSpec, outputs: tuple[TensorSpec, ...] = ()) -> Signature:
    return Signature(
        inputs=list(inputs),
        outputs=list(outputs) or [TensorSpec("output_0", "float32", [None, 2])],
    )


def _t(name: str, shape: list[int | None], dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name, dtype, shape)


def test_identical_signatures_are_compatible() -> None:
    assert signatures_compatible(EXPECTED_SIGNATURE, EXPECTED_SIGNATURE) == (True, "")


def test_a_single_input_matches_by_position_whatever_its_name() -> None:
    assert signatures_compatible(_sig(_t("input_1", [None, 4])), _sig(_t("features", [None, 4]))) == (
        True,
        "",
    )


def test_unknown_dims_match_any_size() -> None:
    ok, why = signatures_compatible(_sig(_t("x", [1, 4])), _sig(_t("x", [None, 4])))
    assert (ok, why) == (True, "")


def test_named_inputs_match_in_any_order() -> None:
    a, b = _t("age", [None, 1]), _t("country", [None, 1], "int64")
    assert signatures_compatible(_sig(a, b), _sig(b, a)) == (True, "")


@pytest.mark.parametrize(
    ("candidate", "baseline", "reason"),
    [
        (_sig(_t("x", [None, 5])), _sig(_t("x", [None, 4])), "'x' has shape [?, 5] in the candidate, [?, 4]"),
        (_sig(_t("x", [None, 4], "float64")), _sig(_t("x", [None, 4])), "'x' is float64 in the candidate"),
        (_sig(_t("x", [None, 2, 2])), _sig(_t("x", [None, 4])), "rank 3 in the candidate, 2 in the baseline"),
        (_sig(_t("x", [None, 4]), _t("y", [None, 1])), _sig(_t("x", [None, 4])), "2 input(s) (x, y)"),
        (
            _sig(_t("a", [None, 1]), _t("b", [None, 1])),
            _sig(_t("a", [None, 1]), _t("c", [None, 1])),
            "c missing from the candidate (it has b instead)",
        ),
        (
            _sig(_t("x", [None, 4]), outputs=(_t("output_0", [None, 3]),)),
            _sig(_t("x", [None, 4])),
            "output 'output_0' has shape [?, 3] in the candidate, [?, 2]",
        ),
        (
            _sig(_t("x", [None, 4]), outputs=(_t("p", [None, 2]), _t("q", [None, 1]))),
            _sig(_t("x", [None, 4])),
            "2 output(s), the baseline 1",
        ),
    ],
    ids=["width", "dtype", "rank", "input_count", "input_names", "output_shape", "output_count"],
)
def test_incompatible_signatures_explain_the_first_difference(
    candidate: Signature, baseline: Signature, reason: str
) -> None:
    ok, why = signatures_compatible(candidate, baseline)
    assert not ok
    assert reason in why


def test_a_signature_round_trips_through_json() -> None:
    stored = json.loads(json.dumps(EXPECTED_SIGNATURE.as_dict()))
    assert stored == {
        "inputs": [{"name": "features", "dtype": "float32", "shape": [None, 4]}],
        "outputs": [{"name": "output_0", "dtype": "float32", "shape": [None, 2]}],
    }
    assert Signature.from_dict(stored) == EXPECTED_SIGNATURE
