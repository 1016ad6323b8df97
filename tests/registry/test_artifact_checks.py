"""Content detection and refusal of unsafe artifacts (registry.artifact_checks)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from registry.artifact_checks import ArtifactInfo, ArtifactRejected, extract_archive, inspect_artifact
from tests import builders

REPO_ROOT = Path(__file__).resolve().parents[2]


def _rejected(path: Path, **limits: Any) -> ArtifactRejected:
    with pytest.raises(ArtifactRejected) as caught:
        inspect_artifact(path, **limits)
    assert caught.value.message  # every refusal explains itself
    return caught.value


# --------------------------------------------------------------------------------------
# Real models, built once for the module (TensorFlow is imported here, not by the checks)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("real-models")
    keras_path = builders.tiny_keras_classifier(tmp)
    return {
        "keras": keras_path,
        "savedmodel_zip": builders.keras_model_to_savedmodel_zip(keras_path, tmp / "zip"),
        "savedmodel_tar": builders.keras_model_to_savedmodel_zip(keras_path, tmp / "tar", tar=True),
        "savedmodel_zip_dir": builders.keras_model_to_savedmodel_zip(keras_path, tmp / "zipdir", top_dir="m"),
        "savedmodel_tar_dir": builders.keras_model_to_savedmodel_zip(
            keras_path, tmp / "tardir", tar=True, top_dir="m"
        ),
        "onnx": builders.keras_model_to_onnx(keras_path, tmp / "onnx"),
        "tflite": builders.keras_model_to_tflite(keras_path, tmp / "tflite"),
        "lambda": builders.keras_with_lambda(tmp),
    }


def test_a_keras_file_is_detected_from_its_content(real: dict[str, Path]) -> None:
    info = inspect_artifact(real["keras"])
    assert info == ArtifactInfo("keras", "zip", info.details)
    assert info.details["has_weights"] is True
    assert info.details["keras_version"].startswith("3.")


@pytest.mark.parametrize(
    ("key", "packaging", "root"),
    [
        ("savedmodel_zip", "zip", []),
        ("savedmodel_tar", "tar.gz", []),
        ("savedmodel_zip_dir", "zip", ["m"]),
        ("savedmodel_tar_dir", "tar.gz", ["m"]),
    ],
)
def test_a_savedmodel_is_detected_in_a_zip_or_a_tar_gz(
    real: dict[str, Path], key: str, packaging: str, root: list[str]
) -> None:
    info = inspect_artifact(real[key])
    assert (info.format, info.packaging) == ("savedmodel", packaging)
    assert info.details["root"] == root
    assert info.details["has_variables"] is True


def test_an_onnx_export_is_detected_with_its_opset_and_producer(real: dict[str, Path]) -> None:
    info = inspect_artifact(real["onnx"])
    assert (info.format, info.packaging) == ("onnx", "file")
    assert info.details["opset"]["ai.onnx"] == 17
    assert "tf2onnx" in info.details["producer"]
    assert info.details["inputs"] == ["features"]


def test_a_tflite_file_is_detected_from_its_identifier(real: dict[str, Path]) -> None:
    size = real["tflite"].stat().st_size
    assert inspect_artifact(real["tflite"]) == ArtifactInfo("tflite", "file", {"size": size})


def test_the_extension_is_ignored(real: dict[str, Path], tmp_path: Path) -> None:
    tflite_named_onnx = builders.wrong_extension_onnx(tmp_path, source=real["tflite"])
    assert inspect_artifact(tflite_named_onnx).format == "tflite"
    zip_named_onnx = builders.wrong_extension_onnx(tmp_path / "zip")
    assert inspect_artifact(zip_named_onnx).format == "savedmodel"
    onnx_named_keras = builders.tiny_onnx_model(tmp_path, name="model.keras")
    assert inspect_artifact(onnx_named_keras).format == "onnx"


def test_a_real_keras_model_with_a_lambda_layer_is_refused(real: dict[str, Path]) -> None:
    error = _rejected(real["lambda"])
    assert error.code == "keras_lambda"
    assert "doubler" in error.message


def test_extract_archive_returns_the_directory_holding_saved_model_pb(
    real: dict[str, Path], tmp_path: Path
) -> None:
    flat = extract_archive(real["savedmodel_tar"], tmp_path / "flat", packaging="tar.gz")
    nested = extract_archive(real["savedmodel_zip_dir"], tmp_path / "nested", packaging="zip")
    assert flat == (tmp_path / "flat").resolve()
    assert nested == (tmp_path / "nested" / "m").resolve()
    for directory in (flat, nested):
        assert (directory / "saved_model.pb").is_file()
        assert (directory / "variables" / "variables.index").is_file()


# --------------------------------------------------------------------------------------
# Cheap cases (no TensorFlow)


def test_a_tiny_onnx_model_is_accepted_and_its_seed_changes_the_bytes(tmp_path: Path) -> None:
    a = builders.tiny_onnx_model(tmp_path, seed=0, name="a.onnx")
    b = builders.tiny_onnx_model(tmp_path, seed=1, name="b.onnx")
    again = builders.tiny_onnx_model(tmp_path / "zip", seed=0, name="a.onnx")
    assert a.read_bytes() == again.read_bytes()
    assert a.read_bytes() != b.read_bytes()
    info = inspect_artifact(a)
    assert info.format == "onnx"
    assert info.details["inputs"] == ["features"]
    assert info.details["outputs"] == ["output_0"]
    assert info.details["ir_version"] == 8


@pytest.mark.parametrize(
    ("build", "code"),
    [
        (builders.zip_slip_savedmodel, "zip_slip"),
        (builders.zip_slip_savedmodel_tar, "zip_slip"),
        (builders.absolute_path_savedmodel_zip, "zip_slip"),
        (builders.absolute_path_savedmodel_tar, "zip_slip"),
        (builders.backslash_savedmodel_zip, "zip_slip"),
        (builders.symlink_zip, "symlink"),
        (builders.symlink_savedmodel_tar, "symlink"),
        (builders.hardlink_savedmodel_tar, "symlink"),
        (builders.fifo_savedmodel_tar, "special_file"),
        (builders.zip_bomb, "archive_bomb"),
        (builders.tar_bomb, "archive_bomb"),
        (builders.corrupt_zip, "corrupt_archive"),
        (builders.corrupt_tar_gz, "corrupt_archive"),
        (builders.gzip_not_tar, "corrupt_archive"),
        (builders.corrupt_onnx, "corrupt_onnx"),
        (builders.invalid_onnx_graph, "corrupt_onnx"),
        (builders.onnx_with_external_data, "onnx_external_data"),
        (builders.legacy_h5, "legacy_h5"),
        (builders.unknown_file, "unknown_format"),
        (builders.random_bytes, "unknown_format"),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_a_hostile_or_broken_artifact_is_refused_with_its_code(
    tmp_path: Path, build: Callable[[Path], Path], code: str
) -> None:
    assert _rejected(build(tmp_path)).code == code


def test_a_legacy_h5_refusal_says_how_to_convert(tmp_path: Path) -> None:
    message = _rejected(builders.legacy_h5(tmp_path)).message
    assert "safe_mode" in message
    assert ".keras" in message


def test_an_unknown_file_is_refused_with_the_accepted_formats_and_its_name(tmp_path: Path) -> None:
    error = _rejected(builders.unknown_file(tmp_path))
    assert error.message.startswith("model.onnx.csv ")
    for accepted in (".keras", "SavedModel", "ONNX", "TFLite"):
        assert accepted in error.message
    with pytest.raises(ArtifactRejected) as named:
        inspect_artifact(builders.unknown_file(tmp_path), filename="upload.bin")
    assert named.value.message.startswith("upload.bin ")


def test_an_empty_file_is_an_unknown_format(tmp_path: Path) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert _rejected(empty).code == "unknown_format"


def test_a_zip_without_a_model_is_an_unknown_format(tmp_path: Path) -> None:
    path = tmp_path / "docs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("README.md", "hello")
    assert _rejected(path).code == "unknown_format"


def test_two_saved_models_in_one_archive_are_ambiguous(tmp_path: Path) -> None:
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/saved_model.pb", b"x")
        zf.writestr("b/saved_model.pb", b"x")
    error = _rejected(path)
    assert error.code == "unknown_format"
    assert "several saved_model.pb" in error.message


def test_a_saved_model_pb_nested_two_levels_deep_is_not_found(tmp_path: Path) -> None:
    path = tmp_path / "deep.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a/b/saved_model.pb", b"x")
    assert _rejected(path).code == "unknown_format"


def test_a_duplicated_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("saved_model.pb", b"x")
        zf.writestr("saved_model.pb", b"y")
    assert _rejected(path).code == "corrupt_archive"


def test_a_small_archive_that_compresses_well_is_accepted(tmp_path: Path) -> None:
    # 512 KiB of zeros compresses ~1000:1 but stays under the 1 MiB floor of the ratio check.
    small = tmp_path / "small.zip"
    with zipfile.ZipFile(small, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("saved_model.pb", b"x")
        zf.writestr("variables/variables.data-00000-of-00001", bytes(512 * 1024))
    assert inspect_artifact(small).format == "savedmodel"


def test_the_limits_are_keyword_arguments(tmp_path: Path) -> None:
    many = builders.many_members_zip(tmp_path, members=50)
    assert inspect_artifact(many).details["members"] == 51
    assert _rejected(many, max_members=10).code == "archive_bomb"

    bomb = builders.tar_bomb(tmp_path, unpacked_mib=2)
    assert _rejected(bomb).code == "archive_bomb"  # ~1000:1
    assert inspect_artifact(bomb, max_ratio=10_000).format == "savedmodel"
    assert _rejected(bomb, max_ratio=10_000, max_unpacked_bytes=1024**2).code == "archive_bomb"


def test_the_gzip_stream_is_capped_even_when_headers_declare_little(tmp_path: Path) -> None:
    # A tar whose members declare tiny sizes but whose stream is long: 100 members, each
    # header alone is 512 bytes, so a 10 KiB cap with a 1-member budget must trip.
    path = tmp_path / "headers.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("saved_model.pb")
        tf.addfile(info, None)
        for i in range(100):
            tf.addfile(tarfile.TarInfo(f"assets/{i}"), None)
    error = _rejected(path, max_unpacked_bytes=0, max_members=1)
    assert error.code == "archive_bomb"


def _sequential(*layers: dict[str, Any]) -> dict[str, Any]:
    return {"class_name": "Sequential", "config": {"layers": list(layers)}}


@pytest.mark.parametrize(
    "layer",
    [
        {"class_name": "Lambda", "config": {"name": "doubler"}},
        {"class_name": "Custom", "config": {"function": {"class_name": "__lambda__", "config": {}}}},
    ],
    ids=["lambda_layer", "serialized_lambda"],
)
def test_a_keras_config_with_python_code_is_refused(tmp_path: Path, layer: dict[str, Any]) -> None:
    path = builders.keras_config_zip(tmp_path, _sequential({"class_name": "Dense"}, layer))
    assert _rejected(path).code == "keras_lambda"


def test_a_keras_config_without_lambdas_passes_the_static_scan(tmp_path: Path) -> None:
    config = _sequential({"class_name": "Dense", "config": {"units": 2}})
    info = inspect_artifact(builders.keras_config_zip(tmp_path, config))
    assert (info.format, info.details["class_name"]) == ("keras", "Sequential")


def test_a_keras_archive_with_broken_json_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "broken.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", b"{not json")
        zf.writestr("metadata.json", json.dumps({}))
    assert _rejected(path).code == "corrupt_keras"


@pytest.mark.parametrize(
    "build",
    [
        builders.zip_slip_savedmodel,
        builders.zip_slip_savedmodel_tar,
        builders.symlink_savedmodel_tar,
        builders.tar_bomb,
    ],
    ids=lambda f: f.__name__,
)
def test_extract_archive_reapplies_the_checks_and_writes_nothing(
    tmp_path: Path, build: Callable[[Path], Path]
) -> None:
    path = build(tmp_path)
    packaging = "tar.gz" if path.name.endswith(".tar.gz") else "zip"
    dest = tmp_path / "out"
    with pytest.raises(ArtifactRejected):
        extract_archive(path, dest, packaging=packaging)
    assert not dest.exists()
    assert not (tmp_path / "evil.sh").exists()


def test_extract_archive_refuses_a_keras_file(tmp_path: Path) -> None:
    path = builders.keras_config_zip(tmp_path, {"class_name": "Sequential", "config": {}})
    with pytest.raises(ArtifactRejected) as caught:
        extract_archive(path, tmp_path / "out", packaging="zip")
    assert caught.value.code == "unknown_format"


def test_extract_archive_writes_a_fake_savedmodel_inside_dest(tmp_path: Path) -> None:
    root = extract_archive(builders.fake_savedmodel_zip(tmp_path), tmp_path / "out", packaging="zip")
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == [
        "saved_model.pb",
        "variables/variables.data-00000-of-00001",
        "variables/variables.index",
    ]


def test_the_checks_never_import_tensorflow(tmp_path: Path) -> None:
    onnx_path = builders.tiny_onnx_model(tmp_path)
    zip_path = builders.fake_savedmodel_zip(tmp_path)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from registry.artifact_checks import inspect_artifact\n"
        f"assert inspect_artifact(Path({str(onnx_path)!r})).format == 'onnx'\n"
        f"assert inspect_artifact(Path({str(zip_path)!r})).format == 'savedmodel'\n"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'django') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, check=True, timeout=120)
