"""Export branches: one trained model becomes ONNX, TFLite and TF.js deployables, each proven to match
the source model in the runtime it will run in.

The formats sit in one registry (:data:`FORMATS`); each has a module here. An export runs as one task
with numbered steps that are also plain functions, so that a test can run them one by one:

1. :func:`export_claim` takes the row with a compare-and-set lease (a duplicate delivery does nothing);
2. :func:`export_convert` builds the export in a private work directory (Keras → SavedModel once, then
   the format's converter; a source already in the format is passed through);
3. :func:`export_check` runs the source and the export on the same K inputs, each in its own runtime;
4. :func:`export_store` stores a passing export content-addressed (atomic rename on disk);
5. :func:`export_finish` records the outcome, and the last export of a version to finish records the
   completion (:func:`exports_complete`), in the same transaction.

There is no Celery chord: a chord needs a result backend, and the embedded default has none. Instead,
step 5 locks the version row and checks whether every export of the version is final; the one that
sees them all final records ``exports.completed`` once (see docs/exports.md).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from lifecycle import runtimes, webhooks
from lifecycle.exports import onnx, parity, savedmodel, tfjs, tflite
from lifecycle.exports.errors import ConversionFailed, NotApplicable, not_the_models_fault
from lifecycle.leases import lease_claim
from lifecycle.policy import Exports, Policy, policy_parse
from lifecycle.states import TransitionNotAllowed, version_transition
from registry.events import event_record
from registry.models import Event, EventKind, Export, ModelVersion
from registry.models import VersionStatus as S
from registry.storage import CHUNK, blob_local_path, blob_put

__all__ = [
    "FORMATS",
    "ConversionFailed",
    "NotApplicable",
    "export_check",
    "export_claim",
    "export_convert",
    "export_finish",
    "export_job",
    "export_run",
    "export_store",
    "exports_complete",
    "exports_reconcile",
    "exports_required_ok",
    "exports_start",
    "exports_stuck",
]

log = logging.getLogger(__name__)

EXPORTS_ACTOR = "system:exports"
RUN_EXPORT = "workers.exports.run_export"
START_EXPORTS = "workers.exports.start_exports"

FINAL = frozenset({Export.Status.PASSED, Export.Status.FAILED, Export.Status.NOT_APPLICABLE})
UNFINISHED = frozenset({Export.Status.PENDING, Export.Status.RUNNING})
MISSING = frozenset({Export.Status.FAILED, Export.Status.NOT_APPLICABLE})  # no deployable for this format
# A version in these states may still be rejected by a failed required export.
REJECTABLE = frozenset({S.SHADOWING, S.AWAITING_APPROVAL})
SOURCE_SUFFIX = {"keras": ".keras", "onnx": ".onnx", "tflite": ".tflite"}


# --- the registry of formats ----------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFormat:
    """How one export format is built from a SavedModel, opened in its target runtime and stored."""

    name: str
    extension: str  # of the downloaded file
    target: str  # the runtime the parity check runs in, for people
    convert: Callable[[Path, Path, Exports], Path]  # (SavedModel dir, out dir, policy) -> file or dir
    converter: Callable[[Exports], str]  # the converter and its version, for the record
    open: Callable[[Path], runtimes.Runtime]
    passthrough: Callable[[Path, Path], Path] | None = None  # a source already in this format
    pack: Callable[[Path, Path], Path] | None = None  # a directory export to one stored file
    quantized: bool = False

    def atol(self, policy: Exports) -> float:
        if self.name in policy.parity_atol_per_format:
            return policy.parity_atol_per_format[self.name]
        return policy.parity_atol_quantized if self.quantized else policy.parity_atol

    def not_applicable_reason(self, source_format: str) -> str:
        """Why this format cannot come from a source of ``source_format``; empty when it can."""
        if source_format == self.name and self.passthrough is not None:
            return ""
        if source_format in savedmodel.TENSORFLOW_SOURCES:
            return ""
        return (
            f"{self.name} cannot be made from the pushed {source_format} model: its converter starts "
            "from a TensorFlow SavedModel, which only a Keras or SavedModel push gives"
        )


FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat(
        name="onnx",
        extension=".onnx",
        target="onnxruntime",
        convert=lambda sm, out, p: onnx.convert(sm, out, opset=p.opset),
        converter=lambda p: onnx.converter_name(p.opset),
        open=onnx.open_runtime,
        passthrough=onnx.passthrough,
    ),
    "tflite": ExportFormat(
        name="tflite",
        extension=".tflite",
        target="the TFLite interpreter",
        convert=lambda sm, out, p: tflite.convert(sm, out),
        converter=lambda p: tflite.converter_name(quantized=False),
        open=tflite.open_runtime,
        passthrough=tflite.passthrough,
    ),
    "tflite-dynamic": ExportFormat(
        name="tflite-dynamic",
        extension=".dynamic.tflite",
        target="the TFLite interpreter",
        convert=lambda sm, out, p: tflite.convert(sm, out, quantized=True),
        converter=lambda p: tflite.converter_name(quantized=True),
        open=tflite.open_runtime,
        quantized=True,
    ),
    "tfjs": ExportFormat(
        name="tfjs",
        extension=".tfjs.zip",
        target="Node with @tensorflow/tfjs",
        convert=lambda sm, out, p: tfjs.convert(sm, out),
        converter=lambda p: tfjs.converter_name(),
        open=tfjs.open_runtime,
        pack=tfjs.pack,
    ),
}


# --- sending tasks (by name: lifecycle does not import workers) -------------------------------------


def _fan_out(export_ids: list[int]) -> None:
    """One ``run_export`` per export, sent as a Celery group on the exports queue (no chord: see above)."""
    if not export_ids:
        return
    from celery import group

    from config.celery import app

    try:
        group(app.signature(RUN_EXPORT, args=[export_id]) for export_id in export_ids).apply_async()
    except Exception:
        # The broker is away. The rows are committed, so nothing is lost: the reconciler sends them
        # again once the grace time has passed.
        log.warning("could not enqueue exports %s; the reconciler will retry", export_ids, exc_info=True)


def _send(task_name: str, *args: Any) -> None:
    from config.celery import app

    try:
        app.send_task(task_name, args=list(args))
    except Exception:
        log.warning("could not enqueue %s%s; the reconciler will retry", task_name, args, exc_info=True)


# --- starting and completing ------------------------------------------------------------------------


def exports_start(version_id: int) -> None:
    """Create one Export row per format the policy lists (once) and fan out the new pending ones.

    Idempotent: rows are get_or_create'd under the version's lock, and only rows created by this call
    are sent. A format the source cannot give is recorded ``not_applicable`` with the reason.
    """
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().select_related("model").get(pk=version_id)
        policy = policy_parse(version.model.policy).exports
        created_pending: list[int] = []
        for name in dict.fromkeys(policy.formats):
            reason = FORMATS[name].not_applicable_reason(version.format)
            export, created = Export.objects.get_or_create(
                version=version,
                format=name,
                defaults={
                    "required": name in policy.required,
                    "status": Export.Status.NOT_APPLICABLE if reason else Export.Status.PENDING,
                    "error": reason,
                    "finished_at": timezone.now() if reason else None,
                },
            )
            if not created:
                continue
            if reason:
                _record_export_event(export, version)
            else:
                created_pending.append(export.pk)
        if created_pending:
            transaction.on_commit(partial(_fan_out, created_pending), robust=True)
        else:
            # Nothing to run (every format was not applicable, or a repeated call): complete now if done.
            exports_complete(version.pk)


@transaction.atomic
def exports_complete(version_id: int) -> bool:
    """Record ``exports.completed`` once every export of the version is final; reject the version when
    a required export failed. Returns True when this call recorded the completion.

    Safe under concurrency and to call again: the version row is locked, so of two exports finishing
    at once the second sees the first's committed row; the completion event itself is the marker that
    says this set of formats was already recorded (compare-and-set on the version).
    """
    version = ModelVersion.objects.select_for_update().select_related("model").get(pk=version_id)
    exports = list(Export.objects.filter(version=version).order_by("format"))
    if not exports or any(e.status not in FINAL for e in exports):
        return False
    # A required format the source cannot give fails the policy as surely as a failed conversion.
    failed_required = [e for e in exports if e.required and e.status in MISSING]
    formats = [e.format for e in exports]
    last = Event.objects.filter(version=version, kind=EventKind.EXPORTS_COMPLETED).order_by("-id").first()
    recorded = False
    if last is None or last.data.get("formats") != formats:
        event_record(
            kind=EventKind.EXPORTS_COMPLETED,
            actor=EXPORTS_ACTOR,
            version=version,
            data={
                "formats": formats,
                "status": {e.format: e.status for e in exports},
                "required": [e.format for e in exports if e.required],
                "required_failed": [e.format for e in failed_required],
                "passed": not failed_required,
            },
        )
        recorded = True
    if failed_required and version.status in REJECTABLE:
        reason = "; ".join(
            f"required export {e.format} "
            f"{'is not applicable' if e.status == Export.Status.NOT_APPLICABLE else 'failed'}: "
            f"{e.error or 'no reason recorded'}"
            for e in failed_required
        )
        try:
            version_transition(
                version_id=version.pk,
                to=S.REJECTED,
                actor=EXPORTS_ACTOR,
                reason=reason,
                expected=REJECTABLE,
                data={"exports_failed": [e.format for e in failed_required]},
            )
        except TransitionNotAllowed:  # pragma: no cover - the lock above keeps the status stable
            log.info("version %s moved on before its exports completed", version_id)
    elif version.status == S.AWAITING_APPROVAL:
        # The approvers may have reached their quorum while the required exports were running.
        from lifecycle import approval

        approval.promote_when_ready(version=version, actor=EXPORTS_ACTOR)
    return recorded


def exports_required_ok(version: ModelVersion) -> bool | None:
    """Did the version's required exports pass? True: all passed (or none required), False: one
    failed or cannot be made from this source, None: still running (or not started while the policy
    requires some)."""
    rows = list(version.exports.all())
    if not rows:
        required = policy_parse(version.model.policy).exports.required
        return None if required else True
    required_rows = [e for e in rows if e.required]
    if any(e.status in MISSING for e in required_rows):
        return False
    if any(e.status in UNFINISHED for e in required_rows):
        return None
    return True


def _record_export_event(export: Export, version: ModelVersion) -> None:
    """The audit event of one finished export, and its ``export.completed`` webhook deliveries."""
    data = {
        "format": export.format,
        "status": export.status,
        "required": export.required,
        "sha256": export.sha256,
        "size": export.size,
        "parity": export.parity,
        "runtime": export.runtime,
        "error": export.error,
        "convert_ms": export.convert_ms,
        "check_ms": export.check_ms,
        "attempt": export.attempts,
    }
    event_record(kind=EventKind.EXPORT_COMPLETED, actor=EXPORTS_ACTOR, version=version, data=data)
    webhooks.webhooks_emit(event="export.completed", version=version, data=data)


# --- one export: claim, convert, check, store, finish -----------------------------------------------


def export_claim(export_id: int, *, now: dt.datetime | None = None) -> Export | None:
    """Claim the export with a lease; None when another worker holds it or it is already final.

    The same compare-and-set lease and attempt counter as ``pipeline.validation_claim``: a worker that
    dies leaves a lease that expires, and an export that kills its worker every time is failed after
    ``MODELGATE_MAX_TASK_ATTEMPTS`` attempts instead of looping.
    """
    now = now or timezone.now()
    with transaction.atomic():
        rows = Export.objects.filter(pk=export_id, status__in=UNFINISHED)
        if not lease_claim(rows, attempts_field="attempts", now=now, status=Export.Status.RUNNING):
            return None
        export = Export.objects.select_related("version__model").get(pk=export_id)
        if export.attempts > settings.MODELGATE_MAX_TASK_ATTEMPTS:
            export_finish(
                export_id=export.pk,
                attempt=export.attempts,
                outcome=Outcome(
                    status=Export.Status.FAILED,
                    error=(
                        f"the export did not finish after {export.attempts - 1} attempts: the worker died "
                        "each time (the conversion may exhaust memory or crash its runtime)"
                    ),
                ),
            )
            return None
        if export.attempts > 1:
            event_record(
                kind=EventKind.TASK_RECLAIMED,
                actor=EXPORTS_ACTOR,
                version=export.version,
                data={"step": f"export {export.format}", "attempt": export.attempts},
            )
    return export


@dataclass
class Job:
    """What the steps of one export attempt share: the row, the policy, the local source, a work dir."""

    export: Export
    version: ModelVersion
    policy: Policy
    format: ExportFormat
    source: Path  # the version's artifact on local disk
    workdir: Path  # private to this attempt; removed at the end
    savedmodel: Path | None = None  # set by export_convert when a SavedModel was used


@dataclass
class Built:
    path: Path  # what the target runtime opens: a file, or the TF.js model directory
    converter: str
    convert_ms: float


@dataclass
class Outcome:
    status: str
    error: str = ""
    parity: dict[str, Any] = field(default_factory=dict)
    runtime: str = ""
    convert_ms: float | None = None
    check_ms: float | None = None
    artifact_key: str = ""
    sha256: str = ""
    size: int | None = None


def _work_root() -> Path:
    return Path(settings.VAR_DIR) / "exports" / "work"


@contextmanager
def export_job(export: Export) -> Iterator[Job]:
    """The local source and a fresh work directory for one attempt of a claimed export.

    The work directory is named after the export and the attempt. Files a killed attempt left behind are
    removed by the next one, and nothing in it is visible to anyone: only :func:`export_store` publishes.
    """
    version = export.version
    root = _work_root()
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"export-{export.pk}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    workdir = root / f"export-{export.pk}-{export.attempts}"
    workdir.mkdir()
    try:
        with blob_local_path(version.artifact_key, suffix=SOURCE_SUFFIX.get(version.format, "")) as source:
            yield Job(
                export=export,
                version=version,
                policy=policy_parse(version.model.policy),
                format=FORMATS[export.format],
                source=Path(source),
                workdir=workdir,
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def export_convert(job: Job) -> Built:
    """Build the export in the work directory. Raises ConversionFailed with the converter's reason."""
    fmt, version = job.format, job.version
    out = job.workdir / "out"
    out.mkdir(exist_ok=True)
    started = time.perf_counter()
    if version.format == fmt.name and fmt.passthrough is not None:
        path = fmt.passthrough(job.source, out)
        converter = f"none: the pushed {version.format} file is the export"
    elif reason := fmt.not_applicable_reason(version.format):
        raise NotApplicable(reason)
    else:
        job.savedmodel = savedmodel.savedmodel_for(
            source=job.source, fmt=version.format, packaging=version.packaging, sha256=version.sha256
        )
        path = fmt.convert(job.savedmodel, out, job.policy.exports)
        converter = fmt.converter(job.policy.exports)
    return Built(path=path, converter=converter, convert_ms=(time.perf_counter() - started) * 1000)


def _reference_model(job: Job) -> runtimes.Runtime:
    """The source model in its own runtime (a SavedModel source reuses the extracted directory)."""
    if job.version.format == "savedmodel" and job.savedmodel is not None:
        return runtimes.open_model(job.savedmodel, "savedmodel")
    return runtimes.open_model(job.source, job.version.format, workdir=job.workdir)


def export_check(job: Job, built: Built) -> Outcome:
    """Run the source model and the export on the same K inputs and compare, each in its runtime."""
    fmt, exports_policy = job.format, job.policy.exports
    atol = fmt.atol(exports_policy)
    started = time.perf_counter()
    record: dict[str, Any] = {"atol": atol, "converter": built.converter}
    runtime_name = ""
    try:
        reference = _reference_model(job)
        record["reference"] = reference.name
        samples = parity.parity_samples(
            version=job.version,
            policy=job.policy,
            signature=reference.signature,
            k=exports_policy.parity_samples,
        )
        record["inputs"] = samples.origin
        expected = reference.predict(samples.inputs)
        target = fmt.open(built.path)
        runtime_name = target.name
        got = target.predict(parity.align_inputs(samples.inputs, reference.signature, target.signature))
        runtime_name = target.name  # TF.js names its backend and Node version once it has run
    except Exception as exc:
        if not_the_models_fault(exc):
            raise
        error = " ".join(str(exc).split()) or type(exc).__name__
        if built.path.as_posix() in error:
            error = error.replace(built.path.as_posix(), "the export")
        return Outcome(
            status=Export.Status.FAILED,
            error=f"the export does not run in {runtime_name or fmt.target}: {error}",
            parity={**record, "passed": False},
            runtime=runtime_name,
            convert_ms=built.convert_ms,
            check_ms=(time.perf_counter() - started) * 1000,
        )
    result = parity.parity_compare(
        expected, reference.signature, got, target.signature, atol=atol, samples=samples.count
    )
    return Outcome(
        status=Export.Status.PASSED if result.passed else Export.Status.FAILED,
        error="" if result.passed else result.reason(),
        parity={**record, **result.as_dict()},
        runtime=runtime_name,
        convert_ms=built.convert_ms,
        check_ms=(time.perf_counter() - started) * 1000,
    )


def export_store(job: Job, built: Built, outcome: Outcome) -> Outcome:
    """Store the checked export under its content address (the TF.js directory as one zip)."""
    path = built.path
    if job.format.pack is not None:
        path = job.format.pack(path, job.workdir)
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
        sha256 = digest.hexdigest()
        key = blob_put(fh, sha256=sha256, kind="exports")
    outcome.artifact_key, outcome.sha256, outcome.size = key, sha256, path.stat().st_size
    return outcome


@transaction.atomic
def export_finish(*, export_id: int, attempt: int, outcome: Outcome) -> Export | None:
    """Write the outcome of one attempt, and complete the version when it was the last export.

    None when the attempt no longer owns the row: it was reclaimed after its lease ran out (a newer
    attempt will write), or a duplicate delivery finished first.
    """
    export = Export.objects.select_for_update().select_related("version__model").get(pk=export_id)
    if export.status != Export.Status.RUNNING or export.attempts != attempt:
        return None
    export.status = outcome.status
    export.error = outcome.error
    export.parity = outcome.parity
    export.runtime = outcome.runtime[:100]
    export.convert_ms = outcome.convert_ms
    export.check_ms = outcome.check_ms
    export.artifact_key = outcome.artifact_key
    export.sha256 = outcome.sha256
    export.size = outcome.size
    export.lease_expires_at = None
    export.finished_at = timezone.now()
    export.save()
    _record_export_event(export, export.version)
    exports_complete(export.version_id)
    return export


def export_run(export_id: int) -> Export | None:
    """The whole export task: claim, convert, check, store, finish. Safe to run twice."""
    export = export_claim(export_id)
    if export is None:
        log.info("export %s: nothing to do (already claimed or final)", export_id)
        return None
    try:
        with export_job(export) as job:
            try:
                built = export_convert(job)
            except ConversionFailed as exc:
                outcome = Outcome(status=Export.Status.FAILED, error=str(exc))
            except NotApplicable as exc:
                outcome = Outcome(status=Export.Status.NOT_APPLICABLE, error=str(exc))
            else:
                outcome = export_check(job, built)
                if outcome.status == Export.Status.PASSED:
                    # Only a checked export is published: the bytes stored are the bytes that passed.
                    outcome = export_store(job, built, outcome)
    except Exception as exc:
        from celery.exceptions import SoftTimeLimitExceeded

        if isinstance(exc, SoftTimeLimitExceeded):
            return export_finish(
                export_id=export.pk,
                attempt=export.attempts,
                outcome=Outcome(
                    status=Export.Status.FAILED,
                    error=f"the export took longer than the {settings.MODELGATE_GATE_TIME_LIMIT} s time limit",
                ),
            )
        # Not the model's fault as far as we know (the store or the database went away, or a bug):
        # hand the export back after the retry delay rather than at the end of the lease. The attempt
        # counter still stops an export that fails every time.
        retry_at = timezone.now() + dt.timedelta(seconds=settings.MODELGATE_RETRY_DELAY_SECONDS)
        Export.objects.filter(pk=export.pk, status=Export.Status.RUNNING, attempts=export.attempts).update(
            lease_expires_at=retry_at
        )
        raise
    return export_finish(export_id=export.pk, attempt=export.attempts, outcome=outcome)


# --- the reconciler ---------------------------------------------------------------------------------


def exports_stuck(now: dt.datetime | None = None) -> list[int]:
    """Exports whose task was lost: claimed with a lease that ran out (its worker died), or pending and
    not picked up within the grace time (the message was lost)."""
    now = now or timezone.now()
    grace = now - dt.timedelta(seconds=settings.MODELGATE_RECONCILE_GRACE_SECONDS)
    return list(
        Export.objects.filter(status__in=UNFINISHED)
        .filter(_stuck_since(grace))
        .order_by("id")
        .values_list("id", flat=True)[:1000]
    )


def _stuck_since(cutoff: dt.datetime) -> Q:
    # lease_expires_at is the end of a worker's lease, or the last time the reconciler sent the export
    # again: either way, older than the grace time means that nobody is working on it.
    return Q(lease_expires_at__lt=cutoff) | Q(lease_expires_at__isnull=True, created_at__lt=cutoff)


def exports_reconcile(now: dt.datetime | None = None) -> list[int]:
    """Send lost exports again, and start the exports of versions whose start was lost.

    Each export is marked as sent with a compare-and-set update (``if claimed != 1: continue``): a
    worker that claimed it meanwhile wins, and a backed-up queue gets at most one copy per grace time.
    The task's own claim makes any extra copy harmless.
    """
    now = now or timezone.now()
    grace = now - dt.timedelta(seconds=settings.MODELGATE_RECONCILE_GRACE_SECONDS)
    sent = []
    with transaction.atomic():
        for export_id in exports_stuck(now):
            claimed = (
                Export.objects.filter(pk=export_id, status__in=UNFINISHED)
                .filter(_stuck_since(grace))
                .update(lease_expires_at=now)
            )
            if claimed != 1:
                continue
            sent.append(export_id)
        if sent:  # once the marks are committed, so that a worker never claims a row we still hold
            transaction.on_commit(partial(_fan_out, sent), robust=True)
    if sent:
        log.info("export reconciler re-enqueued %d export(s): %s", len(sent), sent[:20])

    # Versions past their gates whose policy lists formats but that have no export rows: the
    # start_exports message was lost (or the version passed its gates before the policy listed any).
    unstarted = (
        ModelVersion.objects.filter(status__in=REJECTABLE, exports__isnull=True, status_changed_at__lt=grace)
        .select_related("model")
        .order_by("id")[:200]
    )
    for version in unstarted:
        if policy_parse(version.model.policy).exports.formats:
            _send(START_EXPORTS, version.pk)
    return sent
