"""Validation gates: each gate kind judges a version and returns outcomes; nothing here writes.

The worker opens the model in its real runtime once, records its signature, and runs every gate of
the policy against it. The outcomes are written together by ``lifecycle.pipeline`` so that a worker
killed half-way leaves no partial set behind.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle import dataset_cache, evaluation, runtimes
from lifecycle.policy import MetricGate, NoRegressionGate, Policy, policy_parse
from registry.models import Dataset, ModelVersion
from registry.selectors import model_champion
from registry.storage import blob_local_path

log = logging.getLogger(__name__)

MB = 1024 * 1024
SUFFIX = {"keras": ".keras", "onnx": ".onnx", "tflite": ".tflite"}


@dataclass
class GateOutcome:
    gate_index: int
    gate: str
    passed: bool | None  # None: not judged (skipped)
    metric: str = ""
    slice: str = ""
    value: float | None = None
    baseline: float | None = None
    threshold: float | None = None
    skipped_reason: str = ""
    rows: int | None = None
    duration_ms: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    reason: str = ""  # a sentence for the rejection reason when it fails


@dataclass
class Evaluation:
    outcomes: list[GateOutcome]
    signature: dict | None
    runtime: str = ""
    datasets: list[int] = field(default_factory=list)  # scored datasets, linked with the role validation

    @property
    def failed(self) -> list[GateOutcome]:
        return [o for o in self.outcomes if o.passed is False]


@dataclass
class GateContext:
    version: ModelVersion
    policy: Policy
    model: runtimes.Runtime | None
    load_error: str
    champion: ModelVersion | None


GateFn = Callable[[int, Any, GateContext], list[GateOutcome]]


def _loads(index: int, gate: Any, ctx: GateContext) -> list[GateOutcome]:
    if ctx.model is None:
        return [
            GateOutcome(
                index, "loads", False, details={"error": ctx.load_error}, reason=f"loads: {ctx.load_error}"
            )
        ]
    return [GateOutcome(index, "loads", True, details={"runtime": ctx.model.name})]


def _size(index: int, gate: Any, ctx: GateContext) -> list[GateOutcome]:
    size_mb = ctx.version.size / MB
    passed = size_mb <= gate.max_mb
    return [
        GateOutcome(
            index,
            "size",
            passed,
            metric="size_mb",
            value=round(size_mb, 4),
            threshold=gate.max_mb,
            reason="" if passed else f"size is {size_mb:.1f} MB > {gate.max_mb:g} MB",
        )
    ]


def _signature_compatible(index: int, gate: Any, ctx: GateContext) -> list[GateOutcome]:
    if ctx.champion is None:
        return [
            GateOutcome(index, "signature_compatible", None, skipped_reason="no champion to compare with")
        ]
    if ctx.model is None:
        return [
            GateOutcome(
                index, "signature_compatible", False, reason="signature_compatible: the model does not load"
            )
        ]
    if not ctx.champion.signature:
        return [
            GateOutcome(
                index, "signature_compatible", None, skipped_reason="the champion has no recorded signature"
            )
        ]
    ok, why = runtimes.signatures_compatible(
        ctx.model.signature, runtimes.Signature.from_dict(ctx.champion.signature)
    )
    return [
        GateOutcome(
            index,
            "signature_compatible",
            ok,
            details={"champion": ctx.champion.version, "difference": why},
            reason="" if ok else f"signature differs from the champion v{ctx.champion.version}: {why}",
        )
    ]


def _latency(index: int, gate: Any, ctx: GateContext) -> list[GateOutcome]:
    """p50 and p95 over ``runs`` timed predictions after a warm-up, at the policy's batch size."""
    if ctx.model is None:
        return [GateOutcome(index, "latency", False, reason="latency: the model does not load")]
    inputs = _random_inputs(ctx.model.signature, gate.batch_size)
    timings = []
    try:
        for _ in range(gate.warmup):
            ctx.model.predict(inputs)
        for _ in range(gate.runs):
            started = time.perf_counter()
            ctx.model.predict(inputs)
            timings.append((time.perf_counter() - started) * 1000)
    except Exception as exc:  # the model itself fails on inputs that fit its signature (or hits a limit)
        error = f"{type(exc).__name__}: {str(exc)[:500]}"
        return [
            GateOutcome(
                index,
                "latency",
                False,
                metric="p95_ms",
                threshold=gate.p95_ms,
                details={"error": error, "batch_size": gate.batch_size},
                reason=f"latency: the model fails to run on inputs that fit its signature: {error}",
            )
        ]
    p50, p95 = (float(np.percentile(timings, q)) for q in (50, 95))
    passed = p95 <= gate.p95_ms and (gate.p50_ms is None or p50 <= gate.p50_ms)
    why = f"latency p95 is {p95:.2f} ms > {gate.p95_ms:g} ms" if p95 > gate.p95_ms else ""
    if gate.p50_ms is not None and p50 > gate.p50_ms:
        why = f"latency p50 is {p50:.2f} ms > {gate.p50_ms:g} ms"
    return [
        GateOutcome(
            index,
            "latency",
            passed,
            metric="p95_ms",
            value=round(p95, 4),
            threshold=gate.p95_ms,
            rows=gate.runs,
            details={
                "p50_ms": round(p50, 4),
                "batch_size": gate.batch_size,
                "runs": gate.runs,
                "runtime": ctx.model.name,
            },
            reason=why,
        )
    ]


def _random_inputs(signature: runtimes.Signature, batch: int) -> Any:
    rng = np.random.default_rng(0)

    def one(spec: runtimes.TensorSpec) -> np.ndarray:
        shape = [batch, *[d or 1 for d in spec.shape[1:]]]
        if "int" in spec.dtype:
            return rng.integers(0, 2, size=shape).astype(spec.dtype)
        return rng.random(shape, dtype=np.float32)

    if len(signature.inputs) == 1:
        return one(signature.inputs[0])
    return {spec.name: one(spec) for spec in signature.inputs}


def _fmt(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:.1f}"


def _judge_metric(index: int, gate: MetricGate, slice_label: str, value: float, rows: int) -> GateOutcome:
    where = f"{gate.metric} on {slice_label}" if slice_label else gate.metric
    reason, threshold = "", gate.min if gate.min is not None else gate.max
    if gate.min is not None and value < gate.min:
        reason, threshold = f"{where} is {_fmt(value)} < {_fmt(gate.min)}", gate.min
    elif gate.max is not None and value > gate.max:
        reason, threshold = f"{where} is {_fmt(value)} > {_fmt(gate.max)}", gate.max
    return GateOutcome(
        index,
        "metric",
        not reason,
        metric=gate.metric,
        slice=slice_label,
        value=value,
        threshold=threshold,
        rows=rows,
        details={"dataset": gate.dataset, "min": gate.min, "max": gate.max},
        reason=reason,
    )


def _judge_regression(
    index: int,
    gate: NoRegressionGate,
    slice_label: str,
    value: float,
    baseline: float,
    rows: int,
    champion: int,
) -> GateOutcome:
    higher = evaluation.higher_is_better(gate.metric)
    drop = (baseline - value) if higher else (value - baseline)
    relative = drop / abs(baseline) if baseline else (0.0 if drop <= 0 else float("inf"))
    where = f"{gate.metric} on {slice_label}" if slice_label else gate.metric
    reason, threshold = "", gate.max_drop if gate.max_drop is not None else gate.max_relative_drop
    if gate.max_drop is not None and drop > gate.max_drop:
        reason = (
            f"{where} is {_fmt(value)} vs the champion v{champion}'s {_fmt(baseline)}: "
            f"a drop of {_fmt(drop)} > max_drop {_fmt(gate.max_drop)}"
        )
    elif gate.max_relative_drop is not None and relative > gate.max_relative_drop:
        reason = (
            f"{where} is {_fmt(value)} vs the champion v{champion}'s {_fmt(baseline)}: "
            f"a relative drop of {relative:.2%} > max_relative_drop {gate.max_relative_drop:.2%}"
        )
    return GateOutcome(
        index,
        "no_regression",
        not reason,
        metric=gate.metric,
        slice=slice_label,
        value=value,
        baseline=baseline,
        threshold=threshold,
        rows=rows,
        details={
            "dataset": gate.dataset,
            "champion": champion,
            "drop": drop,
            "relative_drop": relative if relative != float("inf") else None,
            "higher_is_better": higher,
        },
        reason=reason,
    )


@dataclass
class _Scored:
    """One pass over a dataset: labels, the candidate's and the champion's outputs, slice codes."""

    dataset: Dataset
    labels: np.ndarray
    candidate: np.ndarray
    champion: np.ndarray | None
    slices: dict[str, tuple[np.ndarray, list[str]]]  # column -> (int32 codes per row, sorted values)
    slice_rows: dict[str, list[int]]  # column -> rows per value


def _dataset_for(gate: Any) -> Dataset | None:
    found = Dataset.objects.filter(name=gate.dataset)
    if gate.dataset_version != "latest":
        found = found.filter(version=gate.dataset_version)
    return found.order_by("-version").first()


def _decoded(dataset: Dataset, group: list[Any]):
    """The dataset as a group of gates reads it: their label, features and every slice column."""
    gate = group[0]
    slice_columns = sorted({g.slice_by for g in group if g.slice_by})
    return dataset_cache.decoded(
        dataset, label=gate.label, features=gate.features, slice_columns=slice_columns
    )


def _groups(gates: list[tuple[int, Any]]) -> dict[tuple, list[tuple[int, Any]]]:
    """Dataset gates by (dataset, version, label, features): each group is one pass over its data."""
    groups: dict[tuple, list[tuple[int, Any]]] = {}
    for index, gate in gates:
        key = (gate.dataset, gate.dataset_version, gate.label, tuple(gate.features or ()))
        groups.setdefault(key, []).append((index, gate))
    return groups


def _score(
    dataset: Dataset, group: list[Any], model: runtimes.Runtime, champion: runtimes.Runtime | None
) -> _Scored:
    """Decode the dataset once (or find it decoded) and run both models on every row."""
    with _decoded(dataset, group) as data:
        candidate = evaluation.predict_batched(model, data.features)
        baseline = evaluation.predict_batched(champion, data.features) if champion is not None else None
        # The arrays stay memory-mapped after this block: a mapped file that is evicted (or was a
        # temporary one) is unlinked, and its pages live until the last map of them goes.
        return _Scored(
            dataset=dataset,
            labels=data.labels,
            candidate=candidate,
            champion=baseline,
            slices=data.slices,
            slice_rows=data.slice_rows,
        )


def _dataset_outcomes(index: int, gate: Any, scored: _Scored, ctx: GateContext) -> list[GateOutcome]:
    """The overall result first, then one per value of the slice column (sorted)."""
    codes, values = scored.slices[gate.slice_by] if gate.slice_by else (None, [])
    names = ["", *(f"{gate.slice_by}={value}" for value in values)]
    rows = [len(scored.labels), *(scored.slice_rows[gate.slice_by] if gate.slice_by else [])]
    candidate = evaluation.metric_by_slice(gate.metric, scored.labels, scored.candidate, codes, len(values))
    baseline = (
        evaluation.metric_by_slice(gate.metric, scored.labels, scored.champion, codes, len(values))
        if gate.kind == "no_regression"
        else None
    )
    outcomes = []
    for i, label in enumerate(names):
        count = int(rows[i])
        if i and count < gate.min_slice_rows:
            why = f"only {count} rows (< min_slice_rows {gate.min_slice_rows}): reported, not judged"
            outcomes.append(
                GateOutcome(
                    index, gate.kind, None, metric=gate.metric, slice=label, rows=count, skipped_reason=why
                )
            )
            continue
        results = [candidate[i], *([baseline[i]] if baseline else [])]
        failure = next((r for r in results if isinstance(r, Exception)), None)
        if failure is not None:
            if i:  # e.g. roc_auc on a slice holding one class: report, do not judge
                outcomes.append(
                    GateOutcome(
                        index,
                        gate.kind,
                        None,
                        metric=gate.metric,
                        slice=label,
                        rows=count,
                        skipped_reason=str(failure),
                    )
                )
            else:
                outcomes.append(
                    GateOutcome(
                        index,
                        gate.kind,
                        False,
                        metric=gate.metric,
                        rows=count,
                        reason=f"{gate.metric}: {failure}",
                    )
                )
        elif gate.kind == "metric":
            outcomes.append(_judge_metric(index, gate, label, candidate[i], count))
        else:
            outcomes.append(
                _judge_regression(index, gate, label, candidate[i], baseline[i], count, ctx.champion.version)
            )
    for outcome in outcomes:
        outcome.details.setdefault("dataset", f"{scored.dataset.name}:{scored.dataset.version}")
    return outcomes


def _open_champion(ctx: GateContext, workdir: Path) -> tuple[runtimes.Runtime | None, str]:
    champion = ctx.champion
    try:
        with blob_local_path(champion.artifact_key, suffix=SUFFIX.get(champion.format, "")) as path:
            return runtimes.open_model(Path(path), champion.format, workdir=workdir), ""
    except Exception as exc:
        return None, f"the champion v{champion.version} does not load: {exc}"


def _dataset_gates(
    gates: list[tuple[int, Any]], ctx: GateContext, workdir: Path
) -> tuple[list[GateOutcome], set[int]]:
    """Every metric and no_regression gate, one pass over the data per (dataset, label, features)."""
    outcomes: list[GateOutcome] = []
    used: set[int] = set()
    groups = _groups(gates)
    champion_model, champion_error = None, ""
    if (
        ctx.champion is not None
        and any(g.kind == "no_regression" for _, g in gates)
        and ctx.model is not None
    ):
        champion_model, champion_error = _open_champion(ctx, workdir / "champion")

    for (name, wanted, _label, _features), members in groups.items():
        dataset = _dataset_for(members[0][1])
        failure = ""
        if ctx.model is None:
            failure = "the model does not load"
        elif dataset is None:
            ref = name if wanted == "latest" else f"{name}:{wanted}"
            failure = f"dataset {ref} no longer exists"
        scored = None
        if not failure:
            needs_champion = any(g.kind == "no_regression" for _, g in members) and champion_model is not None
            started = time.perf_counter()
            try:
                scored = _score(
                    dataset, [g for _, g in members], ctx.model, champion_model if needs_champion else None
                )
            except FileNotFoundError:
                failure = f"dataset {dataset} has no bytes in the store (purged?)"
            except evaluation.EvaluationError as exc:
                failure = f"dataset {dataset}: {exc}"
            elapsed = (time.perf_counter() - started) * 1000
            used.add(dataset.pk)
        for index, gate in members:
            if failure:
                outcomes.append(
                    GateOutcome(
                        index,
                        gate.kind,
                        False,
                        metric=gate.metric,
                        details={"error": failure},
                        reason=f"{gate.kind} ({gate.metric}): {failure}",
                    )
                )
            elif gate.kind == "no_regression" and ctx.champion is None:
                outcomes.append(
                    GateOutcome(
                        index,
                        gate.kind,
                        None,
                        metric=gate.metric,
                        skipped_reason="no champion: the first version of a model has no baseline",
                    )
                )
            elif gate.kind == "no_regression" and champion_model is None:
                outcomes.append(
                    GateOutcome(
                        index,
                        gate.kind,
                        False,
                        metric=gate.metric,
                        details={"error": champion_error},
                        reason=f"no_regression ({gate.metric}): {champion_error}",
                    )
                )
            else:
                for outcome in _dataset_outcomes(index, gate, scored, ctx):
                    outcome.duration_ms = elapsed
                    outcomes.append(outcome)
    return outcomes, used


GATE_KINDS: dict[str, GateFn] = {
    "loads": _loads,
    "size": _size,
    "signature_compatible": _signature_compatible,
    "latency": _latency,
}
DATASET_GATES = {"metric", "no_regression"}


def gates_evaluate(version: ModelVersion) -> Evaluation:
    """Open the version in its runtime and run every gate of its model's policy."""
    policy = policy_parse(version.model.policy)
    champion = model_champion(version.model)
    if champion is not None and champion.pk == version.pk:
        champion = None
    model: runtimes.Runtime | None = None
    load_error = ""
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="modelgate-gates-") as workdir:
        with blob_local_path(version.artifact_key, suffix=SUFFIX.get(version.format, "")) as path:
            try:
                model = runtimes.open_model(Path(path), version.format, workdir=Path(workdir))
            except runtimes.ModelLoadError as exc:
                load_error = str(exc)
            except Exception as exc:  # any runtime crash is the model's failure, not the worker's
                log.warning("loading %s failed", version.label, exc_info=True)
                load_error = f"{type(exc).__name__}: {exc}"
            # The reason is shown to users: name the artifact, not the worker's file system.
            load_error = load_error.replace(str(path), "the artifact").replace(workdir, "<workdir>")
        load_ms = (time.perf_counter() - started) * 1000
        ctx = GateContext(
            version=version, policy=policy, model=model, load_error=load_error, champion=champion
        )
        outcomes: list[GateOutcome] = []
        kinds = [gate.kind for gate in policy.gates]
        if "loads" not in kinds:
            # A model that does not load is rejected whatever the policy lists; the check is implicit.
            outcomes += [o for o in _loads(len(policy.gates), None, ctx) if o.passed is False]
        for index, gate in enumerate(policy.gates):
            if gate.kind in DATASET_GATES:
                continue
            started = time.perf_counter()
            results = GATE_KINDS[gate.kind](index, gate, ctx)
            elapsed = (time.perf_counter() - started) * 1000
            for outcome in results:
                outcome.duration_ms = load_ms if gate.kind == "loads" else elapsed
            outcomes += results
        dataset_outcomes, used = _dataset_gates(
            [(i, g) for i, g in enumerate(policy.gates) if g.kind in DATASET_GATES], ctx, Path(workdir)
        )
        outcomes += dataset_outcomes
    outcomes.sort(key=lambda o: (o.gate_index, o.slice))
    return Evaluation(
        outcomes=outcomes,
        signature=model.signature.as_dict() if model is not None else None,
        runtime=model.name if model is not None else "",
        datasets=sorted(used),
    )


def datasets_warm(policy: Policy) -> int:
    """Decode every dataset the policy's gates score on into this host's dataset cache, so that the
    first push after a policy is written does not wait for the parsing; how many are decoded now.

    Nothing is judged or written. A dataset that is missing, purged or does not fit its gate is left
    alone: the gate rejects with that reason when a version is scored.
    """
    limit = dataset_cache.cache_limit_bytes()
    decoded = 0
    for members in _groups([(i, g) for i, g in enumerate(policy.gates) if g.kind in DATASET_GATES]).values():
        dataset = _dataset_for(members[0][1])
        if dataset is None or dataset.size > limit:
            continue  # with the cache off, or a file bigger than it, nothing would be kept
        try:
            with _decoded(dataset, [g for _, g in members]) as data:
                decoded += not data.from_cache
        except (FileNotFoundError, evaluation.EvaluationError) as exc:
            log.info("dataset %s is not decoded ahead of the gates: %s", dataset, exc)
    return decoded


def rejection_reason(failed: list[GateOutcome]) -> str:
    return "; ".join(o.reason or f"{o.gate} failed" for o in failed)
