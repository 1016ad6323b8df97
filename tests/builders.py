"""Build model artifacts at test time, so that no binary is committed.

Two families:

- real models: a tiny trained Keras classifier and its SavedModel (zip or tar.gz), ONNX and
  TFLite conversions, plus :func:`tiny_onnx_model`, built directly with ``onnx.helper`` (no
  TensorFlow, milliseconds) for the API tests that only need a valid artifact;
- hostile files: archives that escape their directory, links, bombs, corrupt or unsafe models.

TensorFlow and Keras are imported inside the functions that need them, so importing this module
(and building ONNX or hostile files) stays cheap.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

SAVEDMODEL_PB_PLACEHOLDER = b"\x08\x01"  # enough for the content checks, which never parse it


def _out(tmp_path: Path, name: str) -> Path:
    """``tmp_path / name``, creating ``tmp_path`` so callers can pass fresh subdirectories."""
    Path(tmp_path).mkdir(parents=True, exist_ok=True)
    return Path(tmp_path) / name


# --------------------------------------------------------------------------------------
# Real models


def _tf() -> Any:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    return tf


def train_tiny_keras_model(*, n_features: int = 4, n_classes: int = 2, seed: int = 0, epochs: int = 2) -> Any:
    """A small Dense softmax classifier, trained for a couple of epochs on seeded data."""
    _tf()
    import keras

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, n_features)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, -1] > 0).astype(np.int32) % n_classes
    inputs = keras.Input(shape=(n_features,), name="features")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(hidden)
    model = keras.Model(inputs, outputs, name="tiny_classifier")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)
    return model


def tiny_keras_classifier(
    tmp_path: Path,
    *,
    n_features: int = 4,
    seed: int = 0,
    epochs: int = 2,
    model: Any = None,
    name: str = "classifier.keras",
) -> Path:
    """Save a trained tiny classifier (or the given ``model``) as a Keras 3 file."""
    if model is None:
        model = train_tiny_keras_model(n_features=n_features, seed=seed, epochs=epochs)
    path = _out(tmp_path, name)
    model.save(path)
    return path


def two_input_keras_model(tmp_path: Path, *, seed: int = 0) -> Path:
    """An untrained Keras model with two named inputs and two outputs, saved as .keras."""
    _tf()
    import keras

    keras.utils.set_random_seed(seed)
    age = keras.Input(shape=(3,), name="age")
    country = keras.Input(shape=(2,), name="country")
    hidden = keras.layers.Concatenate()([age, country])
    probabilities = keras.layers.Dense(2, activation="softmax", name="probabilities")(hidden)
    score = keras.layers.Dense(1, name="score")(hidden)
    model = keras.Model({"age": age, "country": country}, [probabilities, score])
    path = _out(tmp_path, "two_inputs.keras")
    model.save(path)
    return path


def _export_savedmodel(keras_path: Path, out_dir: Path) -> Path:
    """Export a .keras file's serving function as a SavedModel directory (``model.export``)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _tf()
    import keras

    model = keras.saving.load_model(keras_path, safe_mode=True, compile=False)
    model.export(str(out_dir), verbose=False)
    return out_dir


def keras_model_to_savedmodel_zip(
    keras_path: Path, tmp_path: Path, *, tar: bool = False, top_dir: str | None = None
) -> Path:
    """Pack the model's SavedModel as a zip (or a tar.gz with ``tar=True``).

    ``top_dir`` puts everything under one top-level directory instead of the archive root.
    """
    tmp_path = Path(tmp_path)
    export_dir = _export_savedmodel(keras_path, tmp_path / f"savedmodel-{'tar' if tar else 'zip'}")
    files = sorted(p for p in export_dir.rglob("*") if p.is_file())
    prefix = f"{top_dir}/" if top_dir else ""
    if tar:
        out = tmp_path / "savedmodel.tar.gz"
        with tarfile.open(out, "w:gz") as tf:
            for file in files:
                tf.add(file, arcname=prefix + file.relative_to(export_dir).as_posix())
    else:
        out = tmp_path / "savedmodel.zip"
        with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
            for file in files:
                zf.write(file, prefix + file.relative_to(export_dir).as_posix())
    return out


def keras_model_to_onnx(keras_path: Path, tmp_path: Path, *, opset: int = 17) -> Path:
    """Convert through a SavedModel with tf2onnx, as the export branch does."""
    tf = _tf()
    from tf2onnx import convert, tf_loader

    tmp_path = Path(tmp_path)
    export_dir = _export_savedmodel(keras_path, tmp_path / "savedmodel-onnx")
    out = tmp_path / "model.onnx"
    # tf2onnx has no public from_saved_model(); these are the two calls its CLI
    # (`python -m tf2onnx.convert --saved-model`) makes, minus a second TensorFlow import.
    graph_def, inputs, outputs, tables, renames = tf_loader.from_saved_model(
        str(export_dir),
        None,
        None,
        return_initialized_tables=True,
        return_tensors_to_rename=True,
    )
    with tf.device("/cpu:0"):
        convert._convert_common(
            graph_def,
            name=str(export_dir),
            opset=opset,
            input_names=inputs,
            output_names=outputs,
            tensors_to_rename=renames,
            initialized_tables=tables,
            output_path=str(out),
        )
    return out


def keras_model_to_tflite(keras_path: Path, tmp_path: Path) -> Path:
    """Convert through a SavedModel with the TFLite converter, builtin ops only."""
    tf = _tf()
    tmp_path = Path(tmp_path)
    export_dir = _export_savedmodel(keras_path, tmp_path / "savedmodel-tflite")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(export_dir))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    out = tmp_path / "model.tflite"
    out.write_bytes(converter.convert())
    return out


def tiny_onnx_model(
    tmp_path: Path,
    *,
    n_features: int = 4,
    n_outputs: int = 2,
    seed: int = 0,
    name: str = "model.onnx",
) -> Path:
    """softmax(features @ W + b) built with onnx.helper; ``seed`` picks the weights (and bytes).

    Its signature (``features`` -> ``output_0``) matches the Keras exports, so it can stand in
    for a pushed classifier in API tests.
    """
    path = _out(tmp_path, name)
    path.write_bytes(_tiny_onnx_proto(n_features, n_outputs, seed).SerializeToString())
    return path


def threshold_onnx_classifier(
    tmp_path: Path, *, scale: float = 1.0, shift: float = 0.0, name: str = "threshold.onnx"
) -> Path:
    """A two-class softmax over logits [0, scale * x0 - shift] on 4 features: class 1 when x0 > shift/scale.

    Two of these with different ``shift`` disagree exactly on the rows whose x0 falls between the two
    thresholds, so a test can choose how much a candidate disagrees with its champion.
    """
    from onnx import TensorProto, helper, numpy_helper

    weights = np.zeros((4, 2), dtype=np.float32)
    weights[0, 1] = scale
    bias = np.array([0.0, -shift], dtype=np.float32)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", ["features", "W"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["output_0"], axis=-1),
        ],
        name="threshold_classifier",
        inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        outputs=[helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    path = _out(tmp_path, name)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return path


def _tiny_onnx_proto(n_features: int, n_outputs: int, seed: int) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(n_features, n_outputs)).astype(np.float32)
    bias = rng.normal(size=(n_outputs,)).astype(np.float32)
    graph = helper.make_graph(
        nodes=[
            helper.make_node("MatMul", ["features", "W"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["output_0"], axis=-1),
        ],
        name="tiny_classifier",
        inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", n_features])],
        outputs=[helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["batch", n_outputs])],
        initializer=[numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")],
    )
    # IR 8 / opset 17: what tf2onnx writes, and well inside what onnxruntime supports.
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=8,
        producer_name="modelgate-tests",
    )


# --------------------------------------------------------------------------------------
# Hostile and broken files


def _zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in members:
            zf.writestr(info, data)
    return path


def _tar_gz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _tar_file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    return info


def fake_savedmodel_zip(tmp_path: Path, *, name: str = "savedmodel.zip") -> Path:
    """A zip laid out like a SavedModel; passes the content checks but does not load."""
    return _zip(
        _out(tmp_path, name),
        [
            ("saved_model.pb", SAVEDMODEL_PB_PLACEHOLDER),
            ("variables/variables.index", b"index"),
            ("variables/variables.data-00000-of-00001", b"data"),
        ],
    )


def zip_slip_savedmodel(tmp_path: Path) -> Path:
    """A SavedModel zip with a member that climbs out of the target directory."""
    return _zip(
        _out(tmp_path, "zip_slip.zip"),
        [("saved_model.pb", SAVEDMODEL_PB_PLACEHOLDER), ("variables/../../evil.sh", b"echo pwned\n")],
    )


def absolute_path_savedmodel_zip(tmp_path: Path) -> Path:
    # A ZipInfo keeps the name verbatim (ZipFile.write() would strip the leading "/").
    return _zip(
        _out(tmp_path, "absolute.zip"),
        [("saved_model.pb", SAVEDMODEL_PB_PLACEHOLDER), (zipfile.ZipInfo("/tmp/evil.sh"), b"echo pwned\n")],
    )


def backslash_savedmodel_zip(tmp_path: Path) -> Path:
    """A member name that is traversal for Windows extractors ("..\\evil")."""
    evil = zipfile.ZipInfo("variables\\..\\..\\evil.bat")
    return _zip(
        _out(tmp_path, "backslash.zip"),
        [("saved_model.pb", SAVEDMODEL_PB_PLACEHOLDER), (evil, b"echo pwned\n")],
    )


def symlink_zip(tmp_path: Path) -> Path:
    """A SavedModel zip whose ``variables`` member is a symlink (unix mode S_IFLNK)."""
    link = zipfile.ZipInfo("variables")
    link.create_system = 3  # unix, so external_attr carries the mode
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    return _zip(
        _out(tmp_path, "symlink.zip"),
        [("saved_model.pb", SAVEDMODEL_PB_PLACEHOLDER), (link, b"/etc")],
    )


def symlink_savedmodel_tar(tmp_path: Path) -> Path:
    """A SavedModel tar.gz whose ``variables`` entry is a symlink to /etc."""
    link = tarfile.TarInfo("model/variables")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc"
    return _tar_gz(
        _out(tmp_path, "symlink.tar.gz"),
        [(_tar_file("model/saved_model.pb"), SAVEDMODEL_PB_PLACEHOLDER), (link, None)],
    )


def hardlink_savedmodel_tar(tmp_path: Path) -> Path:
    link = tarfile.TarInfo("variables/variables.index")
    link.type = tarfile.LNKTYPE
    link.linkname = "/etc/passwd"
    return _tar_gz(
        _out(tmp_path, "hardlink.tar.gz"),
        [(_tar_file("saved_model.pb"), SAVEDMODEL_PB_PLACEHOLDER), (link, None)],
    )


def fifo_savedmodel_tar(tmp_path: Path) -> Path:
    fifo = tarfile.TarInfo("variables/pipe")
    fifo.type = tarfile.FIFOTYPE
    return _tar_gz(
        _out(tmp_path, "fifo.tar.gz"),
        [(_tar_file("saved_model.pb"), SAVEDMODEL_PB_PLACEHOLDER), (fifo, None)],
    )


def absolute_path_savedmodel_tar(tmp_path: Path) -> Path:
    return _tar_gz(
        _out(tmp_path, "absolute.tar.gz"),
        [(_tar_file("saved_model.pb"), SAVEDMODEL_PB_PLACEHOLDER), (_tar_file("/tmp/evil.sh"), b"x")],
    )


def zip_slip_savedmodel_tar(tmp_path: Path) -> Path:
    return _tar_gz(
        _out(tmp_path, "zip_slip.tar.gz"),
        [(_tar_file("saved_model.pb"), SAVEDMODEL_PB_PLACEHOLDER), (_tar_file("../evil.sh"), b"x")],
    )


def zip_bomb(tmp_path: Path, *, unpacked_mib: int = 64) -> Path:
    """A SavedModel zip whose variables are ``unpacked_mib`` MiB of zeros (~1000:1)."""
    zeros = bytes(unpacked_mib * 1024**2)
    return _zip(
        _out(tmp_path, "zip_bomb.zip"),
        [("saved_model.pb", SAVEDMODEL_PB_PLACEHOLDER), ("variables/variables.data-00000-of-00001", zeros)],
    )


def tar_bomb(tmp_path: Path, *, unpacked_mib: int = 64) -> Path:
    """The tar.gz twin of :func:`zip_bomb`."""
    zeros = bytes(unpacked_mib * 1024**2)
    return _tar_gz(
        _out(tmp_path, "tar_bomb.tar.gz"),
        [
            (_tar_file("saved_model.pb"), SAVEDMODEL_PB_PLACEHOLDER),
            (_tar_file("variables/variables.data-00000-of-00001"), zeros),
        ],
    )


def size_bomb_zip(tmp_path: Path, *, members: int = 3) -> Path:
    """A small zip whose central directory declares ~4 GiB per member (12 GiB in all by default).

    The members are written stored, then each central-directory entry's uncompressed size is patched
    to 0xFFFFFFFE (0xFFFFFFFF would announce a zip64 field): the archive lies about its size, as a
    size bomb does, without the test writing gigabytes.
    """
    import struct

    path = _out(tmp_path, "size_bomb.zip")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("saved_model.pb", SAVEDMODEL_PB_PLACEHOLDER)
        for i in range(members):
            zf.writestr(f"variables/variables.data-{i:05d}-of-{members:05d}", b"0")
    data = bytearray(path.read_bytes())
    start = data.find(b"PK\x01\x02")
    while start != -1:
        name_length = struct.unpack_from("<H", data, start + 28)[0]
        name = bytes(data[start + 46 : start + 46 + name_length])
        if name.startswith(b"variables/"):
            struct.pack_into("<I", data, start + 24, 0xFFFFFFFE)  # uncompressed size
        start = data.find(b"PK\x01\x02", start + 46)
    path.write_bytes(bytes(data))
    return path


def many_members_zip(tmp_path: Path, *, members: int = 50) -> Path:
    entries: list[tuple[zipfile.ZipInfo | str, bytes]] = [("saved_model.pb", SAVEDMODEL_PB_PLACEHOLDER)]
    entries += [(f"assets/{i}.txt", b"") for i in range(members)]
    return _zip(_out(tmp_path, "many.zip"), entries)


def corrupt_zip(tmp_path: Path) -> Path:
    """Zip magic, then garbage."""
    path = _out(tmp_path, "corrupt.zip")
    path.write_bytes(b"PK\x03\x04" + b"\x00garbage" * 16)
    return path


def corrupt_tar_gz(tmp_path: Path) -> Path:
    """A valid SavedModel tar.gz cut in the middle of its gzip stream."""
    full = _out(tmp_path, "full.tar.gz")
    rng = np.random.default_rng(0)
    _tar_gz(
        full,
        [
            (_tar_file("saved_model.pb"), SAVEDMODEL_PB_PLACEHOLDER),
            (_tar_file("variables/variables.data-00000-of-00001"), rng.bytes(64 * 1024)),
        ],
    )
    path = _out(tmp_path, "corrupt.tar.gz")
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def gzip_not_tar(tmp_path: Path) -> Path:
    path = _out(tmp_path, "model.tar.gz")
    path.write_bytes(gzip.compress(b"just some gzipped text, not a tar archive\n" * 20))
    return path


def corrupt_onnx(tmp_path: Path) -> Path:
    """A valid tiny ONNX model truncated to half its bytes."""
    data = _tiny_onnx_proto(4, 2, 0).SerializeToString()
    path = _out(tmp_path, "corrupt.onnx")
    path.write_bytes(data[: len(data) // 2])
    return path


def invalid_onnx_graph(tmp_path: Path) -> Path:
    """Parses as ONNX, but a node reads a tensor that nothing produces (the checker refuses)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes=[helper.make_node("Add", ["features", "nowhere"], ["output_0"])],
        name="broken",
        inputs=[helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        outputs=[helper.make_tensor_value_info("output_0", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = _out(tmp_path, "invalid.onnx")
    path.write_bytes(model.SerializeToString())
    return path


def onnx_with_external_data(tmp_path: Path) -> Path:
    """A tiny ONNX model whose weights live in a side file (``weights.bin``)."""
    import onnx

    model = _tiny_onnx_proto(4, 2, 0)
    path = _out(tmp_path, "external.onnx")
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    return path


def keras_with_lambda(tmp_path: Path) -> Path:
    """A real Keras 3 model with a Lambda layer (a Python lambda, i.e. code) saved as .keras."""
    _tf()
    import keras

    inputs = keras.Input(shape=(4,), name="features")
    doubled = keras.layers.Lambda(lambda x: x * 2.0, name="doubler")(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(doubled)
    path = _out(tmp_path, "lambda.keras")
    keras.Model(inputs, outputs).save(path)
    return path


def keras_config_zip(tmp_path: Path, config: dict[str, Any], *, name: str = "handmade.keras") -> Path:
    """A .keras-shaped zip around a hand-written config (for static-scan tests, no TF)."""
    import json

    return _zip(
        _out(tmp_path, name),
        [
            ("metadata.json", json.dumps({"keras_version": "3.15.1"}).encode()),
            ("config.json", json.dumps(config).encode()),
            ("model.weights.h5", b""),
        ],
    )


def legacy_h5(tmp_path: Path) -> Path:
    """An HDF5 file, as legacy ``model.save("m.h5")`` writes (via h5py, no TF needed)."""
    import h5py

    path = _out(tmp_path, "legacy.h5")
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["model_config"] = '{"class_name": "Sequential"}'
        f.create_dataset("model_weights/dense/kernel", data=np.zeros((4, 2), np.float32))
    return path


def unknown_file(tmp_path: Path) -> Path:
    """A CSV named like a model."""
    path = _out(tmp_path, "model.onnx.csv")
    path.write_text("feature_a,feature_b,label\n0.1,0.2,1\n0.3,0.4,0\n")
    return path


def random_bytes(tmp_path: Path, *, size: int = 4096, seed: int = 0) -> Path:
    path = _out(tmp_path, "random.bin")
    path.write_bytes(np.random.default_rng(seed).bytes(size))
    return path


def wrong_extension_onnx(tmp_path: Path, *, source: Path | None = None) -> Path:
    """Another format's file named ``model.onnx`` (default: a SavedModel zip layout)."""
    out_dir = _out(tmp_path, "wrong-extension")
    path = _out(out_dir, "model.onnx")
    if source is None:
        source = fake_savedmodel_zip(out_dir, name="source.zip")
    shutil.copyfile(source, path)
    return path


# --------------------------------------------------------------------------------------
# ONNX wire-format builders (for the streaming scan of big uploads)


def _pb_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _pb_len(field_number: int, length: int) -> bytes:
    """The key and length prefix of a length-delimited field of ``length`` bytes."""
    return _pb_varint(field_number << 3 | 2) + _pb_varint(length)


def large_onnx_model(
    tmp_path: Path,
    *,
    raw_mib: int = 300,
    seed: int = 0,
    sparse: bool = False,
    name: str = "large.onnx",
) -> Path:
    """:func:`tiny_onnx_model` plus an unused ``padding`` initializer of ``raw_mib`` MiB of zeros.

    The protobuf wire bytes are written by hand, the zeros last and in 1 MiB chunks (or as a
    sparse hole with ``sparse=True``), so the model is never held in memory. It passes
    ``onnx.checker``.
    """
    from onnx import TensorProto

    model = _tiny_onnx_proto(4, 2, seed)
    graph = model.graph.SerializeToString()
    model.ClearField("graph")
    head = model.SerializeToString()
    n = raw_mib * 1024**2
    padding = TensorProto(name="padding", data_type=TensorProto.UINT8, dims=[n]).SerializeToString()
    tensor_len = len(padding) + len(_pb_len(9, n)) + n  # TensorProto.raw_data = 9
    graph_len = len(graph) + len(_pb_len(5, tensor_len)) + tensor_len  # GraphProto.initializer = 5
    path = _out(tmp_path, name)
    with path.open("wb") as f:
        f.write(head + _pb_len(7, graph_len))  # ModelProto.graph = 7
        f.write(graph + _pb_len(5, tensor_len) + padding + _pb_len(9, n))
        if sparse:
            f.truncate(f.tell() + n)
        else:
            chunk = bytes(1024**2)
            for _ in range(raw_mib):
                f.write(chunk)
    return path


def _external_tensor(name: str, values: Any) -> Any:
    from onnx import TensorProto, external_data_helper, numpy_helper

    tensor = numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)
    external_data_helper.set_external_data(
        tensor, location="weights.bin", offset=0, length=4 * tensor.dims[0]
    )
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    return tensor


def onnx_with_external_data_in_subgraph(tmp_path: Path) -> Path:
    """``If(cond)`` whose then-branch reads an initializer stored in ``weights.bin``."""
    from onnx import TensorProto, helper

    then_branch = helper.make_graph(
        nodes=[helper.make_node("Identity", ["secret"], ["then_out"])],
        name="then",
        inputs=[],
        outputs=[helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [2])],
        initializer=[_external_tensor("secret", [1.0, 2.0])],
    )
    else_branch = helper.make_graph(
        nodes=[helper.make_node("Constant", [], ["else_out"], value_floats=[0.0, 0.0])],
        name="else",
        inputs=[],
        outputs=[helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [2])],
    )
    graph = helper.make_graph(
        nodes=[
            helper.make_node("If", ["cond"], ["output_0"], then_branch=then_branch, else_branch=else_branch)
        ],
        name="branching",
        inputs=[helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        outputs=[helper.make_tensor_value_info("output_0", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = _out(tmp_path, "external_subgraph.onnx")
    path.write_bytes(model.SerializeToString())  # not onnx.save_model: it would write weights.bin
    return path


def nested_subgraphs_onnx(tmp_path: Path, *, depth: int) -> Path:
    """A model whose graph nests ``depth`` subgraphs, one inside the other.

    Each level is a node with a graph attribute; the wire bytes are built by hand because
    protobuf refuses to serialize messages nested past 100 levels.
    """
    graph = b""
    for _ in range(depth):
        attribute = _pb_len(1, 4) + b"body" + _pb_len(6, len(graph)) + graph  # name=1, g=6
        node = _pb_len(4, 4) + b"Wrap" + _pb_len(5, len(attribute)) + attribute  # op_type=4, attribute=5
        graph = _pb_len(1, len(node)) + node  # GraphProto.node = 1
    opset = _pb_len(1, 0) + b"\x10\x11"  # domain "", version 17
    model = b"\x08\x08" + _pb_len(8, len(opset)) + opset + _pb_len(7, len(graph)) + graph
    path = _out(tmp_path, f"nested_{depth}.onnx")
    path.write_bytes(model)
    return path


# --------------------------------------------------------------------------------------
# Export branches


def small_conv2d_keras_model(tmp_path: Path, *, seed: int = 0, name: str = "conv2d.keras") -> Path:
    """An untrained Conv2D image classifier on 8x8x1 inputs, saved as .keras.

    Its Dense kernel (576x32) is large enough for dynamic-range quantisation to quantise it (the
    converter leaves tensors under 1024 elements in float), so tflite-dynamic really differs.
    """
    _tf()
    import keras

    keras.utils.set_random_seed(seed)
    image = keras.Input(shape=(8, 8, 1), name="image")
    hidden = keras.layers.Conv2D(16, 3, activation="relu", name="conv")(image)
    hidden = keras.layers.Flatten()(hidden)
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(hidden)
    outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(hidden)
    path = _out(tmp_path, name)
    keras.Model(image, outputs, name="small_conv2d").save(path)
    return path


def keras_model_without_tflite_kernels(tmp_path: Path, *, seed: int = 0) -> Path:
    """A Keras model that resizes its input bicubically: TensorFlow's ``ResizeBicubic`` has no TFLite
    builtin kernel (nor a TF.js one), so those conversions fail while tf2onnx converts it."""
    _tf()
    import keras

    keras.utils.set_random_seed(seed)
    image = keras.Input(shape=(8, 8, 1), name="image")
    hidden = keras.layers.Resizing(4, 4, interpolation="bicubic", name="bicubic")(image)
    hidden = keras.layers.Flatten()(hidden)
    outputs = keras.layers.Dense(2, activation="softmax", name="probabilities")(hidden)
    path = _out(tmp_path, f"bicubic-{seed}.keras")
    keras.Model(image, outputs, name="bicubic").save(path)
    return path


def perturb_export_weights(path: Path, *, scale: float = 0.5, seed: int = 0) -> None:
    """Add noise to an export's weights on disk, in place: the float32 shards of a TF.js model
    directory, or the float initializers of an ONNX file."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    if path.is_dir():
        for shard in sorted(path.glob("*.bin")):
            weights = np.frombuffer(shard.read_bytes(), dtype=np.float32).copy()
            weights += rng.normal(scale=scale, size=weights.shape).astype(np.float32)
            shard.write_bytes(weights.tobytes())
        return
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    for index, tensor in enumerate(model.graph.initializer):
        values = numpy_helper.to_array(tensor)
        if values.dtype == np.float32 and values.size > 1:
            noisy = values + rng.normal(scale=scale, size=values.shape).astype(np.float32)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(noisy, tensor.name))
    onnx.save(model, str(path))


def runaway_onnx_model(tmp_path: Path, *, gib: int = 3) -> Path:
    """A valid ONNX model whose every prediction first fills a ``gib`` GiB tensor (ConstantOfShape of a
    constant shape, too big for onnxruntime to fold at load): memory grows with no bound the graph sets."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    shape = numpy_helper.from_array(np.array([gib * 256, 1024, 1024], dtype=np.int64), "shape")
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["big"], value=one),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
        helper.make_node("Add", ["x", "total"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "runaway", [x], [y], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = _out(tmp_path, "runaway.onnx")
    onnx.save(model, path)
    return path
