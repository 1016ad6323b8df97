"""factory_boy factories for catalogs and lineage graphs built straight in the database."""

from __future__ import annotations

import hashlib
import itertools

import factory
from django.contrib.auth import get_user_model

from registry.models import Dataset, ModelVersion, RegisteredModel, VersionDataset, VersionParent


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")


class RegisteredModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = RegisteredModel

    name = factory.Sequence(lambda n: f"model-{n}")


class ModelVersionFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ModelVersion

    model = factory.SubFactory(RegisteredModelFactory)
    version = factory.Sequence(lambda n: n + 1)
    sha256 = factory.LazyAttribute(
        lambda o: hashlib.sha256(f"{o.model.name}:{o.version}".encode()).hexdigest()
    )
    artifact_key = factory.LazyAttribute(
        lambda o: f"artifacts/sha256/{o.sha256[:2]}/{o.sha256[2:4]}/{o.sha256}"
    )
    size = 1024
    format = "onnx"


class DatasetFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Dataset

    name = factory.Sequence(lambda n: f"dataset-{n}")
    version = 1
    sha256 = factory.LazyAttribute(lambda o: hashlib.sha256(f"{o.name}:{o.version}".encode()).hexdigest())
    artifact_key = factory.LazyAttribute(lambda o: f"datasets/sha256/{o.sha256}")
    size = 100
    format = "csv"
    rows = 10
    schema = factory.LazyFunction(lambda: [{"name": "x", "dtype": "float64"}])


def parent_chain(model: RegisteredModel, length: int, *, kind: str = "fine_tuned_from") -> list[ModelVersion]:
    """``length`` versions of ``model``, each fine-tuned from the one before (v1 is the root)."""
    versions = [ModelVersionFactory(model=model, version=n) for n in range(1, length + 1)]
    VersionParent.objects.bulk_create(
        [
            VersionParent(child=child, parent=parent, kind=kind)
            for parent, child in itertools.pairwise(versions)
        ]
    )
    return versions


def link_dataset(version: ModelVersion, dataset: Dataset, role: str = "train") -> VersionDataset:
    return VersionDataset.objects.create(version=version, dataset=dataset, role=role)
