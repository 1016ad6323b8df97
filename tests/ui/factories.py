"""What the pages need on top of ``tests.factories``: versions as CI pushes them, gate results, events.

Rows are written straight to the database on purpose: a page test needs a version in a given state
with given gate results, not the pipeline that produced them (the pipeline has its own tests).
"""

from __future__ import annotations

import hashlib

import factory

from registry.models import Alias, Event, GateResult, ModelVersion, VersionParent
from tests.factories import DatasetFactory, ModelVersionFactory, RegisteredModelFactory, link_dataset

__all__ = [
    "DatasetFactory",
    "GateResultFactory",
    "PushedVersionFactory",
    "RegisteredModelFactory",
    "link_dataset",
    "link_parent",
    "make_champion",
    "record_event",
]


class PushedVersionFactory(ModelVersionFactory):
    """A version with the metadata a CI push carries: source, signature, params, reported metrics."""

    size = 48_213
    git_sha = factory.LazyAttribute(
        lambda v: hashlib.sha1(f"{v.model.name}-{v.version}".encode()).hexdigest()
    )
    source = factory.LazyAttribute(
        lambda v: {
            "git_sha": v.git_sha,
            "branch": "main",
            "ci_run_url": f"https://ci.example.com/runs/{v.version}",
            "author": "pablo",
        }
    )
    signature = factory.LazyFunction(
        lambda: {
            "inputs": [{"name": "features", "dtype": "float32", "shape": [None, 4]}],
            "outputs": [{"name": "probabilities", "dtype": "float32", "shape": [None, 2]}],
        }
    )
    params = factory.LazyFunction(lambda: {"epochs": 2, "optimizer": "adam"})
    metrics = factory.LazyFunction(lambda: {"accuracy": 0.97})


class GateResultFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = GateResult

    version = factory.SubFactory(PushedVersionFactory)
    attempt = 1
    gate_index = factory.Sequence(lambda n: n)
    gate = "metric"
    metric = "accuracy"
    slice = ""
    value = 0.95
    threshold = 0.9
    passed = True


def link_parent(child: ModelVersion, parent: ModelVersion, kind: str = "fine_tuned_from") -> VersionParent:
    return VersionParent.objects.create(child=child, parent=parent, kind=kind)


def make_champion(version: ModelVersion) -> Alias:
    """Put ``version`` in production with the champion alias, as a promotion leaves it."""
    ModelVersion.objects.filter(pk=version.pk).update(status="production")
    version.status = "production"
    return Alias.objects.create(model=version.model, name="champion", version=version)


def record_event(version: ModelVersion, kind: str = "version.transitioned", **data) -> Event:
    return Event.objects.create(
        kind=kind, actor="system:test", model=version.model, version=version, data=data
    )
