import pytest

from tests.builders import tiny_onnx_model
from tests.conftest import push

pytestmark = pytest.mark.django_db


def test_push_registers_a_version(fraud_model, publisher, tmp_path):
    response = push(publisher.client, "fraud", tiny_onnx_model(tmp_path))
    assert response.status_code == 201, response.json()
    assert response.json()["version"] == 1
    assert response.json()["format"] == "onnx"
