"""Content detection and refusal of unsafe artifacts (registry.artifact_checks)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import tracemalloc
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from registry import artifact_checks
from registry.artifact_checks import (
    ArtifactInfo,
    ArtifactRejected,
    extract_archive,
    inspect_artifact,
    scan_onnx,
)
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


# --------------------------------------------------------------------------------------
# ONNX streaming scan (big uploads: constant memory in the web process)


def _without_checked(info: ArtifactInfo) -> tuple[str, str, dict[str, Any]]:
    return info.format, info.packaging, {k: v for k, v in info.details.items() if k != "checked"}


@pytest.fixture
def scan_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send every ONNX file through the streaming scan, as if it were big."""
    monkeypatch.setattr(artifact_checks, "ONNX_FULL_CHECK_BYTES", 0)


def _scan_rejected(path: Path) -> ArtifactRejected:
    with pytest.raises(ArtifactRejected) as caught:
        scan_onnx(path)
    assert caught.value.message
    return caught.value


def test_the_scan_field_numbers_match_onnx_proto() -> None:
    import onnx

    expected = {
        "_MODEL_IR_VERSION": (onnx.ModelProto, "ir_version"),
        "_MODEL_PRODUCER_NAME": (onnx.ModelProto, "producer_name"),
        "_MODEL_PRODUCER_VERSION": (onnx.ModelProto, "producer_version"),
        "_MODEL_GRAPH": (onnx.ModelProto, "graph"),
        "_MODEL_OPSET_IMPORT": (onnx.ModelProto, "opset_import"),
        "_MODEL_TRAINING_INFO": (onnx.ModelProto, "training_info"),
        "_MODEL_FUNCTIONS": (onnx.ModelProto, "functions"),
        "_OPSET_DOMAIN": (onnx.OperatorSetIdProto, "domain"),
        "_OPSET_VERSION": (onnx.OperatorSetIdProto, "version"),
        "_GRAPH_NODE": (onnx.GraphProto, "node"),
        "_GRAPH_INITIALIZER": (onnx.GraphProto, "initializer"),
        "_GRAPH_INPUT": (onnx.GraphProto, "input"),
        "_GRAPH_OUTPUT": (onnx.GraphProto, "output"),
        "_GRAPH_SPARSE_INITIALIZER": (onnx.GraphProto, "sparse_initializer"),
        "_VALUE_INFO_NAME": (onnx.ValueInfoProto, "name"),
        "_NODE_ATTRIBUTE": (onnx.NodeProto, "attribute"),
        "_ATTRIBUTE_T": (onnx.AttributeProto, "t"),
        "_ATTRIBUTE_G": (onnx.AttributeProto, "g"),
        "_ATTRIBUTE_TENSORS": (onnx.AttributeProto, "tensors"),
        "_ATTRIBUTE_GRAPHS": (onnx.AttributeProto, "graphs"),
        "_ATTRIBUTE_SPARSE_TENSOR": (onnx.AttributeProto, "sparse_tensor"),
        "_ATTRIBUTE_SPARSE_TENSORS": (onnx.AttributeProto, "sparse_tensors"),
        "_TENSOR_NAME": (onnx.TensorProto, "name"),
        "_TENSOR_EXTERNAL_DATA": (onnx.TensorProto, "external_data"),
        "_TENSOR_DATA_LOCATION": (onnx.TensorProto, "data_location"),
        "_SPARSE_VALUES": (onnx.SparseTensorProto, "values"),
        "_SPARSE_INDICES": (onnx.SparseTensorProto, "indices"),
        "_FUNCTION_NODE": (onnx.FunctionProto, "node"),
        "_FUNCTION_ATTRIBUTE_PROTO": (onnx.FunctionProto, "attribute_proto"),
        "_TRAINING_INITIALIZATION": (onnx.TrainingInfoProto, "initialization"),
        "_TRAINING_ALGORITHM": (onnx.TrainingInfoProto, "algorithm"),
    }
    for constant, (message, field_name) in expected.items():
        number = message.DESCRIPTOR.fields_by_name[field_name].number
        assert getattr(artifact_checks, constant) == number, constant
    assert artifact_checks._TENSOR_LOCATION_EXTERNAL == onnx.TensorProto.EXTERNAL


def test_the_scan_agrees_with_the_full_check_on_the_tiny_model(tmp_path: Path) -> None:
    path = builders.tiny_onnx_model(tmp_path)
    full = inspect_artifact(path)
    scanned = scan_onnx(path)
    assert full.details["checked"] == "onnx.checker"
    assert scanned.details["checked"] == "streaming-scan"
    assert _without_checked(scanned) == _without_checked(full)


def test_the_scan_agrees_with_the_full_check_on_a_keras_export(real: dict[str, Path]) -> None:
    full = inspect_artifact(real["onnx"])
    assert _without_checked(scan_onnx(real["onnx"])) == _without_checked(full)
    assert "tf2onnx" in full.details["producer"]


def test_inspect_artifact_scans_above_the_threshold(
    real: dict[str, Path], tmp_path: Path, scan_everything: None
) -> None:
    for path in (builders.tiny_onnx_model(tmp_path), real["onnx"]):
        info = inspect_artifact(path)
        assert info.details["checked"] == "streaming-scan"
        assert _without_checked(info) == _without_checked(scan_onnx(path))


def test_the_full_check_runs_up_to_the_threshold(tmp_path: Path) -> None:
    path = builders.large_onnx_model(tmp_path, raw_mib=1)
    full = inspect_artifact(path)
    assert full.details["checked"] == "onnx.checker"
    assert _without_checked(scan_onnx(path)) == _without_checked(full)


def test_the_scan_leaves_graph_validation_to_the_worker(tmp_path: Path, scan_everything: None) -> None:
    # onnx.checker refuses this graph; the scan only reads the structure, and the worker's
    # onnx.checker run refuses it before loading (tests/lifecycle/test_runtimes.py).
    info = inspect_artifact(builders.invalid_onnx_graph(tmp_path))
    assert info.details["checked"] == "streaming-scan"


@pytest.mark.parametrize(
    "build",
    [builders.onnx_with_external_data, builders.onnx_with_external_data_in_subgraph],
    ids=lambda f: f.__name__,
)
def test_the_scan_refuses_external_data_even_in_subgraphs(
    tmp_path: Path, build: Callable[[Path], Path], scan_everything: None
) -> None:
    path = build(tmp_path)
    assert _rejected(path).code == "onnx_external_data"
    assert _scan_rejected(path).code == "onnx_external_data"


def _with_initializer(tmp_path: Path, tensor: bytes, name: str = "extra.onnx") -> Path:
    """The tiny model plus one initializer given as raw TensorProto wire bytes."""
    import onnx

    model = onnx.load_model(str(builders.tiny_onnx_model(tmp_path / "src")))
    graph = model.graph.SerializeToString() + bytes([5 << 3 | 2, len(tensor)]) + tensor
    model.ClearField("graph")
    path = tmp_path / name
    path.write_bytes(model.SerializeToString() + bytes([7 << 3 | 2]) + _varint(len(graph)) + graph)
    return path


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes(out) + bytes([value])


@pytest.mark.parametrize(
    "location",
    [b"\x70\x01", b"\x70" + _varint(2**32 + 1)],  # data_location = EXTERNAL; int32 keeps the low bits
    ids=["external", "external_in_the_low_32_bits"],
)
def test_a_data_location_of_external_alone_is_refused(tmp_path: Path, location: bytes) -> None:
    path = _with_initializer(tmp_path, b"\x42\x05ghost" + location)  # name = "ghost"
    assert _rejected(path).code == "onnx_external_data"  # the full path agrees
    error = _scan_rejected(path)
    assert error.code == "onnx_external_data"
    assert "'ghost'" in error.message


def test_external_data_in_a_function_is_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    external = builders._external_tensor("w", [1.0])
    function = helper.make_function(
        "custom",
        "Const",
        [],
        ["y"],
        [helper.make_node("Constant", [], ["y"], value=external)],
        [helper.make_opsetid("", 17)],
    )
    model = onnx.load_model(str(builders.tiny_onnx_model(tmp_path / "src")))
    model.functions.append(function)
    path = tmp_path / "function.onnx"
    path.write_bytes(model.SerializeToString())
    assert _scan_rejected(path).code == "onnx_external_data"


def test_subgraphs_nested_past_the_limit_are_corrupt(tmp_path: Path, scan_everything: None) -> None:
    assert scan_onnx(builders.nested_subgraphs_onnx(tmp_path, depth=64)).details["nodes"] == 1
    error = _rejected(builders.nested_subgraphs_onnx(tmp_path, depth=65))
    assert error.code == "corrupt_onnx"
    assert "deeper than 64" in error.message


def test_a_truncated_onnx_file_is_corrupt_at_every_cut(tmp_path: Path, scan_everything: None) -> None:
    data = builders.tiny_onnx_model(tmp_path).read_bytes()
    cut = tmp_path / "cut.onnx"
    for end in range(2, len(data)):  # from 2 bytes on, the head reads as ONNX
        cut.write_bytes(data[:end])
        assert _scan_rejected(cut).code == "corrupt_onnx", end
        assert _rejected(cut).code == "corrupt_onnx", end


def test_a_large_onnx_file_cut_inside_its_tensor_data_is_corrupt(tmp_path: Path) -> None:
    path = builders.large_onnx_model(tmp_path, raw_mib=2)
    size = path.stat().st_size
    cut = tmp_path / "cut.onnx"
    with path.open("rb") as f:
        data = f.read(64 * 1024)
    for end in (100, 300, 64 * 1024):
        cut.write_bytes(data[:end])
        error = _scan_rejected(cut)
        assert error.code == "corrupt_onnx"
        assert "does not parse" in error.message
    with path.open("r+b") as f:
        f.truncate(size - 1)
    assert "runs past the end of the file" in _scan_rejected(path).message


def test_mangled_onnx_bytes_only_ever_raise_artifact_rejected(tmp_path: Path) -> None:
    import numpy as np

    data = bytearray(builders.tiny_onnx_model(tmp_path).read_bytes())
    rng = np.random.default_rng(0)
    path = tmp_path / "mangled.onnx"
    for _ in range(300):
        mangled = bytearray(data)
        for i in rng.integers(0, len(data), size=3):
            mangled[i] = int(rng.integers(0, 256))
        path.write_bytes(bytes(mangled))
        try:
            scan_onnx(path)
        except ArtifactRejected as exc:
            assert exc.code in ("corrupt_onnx", "unknown_format", "onnx_external_data")


def test_random_bytes_are_an_unknown_format_for_the_scan(tmp_path: Path) -> None:
    for seed in range(20):
        path = builders.random_bytes(tmp_path / str(seed), size=64 * 1024, seed=seed)
        head = path.read_bytes()[:2]
        expected = "corrupt_onnx" if head[0] == 0x08 and 1 <= head[1] <= 32 else "unknown_format"
        assert _scan_rejected(path).code == expected


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x08\x08\x38\x01", "ModelProto.graph has wire type 0"),
        (b"\x08\x08\x3a\x05\x0a\x00", "runs past the end"),
        (b"\x08\x08\x08" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
        (b"\x08\x08\x08\xff", "truncated varint"),
        (b"\x08\x08\x00", "invalid field key"),
        (b"\x08\x08\xf3\x01", "unsupported wire type 3"),  # field 30 as a group
    ],
    ids=["wrong_wire_type", "length_past_eof", "long_varint", "cut_varint", "field_zero", "group"],
)
def test_malformed_wire_data_is_corrupt(tmp_path: Path, data: bytes, reason: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(data)
    error = _scan_rejected(path)
    assert error.code == "corrupt_onnx"
    assert reason in error.message


def test_the_scan_refuses_past_its_field_and_name_budgets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = builders.tiny_onnx_model(tmp_path)
    monkeypatch.setattr(artifact_checks, "_SCAN_MAX_FIELDS", 10)
    assert "protobuf fields" in _scan_rejected(path).message
    monkeypatch.undo()
    monkeypatch.setattr(artifact_checks, "_SCAN_MAX_NAME_BYTES", 100)
    error = _scan_rejected(path)
    assert error.code == "corrupt_onnx"
    assert "names add up" in error.message


def test_the_scan_of_a_300_mib_model_stays_under_16_mib(tmp_path: Path) -> None:
    path = builders.large_onnx_model(tmp_path, raw_mib=300)
    try:
        assert path.stat().st_size > 300 * 1024**2
        tracemalloc.start()
        try:
            info = scan_onnx(path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        path.unlink()
    assert info.details["inputs"] == ["features"]
    assert info.details["checked"] == "streaming-scan"
    assert peak < 16 * 1024**2, f"peak Python allocation {peak} bytes"


def test_inspecting_a_1_gib_onnx_upload_grows_the_process_by_under_64_mib(tmp_path: Path) -> None:
    # A fresh interpreter, so the peak RSS before the check is the baseline. The file is
    # sparse: 1 GiB of zeros that costs no disk.
    path = builders.large_onnx_model(tmp_path, raw_mib=1024, sparse=True)
    script = (
        "import resource, sys\n"
        "from pathlib import Path\n"
        "from registry.artifact_checks import inspect_artifact\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "info = inspect_artifact(Path(sys.argv[1]))\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "assert info.details['checked'] == 'streaming-scan', info\n"
        "print(after - before)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", script, str(path)],
            cwd=REPO_ROOT,
            check=True,
            timeout=120,
            capture_output=True,
            text=True,
        )
    finally:
        path.unlink()
    growth_kib = int(done.stdout.strip())
    assert growth_kib < 64 * 1024, f"the web process grew by {growth_kib} KiB"
