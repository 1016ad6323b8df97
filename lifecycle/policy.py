"""The lifecycle policy of a registered model (DESIGN.md §5): its schema, defaults and validation.

A policy is JSON. ``policy_validate`` checks it, fills in the defaults and returns the normalised
document that is stored; errors name the field (``gates.2.min``) so that a 400 can say what is wrong.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from registry.errors import nul_path

METRICS_HIGHER_IS_BETTER = {
    "accuracy": True,
    "precision": True,
    "recall": True,
    "f1": True,
    "roc_auc": True,
    "r2": True,
    "log_loss": False,
    "mse": False,
    "rmse": False,
    "mae": False,
}
Metric = Literal["accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "mse", "rmse", "mae", "r2"]


class _Strict(BaseModel):
    # No NaN or infinity: jsonb cannot store them, and inf would pass every `gt=0`.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class LoadsGate(_Strict):
    kind: Literal["loads"]


class SignatureGate(_Strict):
    kind: Literal["signature_compatible"]


class SizeGate(_Strict):
    kind: Literal["size"]
    max_mb: float = Field(gt=0)


class LatencyGate(_Strict):
    kind: Literal["latency"]
    p95_ms: float = Field(gt=0)
    p50_ms: float | None = Field(default=None, gt=0)
    batch_size: int = Field(default=1, ge=1, le=65536)
    runs: int = Field(default=50, ge=5, le=10000)
    warmup: int = Field(default=5, ge=0, le=1000)


class _DatasetGate(_Strict):
    metric: Metric
    dataset: str = Field(min_length=1, max_length=100)
    dataset_version: int | Literal["latest"] = "latest"
    label: str = Field(min_length=1)
    features: list[str] | None = None
    slice_by: str | None = None
    min_slice_rows: int = Field(default=30, ge=1)


class MetricGate(_DatasetGate):
    kind: Literal["metric"]
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _has_threshold(self) -> MetricGate:
        if self.min is None and self.max is None:
            raise ValueError("a metric gate needs `min` and/or `max`")
        return self


class NoRegressionGate(_DatasetGate):
    kind: Literal["no_regression"]
    max_drop: float | None = Field(default=None, ge=0)
    max_relative_drop: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _has_tolerance(self) -> NoRegressionGate:
        if self.max_drop is None and self.max_relative_drop is None:
            raise ValueError("a no_regression gate needs `max_drop` and/or `max_relative_drop`")
        return self


Gate = Annotated[
    LoadsGate | SignatureGate | SizeGate | LatencyGate | MetricGate | NoRegressionGate,
    Field(discriminator="kind"),
]
ExportFormat = Literal["onnx", "tflite", "tflite-dynamic", "tfjs"]


class Exports(_Strict):
    formats: list[ExportFormat] = []
    required: list[ExportFormat] = []
    # Parity: each export runs on parity_samples inputs in its own runtime and may differ from the
    # source model's outputs by at most its tolerance: parity_atol for float formats,
    # parity_atol_quantized for quantised ones (tflite-dynamic), unless parity_atol_per_format names it.
    parity_atol: float = Field(default=1e-4, gt=0)
    parity_atol_quantized: float = Field(default=1e-2, gt=0)
    parity_atol_per_format: dict[ExportFormat, Annotated[float, Field(gt=0)]] = {}
    parity_samples: int = Field(default=32, ge=1, le=10_000)
    opset: int = Field(default=17, ge=7, le=23)

    @model_validator(mode="after")
    def _required_listed(self) -> Exports:
        missing = set(self.required) - set(self.formats)
        if missing:
            raise ValueError(f"required formats must also be listed in formats: {sorted(missing)}")
        return self


class Shadow(_Strict):
    enabled: bool = True
    sample_rate: float = Field(default=0.1, ge=0, le=1)
    min_requests: int = Field(default=1000, ge=1)
    max_days: float = Field(default=7, gt=0)
    min_agreement: float = Field(default=0.98, ge=0, le=1)
    max_p95_latency_ratio: float = Field(default=1.5, gt=0)
    on_insufficient: Literal["reject", "approve_anyway"] = "reject"
    # How outputs are compared: classes (argmax, or the 0.5 threshold of one sigmoid) for classifiers,
    # |candidate - champion| <= tolerance for regressors; "auto" decides from the policy's metric gates
    # and the output shape.
    task: Literal["auto", "classification", "regression"] = "auto"
    tolerance: float = Field(default=0.01, gt=0)
    # Traffic from this many hours before the shadow began is replayed too (0: only new traffic).
    replay_hours: float = Field(default=24, ge=0)
    # With labels, the candidate may be this much worse than the champion on the labelled subset (the
    # no_regression gate's metric and max_drop win when the policy has one).
    max_metric_drop: float = Field(default=0.01, ge=0)


class Approval(_Strict):
    min_approvals: int = Field(default=1, ge=1, le=20)
    approvers: list[str] = []
    slack_channel: str | None = None
    timeout_hours: float = Field(default=72, gt=0)
    allow_self_approval: bool = False


class Retirement(_Strict):
    enabled: bool = True
    unused_days: int = Field(default=30, ge=1)
    warn_days: int = Field(default=7, ge=0)
    keep_last: int = Field(default=3, ge=0)
    retire_production: bool = True
    purge_after_days: int = Field(default=90, ge=0)


def _default_gates() -> list[Any]:
    return [LoadsGate(kind="loads"), SignatureGate(kind="signature_compatible")]


class Policy(_Strict):
    gates: list[Gate] = Field(default_factory=_default_gates, max_length=100)
    exports: Exports = Exports()
    shadow: Shadow = Shadow()
    approval: Approval = Approval()
    retirement: Retirement = Retirement()


class PolicyInvalid(Exception):
    def __init__(self, fields: dict[str, list[str]]) -> None:
        self.fields = fields
        first = next(iter(fields.items()))
        super().__init__(f"invalid policy: {first[0]}: {first[1][0]}")


def _field_errors(exc: ValidationError) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for err in exc.errors():
        # Drop pydantic's union-branch labels (e.g. "metric") from the location.
        loc = [
            str(p)
            for p in err["loc"]
            if not (isinstance(p, str) and p in _GATE_KINDS and len(err["loc"]) > 2)
        ]
        key = ".".join(loc) or "policy"
        fields.setdefault(key, []).append(err["msg"])
    return fields


_GATE_KINDS = {"loads", "signature_compatible", "size", "latency", "metric", "no_regression"}


def policy_parse(document: Any) -> Policy:
    """Validate a policy document; raise PolicyInvalid naming the fields."""
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise PolicyInvalid({"policy": ["the policy must be a JSON object"]})
    if where := nul_path(document, "policy"):
        raise PolicyInvalid({where.removeprefix("policy.") or "policy": ["contains a NUL character"]})
    try:
        return Policy.model_validate(document)
    except ValidationError as exc:
        raise PolicyInvalid(_field_errors(exc)) from None


def policy_validate(document: Any, *, check_datasets: bool = True) -> dict[str, Any]:
    """Validate, fill in defaults and return the JSON to store.

    With ``check_datasets`` every dataset a gate names must exist (at the named version) now: a typo
    should fail when the policy is written, not when the first version is validated.
    """
    policy = policy_parse(document)
    if check_datasets:
        from registry.models import Dataset

        errors: dict[str, list[str]] = {}
        for index, gate in enumerate(policy.gates):
            if not isinstance(gate, MetricGate | NoRegressionGate):
                continue
            found = Dataset.objects.filter(name=gate.dataset)
            if gate.dataset_version != "latest":
                found = found.filter(version=gate.dataset_version)
            if not found.exists():
                wanted = (
                    gate.dataset
                    if gate.dataset_version == "latest"
                    else f"{gate.dataset}:{gate.dataset_version}"
                )
                errors.setdefault(f"gates.{index}.dataset", []).append(f"no dataset {wanted} is registered")
        if errors:
            raise PolicyInvalid(errors)
    return policy.model_dump(mode="json", exclude_none=False)
