"""The capture buffer: sampled requests and prediction counts leave the request path here.

``predict`` appends to an in-memory buffer (a lock and a list append); a daemon thread writes the
buffer with one bulk insert and one usage upsert per served version every
``MODELGATE_CAPTURE_FLUSH_SECONDS``, or sooner when it fills. A failed write keeps the records for the
next round (up to ``MODELGATE_CAPTURE_MAX_BUFFER``), and the process flushes at exit. What a hard
kill (SIGKILL) can lose is at most one flush interval of samples: capture is a sample by nature, and
the served answers themselves are never at stake.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections import Counter

from django.conf import settings
from django.db import connections

from registry.models import TrafficRecord

log = logging.getLogger(__name__)


class CaptureBuffer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[TrafficRecord] = []
        self._predictions: Counter[int] = Counter()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._flushing = threading.Lock()
        self.dropped = 0

    def add(self, version_id: int, record: TrafficRecord | None) -> None:
        """Count one served request, and keep its record when it was sampled."""
        with self._lock:
            self._predictions[version_id] += 1
            if record is not None:
                self._records.append(record)
                if len(self._records) > settings.MODELGATE_CAPTURE_MAX_BUFFER:
                    del self._records[0]
                    self.dropped += 1
            full = len(self._records) >= settings.MODELGATE_CAPTURE_BATCH
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="modelgate-capture", daemon=True)
                self._thread.start()
        if full:
            self._wake.set()

    def flush(self) -> int:
        """Write what is buffered now; returns how many records were written."""
        with self._flushing:
            with self._lock:
                records, self._records = self._records, []
                predictions, self._predictions = self._predictions, Counter()
            if not records and not predictions:
                return 0
            from lifecycle.traffic import traffic_capture_write

            try:
                traffic_capture_write(records, dict(predictions))
            except Exception:
                log.warning("could not write %d captured requests; retrying", len(records), exc_info=True)
                with self._lock:
                    self._records[:0] = records
                    self._predictions.update(predictions)
                return 0
            return len(records)

    def discard(self) -> None:
        """Forget what is buffered (tests, between databases)."""
        with self._lock:
            self._records, self._predictions = [], Counter()

    def _run(self) -> None:
        while True:
            self._wake.wait(settings.MODELGATE_CAPTURE_FLUSH_SECONDS)
            self._wake.clear()
            try:
                self.flush()
            finally:
                # The thread's connection is not kept between rounds: nothing holds the database open.
                connections.close_all()


buffer = CaptureBuffer()
atexit.register(buffer.flush)
