"""Properties of the policy validator (lifecycle.policy), found by hypothesis rather than by examples.

Whatever JSON arrives, ``policy_validate`` returns a normalised policy or raises ``PolicyInvalid`` naming
the field; a normalised policy validates again to itself; and the API answers 200 or 400, never a 5xx.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lifecycle.policy import PolicyInvalid, policy_validate

# Keys the policy knows, so that generated objects sometimes reach the validator's inner fields.
KEYS = ["gates", "exports", "shadow", "approval", "retirement", "kind", "min", "max", "formats"]

# Any JSON value, with the awkward corners: NaN and infinities, huge and negative numbers, NUL and
# non-ASCII text, empty and nested containers.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([0, -1, 1, 0.0, -0.0, 1e-300, 1e308, 2**63, -(2**63), 65537, 10**30])
    | st.text(max_size=20)
    | st.sampled_from(["", "latest", "onnx", "loads", "metric", "accuracy", "\x00", "é", "1", "true"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=12) | st.sampled_from(KEYS), children, max_size=4)
    ),
    max_leaves=20,
)

# A valid policy using every section (datasets are not checked here: check_datasets=False).
VALID: dict[str, Any] = {
    "gates": [
        {"kind": "loads"},
        {"kind": "signature_compatible"},
        {"kind": "size", "max_mb": 200},
        {"kind": "latency", "p95_ms": 50, "batch_size": 1},
        {"kind": "metric", "metric": "accuracy", "dataset": "holdout", "label": "y", "min": 0.9},
        {
            "kind": "metric",
            "metric": "recall",
            "dataset": "holdout",
            "label": "y",
            "slice_by": "country",
            "min": 0.8,
        },
        {"kind": "no_regression", "metric": "roc_auc", "dataset": "holdout", "label": "y", "max_drop": 0.005},
    ],
    "exports": {"formats": ["onnx", "tflite", "tfjs"], "required": ["onnx"], "parity_atol": 1e-4},
    "shadow": {
        "sample_rate": 0.1,
        "min_requests": 1000,
        "max_days": 7,
        "min_agreement": 0.98,
        "max_p95_latency_ratio": 1.5,
    },
    "approval": {
        "min_approvals": 1,
        "approvers": ["alice"],
        "slack_channel": "C0123456",
        "timeout_hours": 72,
        "allow_self_approval": False,
    },
    "retirement": {"unused_days": 30, "warn_days": 7, "keep_last": 3, "purge_after_days": 90},
}


def _paths(document: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a JSON document (dict keys and list indexes), the root excluded."""
    found: list[tuple] = []
    if isinstance(document, dict | list):
        items = document.items() if isinstance(document, dict) else enumerate(document)
        for key, child in items:
            found.append((*prefix, key))
            found.extend(_paths(child, (*prefix, key)))
    return found


ALL_PATHS = _paths(VALID)


@st.composite
def near_valid_policies(draw: st.DrawFn) -> Any:
    """The valid policy with one to three edits: a value replaced, a key removed or an unknown key added."""
    document = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent = document
        try:
            for key in path[:-1]:
                parent = parent[key]
            edit = draw(st.sampled_from(["replace", "delete", "add"]))
            if edit == "replace":
                parent[path[-1]] = draw(json_values)
            elif edit == "delete":
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.text(min_size=1, max_size=8))] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced this path
    return document


def _validate_or_refuse(document: Any) -> dict[str, Any] | None:
    """The property itself: a normalised policy, or PolicyInvalid naming fields; nothing else."""
    try:
        result = policy_validate(document, check_datasets=False)
    except PolicyInvalid as exc:
        assert exc.fields, "a refusal names at least one field"
        for field, messages in exc.fields.items():
            assert isinstance(field, str) and field, exc.fields
            assert messages and all(isinstance(m, str) and m for m in messages), exc.fields
        assert str(exc).startswith("invalid policy: ")
        return None
    assert isinstance(result, dict)
    json.dumps(result, allow_nan=False)  # what is stored is strict JSON
    return result


COMMON = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@COMMON
@given(json_values)
def test_any_json_value_is_either_a_policy_or_a_refusal_naming_the_field(document: Any) -> None:
    _validate_or_refuse(document)


@COMMON
@given(near_valid_policies())
def test_a_near_valid_policy_is_either_a_policy_or_a_refusal_naming_the_field(document: Any) -> None:
    _validate_or_refuse(document)


@COMMON
@given(st.one_of(near_valid_policies(), json_values))
def test_a_normalised_policy_validates_again_to_itself(document: Any) -> None:
    result = _validate_or_refuse(document)
    if result is not None:
        assert policy_validate(result, check_datasets=False) == result


def test_the_valid_policy_is_valid_and_its_defaults_are_filled_in() -> None:
    result = policy_validate(VALID, check_datasets=False)
    assert result["shadow"]["on_insufficient"] == "reject"
    assert policy_validate(result, check_datasets=False) == result


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinities_are_refused_where_a_number_is_expected(value: float) -> None:
    with pytest.raises(PolicyInvalid) as caught:
        policy_validate({"gates": [{"kind": "size", "max_mb": value}]}, check_datasets=False)
    assert "gates.0.max_mb" in caught.value.fields


# --- through the API --------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body", [b'{"gates": [{"kind": "size", "max_mb": 1e999}]}', b'{"shadow": {"max_days": -1e400}}']
)
def test_put_policy_refuses_a_number_that_overflows_a_float(owner, fraud_model, body: bytes) -> None:
    # 1e999 is valid JSON that Python reads as inf; jsonb cannot store it (it was a 500 on save).
    response = owner.client.put("/api/v1/models/fraud/policy/", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert "out of range" in response.json()["error"]["message"]


@pytest.mark.django_db
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.one_of(near_valid_policies(), json_values))
def test_put_policy_answers_200_or_400_whatever_the_body(owner, fraud_model, document: Any) -> None:
    # allow_nan: a client may well send NaN or Infinity, which strict JSON parsers refuse.
    body = json.dumps(document, allow_nan=True)

    response = owner.client.put("/api/v1/models/fraud/policy/", body, content_type="application/json")

    assert response.status_code in {200, 400}, response.content
    if response.status_code == 400:
        assert response.json()["error"]["message"]
    else:
        assert policy_validate(response.json(), check_datasets=False) == response.json()
