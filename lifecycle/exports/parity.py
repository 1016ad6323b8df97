"""Parity: does an export give the source model's outputs, in the runtime it will run in?

K sample inputs are fed to the source model (in its own runtime) and to the export (in its target
runtime); every output is compared element-wise. The inputs are the first K rows of the validation
dataset the gates scored the version on, when the policy names one; otherwise random normal inputs
drawn from the source's signature with a fixed seed, so that a re-run checks the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lifecycle import evaluation, runtimes
from lifecycle.policy import MetricGate, NoRegressionGate, Policy
from registry.models import DatasetRole, ModelVersion
from registry.storage import blob_local_path

SEED = 0


@dataclass
class Samples:
    inputs: np.ndarray | dict[str, np.ndarray]
    count: int
    origin: str  # where the rows came from, for the record


@dataclass
class Parity:
    max_abs_diff: float
    mean_abs_diff: float
    atol: float
    samples: int
    outputs: list[str]
    problem: str = ""  # a shape or NaN mismatch that no tolerance excuses

    @property
    def passed(self) -> bool:
        return not self.problem and self.max_abs_diff <= self.atol

    def as_dict(self) -> dict[str, Any]:
        return {
            # JSON (and PostgreSQL's jsonb) has no infinity: a mismatch that no number measures is null.
            "max_abs_diff": _finite(self.max_abs_diff),
            "mean_abs_diff": _finite(self.mean_abs_diff),
            "atol": self.atol,
            "passed": self.passed,
            "samples": self.samples,
            "outputs": self.outputs,
            **({"problem": self.problem} if self.problem else {}),
        }

    def reason(self) -> str:
        if self.problem:
            return f"parity missed: {self.problem}"
        return (
            f"parity missed: max abs diff {self.max_abs_diff:.3g} > atol {self.atol:g} "
            f"over {self.samples} samples (mean {self.mean_abs_diff:.3g})"
        )


def _finite(value: float) -> float | None:
    return value if np.isfinite(value) else None


def parity_samples(
    *, version: ModelVersion, policy: Policy, signature: runtimes.Signature, k: int
) -> Samples:
    """K inputs for the check: validation rows when they fit the signature, else seeded random ones."""
    rows = _validation_rows(version, policy, signature, k)
    if rows is not None:
        return rows
    rng = np.random.default_rng(SEED)

    def one(spec: runtimes.TensorSpec) -> np.ndarray:
        shape = [k, *[d or 1 for d in spec.shape[1:]]]
        if "int" in spec.dtype or spec.dtype == "bool":
            return rng.integers(0, 2, size=shape).astype(spec.dtype)
        return rng.standard_normal(shape).astype(np.float32)

    specs = signature.inputs
    inputs = one(specs[0]) if len(specs) == 1 else {spec.name: one(spec) for spec in specs}
    return Samples(inputs=inputs, count=k, origin=f"random normal inputs from the signature (seed {SEED})")


def _validation_rows(
    version: ModelVersion, policy: Policy, signature: runtimes.Signature, k: int
) -> Samples | None:
    """The first K rows of the dataset a metric gate scored this version on (linked as validation)."""
    if len(signature.inputs) != 1:
        return None  # dataset rows are one flat feature vector; several inputs take random samples
    links = {
        (link.dataset.name, link.dataset.version): link.dataset
        for link in version.dataset_links.filter(role=DatasetRole.VALIDATION).select_related("dataset")
    }
    for gate in policy.gates:
        if not isinstance(gate, MetricGate | NoRegressionGate):
            continue
        dataset = next(
            (
                ds
                for (name, number), ds in sorted(links.items(), key=lambda item: -item[0][1])
                if name == gate.dataset and gate.dataset_version in ("latest", number)
            ),
            None,
        )
        if dataset is None:
            continue
        spec = signature.inputs[0]
        try:
            with blob_local_path(dataset.artifact_key, suffix=f".{dataset.format}") as path:
                chunk = next(
                    evaluation.read_chunks(
                        Path(path), dataset.format, label=gate.label, features=gate.features
                    ),
                    None,
                )
        except (FileNotFoundError, evaluation.EvaluationError):
            continue
        if chunk is None or not len(chunk.features):
            continue
        features = chunk.features[:k]
        shape = [len(features), *[d or 0 for d in spec.shape[1:]]]
        if 0 in shape[1:] or int(np.prod(shape[1:])) != features.shape[1]:
            continue  # the rows do not fit the input (an image model scored on other columns)
        return Samples(
            inputs=features.reshape(shape).astype(spec.dtype if spec.dtype != "string" else np.float32),
            count=len(features),
            origin=f"dataset {dataset.name}:{dataset.version} (first {len(features)} rows)",
        )
    return None


def align_inputs(
    inputs: np.ndarray | dict[str, np.ndarray], source: runtimes.Signature, target: runtimes.Signature
) -> np.ndarray | dict[str, np.ndarray]:
    """The source's inputs keyed for the target: by name when both sides use the same names, else by
    position (converters rename inputs, e.g. ``features`` to ``features:0``)."""
    if not isinstance(inputs, dict):
        return inputs
    target_names = [t.name for t in target.inputs]
    if set(target_names) == set(inputs):
        return inputs
    ordered = [inputs[t.name] for t in source.inputs]
    return dict(zip(target_names, ordered, strict=True))


def _as_list(outputs: runtimes.Outputs, signature: runtimes.Signature) -> list[tuple[str, np.ndarray]]:
    if isinstance(outputs, dict):
        return [(t.name, np.asarray(outputs[t.name])) for t in signature.outputs]
    return [(signature.outputs[0].name if signature.outputs else "output_0", np.asarray(outputs))]


def parity_compare(
    reference: runtimes.Outputs,
    reference_signature: runtimes.Signature,
    candidate: runtimes.Outputs,
    candidate_signature: runtimes.Signature,
    *,
    atol: float,
    samples: int,
) -> Parity:
    """Compare every output element-wise; outputs pair by name when the names agree, else by position."""
    ref = _as_list(reference, reference_signature)
    got = _as_list(candidate, candidate_signature)
    names = [name for name, _ in ref]
    if len(ref) != len(got):
        return Parity(
            float("inf"), float("inf"), atol, samples, names,
            problem=f"the export has {len(got)} output(s), the source {len(ref)}",
        )  # fmt: skip
    by_name = dict(got)
    if set(by_name) == set(names):
        got = [(name, by_name[name]) for name in names]
    diffs = []
    for (name, want), (_, have) in zip(ref, got, strict=True):
        if want.shape != have.shape:
            return Parity(
                float("inf"), float("inf"), atol, samples, names,
                problem=f"output {name!r} has shape {list(have.shape)} in the export, {list(want.shape)} in the source",
            )  # fmt: skip
        want64, have64 = want.astype(np.float64), have.astype(np.float64)
        if not np.array_equal(np.isnan(want64), np.isnan(have64)):
            return Parity(
                float("inf"), float("inf"), atol, samples, names,
                problem=f"output {name!r} has NaNs where the source has numbers (or the reverse)",
            )  # fmt: skip
        finite = ~np.isnan(want64)
        diffs.append(np.abs(want64[finite] - have64[finite]))
    every = np.concatenate([d.ravel() for d in diffs]) if diffs else np.zeros(0)
    if every.size and not np.isfinite(every).all():
        return Parity(
            float("inf"), float("inf"), atol, samples, names, problem="an output differs by infinity"
        )
    return Parity(
        max_abs_diff=float(every.max()) if every.size else 0.0,
        mean_abs_diff=float(every.mean()) if every.size else 0.0,
        atol=atol,
        samples=samples,
        outputs=names,
    )
