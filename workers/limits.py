"""Resource limits around the tasks that open uploaded models (gates, exports, shadows).

A model file is untrusted input: Keras' safe_mode has had several bypasses (CVE-2024-3660,
CVE-2025-1550, CVE-2025-8747, CVE-2025-9906), and a crafted graph can allocate or compute without
bound. Each such task therefore runs with:

- **memory:** ``RLIMIT_DATA`` (the heap and private anonymous mappings, which is what a runaway
  allocation grows; shared libraries and TensorFlow's address-space reservations are not counted) at
  ``MODELGATE_TASK_MEMORY_MB``. An allocation past it fails: the runtime raises and the gate records
  the failure, or the runtime aborts and the process dies;
- **CPU time:** ``RLIMIT_CPU``'s soft limit at the CPU used so far plus ``MODELGATE_TASK_CPU_SECONDS``.
  Past it, the kernel sends SIGXCPU and the process dies;
- **wall time:** Celery's hard ``time_limit`` on the task (``MODELGATE_GATE_TIME_LIMIT``).

When the process dies, Celery's pool replaces it and the message is handed back (``acks_late``,
``reject_on_worker_lost``). The database lease and attempt counter then reject the version after
``MODELGATE_MAX_TASK_ATTEMPTS``, so one bad model costs a few child processes and never the pool.
The limits apply to the child process that runs the task, and are lifted when the task ends. 0
disables a limit.
"""

from __future__ import annotations

import contextlib
import logging
import resource
from collections.abc import Iterator

from django.conf import settings

log = logging.getLogger(__name__)


@contextlib.contextmanager
def model_limits(*, memory_mb: int | None = None, cpu_seconds: int | None = None) -> Iterator[None]:
    memory_mb = settings.MODELGATE_TASK_MEMORY_MB if memory_mb is None else memory_mb
    cpu_seconds = settings.MODELGATE_TASK_CPU_SECONDS if cpu_seconds is None else cpu_seconds
    saved: list[tuple[int, tuple[int, int]]] = []

    def lower(kind: int, soft: int) -> None:
        old_soft, hard = resource.getrlimit(kind)
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
        if old_soft != resource.RLIM_INFINITY and old_soft <= soft:
            return  # already at least this strict
        resource.setrlimit(kind, (soft, hard))
        saved.append((kind, (old_soft, hard)))

    try:
        if memory_mb:
            lower(resource.RLIMIT_DATA, memory_mb * 1024 * 1024)
        if cpu_seconds:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            lower(resource.RLIMIT_CPU, int(usage.ru_utime + usage.ru_stime) + 1 + cpu_seconds)
        yield
    finally:
        for kind, limits in reversed(saved):
            try:
                resource.setrlimit(kind, limits)
            except (ValueError, OSError):  # pragma: no cover - restoring what we set cannot fail
                log.warning("could not restore resource limit %s", kind, exc_info=True)
