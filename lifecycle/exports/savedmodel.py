"""The shared step: the SavedModel every TensorFlow converter starts from, made once per source.

A Keras 3 source is exported with ``model.export(dir)`` (its serving function, named ``output_0``…
like the runtime adapters name them); a SavedModel source is extracted with the same safe extractor
the gates use. ``TFLiteConverter.from_keras_model`` breaks on many Keras 3 models, and the SavedModel
path is the one the TensorFlow maintainers recommend, so all three converters read this directory.

The directory is cached on the worker's disk under the source's sha256, so the formats of one version
share one export even though they run as separate tasks. It is written under a temporary name and
renamed into place, so a worker killed half-way never leaves a half-written SavedModel that another
task could pick up; leftovers are swept by age.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from django.conf import settings

from lifecycle.runtimes import _import_tensorflow
from registry.artifact_checks import extract_archive

TENSORFLOW_SOURCES = frozenset({"keras", "savedmodel"})
# A cached SavedModel unused for this long is removed; far longer than any conversion may run.
STALE_SECONDS = 6 * 3600


def cache_root() -> Path:
    root = Path(settings.VAR_DIR) / "exports" / "savedmodel"
    root.mkdir(parents=True, exist_ok=True)
    return root


def savedmodel_for(*, source: Path, fmt: str, packaging: str, sha256: str) -> Path:
    """The SavedModel directory of a Keras or SavedModel source, exporting it on first use.

    1. A complete directory for this sha256 is already cached: touch it (it is in use) and return it.
    2. Otherwise export (Keras) or extract (SavedModel) into a fresh temporary directory.
    3. Rename it into place. Two tasks racing here both produce a valid SavedModel of the same bytes;
       the loser's rename fails and it uses the winner's.
    """
    if fmt not in TENSORFLOW_SOURCES:
        raise ValueError(f"a {fmt} source has no SavedModel")
    root = cache_root()
    target = root / sha256
    if (target / "saved_model.pb").exists():
        os.utime(target)
        return target
    _sweep(root)
    staging = Path(tempfile.mkdtemp(prefix=f".{sha256[:16]}-", suffix=".part", dir=root))
    try:
        if fmt == "keras":
            built = _export_keras(source, staging / "model")
        else:
            built = extract_archive(source, staging / "archive", packaging=packaging)
        try:
            os.rename(built, target)
        except OSError:
            if not (target / "saved_model.pb").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _export_keras(source: Path, out: Path) -> Path:
    _import_tensorflow()
    import keras

    with tempfile.TemporaryDirectory(prefix="modelgate-keras-") as tmp:
        # keras.saving.load_model insists on the ".keras" suffix; artifacts are stored by content address.
        local = source
        if source.suffix != ".keras":
            local = Path(tmp) / "model.keras"
            local.symlink_to(source.resolve())
        model = keras.saving.load_model(local, safe_mode=True, compile=False)
    model.export(str(out), format="tf_saved_model", verbose=False)
    return out


def _sweep(root: Path) -> None:
    """Remove cached SavedModels nobody used for a while, and staging leftovers of killed workers."""
    cutoff = time.time() - STALE_SECONDS
    for entry in root.iterdir():
        try:
            if entry.stat().st_mtime < cutoff:
                shutil.rmtree(entry, ignore_errors=True)
        except FileNotFoundError:
            continue
