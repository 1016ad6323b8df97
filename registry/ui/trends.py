"""Gate metrics across a model's versions: one line chart per metric, its threshold drawn."""

from __future__ import annotations

from typing import Any

from registry import selectors
from registry.models import RegisteredModel
from registry.ui import charts

VERSIONS_CHARTED = 50


def gate_charts(model: RegisteredModel) -> list[dict[str, Any]]:
    """The charts of the model page; the threshold line is the newest version's (policies change)."""
    out = []
    for metric, points in sorted(selectors.gate_metric_series(model, last=VERSIONS_CHARTED).items()):
        threshold = points[-1]["threshold"]
        out.append(
            {
                "metric": metric,
                "threshold": threshold,
                "versions": len(points),
                "failed": sum(1 for p in points if p["passed"] is False),
                "latest": points[-1],
                # One point is no trend (and its x axis would invent a second version): text only.
                "svg": None
                if len(points) < 2
                else charts.line(
                    [(p["version"], p["value"]) for p in points],
                    label=f"{metric} of the overall rows, by version",
                    threshold=threshold,
                    x_prefix="v",
                ),
            }
        )
    return out
