"""Per-feature summary statistics: computed once when a dataset is registered, in the same chunked pass
that counts its rows, the same for CSV, Parquet and NPZ, and filled in for older datasets by a command."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from django.core.management import call_command

from registry import datasets
from registry.models import Dataset
from registry.storage import blob_delete

pytestmark = pytest.mark.django_db


def frame(rows: int = 3000) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    data = pd.DataFrame(
        {
            "amount": rng.gamma(2.0, 50.0, rows),
            "age": rng.integers(18, 90, rows),
            "country": rng.choice(["US", "DE", "FR", "BR"], rows, p=[0.4, 0.3, 0.2, 0.1]),
        }
    )
    data.loc[[3, 20, 40], "amount"] = np.nan
    return data


def upload(client, name: str, filename: str, payload: bytes):
    response = client.post(
        "/api/v1/datasets/", {"file": io.BytesIO(payload), "name": name}, format="multipart"
    )
    assert response.status_code == 201, response.content
    return response.json()


def payloads(data: pd.DataFrame) -> dict[str, bytes]:
    csv = data.to_csv(index=False).encode()
    parquet = io.BytesIO()
    data.to_parquet(parquet)
    npz = io.BytesIO()
    np.savez(
        npz,
        amount=data["amount"].to_numpy(),
        age=data["age"].to_numpy(),
        country=data["country"].to_numpy().astype("U2"),
    )
    return {"csv": csv, "parquet": parquet.getvalue(), "npz": npz.getvalue()}


def test_registering_a_dataset_stores_statistics_equal_to_pandas_in_every_format(owner):
    data = frame()
    for fmt, payload in payloads(data).items():
        body = upload(owner.client, f"tx-{fmt}", f"tx.{fmt}", payload)
        columns = body["stats"]["columns"]
        amount, age, country = columns["amount"], columns["age"], columns["country"]
        assert amount["kind"] == "numeric" and amount["nulls"] == 3 and amount["count"] == 2997, fmt
        assert amount["mean"] == pytest.approx(data["amount"].mean(), rel=1e-9)
        assert amount["std"] == pytest.approx(data["amount"].std(), rel=1e-9)
        assert (amount["min"], amount["max"]) == pytest.approx((data["amount"].min(), data["amount"].max()))
        assert age["mean"] == pytest.approx(data["age"].mean()) and age["nulls"] == 0
        assert country["kind"] == "categorical" and country["distinct"] == 4
        assert [tuple(t) for t in country["top"]] == list(data["country"].value_counts().items())
        # Stored with the dataset: the detail endpoint answers from the row, not the file.
        stored = Dataset.objects.get(name=f"tx-{fmt}")
        assert stored.stats == body["stats"]
        detail = owner.client.get(f"/api/v1/datasets/tx-{fmt}/1/").json()
        assert detail["stats"] == body["stats"]
    listing = owner.client.get("/api/v1/datasets/").json()["results"]
    assert "stats" not in listing[0]  # lists stay short


def test_chunks_are_folded_exactly_and_a_column_that_turns_to_text_counts_the_text_as_nulls(
    owner, monkeypatch
):
    monkeypatch.setattr(datasets, "CSV_CHUNK_ROWS", 128)
    data = frame(1000)
    text = data.astype({"age": object})
    text.loc[900:, "age"] = "unknown"  # numeric in the first chunks, text in the last ones
    body = upload(owner.client, "chunked", "c.csv", text.to_csv(index=False).encode())
    amount, age = body["stats"]["columns"]["amount"], body["stats"]["columns"]["age"]
    assert amount["std"] == pytest.approx(data["amount"].std(), rel=1e-9)
    assert age["kind"] == "numeric" and age["nulls"] == 100 and age["count"] == 900
    assert age["mean"] == pytest.approx(data["age"][:900].mean())


def test_a_high_cardinality_column_keeps_its_frequent_values_and_says_the_count_is_a_floor(
    owner, monkeypatch
):
    monkeypatch.setattr(datasets, "MAX_DISTINCT", 100)
    monkeypatch.setattr(datasets, "CSV_CHUNK_ROWS", 500)
    ids = [f"user-{i}" for i in range(2000)] + ["frequent"] * 300 + ["common"] * 200
    body = upload(owner.client, "ids", "ids.csv", pd.DataFrame({"id": ids}).to_csv(index=False).encode())
    column = body["stats"]["columns"]["id"]
    assert column["distinct_is_lower_bound"] is True
    assert column["top"][:2] == [["frequent", 300], ["common", 200]]
    assert column["count"] == 2500


def test_the_command_fills_in_datasets_registered_before_statistics_were_kept(owner):
    data = frame(500)
    upload(owner.client, "old", "old.csv", data.to_csv(index=False).encode())
    upload(owner.client, "gone", "gone.csv", frame(50).to_csv(index=False).encode())
    Dataset.objects.update(stats={})
    blob_delete(Dataset.objects.get(name="gone").artifact_key)

    out, err = io.StringIO(), io.StringIO()
    call_command("dataset_stats", stdout=out, stderr=err)

    assert Dataset.objects.get(name="old").stats["columns"]["amount"]["mean"] == pytest.approx(
        data["amount"].mean()
    )
    assert Dataset.objects.get(name="gone").stats == {}
    assert "1 dataset(s) profiled, 1 skipped" in out.getvalue()
    assert "gone:1: its bytes are not in the store" in err.getvalue()
