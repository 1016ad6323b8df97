"""Auto-shadow: a candidate answers beside the champion on real traffic, and the numbers end in a verdict.

A version that passes its gates while its model has a champion enters ``shadowing`` with a ShadowRun
paired with that champion. The shadow queue folds the model's traffic pool (captured live requests and
uploaded records) into the run's statistics, batch by batch: the candidate always runs; the champion's
answer is reused when the record was served by this very champion, and computed otherwise. Shadow
answers are never returned to callers. Once ``min_requests`` records are in, or ``max_days`` have
passed, the verdict moves the version on: to ``awaiting_approval`` (with the summary the approvers
see), or to ``rejected`` with the numbers.

The run's cursor and its accumulators move together in one compare-and-set UPDATE (a checkpoint,
every couple of seconds and at the end of a task), so a record is counted once whatever happens to
the worker, and two workers never fold the same records.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from lifecycle import evaluation, webhooks
from lifecycle.leases import lease_claim
from lifecycle.pipeline import enqueue_on_commit
from lifecycle.policy import MetricGate, NoRegressionGate, Policy, policy_parse
from lifecycle.serving import RuntimeCache, served_artifact_of
from lifecycle.states import TransitionNotAllowed, version_transition
from lifecycle.traffic import Joined, unpack, unpack_many
from registry.events import Actor, event_record
from registry.models import EventKind, ModelVersion, ShadowRun, TrafficRecord
from registry.models import VersionStatus as S

log = logging.getLogger(__name__)

ACTOR = "system:shadow"
EVALUATE = "workers.shadow.evaluate_model_shadows"
BATCH_RECORDS = 5000  # records read and folded per batch
BATCH_ROWS = 100_000  # ...and at most about this many rows, for records of many rows each
BATCH_BYTES = 64 << 20  # ...and of inputs and outputs
FIRST_BATCH_RECORDS = 250  # a task's first read is small, and each later one twice the last (see _Reader)
PREDICT_ROWS = 2048  # rows per model call: small enough that a wide model's activations stay in cache
# The run (cursor, statistics, readable summary) is written this often, and at a task's end: a worker
# that dies loses at most this much folding, which the next task redoes.
CHECKPOINT_SECONDS = float(settings.MODELGATE_SHADOW_CHECKPOINT_SECONDS)
BUDGET_SECONDS = 20.0  # one task folds batches for at most this long, then hands the run back
LEASE_SECONDS = float(settings.MODELGATE_SHADOW_LEASE_SECONDS)  # a run claimed longer ago is lost
FIELDS = (
    "id",
    "request_id",
    "inputs",
    "input_layout",
    "rows",
    "outputs",
    "output_layout",
    "served_by_id",
    "metadata",
)
JOINED = ("inputs", "outputs")  # read on PostgreSQL as one blob per batch (traffic.Joined)
READER_SWITCH_INTERVAL = 0.0002  # seconds; see _Reader
RESERVOIR = 2000  # values kept per distribution; quantiles and KS are exact up to this many rows
PROBES_PER_BATCH = 16  # single-request latency probes of both models per full batch (fewer in a smaller one)
TIMELINE_POINTS = 200
LABELLED_RECORDS_MAX = 50_000

_runtimes = RuntimeCache(size=6)


# --- starting and re-pairing ------------------------------------------------------------------------


@transaction.atomic
def shadow_start(*, version: ModelVersion, champion: ModelVersion, actor: Actor) -> ShadowRun:
    """Move a version that passed its gates into ``shadowing`` beside ``champion``."""
    policy = policy_parse(version.model.policy).shadow
    moved = version_transition(
        version_id=version.pk,
        to=S.SHADOWING,
        actor=actor,
        reason=f"gates passed; shadowing v{champion.version} until {policy.min_requests} requests",
        lease_expires_at=None,
        task_attempts=0,
    )
    return _pair(moved, champion, since=timezone.now() - dt.timedelta(hours=policy.replay_hours), actor=actor)


def _pair(candidate: ModelVersion, champion: ModelVersion, *, since: dt.datetime, actor: Actor) -> ShadowRun:
    run = ShadowRun.objects.create(
        candidate=candidate,
        baseline=champion,
        sources=[TrafficRecord.Source.LIVE, TrafficRecord.Source.RECORDED],
        since=since,
    )
    event_record(
        kind=EventKind.SHADOW_STARTED,
        actor=actor,
        version=candidate,
        data={"shadow": run.pk, "baseline": champion.version, "since": since.isoformat()},
    )
    enqueue_on_commit(EVALUATE, candidate.model_id)
    return run


def shadows_repair(*, model_id: int, champion: ModelVersion, actor: Actor) -> list[ShadowRun]:
    """After a promotion: end the shadows against the old champion and pair their candidates anew.

    The new run replays the same pool (from the old run's ``since``) against the new champion.
    """
    fresh = []
    stale = ShadowRun.objects.select_for_update().filter(
        candidate__model_id=model_id, status=ShadowRun.Status.RUNNING
    )
    for run in stale.exclude(baseline=champion).select_related("candidate__model", "baseline"):
        run.status, run.ended_at = ShadowRun.Status.SUPERSEDED, timezone.now()
        run.reason = f"v{run.baseline.version} stopped serving: v{champion.version} was promoted"
        run.save(update_fields=["status", "ended_at", "reason"])
        event_record(
            kind=EventKind.SHADOW_ENDED,
            actor=actor,
            version=run.candidate,
            data={"shadow": run.pk, "reason": run.reason},
        )
        if run.candidate.status == S.SHADOWING and run.candidate_id != champion.pk:
            fresh.append(_pair(run.candidate, champion, since=run.since, actor=actor))
    return fresh


# --- evaluating ---------------------------------------------------------------------------------------


@dataclass
class Judged:
    """One batch's comparison, row-aligned."""

    rows: int
    agreed: np.ndarray  # bool per row
    diffs: np.ndarray  # max |candidate - champion| per row
    cand_scores: np.ndarray
    champ_scores: np.ndarray
    ends: np.ndarray  # per record: the end of its rows (its rows are ends[i - 1]:ends[i])
    sliced: list[tuple[int, dict[str, Any]]]  # (record index, metadata) of the records with slice fields
    errors: list[str]


def _first(outputs: Any) -> np.ndarray:
    if isinstance(outputs, dict):
        outputs = next(iter(outputs.values()))
    array = np.asarray(outputs, dtype=np.float32)
    return array.reshape(array.shape[0], -1)


def _score(outputs: np.ndarray) -> np.ndarray:
    if outputs.shape[1] == 1:
        return outputs[:, 0]
    if outputs.shape[1] == 2:
        return outputs[:, 1]
    return outputs.argmax(axis=1).astype(np.float32)


def is_classifier(policy: Policy, outputs: np.ndarray | None = None) -> bool:
    if policy.shadow.task != "auto":
        return policy.shadow.task == "classification"
    for gate in policy.gates:
        if isinstance(gate, MetricGate | NoRegressionGate):
            return gate.metric in evaluation.CLASSIFICATION
    return outputs is not None and outputs.shape[1] > 1


def _inputs(record: dict) -> Any:
    if "_inputs" not in record:
        record["_inputs"] = unpack(record["inputs"], record["input_layout"])
    return record["_inputs"]


def _stack(records: list[dict]) -> Any:
    if len(records) == 1:
        return _inputs(records[0])
    fast = unpack_many([r["inputs"] for r in records], [r["input_layout"] for r in records])
    if fast is not None:
        return fast
    first = _inputs(records[0])
    if isinstance(first, dict):
        return {name: np.concatenate([_inputs(r)[name] for r in records]) for name in first}
    return np.concatenate([_inputs(r) for r in records])


def _run(model: Any, inputs: Any) -> np.ndarray:
    """The model's first output on ``inputs``, ``PREDICT_ROWS`` rows per call."""
    rows = len(next(iter(inputs.values())) if isinstance(inputs, dict) else inputs)
    if rows <= PREDICT_ROWS:
        return _first(model.predict(inputs))
    parts = []
    for lo in range(0, rows, PREDICT_ROWS):
        part = (
            {name: array[lo : lo + PREDICT_ROWS] for name, array in inputs.items()}
            if isinstance(inputs, dict)
            else inputs[lo : lo + PREDICT_ROWS]
        )
        parts.append(_first(model.predict(part)))
    return np.concatenate(parts)


def _predict(model: Any, records: list[dict]) -> tuple[np.ndarray | None, list[str]]:
    """Outputs for every row of these records; for a batch that fails, or is answered with another
    number of rows, record by record (errors named)."""
    try:
        whole = _run(model, _stack(records))
        if len(whole) == sum(r["rows"] for r in records) or len(records) == 1:
            return whole, []
    except Exception:
        if len(records) == 1:
            raise
    parts, errors = [], []
    for record in records:
        try:
            parts.append(_first(model.predict(_stack([record]))))
        except Exception as exc:
            errors.append(f"request {record['request_id']}: {type(exc).__name__}: {exc}"[:300])
            parts.append(None)
    return parts, errors  # type: ignore[return-value]


def _split(array: np.ndarray, records: list[dict]) -> list[np.ndarray]:
    """``array``'s rows cut back into one part per record."""
    return np.split(array, np.cumsum([r["rows"] for r in records])[:-1])


def _outputs(records: list[dict], cand: Any, champ: Any, baseline_id: int) -> tuple[list, list, list[str]]:
    """Per record: the candidate's and the champion's outputs (None where one failed).

    The slow path, for batches ``_whole`` cannot take: some record fails, or the champion's answers
    are captured for some records only.
    """
    try:
        whole, errors = _predict(cand, records)
    except Exception as exc:
        whole, errors = None, [f"request {records[0]['request_id']}: {type(exc).__name__}: {exc}"[:300]]
    if isinstance(whole, np.ndarray):
        cand_parts: list[np.ndarray | None] = _split(whole, records)
    else:
        cand_parts = whole if whole is not None else [None] * len(records)
    reuse = [r["served_by_id"] == baseline_id and r["outputs"] is not None for r in records]
    champ_parts: list[np.ndarray | None] = [
        _first(unpack(r["outputs"], r["output_layout"])) if ok else None
        for r, ok in zip(records, reuse, strict=True)
    ]
    missing = [i for i, ok in enumerate(reuse) if not ok]
    if missing:
        computed, _ = _predict(champ, [records[i] for i in missing])
        if isinstance(computed, np.ndarray):
            computed = _split(computed, [records[i] for i in missing])
        for i, part in zip(missing, computed, strict=True):
            champ_parts[i] = part
    return cand_parts, champ_parts, errors


def _whole(batch: Batch, cand: Any, champ: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The common batch, in whole arrays: every record runs, and the champion's answers were all
    captured from this champion (or none were). None sends the batch down the per-record path."""
    if batch.reuse is None or batch.inputs is None or (batch.reuse and batch.served is None):
        return None
    try:
        c = _run(cand, batch.inputs)
        b = batch.served.reshape(len(batch.served), -1) if batch.reuse else _run(champ, batch.inputs)
    except Exception:
        return None
    # A model that answers another number of rows than it was given goes down the per-record path,
    # where the records it answers wrongly are named.
    return (c, b) if c.shape == b.shape and len(c) == int(batch.rows) else None


def _judge(batch: Batch, cand: Any, champ: Any, baseline_id: int, classifier: bool, tol: float) -> Judged:
    whole = _whole(batch, cand, champ)
    if whole is not None:
        c, b = whole
        return _judged(c, b, classifier, tol, batch.columns["rows"], batch.columns["metadata"], [])
    records = batch.records
    cand_parts, champ_parts, errors = _outputs(records, cand, champ, baseline_id)
    keep = [
        i
        for i in range(len(records))
        if cand_parts[i] is not None
        and champ_parts[i] is not None
        and cand_parts[i].shape == champ_parts[i].shape
        and len(cand_parts[i]) == records[i]["rows"]
    ]
    kept = set(keep)
    for i in range(len(records)):
        if i not in kept and cand_parts[i] is not None:
            errors.append(
                f"request {records[i]['request_id']}: the candidate's output shape differs from the champion's"
                if len(cand_parts[i]) == records[i]["rows"]
                else f"request {records[i]['request_id']}: a model answered {len(cand_parts[i])} rows "
                f"for {records[i]['rows']}"
            )
    if not keep:
        empty = np.zeros(0, np.float32)
        return Judged(0, empty.astype(bool), empty, empty, empty, np.zeros(0, np.int64), [], errors)
    c = np.concatenate([cand_parts[i] for i in keep])
    b = np.concatenate([champ_parts[i] for i in keep])
    kept_rows = [records[i]["rows"] for i in keep]
    return _judged(c, b, classifier, tol, kept_rows, [records[i]["metadata"] for i in keep], errors)


def _judged(
    c: np.ndarray,
    b: np.ndarray,
    classifier: bool,
    tol: float,
    rows: list[int],
    metadata: list[dict],
    errors: list[str],
) -> Judged:
    """Compare row-aligned outputs of records (in order; ``rows`` and ``metadata`` per record): agreement,
    differences, scores."""
    diff = np.abs(c - b)
    agreed = evaluation.classes(c) == evaluation.classes(b) if classifier else _row_max(diff) <= tol
    return Judged(
        rows=len(c),
        agreed=agreed,
        diffs=_row_max(diff),
        cand_scores=_score(c),
        champ_scores=_score(b),
        ends=np.cumsum(np.asarray(rows, np.int64)),
        sliced=[(i, m) for i, m in enumerate(metadata) if m],
        errors=errors,
    )


def _row_max(diff: np.ndarray) -> np.ndarray:
    """The largest value of each row: column by column for a few columns, where ``max(axis=1)``'s
    short inner loop is several times slower (NaN propagates the same way)."""
    if diff.shape[1] > 8:
        return diff.max(axis=1)
    out = diff[:, 0].copy()
    for j in range(1, diff.shape[1]):
        np.maximum(out, diff[:, j], out=out)
    return out


def _rounded(values: np.ndarray) -> list[float]:
    return values.astype(float).round(7).tolist()


def _reservoir(stats: dict, columns: dict[str, np.ndarray], seen: int, rng: np.random.Generator) -> None:
    """Algorithm R over batches: a uniform sample of at most RESERVOIR of all rows seen, of row-aligned
    ``columns`` (the same rows sampled in each, so one draw serves them all)."""
    kept = [stats.setdefault(name, []) for name in columns]
    room = max(0, RESERVOIR - len(kept[0]))
    values = list(columns.values())
    rest = len(values[0]) - room
    slots: list[int] = []
    if rest > 0:
        # The i-th later row replaces a slot with probability RESERVOIR / (its position), a slot drawn
        # uniformly; of later rows drawn for one slot, the last one stays. One float per row, and
        # slots drawn for the hits only: half the cost of drawing every row's position.
        positions = seen + room + np.arange(1, rest + 1, dtype=np.float64)
        hit = np.flatnonzero(rng.random(rest) * positions < RESERVOIR)
        slots = rng.integers(0, RESERVOIR, len(hit)).tolist()
    for sample, column in zip(kept, values, strict=True):
        sample.extend(_rounded(column[:room]))
        if slots:
            for slot, value in zip(slots, _rounded(column[room:][hit]), strict=True):
                sample[slot] = value


def _probe(batch: Batch, cand: Any, champ: Any) -> tuple[list[float], list[float]]:
    """Single-request latency of both models on the same records, measured the same way, interleaved."""
    cand_ms, champ_ms = [], []
    probes = max(1, min(PROBES_PER_BATCH, -(-PROBES_PER_BATCH * len(batch) // BATCH_RECORDS)))
    step = max(1, len(batch) // probes)
    sample = [batch.record(i) for i in range(0, len(batch), step)][:probes]
    for model in (cand, champ):  # warm both up on this shape: the first run allocates
        try:
            model.predict(_stack(sample[:1]))
        except Exception:
            return [], []
    for record in sample:
        inputs = _stack([record])
        for model, out in ((cand, cand_ms), (champ, champ_ms)):
            started = time.perf_counter()
            try:
                model.predict(inputs)
            except Exception:
                continue
            out.append((time.perf_counter() - started) * 1000)
    return cand_ms, champ_ms


def _fold(run: ShadowRun, batch: Batch, cand: Any, champ: Any, policy: Policy) -> None:
    stats = run.stats
    if "classifier" not in stats:
        stats["classifier"] = is_classifier(policy, _first(champ.predict(_stack([batch.record(0)]))))
    judged = _judge(batch, cand, champ, run.baseline_id, stats["classifier"], policy.shadow.tolerance)
    rng = np.random.default_rng(run.pk * 1_000_003 + run.rows)
    seen = int(stats.get("seen", 0))
    columns = {"diffs": judged.diffs, "cand_scores": judged.cand_scores, "champ_scores": judged.champ_scores}
    _reservoir(stats, columns, seen, rng)
    stats["seen"] = seen + judged.rows
    cand_ms, champ_ms = _probe(batch, cand, champ)
    probes = int(stats.get("probes", 0))
    _reservoir(stats, {"cand_ms": np.asarray(cand_ms)}, probes, rng)
    _reservoir(stats, {"champ_ms": np.asarray(champ_ms)}, probes, rng)
    stats["probes"] = probes + min(len(cand_ms), len(champ_ms))
    # agreed_by[k]: how many of this batch's first k rows agree; read at record ends only (a list of
    # every row's count cost more than the rest of the statistics).
    agreed_by = np.concatenate([[0], np.cumsum(judged.agreed, dtype=np.int64)])
    ends, n = judged.ends, len(judged.ends)
    stats["agreed"] = int(stats.get("agreed", 0)) + int(agreed_by[-1])
    stats["diff_sum"] = float(stats.get("diff_sum", 0.0)) + float(judged.diffs.sum())
    stats["diff_max"] = max(float(stats.get("diff_max", 0.0)), float(judged.diffs.max(initial=0.0)))
    slices = stats.setdefault("slices", {})
    if judged.sliced:
        at_record = np.fromiter((i for i, _ in judged.sliced), np.int64, len(judged.sliced))
        his = ends[at_record]
        los = np.where(at_record > 0, ends[np.maximum(at_record - 1, 0)], 0)
        counts, agreed = (his - los).tolist(), (agreed_by[his] - agreed_by[los]).tolist()
        for (_, metadata), rows_in, agreed_in in zip(judged.sliced, counts, agreed, strict=True):
            for field_name, value in metadata.items():
                cell = slices.setdefault(str(field_name), {}).setdefault(str(value), [0, 0])
                cell[0] += rows_in
                cell[1] += agreed_in
    if judged.errors:
        stats["error_samples"] = (stats.get("error_samples", []) + judged.errors)[:5]
    # Agreement over time: the running agreement at a few record boundaries of this batch.
    timeline = stats.setdefault("timeline", [])
    at, agreed_before = timezone.now().isoformat(), stats["agreed"] - int(agreed_by[-1])
    step = max(1, n // 10)
    points = [*range(step - 1, n, step)][:10] + ([n - 1] if n else [])
    point_ends = ends[points].tolist() if points else []
    point_agreed = agreed_by[point_ends].tolist() if points else []
    for i, end, agreed_to in zip(points, point_ends, point_agreed, strict=True):
        point = [at, run.requests + i + 1, round((agreed_before + agreed_to) / (run.rows + end), 6)]
        if not timeline or timeline[-1][1] != point[1]:
            timeline.append(point)
    while len(timeline) > TIMELINE_POINTS:
        timeline[:] = timeline[::2] if len(timeline) % 2 else [*timeline[:-1:2], timeline[-1]]
    run.requests += len(batch)
    run.rows += judged.rows
    run.errors += len(judged.errors)


def _quantiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None}
    array = np.asarray(values)
    return {"p50": float(np.percentile(array, 50)), "p95": float(np.percentile(array, 95))}


def summarize(run: ShadowRun) -> dict[str, Any]:
    """What people read: agreement, output differences, distribution shift, latency, slices, progress."""
    from scipy import stats as sps

    s = run.stats
    rows = max(run.rows, 1)
    diffs = s.get("diffs", [])
    cand, champ = s.get("cand_scores", []), s.get("champ_scores", [])
    shift: dict[str, float | None] = {"ks": None, "ks_pvalue": None, "psi": None}
    if len(cand) >= 2 and len(champ) >= 2:
        with warnings.catch_warnings():  # "exact calculation unsuccessful, switching to asymp" is fine
            warnings.simplefilter("ignore", RuntimeWarning)
            ks = sps.ks_2samp(cand, champ)
        shift = {"ks": float(ks.statistic), "ks_pvalue": float(ks.pvalue), "psi": _psi(champ, cand)}
    lat_c, lat_b = _quantiles(s.get("cand_ms", [])), _quantiles(s.get("champ_ms", []))
    ratio = lat_c["p95"] / lat_b["p95"] if lat_c["p95"] is not None and lat_b["p95"] else None
    counts, edges = np.histogram(diffs, bins=20) if diffs else (np.zeros(0), np.zeros(0))
    return {
        "requests": run.requests,
        "rows": run.rows,
        "errors": run.errors,
        "error_samples": s.get("error_samples", []),
        "comparison": "classes" if s.get("classifier") else "tolerance",
        "agreement": s.get("agreed", 0) / rows if run.rows else None,
        "diff": {
            "mean": s.get("diff_sum", 0.0) / rows if run.rows else None,
            **_quantiles(diffs),
            "max": s.get("diff_max") if run.rows else None,
            "histogram": {"counts": counts.astype(int).tolist(), "edges": [float(e) for e in edges]},
        },
        "shift": shift,
        "latency_ms": {"candidate": lat_c, "champion": lat_b, "p95_ratio": ratio},
        "slices": {
            name: {
                value: {"rows": n, "agreement": agreed / n if n else None}
                for value, (n, agreed) in values.items()
            }
            for name, values in s.get("slices", {}).items()
        },
        "timeline": s.get("timeline", []),
        **({"labelled": s["labelled"]} if "labelled" in s else {}),
    }


def _psi(expected: list[float], actual: list[float], bins: int = 10) -> float:
    """Population stability index of ``actual`` against ``expected`` on ``expected``'s deciles."""
    edges = np.unique(np.percentile(expected, np.linspace(0, 100, bins + 1)))
    if len(edges) < 3:
        edges = np.linspace(min(expected + actual), max(expected + actual) + 1e-9, bins + 1)
    e = np.histogram(np.clip(expected, edges[0], edges[-1]), edges)[0] / len(expected)
    a = np.histogram(np.clip(actual, edges[0], edges[-1]), edges)[0] / len(actual)
    e, a = np.clip(e, 1e-4, None), np.clip(a, 1e-4, None)
    return float(((a - e) * np.log(a / e)).sum())


def _pool(run: ShadowRun):
    return TrafficRecord.objects.filter(model_id=run.candidate.model_id, at__gte=run.since)


def _batch_sql(vendor: str) -> str:
    """The next records of the pool, at most ``limit`` of them and, past the first, only while fewer than
    ``max_rows`` rows and ``max_bytes`` bytes came before.

    On PostgreSQL the batch comes back as ONE row of columns (arrays, and the inputs and the outputs
    each joined into one bytea): the reader thread then builds a handful of Python objects instead of
    nine per record. Converting a batch of rows holds the GIL for milliseconds at a time, and the model
    calls on the other thread waited for it each time they returned (a reader thread made inference
    27% slower than alone; one that reads a batch as one row, 6%: bench/serving_overhead.py). The
    layouts come back NULL where they equal the ones given (those of the batch before: one model's
    traffic nearly always has one layout), and the metadata NULL where it is empty."""
    table = TrafficRecord._meta.db_table
    page = f"FROM {table} WHERE model_id = %s AND at >= %s AND id > %s ORDER BY id LIMIT %s"
    if vendor != "postgresql":
        columns = ", ".join("CAST(metadata AS TEXT)" if f == "metadata" else f for f in FIELDS)
        return f"SELECT length(inputs) + COALESCE(length(outputs), 0), {columns} {page}"
    aggregates = {
        "id": "array_agg(id)",
        "request_id": "array_agg(request_id)",
        **{name: f"string_agg({name}, ''::bytea), array_agg(length({name}))" for name in JOINED},
        "input_layout": "array_agg(NULLIF(input_layout, %s))",
        "rows": "array_agg(rows)",
        "output_layout": "array_agg(NULLIF(output_layout, %s))",
        "served_by_id": "array_agg(served_by_id)",
        "metadata": "array_agg(CAST(NULLIF(metadata, '{}'::jsonb) AS TEXT))",
    }
    # The page comes from the (model, id) index in id order; the running sums follow that order (no
    # sort), and a plain aggregate over a subquery keeps its order.
    return (
        f"SELECT count(*), sum(rows), sum(size), {', '.join(aggregates[f] for f in FIELDS)} FROM ("
        f"SELECT *, sum(rows) OVER w - rows AS rows_before, sum(size) OVER w - size AS bytes_before FROM ("
        f"SELECT *, length(inputs) + COALESCE(length(outputs), 0) AS size FROM (SELECT {', '.join(FIELDS)} {page}) page"
        f") sized WINDOW w AS (ORDER BY id ROWS UNBOUNDED PRECEDING)"
        f") running WHERE rows_before < %s AND bytes_before < %s"
    )


BATCH_SQL = {vendor: _batch_sql(vendor) for vendor in ("postgresql", "sqlite")}
NO_LAYOUTS = ("", "")


def _batch(
    run: ShadowRun, after: int, limit: int = 0, layouts: tuple[str, str] = NO_LAYOUTS
) -> tuple[dict[str, Any], bool]:
    """The pool's next records after id ``after``, oldest first, as columns (``FIELDS``), and whether
    more may follow. ``layouts``: the input and output layouts the records most likely have.

    At most ``limit`` records (``BATCH_RECORDS``) and, past the first, about as many rows and bytes as
    ``BATCH_ROWS`` and ``BATCH_BYTES`` allow for that many records (100,000 rows for a full batch).
    Kept in columns rather than a dict per record, and written out rather than through the ORM: its
    per-field converters and a dict per record each cost as much CPU as the reading itself. On
    PostgreSQL the inputs and outputs columns are :class:`~lifecycle.traffic.Joined`. Metadata is
    decoded only where it holds something.
    """
    from django.db import connection

    limit = limit or BATCH_RECORDS
    max_rows = max(1, BATCH_ROWS * limit // BATCH_RECORDS)
    max_bytes = max(1, BATCH_BYTES * limit // BATCH_RECORDS)
    params = [run.candidate.model_id, connection.ops.adapt_datetimefield_value(run.since), after, limit]
    if connection.vendor == "postgresql":
        count, rows, size, *values = _fetch_binary(connection, [*layouts, *params, max_rows, max_bytes])
        if not count:
            return {name: [] for name in FIELDS}, False
        more = count == limit or rows >= max_rows or size >= max_bytes
        # One array per field, in FIELDS order; inputs and outputs as a joined blob and its lengths.
        fetched = iter(values)
        columns = {
            name: Joined(next(fetched), next(fetched)) if name in JOINED else next(fetched) for name in FIELDS
        }
    else:
        with connection.cursor() as cursor:
            cursor.execute(BATCH_SQL["sqlite"], params)
            fetched = cursor.fetchall()
        if not fetched:
            return {name: [] for name in FIELDS}, False
        sizes, *lists = map(list, zip(*fetched, strict=True))
        columns = dict(zip(FIELDS, lists, strict=True))
        more = len(fetched) == limit
        # Records while fewer than max_rows rows and max_bytes bytes came before them.
        cut = rows_before = bytes_before = 0
        for rows_in, size in zip(columns["rows"], sizes, strict=True):
            if rows_before >= max_rows or bytes_before >= max_bytes:
                break
            cut, rows_before, bytes_before = cut + 1, rows_before + rows_in, bytes_before + size
        if cut < len(fetched):
            columns, more = {name: column[:cut] for name, column in columns.items()}, True
    for name, known in zip(("input_layout", "output_layout"), layouts, strict=True):
        if None in columns[name]:
            columns[name] = [known if layout is None else layout for layout in columns[name]]
    columns["metadata"] = [json.loads(m) if m and m != "{}" else {} for m in columns["metadata"]]
    return columns, more


def _fetch_binary(connection: Any, params: list) -> tuple:
    """The batch's one row, in PostgreSQL's binary format: the inputs and outputs come as their bytes,
    not as hex text for the client to decode. Django's cursors bind on the client, which cannot ask for
    binary results, so this one cursor binds on the server."""
    import psycopg

    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(BATCH_SQL["postgresql"], params, binary=True, prepare=False)
        return cursor.fetchone()


class Batch:
    """Records read for folding, in columns, with their arrays already stacked by the reader where they
    stack."""

    def __init__(self, columns: dict[str, Any], more: bool) -> None:
        self.columns = columns
        self.more = more  # more records may follow
        # Every record carries this champion's answer (True), none does (False), or mixed (None).
        self.reuse: bool | None = None
        # Every record's inputs in one array (or one per input name); None: they do not stack.
        self.inputs: Any = None
        self.served: np.ndarray | None = None  # with reuse, the champion's answers in one array
        self.rows = sum(columns["rows"])  # rows in all the records

    @classmethod
    def of(cls, records: list[dict], more: bool = False) -> Batch:
        return cls({name: [r[name] for r in records] for name in FIELDS}, more)

    def __len__(self) -> int:
        return len(self.columns["id"])

    def record(self, i: int) -> dict[str, Any]:
        return {name: column[i] for name, column in self.columns.items()}

    @functools.cached_property
    def records(self) -> list[dict[str, Any]]:
        """One dict per record, for the batches that go record by record."""
        return [dict(zip(FIELDS, values, strict=True)) for values in zip(*self.columns.values(), strict=True)]

    @property
    def last_id(self) -> int:
        return max(self.columns["id"])

    @property
    def layouts(self) -> tuple[str, str]:
        return self.columns["input_layout"][-1], self.columns["output_layout"][-1]


def _prepared(run: ShadowRun, after: int, limit: int, layouts: tuple[str, str] = NO_LAYOUTS) -> Batch:
    """The next batch, read and stacked: on the reader's thread, this work overlaps with inference."""
    batch = Batch(*_batch(run, after, limit, layouts))
    if not len(batch):
        return batch
    columns = batch.columns
    outputs = columns["outputs"]
    present = outputs.lengths if isinstance(outputs, Joined) else outputs  # None where a record has none
    reuse = {
        served_by == run.baseline_id and output is not None
        for served_by, output in zip(columns["served_by_id"], present, strict=True)
    }
    batch.reuse = reuse.pop() if len(reuse) == 1 else None
    try:
        batch.inputs = unpack_many(columns["inputs"], columns["input_layout"])
        if batch.inputs is None:
            batch.inputs = _stack(batch.records)
        if batch.reuse:
            batch.served = unpack_many(columns["outputs"], columns["output_layout"])
    except Exception:  # records that do not stack are folded one by one, and their errors named there
        batch.inputs = batch.served = None
    return batch


class _ShortSwitches:
    """``READER_SWITCH_INTERVAL`` while any reader runs in this process, the interval before otherwise."""

    def __init__(self) -> None:
        self.lock, self.readers, self.saved = threading.Lock(), 0, 0.0

    def enter(self) -> None:
        with self.lock:
            if not self.readers:
                self.saved = sys.getswitchinterval()
                sys.setswitchinterval(min(self.saved, READER_SWITCH_INTERVAL))
            self.readers += 1

    def exit(self) -> None:
        with self.lock:
            self.readers -= 1
            if not self.readers:
                sys.setswitchinterval(self.saved)


_short_switches = _ShortSwitches()


class _Reader:
    """Fetches the next batch on a connection of its own while the models run on the current one.

    The models release the GIL while they compute, so reading (and stacking) the next records overlaps
    with inference instead of following it. The first read is small (``FIRST_BATCH_RECORDS``) and each
    later one twice the last, up to ``BATCH_RECORDS``, so that the models start at once and each read
    finishes while the models are still busy with the batch before. Inside a transaction (a test's,
    or a caller's) another connection could not see uncommitted records, so the reader reads in line,
    in full batches.

    While the reader runs, the interpreter's switch interval is ``READER_SWITCH_INTERVAL``: each model
    call needs the GIL back for a moment when it returns, and with the default 5 ms it waited out
    whatever Python the reader was running then (building rows, stacking), which made inference
    10-15% slower than alone (bench/serving_overhead.py: 0.75x a bare loop, 0.81x with 0.2 ms).
    """

    def __init__(self, run: ShadowRun) -> None:
        from django.db import connection

        self.run = run
        self.pool = None if connection.in_atomic_block else ThreadPoolExecutor(1, "shadow-reader")
        if self.pool is not None:
            _short_switches.enter()
        self.limit = FIRST_BATCH_RECORDS if self.pool is not None else BATCH_RECORDS
        self.next: Any = None
        self.layouts = NO_LAYOUTS  # those of the last record read: the next ones most likely share them

    def _limit(self) -> int:
        limit, self.limit = self.limit, min(BATCH_RECORDS, self.limit * 2)
        return min(limit, BATCH_RECORDS)

    def read(self, after: int) -> Batch:
        if self.next is not None:
            pending, self.next = self.next, None
            batch = pending.result()
        else:
            batch = _prepared(self.run, after, self._limit(), self.layouts)
        if len(batch):
            self.layouts = batch.layouts
        if self.pool is not None and batch.more:
            self.next = self.pool.submit(_prepared, self.run, batch.last_id, self._limit(), self.layouts)
        return batch

    def close(self) -> None:
        if self.pool is None:
            return
        try:
            if self.next is not None:
                self.next.cancel()
            self.pool.submit(_close_thread_connection)
            self.pool.shutdown(wait=True)
        finally:  # a time limit may land while the shutdown waits for a read
            _short_switches.exit()


def _close_thread_connection() -> None:
    from django.db import connection

    connection.close()


def shadow_evaluate(
    run_id: int, *, now: dt.datetime | None = None, budget: float = BUDGET_SECONDS
) -> ShadowRun | None:
    """Fold the run's new traffic into its statistics, then conclude it when it has enough.

    Safe to call twice at once: the lease lets one caller work, and each batch is written with a
    compare-and-set on the cursor.
    """
    now = now or timezone.now()
    if not lease_claim(
        ShadowRun.objects.filter(pk=run_id, status=ShadowRun.Status.RUNNING),
        attempts_field="attempts",
        now=now,
        seconds=LEASE_SECONDS,
    ):
        return None
    run = ShadowRun.objects.select_related("candidate__model", "baseline").get(pk=run_id)
    try:
        result = _evaluate(run, now=now, budget=budget)
    except Exception as exc:
        # Not the traffic's fault as far as we know (a model that does not load here, the database):
        # try again on the next wake-up, and give up after a few attempts rather than forever.
        if run.attempts < settings.MODELGATE_MAX_TASK_ATTEMPTS:
            ShadowRun.objects.filter(pk=run_id).update(lease_expires_at=None)
            raise
        log.exception("shadow %s failed %s times; ending it", run_id, run.attempts)
        # Batches folded since the last checkpoint are in ``run`` only: end the run with what was written.
        run = ShadowRun.objects.select_related("candidate__model", "baseline").get(pk=run_id)
        return _fail(
            run, f"the shadow could not run after {run.attempts} attempts: {type(exc).__name__}: {exc}"
        )
    ShadowRun.objects.filter(pk=run_id).update(lease_expires_at=None, attempts=0)
    return result


def _evaluate(run: ShadowRun, *, now: dt.datetime, budget: float) -> ShadowRun | None:
    if run.candidate.status != S.SHADOWING:
        return _end(run, ShadowRun.Status.CANCELLED, f"v{run.candidate.version} is {run.candidate.status}")
    policy = policy_parse(run.candidate.model.policy)
    started = time.monotonic()
    reader = _Reader(run)
    try:
        return _fold_batches(run, policy, reader, started=started, budget=budget, now=now)
    finally:
        reader.close()


def _fold_batches(
    run: ShadowRun, policy: Policy, reader: _Reader, *, started: float, budget: float, now: dt.datetime
) -> ShadowRun | None:
    written_cursor, written_at = run.cursor, started
    cand = champ = None
    while time.monotonic() - started < budget:
        batch = reader.read(run.cursor)
        if not len(batch):
            break
        if cand is None:
            cand = _runtimes.get(served_artifact_of(run.candidate), run.candidate.signature)
            champ = _runtimes.get(served_artifact_of(run.baseline), run.baseline.signature)
        _fold(run, batch, cand, champ, policy)
        run.cursor = batch.last_id
        last = (
            not batch.more
            or run.requests >= policy.shadow.min_requests
            or time.monotonic() - started >= budget
        )
        if last:
            break
        if time.monotonic() - written_at >= CHECKPOINT_SECONDS:
            if not _checkpoint(run, written_cursor):
                return None
            written_cursor, written_at = run.cursor, time.monotonic()
    if run.cursor != written_cursor and not _checkpoint(run, written_cursor):
        return None
    if not _due(run, policy, now):
        return run  # as just written
    return shadow_conclude(run.pk, now=now, cand=cand, champ=champ)


def _checkpoint(run: ShadowRun, written_cursor: int) -> bool:
    """Write the run's cursor, statistics and summary at once, if the cursor is still where this task
    last wrote it; False when the run ended or moved on elsewhere meanwhile (nothing is written)."""
    run.summary = summarize(run)
    return bool(
        ShadowRun.objects.filter(pk=run.pk, cursor=written_cursor, status=ShadowRun.Status.RUNNING).update(
            cursor=run.cursor,
            stats=run.stats,
            summary=run.summary,
            requests=run.requests,
            rows=run.rows,
            errors=run.errors,
        )
    )


def _fail(run: ShadowRun, reason: str) -> ShadowRun | None:
    return _finish(run, status=ShadowRun.Status.FAILED, reason=reason, summary=run.summary, approve=False)


def _end(run: ShadowRun, status: str, reason: str) -> ShadowRun:
    with transaction.atomic():
        ended = ShadowRun.objects.filter(pk=run.pk, status=ShadowRun.Status.RUNNING).update(
            status=status, reason=reason, ended_at=timezone.now()
        )
        if ended:
            event_record(
                kind=EventKind.SHADOW_ENDED,
                actor=ACTOR,
                version=run.candidate,
                data={"shadow": run.pk, "reason": reason},
            )
    run.refresh_from_db()
    return run


# --- the verdict --------------------------------------------------------------------------------------


def _labelled_metric(run: ShadowRun, policy: Policy, cand: Any, champ: Any) -> dict[str, Any] | None:
    """Each model's metric on the labelled records of the pool (labels may arrive after the batch ran)."""
    records = list(
        _pool(run)
        .filter(id__lte=run.cursor)
        .exclude(labels=None)
        .order_by("id")
        .values(*FIELDS, "labels")[:LABELLED_RECORDS_MAX]
    )
    if not records:
        return None
    metric, max_drop = ("accuracy" if run.stats.get("classifier") else "mae"), policy.shadow.max_metric_drop
    for gate in policy.gates:
        if isinstance(gate, NoRegressionGate) and gate.max_drop is not None:
            metric, max_drop = gate.metric, gate.max_drop
            break
    if cand is None:
        cand = _runtimes.get(served_artifact_of(run.candidate), run.candidate.signature)
        champ = _runtimes.get(served_artifact_of(run.baseline), run.baseline.signature)
    cand_parts, champ_parts, _ = _outputs(records, cand, champ, run.baseline_id)
    keep = [i for i in range(len(records)) if cand_parts[i] is not None and champ_parts[i] is not None]
    if not keep:
        return None
    labels = np.concatenate([np.asarray(records[i]["labels"], np.float64) for i in keep])
    result: dict[str, Any] = {"metric": metric, "rows": len(labels), "max_drop": max_drop}
    try:
        c = evaluation.metric_value(metric, labels, np.concatenate([cand_parts[i] for i in keep]))
        b = evaluation.metric_value(metric, labels, np.concatenate([champ_parts[i] for i in keep]))
    except evaluation.EvaluationError as exc:
        return {**result, "error": str(exc)}
    drop = (b - c) if evaluation.higher_is_better(metric) else (c - b)
    return {**result, "candidate": c, "champion": b, "drop": drop, "worse": drop > max_drop}


def _failures(summary: dict[str, Any], policy: Policy) -> list[str]:
    rules = policy.shadow
    failures = []
    agreement = summary["agreement"]
    if agreement is not None and agreement < rules.min_agreement:
        failures.append(
            f"agreement {agreement:.1%} with the champion over {summary['rows']} rows is below "
            f"{rules.min_agreement:.1%}"
        )
    latency = summary["latency_ms"]
    if latency["p95_ratio"] is not None and latency["p95_ratio"] > rules.max_p95_latency_ratio:
        failures.append(
            f"p95 latency {latency['candidate']['p95']:.2f} ms is {latency['p95_ratio']:.2f}× the champion's "
            f"{latency['champion']['p95']:.2f} ms (at most {rules.max_p95_latency_ratio}×)"
        )
    if summary["errors"]:
        first = (summary["error_samples"] or ["?"])[0]
        failures.append(f"{summary['errors']} request(s) failed in the candidate (first: {first})")
    labelled = summary.get("labelled")
    if labelled and labelled.get("worse"):
        failures.append(
            f"on {labelled['rows']} labelled rows {labelled['metric']} is {labelled['candidate']:.4f} against "
            f"the champion's {labelled['champion']:.4f} (worse by more than {labelled['max_drop']})"
        )
    return failures


def verdict_line(summary: dict[str, Any]) -> str:
    agreement = summary.get("agreement")
    ratio = (summary.get("latency_ms") or {}).get("p95_ratio")
    parts = [f"{summary.get('requests', 0)} requests"]
    if agreement is not None:
        parts.append(f"agreement {agreement:.1%}")
    if ratio is not None:
        parts.append(f"p95 latency {ratio:.2f}× the champion")
    parts.append(f"{summary.get('errors', 0)} errors")
    return ", ".join(parts)


def _due(run: ShadowRun, policy: Policy, now: dt.datetime) -> bool:
    """Whether the run is ready for its verdict: it has its ``min_requests``, or ran out of days."""
    rules = policy.shadow
    return run.requests >= rules.min_requests or now >= run.started_at + dt.timedelta(days=rules.max_days)


def shadow_conclude(
    run_id: int, *, now: dt.datetime | None = None, cand: Any = None, champ: Any = None
) -> ShadowRun | None:
    """Judge a run that has its ``min_requests`` or has run out of days; otherwise leave it running."""
    now = now or timezone.now()
    run = ShadowRun.objects.select_related("candidate__model", "baseline").get(pk=run_id)
    if run.status != ShadowRun.Status.RUNNING:
        return run
    policy = policy_parse(run.candidate.model.policy)
    rules = policy.shadow
    if not _due(run, policy, now):
        return run
    enough = run.requests >= rules.min_requests
    labelled = _labelled_metric(run, policy, cand, champ) if run.rows else None
    if labelled is not None:
        run.stats["labelled"] = labelled
    summary = summarize(run)
    failures = _failures(summary, policy) if run.rows else []
    if failures:
        status, reason = ShadowRun.Status.FAILED, "shadow verdict failed: " + "; ".join(failures)
    elif not enough:
        status = ShadowRun.Status.INSUFFICIENT
        reason = (
            f"insufficient shadow traffic: {run.requests} of {rules.min_requests} requests after "
            f"{rules.max_days:g} days"
        )
    else:
        status, reason = ShadowRun.Status.PASSED, f"shadow passed: {verdict_line(summary)}"
    approve = status == ShadowRun.Status.PASSED or (
        status == ShadowRun.Status.INSUFFICIENT and rules.on_insufficient == "approve_anyway"
    )
    if status == ShadowRun.Status.INSUFFICIENT and approve:
        summary["warning"] = reason + "; the policy sends it to the approvers anyway"
    return _finish(run, status=status, reason=reason, summary=summary, approve=approve, now=now)


@transaction.atomic
def _finish(
    run: ShadowRun, *, status: str, reason: str, summary: dict, approve: bool, now: dt.datetime | None = None
) -> ShadowRun | None:
    """End a running shadow with its verdict and move the candidate on, in one transaction."""
    done = ShadowRun.objects.filter(pk=run.pk, status=ShadowRun.Status.RUNNING).update(
        status=status,
        reason=reason,
        stats=run.stats,
        summary=summary,
        ended_at=now or timezone.now(),
        lease_expires_at=None,
    )
    if not done:
        return None
    run.refresh_from_db()
    event_record(
        kind=EventKind.SHADOW_COMPLETED,
        actor=ACTOR,
        version=run.candidate,
        data={"shadow": run.pk, "verdict": status, "reason": reason, "requests": run.requests},
    )
    webhooks.webhooks_emit(
        event="shadow.completed", version=run.candidate, data={"verdict": status, "reason": reason}
    )
    try:
        if approve:
            from lifecycle import approval

            approval.await_approval(
                version_id=run.candidate_id, actor=ACTOR, reason=summary.get("warning", reason)
            )
        else:
            version_transition(
                version_id=run.candidate_id, to=S.REJECTED, actor=ACTOR, reason=reason, expected=S.SHADOWING
            )
    except TransitionNotAllowed:
        log.info("%s left shadowing before its verdict", run.candidate.label)
    return run


# --- scheduling -----------------------------------------------------------------------------------------


def model_shadows_evaluate(model_id: int) -> list[int]:
    """Evaluate every running shadow of a model (the shadow queue's unit of work)."""
    done = []
    for run_id in ShadowRun.objects.filter(
        candidate__model_id=model_id, status=ShadowRun.Status.RUNNING
    ).values_list("id", flat=True):
        if shadow_evaluate(run_id) is not None:
            done.append(run_id)
    return done


def shadows_due() -> list[int]:
    """Models with a running shadow: beat wakes them all, so that max_days passes even with no traffic."""
    return sorted(
        set(
            ShadowRun.objects.filter(status=ShadowRun.Status.RUNNING).values_list(
                "candidate__model_id", flat=True
            )
        )
    )


def shadow_latest(version: ModelVersion) -> ShadowRun | None:
    return (
        ShadowRun.objects.filter(candidate=version)
        .select_related("baseline", "candidate__model")
        .order_by("-id")
        .first()
    )


def shadow_json(run: ShadowRun | None) -> dict[str, Any] | None:
    """The ``shadow`` field of a version in the API."""
    if run is None:
        return None
    return {
        "id": run.pk,
        "status": run.status,
        "baseline": run.baseline.version,
        "requests": run.requests,
        "min_requests": policy_parse(run.candidate.model.policy).shadow.min_requests,
        "rows": run.rows,
        "errors": run.errors,
        "reason": run.reason,
        "summary": run.summary,
        "started_at": run.started_at.isoformat().replace("+00:00", "Z"),
        "ended_at": run.ended_at.isoformat().replace("+00:00", "Z") if run.ended_at else None,
    }
