"""Memory of the web worker while a 1 GiB artifact is pushed, and the push's throughput against ``dd``.

    .venv/bin/python bench/upload_rss.py                   # SavedModel zip and ONNX, 1 GiB each (~3 min)
    .venv/bin/python bench/upload_rss.py --format savedmodel --size-mib 1024
    .venv/bin/python bench/upload_rss.py --path presigned  # the same, by direct upload to S3 (moto)
    .venv/bin/python bench/upload_rss.py --path both       # both paths, one table

It starts Modelgate's web server (gunicorn, one sync worker) on a throwaway PostgreSQL database
(``bench_upload``) with ``ARTIFACT_STORE`` and ``FILE_UPLOAD_TEMP_DIR`` in a temporary directory under
var/bench (the same disk as ``dd``'s file), and pushes generated artifacts through
``POST /api/v1/models/{name}/versions/``, sampling the worker's RSS every 50 ms (psutil):

- ``savedmodel``: a SavedModel zip whose ``variables/variables.data-00000-of-00001`` member holds
  ``--size-mib`` of random bytes, stored uncompressed (random bytes do not compress, so the archive's
  ratio check is not what is measured), next to a tiny ``saved_model.pb`` and ``variables.index``;
- ``onnx``: a valid ONNX model, ``Y = X + W``, whose float32 initializer ``W`` is ``--size-mib`` of random
  numbers. The file is written field by field in protobuf's wire format, so generating it needs no
  memory either; its numbers are uniform in [0, 1).

Before each measured push, a small push of the same format warms the worker (its lazy imports are
not what is measured); the baseline is the RSS after it. The client streams the body: a multipart
generator of 1 MiB chunks over ``http.client`` with a Content-Length, never the whole file in memory.

``--path presigned`` stores artifacts in S3 instead: a moto server (``python -m moto.server``, its
objects spill to disk past 5 MiB) on a free port, and pushes with the project's own client
(``Client.push_direct``: start, one streamed PUT per part straight to moto, complete). The web worker then
carries no artifact bytes from the client; on complete it reads the object back from S3 once (hash and
artifact checks) and copies it to its content address inside S3. The result splits the time into the
parts' upload (client to S3) and the complete (the server's verification).

The generated files, the uploaded blobs and the database are deleted at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    BENCH_VAR,
    REPO,
    db_drop,
    db_recreate,
    free_port,
    log,
    machine_facts,
    modelgate_env,
    modelgate_prepare,
    running,
    wait_http,
    write_json,
)

CHUNK = 1024 * 1024
DB = "bench_upload"


# --- artifacts -----------------------------------------------------------------------------------------


def random_chunks(total: int) -> Iterator[bytes]:
    left = total
    while left > 0:
        n = min(CHUNK, left)
        yield os.urandom(n)
        left -= n


def random_float32_chunks(total: int) -> Iterator[bytes]:
    """Uniform float32 numbers in [0, 1), ``total`` bytes of them, 1 MiB at a time."""
    import numpy as np

    rng = np.random.default_rng()
    left = total
    while left > 0:
        n = min(CHUNK, left)
        yield rng.random(n // 4, dtype=np.float32).tobytes()
        left -= n


def make_savedmodel_zip(path: Path, payload: int) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        zf.writestr("saved_model.pb", b"\x08\x01" + os.urandom(62))
        zf.writestr("fingerprint.pb", os.urandom(32))
        zf.writestr("variables/variables.index", os.urandom(256))
        info = zipfile.ZipInfo("variables/variables.data-00000-of-00001", date_time=(2026, 11, 23, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        with zf.open(info, "w", force_zip64=True) as member:
            for chunk in random_chunks(payload):
                member.write(chunk)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


def _bytes_field(number: int, data: bytes) -> bytes:
    return _field(number, 2) + _varint(len(data)) + data


def make_onnx(path: Path, payload: int) -> None:
    """``Y = X + W`` with W a float32 initializer of ``payload`` bytes, written without holding it.

    The small part (graph, inputs, opset) is built with onnx's helpers; the initializer is appended as a
    second ``graph`` field holding only that tensor, which protobuf merges into the first one on parse
    (repeated fields are concatenated), so ``onnx.load`` sees one graph with one initializer.
    """
    import onnx
    from onnx import TensorProto, helper

    n = payload // 4
    graph = helper.make_graph(
        [helper.make_node("Add", ["X", "W"], ["Y"])],
        "bench",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="modelgate-bench"
    )
    model.ir_version = 8
    head = model.SerializeToString()
    # TensorProto: dims=1 (varint), data_type=2 (FLOAT=1), name=8, raw_data=9 (streamed).
    tensor_head = (
        _field(1, 0) + _varint(n) + _field(2, 0) + _varint(TensorProto.FLOAT) + _bytes_field(8, b"W")
    )
    raw_len = n * 4
    tensor_len = len(tensor_head) + len(_field(9, 2)) + len(_varint(raw_len)) + raw_len
    # GraphProto with only initializer=5.
    graph_len = len(_field(5, 2)) + len(_varint(tensor_len)) + tensor_len
    with path.open("wb") as out:
        out.write(head)
        out.write(_field(7, 2) + _varint(graph_len))
        out.write(_field(5, 2) + _varint(tensor_len))
        out.write(tensor_head)
        out.write(_field(9, 2) + _varint(raw_len))
        for chunk in random_float32_chunks(raw_len):
            out.write(chunk)
    del onnx


MAKERS = {"savedmodel": (make_savedmodel_zip, ".zip"), "onnx": (make_onnx, ".onnx")}


def settle(path: Path) -> None:
    """Flush the generated file to disk first, so that the push does not compete with its write-back."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --- the streaming client -------------------------------------------------------------------------------


def push(port: int, token: str, model: str, path: Path, timeout: float = 900.0) -> tuple[int, bytes, float]:
    """POST the artifact as multipart, streamed from disk in 1 MiB chunks; return (status, body, seconds)."""
    boundary = uuid.uuid4().hex
    metadata = json.dumps({"sha256": sha256_of(path), "description": "upload_rss benchmark"})
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="metadata"\r\n'
        "Content-Type: application/json\r\n\r\n"
        f"{metadata}\r\n"
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="artifact"; filename="{path.name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + path.stat().st_size + len(tail)

    def body() -> Iterator[bytes]:
        yield head
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                yield chunk
        yield tail

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t0 = time.perf_counter()
    try:
        conn.request(
            "POST",
            f"/api/v1/models/{model}/versions/",
            body=body(),
            headers={
                "Authorization": f"Bearer {token}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Content-Length": str(length),
                "Accept": "application/json",
            },
        )
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    return resp.status, payload, time.perf_counter() - t0


def push_direct(
    port: int, token: str, model: str, path: Path, timeout: float = 900.0
) -> tuple[int, bytes, float]:
    """The presigned path through the project's client: (status, body, seconds), and the parts' seconds
    in ``push_direct.parts_seconds`` (when the last part's last byte left)."""
    from modelgate_client import ApiError, Client

    size = path.stat().st_size
    metadata = {"sha256": sha256_of(path), "description": "upload_rss benchmark (presigned)"}
    marks: dict[str, float] = {}

    def progress(done: int) -> None:
        if done >= size and "parts" not in marks:
            marks["parts"] = time.perf_counter()

    with Client(f"http://127.0.0.1:{port}", token, timeout=timeout, retries=0) as client:
        t0 = time.perf_counter()
        try:
            version = client.push_direct(model, path, metadata, progress=progress)
            status, body = (201, json.dumps(version).encode()) if version else (409, b"no direct upload")
        except ApiError as e:
            status, body = e.status, e.message.encode()
        seconds = time.perf_counter() - t0
    push_direct.parts_seconds = marks.get("parts", t0 + seconds) - t0  # type: ignore[attr-defined]
    return status, body, seconds


PUSHES = {"multipart": push, "presigned": push_direct}


def create_model(port: int, token: str, name: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(
        "POST",
        "/api/v1/models/",
        body=json.dumps({"name": name}),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    if resp.status != 201:
        raise RuntimeError(f"create {name}: HTTP {resp.status} {body[:300]!r}")


# --- RSS sampling ---------------------------------------------------------------------------------------


class RssSampler:
    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.is_set():
            try:
                self.samples.append((time.perf_counter() - t0, self.proc.memory_info().rss))
            except psutil.NoSuchProcess:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def peak(self) -> int:
        return max(rss for _, rss in self.samples)


def worker_pid(master: int, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = psutil.Process(master).children()
        if children:
            return children[0].pid
        time.sleep(0.1)
    raise TimeoutError("gunicorn started no worker")


def rss(pid: int) -> int:
    return psutil.Process(pid).memory_info().rss


# --- dd ------------------------------------------------------------------------------------------------


def dd_throughput(directory: Path, mib: int) -> dict:
    target = directory / "dd.tmp"
    try:
        result = subprocess.run(
            ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={mib}", "conv=fdatasync"],
            capture_output=True,
            text=True,
            timeout=600,
        )
    finally:
        target.unlink(missing_ok=True)
    line = result.stderr.strip().splitlines()[-1]
    match = re.search(r"copied, ([\d.]+) s, ([\d.]+ [kMG]?B/s)", line)
    seconds = float(match.group(1)) if match else float("nan")
    return {"line": line, "seconds": seconds, "MB_per_s": round(mib * 1024**2 / 1e6 / seconds, 1)}


# --- main ------------------------------------------------------------------------------------------------


MiB = 1024**2


def measure_format(
    fmt: str, *, port: int, token: str, worker: int, work: Path, size: int, path: str = "multipart"
) -> dict:
    make, suffix = MAKERS[fmt]
    send = PUSHES[path]
    # Warm-up push: a small artifact of the same format, so lazy imports happen before the baseline.
    small = work / f"warm{suffix}"
    make(small, 4 * MiB)
    create_model(port, token, f"warm-{fmt}-{path}")
    status, body, _ = send(port, token, f"warm-{fmt}-{path}", small)
    small.unlink()
    if status != 201:
        raise RuntimeError(f"warm-up {fmt} push: HTTP {status} {body[:500]!r}")

    big = work / f"big{suffix}"
    log(f"{fmt}: generating a {size / MiB:.0f} MiB artifact")
    t0 = time.perf_counter()
    make(big, size)
    settle(big)
    file_size = big.stat().st_size
    log(f"{fmt}: {file_size / MiB:.1f} MiB written in {time.perf_counter() - t0:.1f}s; pushing")
    create_model(port, token, f"big-{fmt}-{path}")
    time.sleep(1.0)
    baseline = rss(worker)
    with RssSampler(worker) as sampler:
        time.sleep(0.3)
        status, body, seconds = send(port, token, f"big-{fmt}-{path}", big)
        time.sleep(0.5)
    big.unlink()
    after = rss(worker)
    result = {
        "format": fmt,
        "path": path,
        "status": status,
        "file_mib": round(file_size / MiB, 1),
        "push_seconds": round(seconds, 2),
        "push_MB_per_s": round(file_size / 1e6 / seconds, 1),
        "rss_baseline_mib": round(baseline / MiB, 1),
        "rss_peak_mib": round(sampler.peak / MiB, 1),
        "rss_growth_mib": round((sampler.peak - baseline) / MiB, 1),
        "rss_after_mib": round(after / MiB, 1),
        "samples": len(sampler.samples),
        "rss_trace_mib": [
            (round(t, 2), round(r / MiB, 1))
            for t, r in sampler.samples[:: max(1, len(sampler.samples) // 60)]
        ],
    }
    if path == "presigned":
        parts = push_direct.parts_seconds  # type: ignore[attr-defined]
        result["parts_seconds"] = round(parts, 2)
        result["complete_seconds"] = round(seconds - parts, 2)
    if status != 201:
        result["error"] = body[:500].decode(errors="replace")
    else:
        version = json.loads(body)
        result["registered_as"] = {
            k: version.get(k) for k in ("model", "version", "format", "size", "status")
        }
    log(
        f"{fmt} ({path}): HTTP {status} in {seconds:.1f}s ({result['push_MB_per_s']} MB/s); RSS baseline "
        f"{result['rss_baseline_mib']} MiB, peak {result['rss_peak_mib']} MiB, growth {result['rss_growth_mib']} MiB"
    )
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--format", choices=["savedmodel", "onnx", "both"], default="both")
    p.add_argument(
        "--path",
        choices=["multipart", "presigned", "both"],
        default="multipart",
        help="multipart: through the web process to its disk; presigned: straight to S3 (moto)",
    )
    p.add_argument(
        "--modelgate-dir", type=Path, default=REPO, help="the Modelgate tree to run (a scratch copy)"
    )
    p.add_argument("--out", type=Path, default=BENCH_VAR / "upload_rss.json")
    args = p.parse_args()
    formats = ["savedmodel", "onnx"] if args.format == "both" else [args.format]
    paths = ["multipart", "presigned"] if args.path == "both" else [args.path]
    size = args.size_mib * MiB
    code = args.modelgate_dir.resolve()

    BENCH_VAR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="upload-", dir=BENCH_VAR))
    store, uploads = work / "store", work / "tmp"
    store.mkdir()
    uploads.mkdir()
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine_facts(), "results": []}
    try:
        report["dd"] = dd_throughput(work, args.size_mib)
        log(f"dd: {report['dd']['line']}")
        for path in paths:
            with (
                s3_store(work)
                if path == "presigned"
                else nullcontext({"ARTIFACT_STORE": str(store)}) as where
            ):
                report["results"] += measure_path(
                    path, formats=formats, where=where, code=code, work=work, uploads=uploads, size=size
                )
                report["server"] = where.pop("server", "")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        flush_broker()
    write_json(args.out, report)
    print(markdown(report))
    return 0 if all(r["status"] == 201 for r in report["results"]) else 1


@contextmanager
def s3_store(work: Path) -> Iterator[dict[str, str]]:
    """A moto S3 server with one bucket, for the presigned path; its settings for Modelgate."""
    import boto3

    port = free_port()
    cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    # moto spills objects past 5 MiB to temporary files: keep them on the bench's disk, not /tmp.
    env = {**os.environ, "TMPDIR": str(work)}
    with running(cmd, env=env, log_path=BENCH_VAR / "logs" / "upload-moto.log") as proc:
        wait_http(port, "/", proc)
        endpoint = f"http://127.0.0.1:{port}"
        credentials = {
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
        }
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        ).create_bucket(Bucket="bench-upload")
        yield {"ARTIFACT_STORE": "s3://bench-upload/registry", "AWS_ENDPOINT_URL": endpoint, **credentials}


def measure_path(
    path: str, *, formats: list[str], where: dict[str, str], code: Path, work: Path, uploads: Path, size: int
) -> list[dict]:
    """One web server on a fresh database and the given store; every format pushed by ``path``."""
    if path == "presigned":
        sys.path.insert(0, str(code / "client"))  # this tree's client, not the one installed
    results = []
    try:
        url = db_recreate(DB)
        env = modelgate_env(
            url, FILE_UPLOAD_TEMP_DIR=str(uploads), MAX_ARTIFACT_BYTES=str(size + 64 * MiB), **where
        )
        token = modelgate_prepare(env, cwd=code)
        port = free_port()
        cmd = [
            str(REPO / ".venv" / "bin" / "gunicorn"),
            "config.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--timeout",
            "600",
        ]
        log_path = BENCH_VAR / "logs" / "upload-gunicorn.log"
        with running(cmd, env=env, log_path=log_path, cwd=code) as proc:
            wait_http(port, "/healthz", proc, log_path=log_path)
            worker = worker_pid(proc.pid)
            idle = round(rss(worker) / MiB, 1)
            for fmt in formats:
                result = measure_format(
                    fmt, port=port, token=token, worker=worker, work=work, size=size, path=path
                )
                results.append({**result, "rss_idle_mib": idle})
        where["server"] = " ".join(["gunicorn", *cmd[1:2], *cmd[4:]])
    finally:
        db_drop(DB)
    return results


def flush_broker() -> None:
    """The pushes enqueued pipeline tasks on the bench broker (no worker runs here); drop them."""
    try:
        import redis
        from _common import REDIS_BROKER

        redis.Redis.from_url(REDIS_BROKER, socket_timeout=5).flushdb()
    except Exception as exc:  # the broker being down must not hide the results
        log(f"could not flush the bench broker: {exc}")


def markdown(report: dict) -> str:
    dd = report["dd"]
    rows = [
        f"dd (`bs=1M count=… conv=fdatasync`, same disk): {dd['MB_per_s']} MB/s ({dd['seconds']:.2f} s)",
        "",
        "| artifact | path | size MiB | HTTP | push s | push MB/s | vs dd | RSS baseline MiB | RSS peak MiB | growth MiB | < 64 MiB? |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in report["results"]:
        how = r.get("path", "multipart")
        if "parts_seconds" in r:
            how += f" (parts {r['parts_seconds']:.1f} s, complete {r['complete_seconds']:.1f} s)"
        rows.append(
            f"| {r['format']} | {how} | {r['file_mib']:.0f} | {r['status']} | {r['push_seconds']:.1f} | {r['push_MB_per_s']:.0f} "
            f"| {r['push_MB_per_s'] / dd['MB_per_s']:.2f}× | {r['rss_baseline_mib']:.0f} | {r['rss_peak_mib']:.0f} "
            f"| {r['rss_growth_mib']:.0f} | {'yes' if r['rss_growth_mib'] < 64 else 'no'} |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
