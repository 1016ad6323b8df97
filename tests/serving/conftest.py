import pytest


@pytest.fixture(autouse=True)
def _empty_capture_buffer():
    """Each test's captured requests are written (or dropped) before the database is flushed."""
    from serving.capture import buffer

    yield
    buffer.flush()
    buffer.discard()
