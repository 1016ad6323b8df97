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

from lifecycle import runtimes
from lifecycle.policy import Policy, policy_parse
from registry.models import ModelVersion
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


def _not_available(index: int, gate: Any, ctx: GateContext) -> list[GateOutcome]:
    return [
        GateOutcome(
            index,
            gate.kind,
            False,
            metric=getattr(gate, "metric", "") or "",
            details={"error": "gate kind not available"},
            reason=f"{gate.kind}: gate kind not available",
        )
    ]


GATE_KINDS: dict[str, GateFn] = {
    "loads": _loads,
    "size": _size,
    "signature_compatible": _signature_compatible,
}


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
            started = time.perf_counter()
            results = GATE_KINDS.get(gate.kind, _not_available)(index, gate, ctx)
            elapsed = (time.perf_counter() - started) * 1000
            for outcome in results:
                outcome.duration_ms = load_ms if gate.kind == "loads" else elapsed
            outcomes += results
    return Evaluation(
        outcomes=outcomes,
        signature=model.signature.as_dict() if model is not None else None,
        runtime=model.name if model is not None else "",
    )


def rejection_reason(failed: list[GateOutcome]) -> str:
    return "; ".join(o.reason or f"{o.gate} failed" for o in failed)
