"""Traffic uploads and labels: all or nothing, every refusal a 4xx naming the record."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lifecycle.traffic import pack, unpack
from registry.models import Event, TrafficRecord
from tests.serving.test_shadow import served_champion

pytestmark = pytest.mark.django_db(transaction=True)


def upload(client, content: bytes, name: str = "traffic.jsonl"):
    stream = io.BytesIO(content)
    stream.name = name
    return client.post("/api/v1/models/fraud/traffic/", {"file": stream}, format="multipart")


def jsonl(*items) -> bytes:
    return "\n".join(json.dumps(i) for i in items).encode()


def test_pack_and_unpack_round_trip_single_and_named_inputs():
    single = np.arange(12, dtype=np.float32).reshape(3, 4)
    blob, layout = pack(single)
    assert np.array_equal(unpack(blob, layout), single)
    named = {"age": np.ones((2, 3), np.float32), "country": np.arange(4, dtype=np.int64).reshape(2, 2)}
    blob, layout = pack(named)
    back = unpack(blob, layout)
    assert set(back) == {"age", "country"} and all(np.array_equal(back[k], named[k]) for k in named)


def test_a_jsonl_upload_is_stored_with_labels_and_slices(fraud_model, publisher, tmp_path):
    served_champion(fraud_model, tmp_path)
    response = upload(
        publisher.client,
        jsonl(
            {"inputs": [[1, 2, 3, 4]], "labels": [1], "metadata": {"country": "DE"}, "request_id": "a"},
            {"inputs": [1, 2, 3, 4], "label": 0},  # one row without the batch axis, a bare label
            {"inputs": [[0, 0, 0, 0], [1, 1, 1, 1]]},
        ),
    )
    assert response.status_code == 201, response.content
    assert response.json() == {"records": 3, "rows": 4, "labelled": 2}
    first = TrafficRecord.objects.get(request_id="a")
    assert first.source == "recorded" and first.labels == [1] and first.metadata == {"country": "DE"}
    assert unpack(first.inputs, first.input_layout).tolist() == [[1, 2, 3, 4]]
    assert Event.objects.filter(kind="traffic.uploaded", data__records=3).exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            jsonl({"inputs": [[1, 2, 3, 4]]}, {"inputs": [[1, 2, 3]]}),
            "record 2: input 'features' has shape [1, 3]",
        ),
        (b'{"inputs": [[1, 2, 3, 4]]}\n{not json', "line 2: not valid JSON"),
        (
            jsonl({"inputs": [[1, 2, 3, 4]], "labels": [1, 0]}),
            "record 1: `labels` must hold one number per input row",
        ),
        (jsonl({"labels": [1]}), "record 1: `inputs` is missing"),
        (jsonl({"inputs": [["a", "b", "c", "d"]]}), "record 1: input 'features' is not a numeric array"),
        (
            jsonl({"inputs": [[1, 2, 3, 4]], "metadata": {"a": [1]}}),
            "`metadata` must be an object of plain values",
        ),
        (jsonl({"inputs": [[1, 2, 3, 4]], "colour": "red"}), "unknown fields ['colour']"),
        (
            jsonl(
                {"inputs": [[1, 2, 3, 4]], "request_id": "x"}, {"inputs": [[1, 2, 3, 4]], "request_id": "x"}
            ),
            "appears twice",
        ),
        (b"", "holds no records"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (jsonl([1, 2]), "each record must be a JSON object"),
    ],
)
def test_a_bad_upload_is_refused_naming_the_record_and_nothing_is_written(
    fraud_model, publisher, tmp_path, content, expected
):
    served_champion(fraud_model, tmp_path)
    response = upload(publisher.client, content)
    assert response.status_code == 400, response.content
    assert expected in response.json()["error"]["message"], response.json()
    assert not TrafficRecord.objects.exists()


def test_uploads_need_a_signature_a_role_and_unique_request_ids(fraud_model, publisher, viewer, tmp_path):
    first = upload(publisher.client, jsonl({"inputs": [[1, 2, 3, 4]]}))
    assert first.status_code == 409 and first.json()["error"]["code"] == "no_signature"
    served_champion(fraud_model, tmp_path)
    assert upload(viewer.client, jsonl({"inputs": [[1, 2, 3, 4]]})).status_code == 403
    assert upload(publisher.client, jsonl({"inputs": [[1, 2, 3, 4]], "request_id": "r1"})).status_code == 201
    again = upload(publisher.client, jsonl({"inputs": [[1, 2, 3, 4]], "request_id": "r1"}))
    assert again.status_code == 409 and again.json()["error"]["code"] == "duplicate_request_id"
    missing = publisher.client.post("/api/v1/models/fraud/traffic/", {}, format="multipart")
    assert missing.status_code == 400 and "`file`" in missing.json()["error"]["message"]
    assert TrafficRecord.objects.count() == 1


def test_a_parquet_upload_takes_inputs_labels_and_every_other_column_as_a_slice(
    fraud_model, publisher, tmp_path
):
    served_champion(fraud_model, tmp_path)
    table = pa.table(
        {
            "inputs": [[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 1.0]],
            "label": [1, 0],
            "country": ["DE", "FR"],
            "request_id": ["p1", "p2"],
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink)

    response = upload(publisher.client, sink.getvalue(), name="traffic.parquet")

    assert response.status_code == 201, response.content
    assert response.json() == {"records": 2, "rows": 2, "labelled": 2}
    assert TrafficRecord.objects.get(request_id="p2").metadata == {"country": "FR"}
    bad = upload(publisher.client, b"PAR1 not really", name="bad.parquet")
    assert bad.status_code == 400 and "not a Parquet file" in bad.json()["error"]["message"]


def test_labels_attach_by_request_id_and_report_unknown_ids(fraud_model, publisher, viewer, tmp_path):
    served_champion(fraud_model, tmp_path)
    live = viewer.client.post(
        "/api/v1/models/fraud/predict/", {"inputs": [[1, 2, 3, 4]], "request_id": "req-1"}, format="json"
    )
    assert live.status_code == 200 and live.json()["request_id"] == "req-1"
    upload(publisher.client, jsonl({"inputs": [[1, 2, 3, 4], [0, 0, 0, 0]], "request_id": "up-1"}))

    response = publisher.client.post(
        "/api/v1/models/fraud/traffic/labels/",
        {"labels": [{"request_id": "up-1", "labels": [1, 0]}, {"request_id": "nope", "labels": [1]}]},
        format="json",
    )
    assert response.status_code == 200, response.content
    assert response.json() == {"labelled": 1, "unknown_request_ids": ["nope"]}
    assert TrafficRecord.objects.get(request_id="up-1").labels == [1, 0]
    wrong = publisher.client.post(
        "/api/v1/models/fraud/traffic/labels/",
        {"labels": [{"request_id": "up-1", "labels": [1]}]},
        format="json",
    )
    assert wrong.status_code == 400 and "does not match" in wrong.json()["error"]["message"]
    for body in (
        {},
        {"labels": "x"},
        {"labels": [{"labels": [1]}]},
        {"labels": [{"request_id": "up-1", "labels": ["a"]}]},
    ):
        assert (
            publisher.client.post("/api/v1/models/fraud/traffic/labels/", body, format="json").status_code
            == 400
        )


def test_deeply_nested_or_huge_json_is_a_4xx_everywhere(fraud_model, publisher, viewer, tmp_path):
    served_champion(fraud_model, tmp_path)
    deep = "[" * 100_000 + "]" * 100_000
    predict = viewer.client.post(
        "/api/v1/models/fraud/predict/", f'{{"inputs": {deep}}}', content_type="application/json"
    )
    assert predict.status_code == 400 and "nested too deeply" in predict.json()["error"]["message"]
    labels = publisher.client.post(
        "/api/v1/models/fraud/traffic/labels/", f'{{"labels": {deep}}}', content_type="application/json"
    )
    assert labels.status_code == 400 and "nested too deeply" in labels.json()["error"]["message"]
    response = upload(publisher.client, f'{{"inputs": {deep}}}'.encode())
    assert (
        response.status_code == 400
        and "line 1: the JSON is nested too deeply" in response.json()["error"]["message"]
    )
    huge = json.dumps({"inputs": [[0.5, 0.0, 0.0, 0.0]] * 200_000})  # about 4 MB, over Django's body limit
    too_big = viewer.client.post("/api/v1/models/fraud/predict/", huge, content_type="application/json")
    assert 400 <= too_big.status_code < 500 and too_big.json()["error"]["message"]
    assert not TrafficRecord.objects.exists()


def test_a_big_upload_refreshes_the_planner_statistics_of_the_traffic_table(
    fraud_model, publisher, tmp_path, monkeypatch
):
    # Without statistics the planner guesses that a handful of rows are in a run's pool, and sorts
    # all of it for every batch instead of walking the (model, id) index: 5,000-record batches of a
    # fresh 20,000-record pool took 12-18 ms of sorting each (bench/serving_overhead.py).
    from django.db import connection

    from lifecycle import traffic

    monkeypatch.setattr(traffic, "ANALYZE_AFTER_RECORDS", 500)
    served_champion(fraud_model, tmp_path)
    response = upload(publisher.client, jsonl(*({"inputs": [[i, 0, 0, 1]]} for i in range(1500))))
    assert response.status_code == 201, response.content
    with connection.cursor() as cursor:
        cursor.execute("SELECT reltuples FROM pg_class WHERE relname = %s", [TrafficRecord._meta.db_table])
        # ANALYZE reads every page of a table this small, so it counts the rows exactly.
        assert cursor.fetchone()[0] == TrafficRecord.objects.count() == 1500
