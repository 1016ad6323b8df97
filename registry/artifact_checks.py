"""Up-front checks on an uploaded model artifact.

This runs in the web process on every push, before anything is stored, so it must stay cheap
and must never import TensorFlow or Keras. It answers two questions:

1. What is this file? The format is detected from the bytes, never from the extension
   (the filename only appears in messages).
2. Is it safe to hand to a worker? Archives are read without being extracted and refused on
   path traversal, links, special files and decompression bombs; ONNX files are refused when
   they point at external data; Keras configs are refused when they carry Python lambdas;
   legacy HDF5 files are refused because Keras ignores ``safe_mode`` for them.

ONNX files up to ``ONNX_FULL_CHECK_BYTES`` are parsed with ``onnx.load`` and validated with
``onnx.checker`` here; bigger ones would cost their whole size in memory, so they get a
constant-memory scan of the protobuf wire format (:func:`scan_onnx`) that reads the header
fields, refuses external data and seeks over tensor payloads. The worker then runs
``onnx.checker`` before it loads any ONNX model (``lifecycle.runtimes``). ``details["checked"]``
records which check ran.

Accepted: a Keras 3 ``.keras`` file, a TF SavedModel as a zip or a tar.gz, an ONNX model and a
TFLite flatbuffer. Workers extract SavedModel archives with :func:`extract_archive`, which
re-applies the same checks while it writes.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "ACCEPTED_FORMATS",
    "ONNX_FULL_CHECK_BYTES",
    "ArtifactInfo",
    "ArtifactRejected",
    "extract_archive",
    "inspect_artifact",
    "scan_onnx",
]

ACCEPTED_FORMATS = (
    "a Keras 3 .keras file, a TensorFlow SavedModel directory packed as .zip or .tar.gz, "
    "an ONNX model (.onnx) or a TFLite flatbuffer (.tflite)"
)

DEFAULT_MAX_UNPACKED_BYTES = 8 * 1024**3
DEFAULT_MAX_RATIO = 200.0
DEFAULT_MAX_MEMBERS = 10_000

# Small archives compress far better than 200:1 legitimately (a config of zeros, empty
# variables), so the ratio is only enforced past this many unpacked bytes.
RATIO_FLOOR_BYTES = 1024**2

# JSON members we parse in memory; a Keras config.json is kilobytes, even for big models.
MAX_JSON_BYTES = 64 * 1024**2

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# HDF5 allows a user block before the superblock, so the magic may sit at these offsets.
HDF5_OFFSETS = (0, 512, 1024, 2048)
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
GZIP_MAGIC = b"\x1f\x8b"
TFLITE_IDENTIFIER = b"TFL3"

_ZIP_COMPRESSIONS = {
    zipfile.ZIP_STORED,
    zipfile.ZIP_DEFLATED,
    zipfile.ZIP_BZIP2,
    zipfile.ZIP_LZMA,
}
_DRIVE_LETTER = re.compile(r"^[A-Za-z]:")
# ONNX files up to this size are parsed with onnx.load and checked with onnx.checker here, in
# the web process; both hold the whole model in memory, so bigger files get a constant-memory
# scan of the protobuf wire format instead (:func:`scan_onnx`), and the worker runs
# onnx.checker before it loads the model.
ONNX_FULL_CHECK_BYTES = 64 * 1024**2
# Protobuf cannot parse a message past 2 GiB, so a bigger ONNX file is necessarily broken or
# relies on external data (which is refused anyway).
_PROTOBUF_LIMIT = 2 * 1024**3

ReadMember = Callable[[tuple[str, ...]], bytes]
_COPY_CHUNK = 1024**2


class ArtifactRejected(Exception):
    """The artifact is refused; ``code`` is a short slug, ``message`` says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class ArtifactInfo:
    """What :func:`inspect_artifact` found."""

    format: str  # "keras" | "savedmodel" | "onnx" | "tflite"
    packaging: str  # "zip" | "tar.gz" | "file"
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Limits:
    max_unpacked_bytes: int
    max_ratio: float
    max_members: int


@dataclass(frozen=True)
class _Member:
    """One archive entry, reduced to what the checks and the extractor need."""

    parts: tuple[str, ...]  # normalised path components; () for the archive root
    is_dir: bool
    size: int


# --------------------------------------------------------------------------------------
# Public API


def inspect_artifact(
    path: Path,
    *,
    filename: str = "",
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> ArtifactInfo:
    """Detect the artifact's format from its content and refuse unsafe or unknown files.

    Raises :class:`ArtifactRejected` with a code and a human message.
    """
    path = Path(path)
    label = filename or path.name
    limits = _Limits(max_unpacked_bytes, max_ratio, max_members)
    with path.open("rb") as f:
        head = f.read(4096)
    size = path.stat().st_size

    if _is_hdf5(head):
        raise ArtifactRejected(
            "legacy_h5",
            f"{label} is a legacy Keras HDF5 (.h5) file. Keras cannot load .h5 files in "
            "safe_mode (it ignores the flag for them), so they are refused; re-save the "
            "model in the Keras 3 format with model.save('model.keras').",
        )
    if head.startswith(ZIP_MAGICS):
        return _inspect_zip(path, label, limits)
    if head.startswith(GZIP_MAGIC):
        return _inspect_tar_gz(path, label, limits)
    if head[4:8] == TFLITE_IDENTIFIER:
        return _inspect_tflite(head, size, label)
    return _inspect_onnx(path, head, size, label)


def extract_archive(
    path: Path,
    dest: Path,
    *,
    packaging: str,
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED_BYTES,
    max_ratio: float = DEFAULT_MAX_RATIO,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> Path:
    """Safely extract a SavedModel zip or tar.gz into ``dest``.

    Returns the directory that holds ``saved_model.pb``. Every check of
    :func:`inspect_artifact` runs again, and the extractor itself writes only regular files
    and directories strictly inside ``dest``, counting the bytes it actually writes.
    """
    path, dest = Path(path), Path(dest)
    label = path.name
    limits = _Limits(max_unpacked_bytes, max_ratio, max_members)
    # 1. Refuse the archive before writing anything (declared sizes, names, link types).
    if packaging == "zip":
        info = _inspect_zip(path, label, limits)
    elif packaging == "tar.gz":
        info = _inspect_tar_gz(path, label, limits)
    else:
        raise ValueError(f"cannot extract packaging {packaging!r}; expected zip or tar.gz")
    if info.format != "savedmodel":
        raise ArtifactRejected(
            "unknown_format", f"{label} is a {info.format} artifact, not a SavedModel archive"
        )

    # 2. Extract, re-checking each member as it streams past: the file could have changed
    #    since inspection, and the bytes written are what count, not the headers.
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    budget = _WriteBudget(label, limits.max_unpacked_bytes)
    try:
        if packaging == "zip":
            _extract_zip(path, root, label, limits, budget)
        else:
            _extract_tar_gz(path, root, label, limits, budget)
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        _discard(dest, created)
        raise ArtifactRejected("corrupt_archive", f"{label}: members collide on extraction ({exc})") from exc
    except ArtifactRejected:
        # Leave nothing half-written behind for a later step to pick up by mistake.
        _discard(dest, created)
        raise

    saved_model_dir = root.joinpath(*info.details["root"])
    if not (saved_model_dir / "saved_model.pb").is_file():
        raise ArtifactRejected("corrupt_archive", f"{label}: saved_model.pb is missing after extraction")
    return saved_model_dir


# --------------------------------------------------------------------------------------
# Member names and archive-wide limits


def _member_parts(name: str, label: str) -> tuple[str, ...]:
    """Normalise an archive member name, refusing anything that could escape the target."""
    if "\x00" in name:
        raise ArtifactRejected("zip_slip", f"{label}: member name {name!r} contains a NUL byte")
    if "\\" in name:
        # Windows extractors treat a backslash as a separator, so "..\\x" is traversal there.
        raise ArtifactRejected("zip_slip", f"{label}: member name {name!r} contains a backslash")
    if name.startswith("/") or _DRIVE_LETTER.match(name):
        raise ArtifactRejected("zip_slip", f"{label}: member {name!r} has an absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ArtifactRejected("zip_slip", f"{label}: member {name!r} escapes the archive with '..'")
    return parts


def _check_totals(members: list[_Member], packed_bytes: int, label: str, limits: _Limits) -> int:
    """Apply the archive-wide limits to the declared sizes; return the unpacked total."""
    if len(members) > limits.max_members:
        raise ArtifactRejected(
            "archive_bomb",
            f"{label} has more than {limits.max_members} members",
        )
    seen: set[tuple[str, ...]] = set()
    for member in members:
        # A duplicate lets a scanner read one config.json while the loader reads another.
        if member.parts and not member.is_dir and member.parts in seen:
            raise ArtifactRejected(
                "corrupt_archive",
                f"{label}: member {'/'.join(member.parts)!r} appears more than once",
            )
        seen.add(member.parts)
    unpacked = sum(m.size for m in members)
    _check_unpacked(unpacked, packed_bytes, label, limits)
    return unpacked


def _check_unpacked(unpacked: int, packed_bytes: int, label: str, limits: _Limits) -> None:
    if unpacked > limits.max_unpacked_bytes:
        raise ArtifactRejected(
            "archive_bomb",
            f"{label} unpacks to more than {_human(limits.max_unpacked_bytes)}",
        )
    ratio = unpacked / max(packed_bytes, 1)
    if unpacked > RATIO_FLOOR_BYTES and ratio > limits.max_ratio:
        raise ArtifactRejected(
            "archive_bomb",
            f"{label} expands {ratio:.0f}x (from {_human(packed_bytes)} to "
            f"{_human(unpacked)}), over the {limits.max_ratio:.0f}x limit",
        )


def _human(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    size = n / 1024
    for unit in ("KiB", "MiB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _classify(
    members: list[_Member],
    packaging: str,
    label: str,
    read_member: ReadMember | None,
) -> ArtifactInfo:
    """Tell a Keras 3 archive from a SavedModel archive by the members it holds.

    ``read_member(parts)`` returns the bytes of a small member. Only zips get one: a
    Keras 3 file is always a zip, so a tar.gz can only be a SavedModel.
    """
    files = {m.parts for m in members if not m.is_dir}
    if read_member is not None and ("config.json",) in files and ("metadata.json",) in files:
        details = _inspect_keras(read_member, label, members)
        return ArtifactInfo("keras", packaging, details)

    roots = [p[:-1] for p in files if p[-1] == "saved_model.pb" and len(p) <= 2]
    if len(roots) > 1:
        raise ArtifactRejected(
            "unknown_format",
            f"{label} holds several saved_model.pb files; pack exactly one SavedModel",
        )
    if not roots:
        what = "zip" if packaging == "zip" else "tar.gz"
        raise ArtifactRejected(
            "unknown_format",
            f"{label} is a {what} archive but holds neither a Keras model (config.json + "
            "metadata.json) nor a SavedModel (saved_model.pb at the root or in one "
            f"top-level directory). Accepted: {ACCEPTED_FORMATS}.",
        )
    root = roots[0]
    has_variables = any(p[: len(root) + 1] == (*root, "variables") for p in files)
    return ArtifactInfo(
        "savedmodel",
        packaging,
        {
            "root": list(root),
            "has_variables": has_variables,
            "members": len(members),
            "unpacked_bytes": sum(m.size for m in members),
        },
    )


# --------------------------------------------------------------------------------------
# Zip


def _open_zip(path: Path, label: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise ArtifactRejected("corrupt_archive", f"{label} is not a readable zip archive ({exc})") from exc


def _zip_members(zf: zipfile.ZipFile, label: str, limits: _Limits) -> list[_Member]:
    infos = zf.infolist()
    # Checked before the per-member loop so a million-entry archive fails fast.
    if len(infos) > limits.max_members:
        raise ArtifactRejected("archive_bomb", f"{label} has more than {limits.max_members} members")
    members = []
    for info in infos:
        parts = _member_parts(info.filename, label)
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise ArtifactRejected("symlink", f"{label}: member {info.filename!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise ArtifactRejected("corrupt_archive", f"{label}: member {info.filename!r} is encrypted")
        if info.compress_type not in _ZIP_COMPRESSIONS:
            raise ArtifactRejected(
                "corrupt_archive",
                f"{label}: member {info.filename!r} uses an unsupported compression "
                f"method ({info.compress_type})",
            )
        members.append(_Member(parts, info.is_dir(), 0 if info.is_dir() else info.file_size))
    return members


def _inspect_zip(path: Path, label: str, limits: _Limits) -> ArtifactInfo:
    with _open_zip(path, label) as zf:
        members = _zip_members(zf, label, limits)
        _check_totals(members, path.stat().st_size, label, limits)
        by_parts = {_member_parts(i.filename, label): i for i in zf.infolist() if not i.is_dir()}

        def read_member(parts: tuple[str, ...]) -> bytes:
            info = by_parts[parts]
            if info.file_size > MAX_JSON_BYTES:
                raise ArtifactRejected(
                    "corrupt_keras",
                    f"{label}: {'/'.join(parts)} is implausibly large ({_human(info.file_size)})",
                )
            try:
                return zf.read(info)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
                raise ArtifactRejected(
                    "corrupt_archive", f"{label}: cannot read {'/'.join(parts)} ({exc})"
                ) from exc

        return _classify(members, "zip", label, read_member)


def _extract_zip(path: Path, root: Path, label: str, limits: _Limits, budget: _WriteBudget) -> None:
    with _open_zip(path, label) as zf:
        members = _zip_members(zf, label, limits)
        _check_totals(members, path.stat().st_size, label, limits)
        for info, member in zip(zf.infolist(), members, strict=True):
            target = _target(root, member.parts, label)
            if member.is_dir or not member.parts:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src:
                    budget.copy(src, target)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise ArtifactRejected(
                    "corrupt_archive", f"{label}: cannot extract {info.filename!r} ({exc})"
                ) from exc


# --------------------------------------------------------------------------------------
# tar.gz


class _CountingGzip(io.RawIOBase):
    """A gzip reader that stops once it has produced more bytes than allowed.

    Tar headers declare member sizes, but the gzip stream itself can still expand without
    bound (padding, trailing garbage), so the decompressed bytes are counted too. The ratio
    is enforced as the bytes come: once ``produced`` passes ``max_ratio`` times the whole
    file's size, the final ratio can only be worse, so a bomb stops after a few MiB.
    """

    def __init__(self, raw: IO[bytes], *, packed: int, label: str, limits: _Limits) -> None:
        self._gz = gzip.GzipFile(fileobj=raw, mode="rb")
        self._packed = packed
        self._label = label
        self._limits = limits
        self._stream_limit = limits.max_unpacked_bytes + _tar_overhead(limits.max_members)
        self._ratio_limit = max(limits.max_ratio * packed, RATIO_FLOOR_BYTES)
        self.produced = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._gz.read(len(buffer))
        self.produced += len(data)
        if self.produced > self._stream_limit:
            raise ArtifactRejected(
                "archive_bomb",
                f"{self._label} decompresses to more than {_human(self._limits.max_unpacked_bytes)}",
            )
        if self.produced > self._ratio_limit:
            raise ArtifactRejected(
                "archive_bomb",
                f"{self._label} expands more than {self._limits.max_ratio:.0f}x (already "
                f"{_human(self.produced)} out of {_human(self._packed)})",
            )
        buffer[: len(data)] = data
        return len(data)


def _tar_overhead(max_members: int) -> int:
    # Each member costs a 512-byte header plus up to 511 bytes of padding, and pax/GNU long
    # names add a few more blocks; the archive ends with at least two zero blocks and is
    # padded to a 10 KiB record.
    return (max_members + 1) * 4 * 512 + 20 * 1024


class _TarGzStream:
    """Streams the members of a tar.gz (never seeking, never extracting), checking each.

    ``produced`` is the number of decompressed bytes read so far, headers included.
    """

    def __init__(self, path: Path, label: str, limits: _Limits) -> None:
        self.path = path
        self.label = label
        self.limits = limits
        self._reader: _CountingGzip | None = None

    @property
    def produced(self) -> int:
        return self._reader.produced if self._reader else 0

    def members(self) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo, _Member]]:
        label, limits = self.label, self.limits
        count = 0
        with self.path.open("rb") as raw:
            packed = os.fstat(raw.fileno()).st_size
            self._reader = _CountingGzip(raw, packed=packed, label=label, limits=limits)
            try:
                with tarfile.open(fileobj=io.BufferedReader(self._reader, 1024**2), mode="r|") as tf:
                    for ti in tf:
                        count += 1
                        if count > limits.max_members:
                            raise ArtifactRejected(
                                "archive_bomb", f"{label} has more than {limits.max_members} members"
                            )
                        yield tf, ti, _tar_member(ti, label)
            except ArtifactRejected:
                raise
            except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError, OSError) as exc:
                raise ArtifactRejected(
                    "corrupt_archive", f"{label} is not a readable tar.gz archive ({exc})"
                ) from exc


def _tar_member(ti: tarfile.TarInfo, label: str) -> _Member:
    parts = _member_parts(ti.name, label)
    if ti.issym() or ti.islnk():
        kind = "symbolic" if ti.issym() else "hard"
        raise ArtifactRejected(
            "symlink",
            f"{label}: member {ti.name!r} is a {kind} link (to {ti.linkname!r})",
        )
    if ti.issparse():
        # A sparse member declares a size it does not store: a bomb in disguise.
        raise ArtifactRejected("special_file", f"{label}: member {ti.name!r} is a sparse file")
    if not (ti.isreg() or ti.isdir()):
        raise ArtifactRejected(
            "special_file",
            f"{label}: member {ti.name!r} is a device, fifo or other special file",
        )
    return _Member(parts, ti.isdir(), ti.size if ti.isreg() else 0)


def _inspect_tar_gz(path: Path, label: str, limits: _Limits) -> ArtifactInfo:
    members: list[_Member] = []
    running = 0
    packed = path.stat().st_size
    stream = _TarGzStream(path, label, limits)
    for _tf, _ti, member in stream.members():
        members.append(member)
        running += member.size
        # Fail as soon as the declared sizes cross the line, before streaming the rest.
        if running > limits.max_unpacked_bytes:
            _check_unpacked(running, packed, label, limits)
    if not members:
        raise ArtifactRejected("corrupt_archive", f"{label} is an empty tar.gz archive")
    _check_totals(members, packed, label, limits)
    # The stream check covers bytes that no header declared (padding, trailing data).
    _check_unpacked(stream.produced, packed, label, limits)
    return _classify(members, "tar.gz", label, read_member=None)


def _extract_tar_gz(path: Path, root: Path, label: str, limits: _Limits, budget: _WriteBudget) -> None:
    seen: set[tuple[str, ...]] = set()
    for tf, ti, member in _TarGzStream(path, label, limits).members():
        target = _target(root, member.parts, label)
        if member.is_dir or not member.parts:
            target.mkdir(parents=True, exist_ok=True)
            continue
        if member.parts in seen:
            raise ArtifactRejected("corrupt_archive", f"{label}: member {ti.name!r} appears more than once")
        seen.add(member.parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        src = tf.extractfile(ti)
        if src is None:  # pragma: no cover - only regular files reach this point
            continue
        # The member's bytes are read here, outside the generator's own error handling.
        try:
            with src:
                budget.copy(src, target)
        except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError) as exc:
            raise ArtifactRejected("corrupt_archive", f"{label}: cannot extract {ti.name!r} ({exc})") from exc


# --------------------------------------------------------------------------------------
# Extraction helpers


def _discard(dest: Path, created: bool) -> None:
    if created:
        shutil.rmtree(dest, ignore_errors=True)


def _target(root: Path, parts: tuple[str, ...], label: str) -> Path:
    target = root.joinpath(*parts)
    # Defence in depth: the names were already normalised, but a directory created by an
    # earlier member must never redirect a later one outside the root.
    if not target.resolve().is_relative_to(root):
        raise ArtifactRejected("zip_slip", f"{label}: member {'/'.join(parts)!r} resolves outside the target")
    return target


class _WriteBudget:
    """Counts the bytes actually written during extraction against the limit."""

    def __init__(self, label: str, limit: int) -> None:
        self._label = label
        self._limit = limit
        self.written = 0

    def copy(self, src: IO[bytes], target: Path) -> None:
        # "xb": never overwrite or follow anything already at the target.
        with target.open("xb") as out:
            while chunk := src.read(_COPY_CHUNK):
                self.written += len(chunk)
                if self.written > self._limit:
                    raise ArtifactRejected(
                        "archive_bomb",
                        f"{self._label} unpacks to more than {_human(self._limit)}",
                    )
                out.write(chunk)


# --------------------------------------------------------------------------------------
# Keras 3


def _inspect_keras(read_member: ReadMember, label: str, members: list[_Member]) -> dict[str, Any]:
    try:
        config = json.loads(read_member(("config.json",)))
        metadata = json.loads(read_member(("metadata.json",)))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactRejected(
            "corrupt_keras", f"{label}: config.json or metadata.json is not valid JSON"
        ) from exc
    where = _find_lambda(config)
    if where is not None:
        raise ArtifactRejected(
            "keras_lambda",
            f"{label} contains a Lambda layer or a serialized Python function ({where}). "
            "Loading it would run arbitrary code; replace it with a built-in or a "
            "registered custom layer.",
        )
    files = {"/".join(m.parts) for m in members if not m.is_dir}
    return {
        "keras_version": metadata.get("keras_version") if isinstance(metadata, dict) else None,
        "class_name": config.get("class_name") if isinstance(config, dict) else None,
        "has_weights": any(f.startswith("model.weights.") for f in files),
        "members": len(members),
        "unpacked_bytes": sum(m.size for m in members),
    }


def _find_lambda(node: Any, where: str = "config") -> str | None:
    """Return the config path of the first Lambda layer or serialized lambda, if any."""
    if isinstance(node, dict):
        if node.get("class_name") in ("Lambda", "__lambda__", "TFOpLambda"):
            name = node.get("config", {})
            name = name.get("name") if isinstance(name, dict) else None
            return f"{where}: {node['class_name']}" + (f" {name!r}" if name else "")
        for key, value in node.items():
            found = _find_lambda(value, f"{where}.{key}")
            if found:
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found = _find_lambda(value, f"{where}[{i}]")
            if found:
                return found
    return None


# --------------------------------------------------------------------------------------
# Single files: TFLite and ONNX


def _inspect_tflite(head: bytes, size: int, label: str) -> ArtifactInfo:
    # A flatbuffer starts with the little-endian offset of its root table.
    root_offset = int.from_bytes(head[0:4], "little")
    if size < 16 or not 8 <= root_offset < size:
        raise ArtifactRejected(
            "corrupt_tflite", f"{label} has the TFLite identifier but is truncated or corrupt"
        )
    return ArtifactInfo("tflite", "file", {"size": size})


def _looks_like_onnx(head: bytes) -> bool:
    # Every ONNX serializer writes ModelProto.ir_version (field 1, varint) first, and IR
    # versions are small numbers: b"\x08" followed by 1..32.
    return len(head) >= 2 and head[0] == 0x08 and 1 <= head[1] <= 32


def _onnx_unknown(label: str) -> ArtifactRejected:
    return ArtifactRejected(
        "unknown_format",
        f"{label} is not a model format Modelgate accepts. Accepted: {ACCEPTED_FORMATS}.",
    )


def _refuse_oversized_onnx(head: bytes, size: int, label: str) -> None:
    if size > _PROTOBUF_LIMIT:
        if _looks_like_onnx(head):
            raise ArtifactRejected(
                "corrupt_onnx",
                f"{label} is larger than 2 GiB, which a self-contained ONNX model cannot be",
            )
        raise _onnx_unknown(label)


def _external_data_refusal(label: str, tensor: str) -> ArtifactRejected:
    return ArtifactRejected(
        "onnx_external_data",
        f"{label} keeps tensor {tensor!r} in an external data file. Upload a "
        "self-contained model (onnx.save_model(..., save_as_external_data=False)).",
    )


def _inspect_onnx(path: Path, head: bytes, size: int, label: str) -> ArtifactInfo:
    _refuse_oversized_onnx(head, size, label)
    if size > ONNX_FULL_CHECK_BYTES:
        # onnx.load and onnx.checker would hold the whole model in this (web) process; the
        # worker runs onnx.checker before it loads the model instead.
        return _scan_onnx(path, head, size, label)

    import onnx  # lazy: only ONNX uploads pay for it
    from google.protobuf.message import DecodeError

    # 1. Parse without following external data: those paths are untrusted.
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, UnicodeDecodeError, OSError) as exc:
        if _looks_like_onnx(head):
            raise ArtifactRejected(
                "corrupt_onnx", f"{label} looks like ONNX but does not parse ({exc})"
            ) from exc
        raise _onnx_unknown(label) from exc

    # 2. Random bytes can parse as a protobuf; a real model has all three of these.
    if not (model.ir_version and model.HasField("graph") and len(model.opset_import)):
        if _looks_like_onnx(head):
            raise ArtifactRejected(
                "corrupt_onnx",
                f"{label} looks like ONNX but has no graph, IR version or opset",
            )
        raise _onnx_unknown(label)

    # 3. External data must be refused before the checker, which would open those files.
    external = next(_external_tensor_names(model), None)
    if external is not None:
        raise _external_data_refusal(label, external)

    # 4. The path form of the checker works for models past the 2 GiB protobuf limit.
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if len(reason) > 300:
            reason = reason[:297] + "..."
        raise ArtifactRejected("corrupt_onnx", f"{label} is not a valid ONNX model: {reason}") from exc

    graph = model.graph
    initializer_names = {t.name for t in graph.initializer}
    return ArtifactInfo(
        "onnx",
        "file",
        {
            "ir_version": model.ir_version,
            "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
            "producer": " ".join(p for p in (model.producer_name, model.producer_version) if p),
            "inputs": [i.name for i in graph.input if i.name not in initializer_names],
            "outputs": [o.name for o in graph.output],
            "nodes": len(graph.node),
            "size": size,
            "checked": "onnx.checker",
        },
    )


def _external_tensor_names(model: Any) -> Iterator[str]:
    """Yield the names of tensors stored outside the file, across graphs and subgraphs."""
    from onnx import TensorProto

    def tensors_of_graph(graph: Any) -> Iterator[Any]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        for node in graph.node:
            yield from tensors_of_node(node)

    def tensors_of_node(node: Any) -> Iterator[Any]:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield attr.sparse_tensor.values
                yield attr.sparse_tensor.indices
            for sparse in attr.sparse_tensors:
                yield sparse.values
                yield sparse.indices
            if attr.HasField("g"):
                yield from tensors_of_graph(attr.g)
            for sub in attr.graphs:
                yield from tensors_of_graph(sub)

    def all_tensors() -> Iterator[Any]:
        yield from tensors_of_graph(model.graph)
        for function in model.functions:
            for node in function.node:
                yield from tensors_of_node(node)

    for tensor in all_tensors():
        if tensor.data_location == TensorProto.EXTERNAL or len(tensor.external_data):
            yield tensor.name or "<unnamed>"


# --------------------------------------------------------------------------------------
# ONNX: constant-memory scan of the protobuf wire format, for files too big to load here

# Field numbers from onnx/onnx.proto (tests check them against onnx's own descriptors).
_MODEL_IR_VERSION = 1
_MODEL_PRODUCER_NAME = 2
_MODEL_PRODUCER_VERSION = 3
_MODEL_GRAPH = 7
_MODEL_OPSET_IMPORT = 8
_MODEL_TRAINING_INFO = 20
_MODEL_FUNCTIONS = 25
_OPSET_DOMAIN = 1
_OPSET_VERSION = 2
_GRAPH_NODE = 1
_GRAPH_INITIALIZER = 5
_GRAPH_INPUT = 11
_GRAPH_OUTPUT = 12
_GRAPH_SPARSE_INITIALIZER = 15
_VALUE_INFO_NAME = 1
_NODE_ATTRIBUTE = 5
_ATTRIBUTE_T = 5
_ATTRIBUTE_G = 6
_ATTRIBUTE_TENSORS = 10
_ATTRIBUTE_GRAPHS = 11
_ATTRIBUTE_SPARSE_TENSOR = 22
_ATTRIBUTE_SPARSE_TENSORS = 23
_TENSOR_NAME = 8
_TENSOR_EXTERNAL_DATA = 13
_TENSOR_DATA_LOCATION = 14
_TENSOR_LOCATION_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_SPARSE_VALUES = 1
_SPARSE_INDICES = 2
_FUNCTION_NODE = 7
_FUNCTION_ATTRIBUTE_PROTO = 11
_TRAINING_INITIALIZATION = 1
_TRAINING_ALGORITHM = 2

# Protobuf wire types.
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5

_SCAN_CHUNK = 64 * 1024
# Protobuf itself refuses messages nested past 100 levels; one subgraph costs three
# (graph -> node -> attribute), so a parseable model never gets near this.
_SCAN_MAX_GRAPH_DEPTH = 64
# The names the scan keeps (opset domains, producer, graph inputs, outputs and initializers)
# are charged to this budget (bytes plus a per-name overhead), so memory stays bounded
# whatever the file declares.
_SCAN_MAX_NAME_BYTES = 4 * 1024**2
_SCAN_NAME_OVERHEAD = 64
# Tensor names read only to name an external tensor in the refusal are cut to this length.
_SCAN_LABEL_BYTES = 256
# The scan runs in Python: cap the fields it walks so a file of millions of tiny fields
# cannot pin a web worker. Real models have a few per node and tensor.
_SCAN_MAX_FIELDS = 20_000_000


class _Malformed(Exception):
    """The bytes are not well-formed protobuf wire data for an ONNX model."""


class _ScanLimit(Exception):
    """Well-formed so far, but past a limit of the scan (names, fields)."""


def _int64(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


class _WireReader:
    """Sequential protobuf wire reader over a file, holding at most one chunk in memory.

    Every read is bounded by the end offset of the message being read; length-delimited
    payloads the scan does not need are skipped with a seek, never read.
    """

    def __init__(self, f: IO[bytes], size: int) -> None:
        self._f = f
        self.size = size
        self._buf = b""
        self._start = 0  # file offset of _buf[0]; the file sits at _start + len(_buf)
        self._i = 0
        self.fields = 0

    @property
    def pos(self) -> int:
        return self._start + self._i

    def _fill(self, need: int) -> None:
        """Make ``need`` bytes available at the cursor, or whatever the file has left."""
        rest = self._buf[self._i :]
        self._start += self._i
        self._i = 0
        self._buf = rest + self._f.read(max(_SCAN_CHUNK, need - len(rest)))

    def varint(self, end: int) -> int:
        buf, i = self._buf, self._i
        if i < len(buf) and buf[i] < 0x80 and self._start + i < end:
            self._i = i + 1
            return buf[i]
        if len(buf) - i < 10:
            self._fill(10)
            buf, i = self._buf, self._i
        avail = min(len(buf) - i, end - self.pos, 10)
        result = shift = 0
        for k in range(avail):
            byte = buf[i + k]
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                self._i = i + k + 1
                return result & 0xFFFFFFFFFFFFFFFF
            shift += 7
        if avail < 10:
            raise _Malformed(f"truncated varint at byte {self.pos}")
        raise _Malformed(f"varint longer than 10 bytes at byte {self.pos}")

    def tag(self, end: int) -> tuple[int, int] | None:
        """The next field's (number, wire type), or None at the end of the message."""
        if self.pos >= end:
            return None
        self.fields += 1
        if self.fields > _SCAN_MAX_FIELDS:
            raise _ScanLimit(f"it has more than {_SCAN_MAX_FIELDS:,} protobuf fields")
        at = self.pos
        key = self.varint(end)
        if key >> 3 == 0 or key > 0xFFFFFFFF:
            raise _Malformed(f"invalid field key {key} at byte {at}")
        return key >> 3, key & 7

    def length(self, end: int) -> int:
        """Read a length prefix; return the end offset of the payload."""
        n = self.varint(end)
        payload_end = self.pos + n
        if payload_end > end:
            where = "the file" if end >= self.size else "its message"
            raise _Malformed(f"a field of {n} bytes at byte {self.pos} runs past the end of {where}")
        return payload_end

    def skip_to(self, target: int) -> None:
        ahead = target - self.pos
        if ahead <= len(self._buf) - self._i:
            self._i += ahead
        else:
            self._f.seek(target)
            self._buf, self._start, self._i = b"", target, 0

    def read(self, n: int) -> bytes:
        if len(self._buf) - self._i < n:
            self._fill(n)
        data = self._buf[self._i : self._i + n]
        if len(data) < n:
            raise _Malformed(f"file ends inside a field at byte {self.pos + len(data)}")
        self._i += n
        return data

    def skip_value(self, wire_type: int, end: int) -> None:
        if wire_type == _VARINT:
            self.varint(end)
        elif wire_type == _LEN:
            self.skip_to(self.length(end))
        elif wire_type in (_FIXED64, _FIXED32):
            target = self.pos + (8 if wire_type == _FIXED64 else 4)
            if target > end:
                raise _Malformed(f"truncated fixed-width field at byte {self.pos}")
            self.skip_to(target)
        else:
            raise _Malformed(f"unsupported wire type {wire_type} at byte {self.pos}")


class _OnnxScan:
    """Walk ModelProto -> GraphProto -> NodeProto/AttributeProto/TensorProto/... on the wire.

    Collects what :func:`_inspect_onnx` reports and notes the first tensor stored outside the
    file, in the main graph, every subgraph, sparse tensors, functions and training graphs.
    """

    def __init__(self, reader: _WireReader) -> None:
        self.r = reader
        self.ir_version = 0
        self.producer_name = ""
        self.producer_version = ""
        self.opsets: list[tuple[str, int]] = []
        self.has_graph = False
        self.nodes = 0
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.initializers: set[str] = set()
        self.external: str | None = None
        self._name_bytes = 0

    # Field values ---------------------------------------------------------------------

    def _expect(self, wire_type: int, want: int, what: str) -> None:
        if wire_type != want:
            raise _Malformed(f"{what} has wire type {wire_type}, expected {want}")

    def _message(self, wire_type: int, end: int, what: str) -> int:
        self._expect(wire_type, _LEN, what)
        return self.r.length(end)

    def _varint(self, wire_type: int, end: int, what: str) -> int:
        self._expect(wire_type, _VARINT, what)
        return self.r.varint(end)

    def _name(self, wire_type: int, end: int, what: str) -> str:
        """A string the scan keeps, charged to the name budget."""
        stop = self._message(wire_type, end, what)
        n = stop - self.r.pos
        self._name_bytes += n + _SCAN_NAME_OVERHEAD
        if self._name_bytes > _SCAN_MAX_NAME_BYTES:
            raise _ScanLimit(f"its names add up to more than {_human(_SCAN_MAX_NAME_BYTES)}")
        return self.r.read(n).decode("utf-8", errors="replace")

    def _label(self, wire_type: int, end: int, what: str) -> str:
        """A string kept only for a message: its first bytes."""
        stop = self._message(wire_type, end, what)
        text = self.r.read(min(stop - self.r.pos, _SCAN_LABEL_BYTES)).decode("utf-8", errors="replace")
        self.r.skip_to(stop)
        return text

    # Messages -------------------------------------------------------------------------

    def model(self, end: int) -> None:
        r = self.r
        while (tag := r.tag(end)) is not None:
            number, wt = tag
            if number == _MODEL_IR_VERSION:
                self.ir_version = _int64(self._varint(wt, end, "ModelProto.ir_version"))
            elif number == _MODEL_PRODUCER_NAME:
                self.producer_name = self._name(wt, end, "ModelProto.producer_name")
            elif number == _MODEL_PRODUCER_VERSION:
                self.producer_version = self._name(wt, end, "ModelProto.producer_version")
            elif number == _MODEL_OPSET_IMPORT:
                self._opset(self._message(wt, end, "ModelProto.opset_import"))
            elif number == _MODEL_GRAPH:
                self.has_graph = True
                self._graph(self._message(wt, end, "ModelProto.graph"), depth=0, main=True)
            elif number == _MODEL_FUNCTIONS:
                self._function(self._message(wt, end, "ModelProto.functions"))
            elif number == _MODEL_TRAINING_INFO:
                self._training_info(self._message(wt, end, "ModelProto.training_info"))
            else:
                r.skip_value(wt, end)

    def _opset(self, end: int) -> None:
        domain, version = "", 0
        while (tag := self.r.tag(end)) is not None:
            number, wt = tag
            if number == _OPSET_DOMAIN:
                domain = self._name(wt, end, "OperatorSetIdProto.domain")
            elif number == _OPSET_VERSION:
                version = _int64(self._varint(wt, end, "OperatorSetIdProto.version"))
            else:
                self.r.skip_value(wt, end)
        self.opsets.append((domain, version))

    def _graph(self, end: int, *, depth: int, main: bool = False) -> None:
        if depth > _SCAN_MAX_GRAPH_DEPTH:
            raise _Malformed(f"subgraphs nest deeper than {_SCAN_MAX_GRAPH_DEPTH} levels")
        r = self.r
        while (tag := r.tag(end)) is not None:
            number, wt = tag
            if number == _GRAPH_NODE:
                self.nodes += main
                self._node(self._message(wt, end, "GraphProto.node"), depth)
            elif number == _GRAPH_INITIALIZER:
                name = self._tensor(self._message(wt, end, "GraphProto.initializer"), keep_name=main)
                if main:
                    self.initializers.add(name)
            elif number == _GRAPH_SPARSE_INITIALIZER:
                self._sparse(self._message(wt, end, "GraphProto.sparse_initializer"))
            elif main and number == _GRAPH_INPUT:
                self.inputs.append(self._value_info(self._message(wt, end, "GraphProto.input")))
            elif main and number == _GRAPH_OUTPUT:
                self.outputs.append(self._value_info(self._message(wt, end, "GraphProto.output")))
            else:
                r.skip_value(wt, end)

    def _value_info(self, end: int) -> str:
        name = ""
        while (tag := self.r.tag(end)) is not None:
            number, wt = tag
            if number == _VALUE_INFO_NAME:
                name = self._name(wt, end, "ValueInfoProto.name")
            else:
                self.r.skip_value(wt, end)
        return name

    def _node(self, end: int, depth: int) -> None:
        while (tag := self.r.tag(end)) is not None:
            number, wt = tag
            if number == _NODE_ATTRIBUTE:
                self._attribute(self._message(wt, end, "NodeProto.attribute"), depth)
            else:
                self.r.skip_value(wt, end)

    def _attribute(self, end: int, depth: int) -> None:
        while (tag := self.r.tag(end)) is not None:
            number, wt = tag
            if number in (_ATTRIBUTE_T, _ATTRIBUTE_TENSORS):
                self._tensor(self._message(wt, end, "AttributeProto.t/tensors"))
            elif number in (_ATTRIBUTE_G, _ATTRIBUTE_GRAPHS):
                self._graph(self._message(wt, end, "AttributeProto.g/graphs"), depth=depth + 1)
            elif number in (_ATTRIBUTE_SPARSE_TENSOR, _ATTRIBUTE_SPARSE_TENSORS):
                self._sparse(self._message(wt, end, "AttributeProto.sparse_tensor(s)"))
            else:
                self.r.skip_value(wt, end)

    def _sparse(self, end: int) -> None:
        while (tag := self.r.tag(end)) is not None:
            number, wt = tag
            if number in (_SPARSE_VALUES, _SPARSE_INDICES):
                self._tensor(self._message(wt, end, "SparseTensorProto.values/indices"))
            else:
                self.r.skip_value(wt, end)

    def _tensor(self, end: int, *, keep_name: bool = False) -> str:
        """Scan one TensorProto (its data is skipped); return its name."""
        name, external = "", False
        while (tag := self.r.tag(end)) is not None:
            number, wt = tag
            if number == _TENSOR_NAME:
                name = (self._name if keep_name else self._label)(wt, end, "TensorProto.name")
            elif number == _TENSOR_EXTERNAL_DATA:
                external = True
                self.r.skip_to(self._message(wt, end, "TensorProto.external_data"))
            elif number == _TENSOR_DATA_LOCATION:
                location = self._varint(wt, end, "TensorProto.data_location")
                # An enum is an int32 on the wire: protobuf keeps the low 32 bits. Any
                # EXTERNAL counts, even if a later value would override it.
                external |= (location & 0xFFFFFFFF) == _TENSOR_LOCATION_EXTERNAL
            else:
                self.r.skip_value(wt, end)
        if external and self.external is None:
            self.external = name or "<unnamed>"
        return name

    def _function(self, end: int) -> None:
        while (tag := self.r.tag(end)) is not None:
            number, wt = tag
            if number == _FUNCTION_NODE:
                self._node(self._message(wt, end, "FunctionProto.node"), 0)
            elif number == _FUNCTION_ATTRIBUTE_PROTO:
                self._attribute(self._message(wt, end, "FunctionProto.attribute_proto"), 0)
            else:
                self.r.skip_value(wt, end)

    def _training_info(self, end: int) -> None:
        while (tag := self.r.tag(end)) is not None:
            number, wt = tag
            if number in (_TRAINING_INITIALIZATION, _TRAINING_ALGORITHM):
                self._graph(self._message(wt, end, "TrainingInfoProto graph"), depth=1)
            else:
                self.r.skip_value(wt, end)


def scan_onnx(path: Path, *, filename: str = "") -> ArtifactInfo:
    """Check an ONNX file with the streaming scan, whatever its size.

    :func:`inspect_artifact` uses it for files over :data:`ONNX_FULL_CHECK_BYTES`. It reads
    the protobuf wire format in fixed-size chunks and seeks over tensor data, so memory
    stays constant; it does not run ``onnx.checker`` (the worker does, before loading).
    """
    path = Path(path)
    label = filename or path.name
    with path.open("rb") as f:
        head = f.read(4096)
    size = path.stat().st_size
    _refuse_oversized_onnx(head, size, label)
    return _scan_onnx(path, head, size, label)


def _scan_onnx(path: Path, head: bytes, size: int, label: str) -> ArtifactInfo:
    looks_like_onnx = _looks_like_onnx(head)
    try:
        with path.open("rb") as f:
            reader = _WireReader(f, size)
            scan = _OnnxScan(reader)
            scan.model(size)
    except (_Malformed, OSError) as exc:
        if looks_like_onnx:
            raise ArtifactRejected(
                "corrupt_onnx", f"{label} looks like ONNX but does not parse ({exc})"
            ) from exc
        raise _onnx_unknown(label) from exc
    except _ScanLimit as exc:
        if looks_like_onnx:
            raise ArtifactRejected("corrupt_onnx", f"{label} is refused by the upload check: {exc}") from exc
        raise _onnx_unknown(label) from exc
    except RecursionError as exc:  # only with a tiny interpreter recursion limit
        raise ArtifactRejected("corrupt_onnx", f"{label} nests subgraphs too deeply") from exc

    if not (scan.ir_version and scan.has_graph and scan.opsets):
        if looks_like_onnx:
            raise ArtifactRejected(
                "corrupt_onnx",
                f"{label} looks like ONNX but has no graph, IR version or opset",
            )
        raise _onnx_unknown(label)
    if scan.external is not None:
        raise _external_data_refusal(label, scan.external)

    opset: dict[str, int] = {}
    for domain, version in scan.opsets:
        opset[domain or "ai.onnx"] = version
    return ArtifactInfo(
        "onnx",
        "file",
        {
            "ir_version": scan.ir_version,
            "opset": opset,
            "producer": " ".join(p for p in (scan.producer_name, scan.producer_version) if p),
            "inputs": [name for name in scan.inputs if name not in scan.initializers],
            "outputs": scan.outputs,
            "nodes": scan.nodes,
            "size": size,
            "checked": "streaming-scan",
        },
    )


def _is_hdf5(head: bytes) -> bool:
    return any(head[o : o + 8] == HDF5_MAGIC for o in HDF5_OFFSETS)
