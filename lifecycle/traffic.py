"""Traffic for shadows: requests captured while serving, records uploaded from other serving stacks, labels.

Both kinds land in one pool (``TrafficRecord``) that every running shadow of the model replays. An
upload is all or nothing: every line is checked against the serving signature before any is written,
and a bad line is named by its number.
"""

from __future__ import annotations

import functools
import io
import itertools
import json
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from django.db import IntegrityError, transaction

from lifecycle import runtimes
from lifecycle.pipeline import enqueue_on_commit
from lifecycle.serving import InputInvalid, parse_inputs
from registry.errors import Conflict, ServiceError, nul_path
from registry.events import Actor, event_record
from registry.models import EventKind, ModelVersion, RegisteredModel, ShadowRun, TrafficRecord
from registry.models import VersionStatus as S
from registry.services import version_usage_add

EVALUATE_SHADOWS = "workers.shadow.evaluate_model_shadows"
MAX_RECORDS_PER_UPLOAD = 1_000_000
MAX_ROWS_PER_RECORD = 10_000
REQUEST_ID_CHARS = 64
ANALYZE_AFTER_RECORDS = 10_000  # an upload this big refreshes the table's planner statistics


class TrafficInvalid(ServiceError):
    code = "invalid_traffic"


def new_request_id() -> str:
    return uuid.uuid4().hex


# --- packing arrays ---------------------------------------------------------------------------------


def pack(arrays: Any) -> tuple[bytes, str]:
    """An array, or ``{name: array}``, as raw bytes and a JSON layout ``[[name, dtype, shape], ...]``."""
    items = arrays.items() if isinstance(arrays, dict) else [("", arrays)]
    parts, layout = [], []
    for name, array in items:
        array = np.ascontiguousarray(array)
        parts.append(array.tobytes())
        layout.append([name, array.dtype.str, list(array.shape)])
    return b"".join(parts), json.dumps(layout, separators=(",", ":"))


@functools.lru_cache(maxsize=1024)
def _layout(text: str) -> tuple[tuple[str, np.dtype, tuple[int, ...], int], ...]:
    return tuple(
        (name, np.dtype(dtype), tuple(shape), int(np.prod(shape, dtype=np.int64)))
        for name, dtype, shape in json.loads(text)
    )


def unpack(blob: bytes | memoryview, layout: str) -> Any:
    """The inverse of :func:`pack`: views on ``blob``, no copy."""
    arrays, offset = {}, 0
    for name, dtype, shape, count in _layout(layout):
        arrays[name] = np.frombuffer(blob, dtype=dtype, count=count, offset=offset).reshape(shape)
        offset += count * dtype.itemsize
    return arrays[""] if len(arrays) == 1 and "" in arrays else arrays


class Joined(Sequence):
    """Many records' blobs read as one (a shadow's batch, joined by PostgreSQL), with each record's length
    (None for a NULL): a record's own blob is cut out only when it is read on its own."""

    def __init__(self, blob: bytes | None, lengths: list[int | None]) -> None:
        self.blob = blob or b""
        self.lengths = lengths

    @functools.cached_property
    def _starts(self) -> list[int]:
        return [0, *itertools.accumulate(n or 0 for n in self.lengths)]

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> bytes | None:  # type: ignore[override]
        if self.lengths[i] is None:
            return None
        i %= len(self.lengths)
        return self.blob[self._starts[i] : self._starts[i + 1]]


def unpack_many(blobs: list | Joined, layouts: list[str]) -> np.ndarray | None:
    """Many single-array records stacked on axis 0 with ONE ``frombuffer``, when they share a dtype
    and a row shape (the usual case: one model's traffic); None otherwise (unpack them one by one).
    ``blobs`` already :class:`Joined` are not copied."""
    if isinstance(blobs, Joined) and None in blobs.lengths:
        return None
    first = _layout(layouts[0])
    if len(first) != 1 or first[0][0] != "":
        return None
    _, dtype, shape, _ = first[0]
    for layout in set(layouts):
        entry = _layout(layout)
        if len(entry) != 1 or entry[0][0] != "" or entry[0][1] != dtype or entry[0][2][1:] != shape[1:]:
            return None
    if isinstance(blobs, Joined):
        return np.frombuffer(blobs.blob, dtype=dtype).reshape((-1, *shape[1:]))
    return np.frombuffer(b"".join(blobs), dtype=dtype).reshape((-1, *shape[1:]))


def traffic_record(
    *,
    model_id: int,
    inputs: Any,
    rows: int,
    source: str = TrafficRecord.Source.RECORDED,
    request_id: str | None = None,
    outputs: Any = None,
    served_by_id: int | None = None,
    latency_ms: float | None = None,
    labels: list | None = None,
    metadata: dict | None = None,
    at: Any = None,
) -> TrafficRecord:
    """A TrafficRecord (unsaved) with its arrays packed."""
    blob, layout = pack(inputs)
    out_blob, out_layout = pack(outputs) if outputs is not None else (None, "")
    return TrafficRecord(
        model_id=model_id,
        request_id=request_id or new_request_id(),
        source=source,
        inputs=blob,
        input_layout=layout,
        rows=rows,
        outputs=out_blob,
        output_layout=out_layout,
        served_by_id=served_by_id,
        latency_ms=latency_ms,
        labels=labels,
        metadata=metadata or {},
        **({"at": at} if at is not None else {}),
    )


# --- capture ------------------------------------------------------------------------------------------


def traffic_capture_write(records: list[TrafficRecord], predictions: dict[int, int]) -> set[int]:
    """Write a batch of captured requests and the served-prediction counts, and wake the shadows.

    Called off the request path by the capture buffer; one bulk insert, one upsert per served version.
    Returns the ids of the models whose running shadows were asked to evaluate.
    """
    with transaction.atomic():
        TrafficRecord.objects.bulk_create(records, batch_size=500)
        for version_id, count in predictions.items():
            version_usage_add(version_id=version_id, predictions=count)
        models = {r.model_id for r in records}
        return shadows_wake(models)


def shadows_wake(model_ids: Iterable[int]) -> set[int]:
    """Ask the shadow queue to evaluate the running shadows of these models (once this commits)."""
    running = set(
        ShadowRun.objects.filter(status=ShadowRun.Status.RUNNING, candidate__model_id__in=list(model_ids))
        .values_list("candidate__model_id", flat=True)
        .distinct()
    )
    for model_id in sorted(running):
        enqueue_on_commit(EVALUATE_SHADOWS, model_id)
    return running


# --- upload -------------------------------------------------------------------------------------------


@dataclass
class UploadResult:
    records: int
    rows: int
    labelled: int


def serving_signature(model: RegisteredModel) -> runtimes.Signature:
    """What traffic must look like: the champion's signature, else the newest version's that has one."""
    version = (
        ModelVersion.objects.filter(model=model, status=S.PRODUCTION).exclude(signature=None).first()
        or ModelVersion.objects.filter(model=model).exclude(signature=None).order_by("-version").first()
    )
    if version is None:
        raise Conflict(
            f"{model.name} has no validated version yet, so there is no signature to check traffic against",
            code="no_signature",
        )
    return runtimes.Signature.from_dict(version.signature)


def _jsonl_items(stream: IO[bytes]) -> Iterator[tuple[int, dict]]:
    for number, line in enumerate(io.TextIOWrapper(stream, encoding="utf-8", errors="strict"), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as exc:
            raise TrafficInvalid(f"line {number}: not valid JSON ({exc})") from None
        except RecursionError:
            raise TrafficInvalid(f"line {number}: the JSON is nested too deeply") from None
        yield number, item


def _parquet_items(stream: IO[bytes]) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(stream)
    except (pa.ArrowInvalid, OSError) as exc:
        raise TrafficInvalid(f"not a Parquet file: {exc}") from None
    if "inputs" not in table.schema_arrow.names:
        raise TrafficInvalid("the Parquet file needs an `inputs` column (one list of features per row)")
    number = 0
    for batch in table.iter_batches(batch_size=10_000):
        columns = batch.to_pydict()
        for i in range(batch.num_rows):
            number += 1
            item: dict[str, Any] = {"inputs": columns["inputs"][i]}
            metadata = {}
            for name, values in columns.items():
                if name in {"label", "labels"}:
                    item["labels"] = values[i]
                elif name == "request_id":
                    item["request_id"] = values[i]
                elif name != "inputs" and values[i] is not None:
                    metadata[name] = values[i]
            item["metadata"] = metadata
            yield number, item


def _labels(item: dict) -> list | None:
    """An item's ``labels`` (or ``label``) as a list of numbers; [] when they are not numbers, None when
    there are none."""
    labels = item.get("labels", item.get("label"))
    if labels is None:
        return None
    labels = labels if isinstance(labels, list) else [labels]
    return labels if all(isinstance(v, int | float) and not isinstance(v, bool) for v in labels) else []


def _record(number: int, item: Any, model: RegisteredModel, signature: runtimes.Signature) -> TrafficRecord:
    where = f"record {number}"
    if not isinstance(item, dict):
        raise TrafficInvalid(f"{where}: each record must be a JSON object with `inputs`")
    unknown = set(item) - {"inputs", "labels", "label", "metadata", "request_id", "at", "outputs"}
    if unknown:
        raise TrafficInvalid(f"{where}: unknown fields {sorted(unknown)}")
    if "inputs" not in item:
        raise TrafficInvalid(f"{where}: `inputs` is missing")
    if nul_path(item, "record"):
        raise TrafficInvalid(f"{where}: contains a NUL character")
    try:
        arrays, rows = parse_inputs(item["inputs"], signature)
    except InputInvalid as exc:
        raise TrafficInvalid(f"{where}: {exc}") from None
    if rows > MAX_ROWS_PER_RECORD:
        raise TrafficInvalid(f"{where}: {rows} rows; a record holds at most {MAX_ROWS_PER_RECORD}")
    labels = _labels(item)
    if labels is not None and len(labels) != rows:
        raise TrafficInvalid(f"{where}: `labels` must hold one number per input row ({rows})")
    metadata = item.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(v, str | int | float | bool) for v in metadata.values()
    ):
        raise TrafficInvalid(f"{where}: `metadata` must be an object of plain values (slice fields)")
    request_id = str(item.get("request_id") or new_request_id())
    if len(request_id) > REQUEST_ID_CHARS:
        raise TrafficInvalid(f"{where}: request_id is longer than {REQUEST_ID_CHARS} characters")
    return traffic_record(
        model_id=model.pk, inputs=arrays, rows=rows, request_id=request_id, labels=labels, metadata=metadata
    )


def _analyze() -> None:
    """Refresh PostgreSQL's statistics of the traffic table before the shadows an upload wakes read
    the pool. Until autovacuum comes round, the planner would guess that a handful of rows match a
    run's pool and sort all of it for every batch."""
    from django.db import connection

    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {TrafficRecord._meta.db_table}")


def traffic_upload(*, model: RegisteredModel, stream: IO[bytes], filename: str, actor: Actor) -> UploadResult:
    """Check every record of a JSON Lines or Parquet upload, then write them all in one transaction."""
    signature = serving_signature(model)
    items = _parquet_items(stream) if filename.lower().endswith((".parquet", ".pq")) else _jsonl_items(stream)
    records: list[TrafficRecord] = []
    seen: set[str] = set()
    try:
        for number, item in items:
            record = _record(number, item, model, signature)
            if record.request_id in seen:
                raise TrafficInvalid(f"record {number}: request_id {record.request_id!r} appears twice")
            seen.add(record.request_id)
            records.append(record)
            if len(records) > MAX_RECORDS_PER_UPLOAD:
                raise TrafficInvalid(f"at most {MAX_RECORDS_PER_UPLOAD} records per upload; split the file")
    except UnicodeDecodeError:
        raise TrafficInvalid("the file is not UTF-8 JSON Lines (or Parquet, named *.parquet)") from None
    if not records:
        raise TrafficInvalid("the upload holds no records")
    taken = set(
        TrafficRecord.objects.filter(model=model, request_id__in=list(seen)[:10_000]).values_list(
            "request_id", flat=True
        )
    )
    if taken:
        raise Conflict(f"request ids already recorded: {sorted(taken)[:5]}", code="duplicate_request_id")
    try:
        with transaction.atomic():
            TrafficRecord.objects.bulk_create(records, batch_size=1000)
            if len(records) >= ANALYZE_AFTER_RECORDS:
                # After the commit (its lock would otherwise serialise big uploads and cancel
                # autovacuum), and before the shadows are woken: on_commit keeps this order.
                transaction.on_commit(_analyze, robust=True)
            event_record(
                kind=EventKind.TRAFFIC_UPLOADED,
                actor=actor,
                model=model,
                data={"filename": filename, "records": len(records)},
            )
            shadows_wake([model.pk])
    except IntegrityError:
        raise Conflict("some request ids are already recorded", code="duplicate_request_id") from None
    return UploadResult(
        records=len(records),
        rows=sum(r.rows for r in records),
        labelled=sum(1 for r in records if r.labels is not None),
    )


def traffic_labels(*, model: RegisteredModel, items: Any) -> dict[str, Any]:
    """Attach ground truth to recorded requests by request id: ``[{"request_id", "labels"}]``."""
    if not isinstance(items, list) or not items:
        raise TrafficInvalid("`labels` must be a non-empty list of {request_id, labels}")
    wanted: dict[str, list] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("request_id"), str):
            raise TrafficInvalid(f"labels.{index}: needs a string `request_id`")
        labels = _labels(item)
        if not labels:
            raise TrafficInvalid(f"labels.{index}: `labels` must be a number or a list of numbers")
        wanted[item["request_id"]] = labels
    found = TrafficRecord.objects.filter(model=model, request_id__in=list(wanted)).only(
        "id", "request_id", "rows"
    )
    updated, mismatched = [], []
    for record in found:
        labels = wanted[record.request_id]
        if len(labels) != record.rows:
            mismatched.append(record.request_id)
            continue
        record.labels = labels
        updated.append(record)
    if mismatched:
        raise TrafficInvalid(f"the number of labels does not match the request's rows for {mismatched[:5]}")
    with transaction.atomic():
        TrafficRecord.objects.bulk_update(updated, ["labels"], batch_size=1000)
    missing = sorted(set(wanted) - {r.request_id for r in updated})
    return {"labelled": len(updated), "unknown_request_ids": missing[:100]}
