"""The `modelgate` command line, as used from CI.

Exit codes (the contract CI scripts rely on):

- 0: done; with `push --wait`, the version reached `--until` or a later forward state;
- 1: the version was rejected (or retired) and will never reach the target;
- 2: any error: bad usage, API error, server unreachable, checksum mismatch, timeout.

Results go to stdout (`--json` makes them machine-readable); progress and live status go to
stderr when `--json` is given, so that stdout stays parseable.

Test hook: `CliRunner().invoke(cli, args, obj=Settings(url=..., transport=httpx.MockTransport(h),
backoff=0, sleep=..., clock=...))` runs every command against a fake server, without waiting.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import httpx
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from modelgate_client.api import (
    DEFAULT_TIMEOUT,
    DIRECT_UPLOAD_ENV,
    ApiError,
    ChecksumMismatch,
    Client,
    ServerUnreachable,
    __version__,
    direct_upload_bytes_from_env,
    parse_size,
)
from modelgate_client.source import SOURCE_FIELDS, resolve_source

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_ERROR = 2

# The happy path, in order; `--until X` succeeds at X or anything after it.
FORWARD_STATES = ("registered", "validating", "shadowing", "awaiting_approval", "production")
# `archived` only follows `production`, so a version seen there has been through the target too.
PAST_PRODUCTION_STATES = ("archived",)
# States from which the target can no longer be reached.
FAILED_STATES = ("rejected", "retired")
EXPORT_FORMATS = ("onnx", "tflite", "tflite-dynamic", "tfjs")
# File name suffixes for `download` when no `-o FILE` is given.
SUFFIXES = {
    "keras": ".keras",
    "onnx": ".onnx",
    "tflite": ".tflite",
    "tflite-dynamic": ".dynamic.tflite",
    "tfjs": ".tfjs.zip",
    "savedmodel": ".savedmodel.zip",
}
DEFAULT_PARENT_KIND = "fine_tuned_from"
# Below this size, hashing is instant and percentages are noise.
QUIET_BELOW = 8 * 1024 * 1024
POLL_FIRST = 1.0
POLL_MAX = 5.0


class CliError(Exception):
    """A user-facing failure: printed as `error: <message>`, exit code 2."""


@dataclass
class Settings:
    """How to reach the server, plus the seams the tests use (transport, sleep, clock, env)."""

    url: str | None = None
    token: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    transport: httpx.BaseTransport | None = None
    backoff: float = 1.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    env: Mapping[str, str] | None = None  # None: os.environ
    _client: Client | None = field(default=None, init=False, repr=False)

    def client(self) -> Client:
        if self._client is None:
            if not self.url:
                raise CliError("no server URL: set MODELGATE_URL or pass --url")
            self._client = Client(
                self.url, self.token, self.timeout, backoff=self.backoff, transport=self.transport
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def environ(self) -> Mapping[str, str]:
        return os.environ if self.env is None else self.env


class _Cli(click.Group):
    """Turns every expected failure into `error: ...` and exit code 2 — never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as e:
            _print_api_error(e)
        except (ServerUnreachable, ChecksumMismatch, CliError) as e:
            _error(str(e))
        except (httpx.HTTPError, httpx.InvalidURL) as e:  # e.g. a malformed MODELGATE_URL
            settings = ctx.find_object(Settings)
            _error(f"cannot reach MODELGATE_URL={settings.url if settings else '?'}: {e}")
        except OSError as e:
            where = f"{e.filename}: " if e.filename else ""
            _error(f"{where}{e.strerror or e}")
        except KeyboardInterrupt:
            _error("interrupted")
        raise click.exceptions.Exit(EXIT_ERROR)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--url",
    envvar="MODELGATE_URL",
    metavar="URL",
    help="Server URL, e.g. http://127.0.0.1:8000  [env: MODELGATE_URL]",
)
@click.option("--token", envvar="MODELGATE_TOKEN", metavar="TOKEN", help="API token  [env: MODELGATE_TOKEN]")
@click.version_option(__version__, prog_name="modelgate")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token: str | None) -> None:
    """Push models to a Modelgate registry and follow them through its lifecycle."""
    settings = ctx.ensure_object(Settings)
    settings.url = url or settings.url
    settings.token = token or settings.token
    ctx.call_on_close(settings.close)


def main() -> None:
    cli(prog_name="modelgate")


# -- models ------------------------------------------------------------------------------------


@cli.group()
def models() -> None:
    """Registered models."""


@models.command("create")
@click.argument("name")
@click.option("--description", default="", help="What the model is for.")
@click.option(
    "--policy",
    "policy_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Lifecycle policy as a JSON file (defaults are filled in by the server).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the model as JSON.")
@click.pass_obj
def models_create(
    settings: Settings, name: str, description: str, policy_file: Path | None, as_json: bool
) -> None:
    """Register a new model NAME."""
    policy = _load_json_object(policy_file, "--policy") if policy_file else None
    model = settings.client().create_model(name, description, policy)
    if as_json:
        _print_json(model)
        return
    _render_model(_console(), model)
    click.echo(f"created model {model.get('name', name)}")


# -- push --------------------------------------------------------------------------------------


def _parse_datasets(
    ctx: click.Context, param: click.Parameter, values: Sequence[str]
) -> list[dict[str, Any]]:
    parsed = []
    for value in values:
        parts = value.split(":")
        if len(parts) != 3 or not all(parts):
            raise click.BadParameter(f"{value!r}: expected NAME:VERSION:ROLE, e.g. holdout:3:validation")
        name, version, role = parts
        parsed.append({"name": name, "version": _version_number(version, value), "role": role})
    return parsed


def _parse_parents(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> list[dict[str, Any]]:
    parsed = []
    for value in values:
        parts = value.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise click.BadParameter(f"{value!r}: expected NAME:VERSION[:KIND], e.g. fraud:2:distilled_from")
        kind = parts[2] if len(parts) == 3 else DEFAULT_PARENT_KIND
        parsed.append({"model": parts[0], "version": _version_number(parts[1], value), "kind": kind})
    return parsed


def _version_number(text: str, whole: str) -> int:
    if not text.isdigit():
        raise click.BadParameter(f"{whole!r}: the version must be a number, not {text!r}")
    return int(text)


def _parse_size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _direct_threshold(flag: int | None, env: Mapping[str, str]) -> int:
    """--direct-threshold, else MODELGATE_DIRECT_UPLOAD_BYTES, else the client's default."""
    if flag is not None:
        return flag
    try:
        return direct_upload_bytes_from_env(env)
    except ValueError as e:
        raise CliError(f"{DIRECT_UPLOAD_ENV}: {e}") from None


@cli.command()
@click.argument("artifact", type=click.Path(exists=True, path_type=Path))
@click.option("--model", "-m", required=True, help="Registered model to add a version to.")
@click.option(
    "--metadata",
    "metadata_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON file with params, metrics, tags, datasets, parents, source, description.",
)
@click.option("--description", help="Version description (overrides the metadata file).")
@click.option(
    "--dataset",
    "datasets",
    multiple=True,
    metavar="NAME:VERSION:ROLE",
    callback=_parse_datasets,
    help="Dataset link, role train|validation|test. Repeatable.",
)
@click.option(
    "--parent",
    "parents",
    multiple=True,
    metavar="NAME:V[:KIND]",
    callback=_parse_parents,
    help=f"Parent version; KIND defaults to {DEFAULT_PARENT_KIND}. Repeatable.",
)
@click.option("--tag", "tags", multiple=True, metavar="TAG", help="Repeatable.")
@click.option("--git-sha", help="Default: from the CI environment or the local git checkout.")
@click.option("--branch", help="Default: from the CI environment or the local git checkout.")
@click.option("--ci-run-url", help="Default: from the CI environment.")
@click.option("--author", help="Default: from the CI environment.")
@click.option(
    "--idempotency-key",
    metavar="KEY",
    help="Same key on a re-run of a CI job = the same version back (default: a new UUID per push).",
)
@click.option(
    "--direct-threshold",
    metavar="SIZE",
    callback=_parse_size,
    help=(
        "From this size up (bytes, or 64M, 1G), the file goes straight to the server's S3 store by "
        "presigned multipart upload; servers storing on disk take a normal push.  "
        "[env: MODELGATE_DIRECT_UPLOAD_BYTES; default: 64M]"
    ),
)
@click.option("--wait", is_flag=True, help="Follow the version until --until, rejection or --timeout.")
@click.option(
    "--until",
    type=click.Choice(FORWARD_STATES),
    help="State to wait for (implies --wait).  [default: awaiting_approval]",
)
@click.option(
    "--timeout",
    "wait_timeout",
    type=click.FloatRange(min=0),
    help="Seconds to wait (implies --wait).  [default: 900]",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the version as JSON (the final one with --wait)."
)
@click.pass_obj
def push(
    settings: Settings,
    artifact: Path,
    model: str,
    metadata_file: Path | None,
    description: str | None,
    datasets: list[dict[str, Any]],
    parents: list[dict[str, Any]],
    tags: tuple[str, ...],
    git_sha: str | None,
    branch: str | None,
    ci_run_url: str | None,
    author: str | None,
    idempotency_key: str | None,
    direct_threshold: int | None,
    wait: bool,
    until: str | None,
    wait_timeout: float | None,
    as_json: bool,
) -> None:
    """Upload ARTIFACT as a new version of --model.

    \b
    Exit codes: 0 pushed (with --wait: reached --until or later),
                1 rejected (with --wait), 2 error or timeout.
    """
    if artifact.is_dir():
        raise CliError(f"{artifact} is a directory: pack it into one file first (e.g. a .keras file)")
    metadata = _load_json_object(metadata_file, "--metadata") if metadata_file else {}
    metadata = _build_metadata(
        metadata,
        description=description,
        datasets=datasets,
        parents=parents,
        tags=tags,
        source_flags={
            "git_sha": git_sha,
            "branch": branch,
            "ci_run_url": ci_run_url,
            "author": author,
        },
        env=settings.environ(),
    )
    client = settings.client()
    chatter = _console(stderr=True)
    size = artifact.stat().st_size
    hashing_display = (
        _transfer(chatter, "hashing", artifact.name, size, done_verb=None)
        if size >= QUIET_BELOW
        else nullcontext(None)
    )
    with (
        hashing_display as hashing,
        _transfer(chatter, "uploading", artifact.name, size, done_verb="uploaded") as uploading,
    ):
        version = client.push(
            model,
            artifact,
            metadata,
            idempotency_key=_idempotency_uuid(idempotency_key),
            progress=uploading,
            hash_progress=hashing,
            direct_threshold=_direct_threshold(direct_threshold, settings.environ()),
        )
    number = version.get("version")
    pushed_line = f"pushed {model} v{number} (sha256 {version.get('sha256', '?')})"

    if not (wait or until or wait_timeout is not None):
        if as_json:
            _print_json(version)
        else:
            click.echo(pushed_line)
        return

    click.echo(pushed_line, err=as_json)
    code, version = _follow(
        settings,
        client,
        model,
        number,
        version,
        until=until or "awaiting_approval",
        timeout=900.0 if wait_timeout is None else wait_timeout,
        out=_console(stderr=as_json),
    )
    if as_json:
        _print_json(version)
    if code == EXIT_ERROR:
        raise CliError(
            f"timed out waiting for {model} v{number} to reach {until or 'awaiting_approval'} "
            f"(last status: {version.get('status')})"
        )
    click.get_current_context().exit(code)


def _build_metadata(
    metadata: dict[str, Any],
    *,
    description: str | None,
    datasets: list[dict[str, Any]],
    parents: list[dict[str, Any]],
    tags: Iterable[str],
    source_flags: Mapping[str, str | None],
    env: Mapping[str, str],
) -> dict[str, Any]:
    """The metadata file, extended by the flags: lists are appended to, scalars overridden."""
    meta = dict(metadata)
    for key, empty in (
        ("params", {}),
        ("metrics", {}),
        ("tags", []),
        ("datasets", []),
        ("parents", []),
    ):
        meta.setdefault(key, empty)
    for key in ("datasets", "parents"):
        if not isinstance(meta[key], list):
            raise CliError(f"--metadata: {key!r} must be a list")
        meta[key] = [*meta[key], *(datasets if key == "datasets" else parents)]
    if tags:
        if not isinstance(meta["tags"], list):
            raise CliError("--metadata: 'tags' must be a list to add --tag values to it")
        meta["tags"] = list(dict.fromkeys([*meta["tags"], *tags]))
    if description is not None:
        meta["description"] = description
    meta.setdefault("description", "")
    from_file = meta.get("source")
    if from_file is not None and not isinstance(from_file, dict):
        raise CliError("--metadata: 'source' must be an object")
    meta["source"] = resolve_source(flags=source_flags, from_metadata=from_file, env=env)
    return meta


def _idempotency_uuid(key: str | None) -> str | None:
    """The header is a UUID; any other key (say `$GITHUB_RUN_ID-train`) maps to a stable uuid5."""
    if key is None:
        return None
    try:
        return str(uuid.UUID(key))
    except ValueError:
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"modelgate:idempotency:{key}"))


def _follow(
    settings: Settings,
    client: Client,
    model: str,
    number: Any,
    version: dict[str, Any],
    *,
    until: str,
    timeout: float,
    out: Console,
) -> tuple[int, dict[str, Any]]:
    """Poll the version, printing status changes and new gate results, until a verdict.

    Returns (exit code, last version seen): 0 reached, 1 rejected, 2 timed out.
    """
    deadline = settings.clock() + timeout
    interval = POLL_FIRST
    shown_gates: set[tuple[Any, ...]] = set()
    shown_exports: dict[str, str] = {}
    last_status: str | None = None
    while True:
        status = str(version.get("status"))
        if status != last_status:
            reason = version.get("status_reason")
            out.print(
                Text.assemble(
                    (f"{model} v{number}: ", "bold"),
                    (status, _status_style(status)),
                    (f" ({reason})" if reason else "", "dim"),
                ),
                soft_wrap=True,
            )
            last_status = status
            interval = POLL_FIRST  # things are moving: look again soon
        new = [g for g in version.get("gates") or [] if _gate_done(g) and _gate_key(g) not in shown_gates]
        if new:
            out.print(_gates_table(new))
            shown_gates.update(_gate_key(g) for g in new)
        for line in _export_changes(version.get("exports") or [], shown_exports):
            out.print(line, soft_wrap=True)

        if _reached(status, until):
            out.print(Text(f"{model} v{number} is {status}", style="bold green"), soft_wrap=True)
            return EXIT_OK, version
        if status in FAILED_STATES:
            _explain_rejection(out, model, number, version)
            return EXIT_REJECTED, version
        remaining = deadline - settings.clock()
        if remaining <= 0:
            return EXIT_ERROR, version
        settings.sleep(min(interval, remaining))
        interval = min(interval * 1.5, POLL_MAX)
        version = client.get_version(model, number)


def _reached(status: str, until: str) -> bool:
    if status in PAST_PRODUCTION_STATES:
        return True
    return status in FORWARD_STATES and FORWARD_STATES.index(status) >= FORWARD_STATES.index(until)


def _explain_rejection(out: Console, model: str, number: Any, version: dict[str, Any]) -> None:
    status = version.get("status")
    reason = version.get("status_reason") or "no reason given"
    out.print(Text(f"{model} v{number} was {status}: {reason}", style="bold red"), soft_wrap=True)
    failed = [g for g in _latest_attempts(version.get("gates") or []) if g.get("passed") is False]
    for gate in failed:
        out.print(Text(f"  ✗ {_describe_gate(gate)}", style="red"), soft_wrap=True)
    for export in version.get("exports") or []:
        if export.get("status") == "failed" or (
            export.get("required") and export.get("status") == "not_applicable"
        ):
            problem = export.get("error") or export.get("status")
            out.print(
                Text(f"  ✗ export {export.get('format')}: {problem}", style="red"),
                soft_wrap=True,
            )
    shadow = version.get("shadow")
    if isinstance(shadow, dict) and shadow.get("verdict") not in (None, "", "pass", "passed", "ok"):
        out.print(Text(f"  ✗ shadow verdict: {shadow.get('verdict')}", style="red"), soft_wrap=True)


# -- exports (shown by push --wait as their states change) --


def _export_changes(exports: Iterable[Mapping[str, Any]], shown: dict[str, str]) -> list[Text]:
    """One line per export whose status changed since the last poll; ``shown`` remembers them."""
    lines = []
    for export in exports:
        fmt, status = str(export.get("format")), str(export.get("status"))
        if shown.get(fmt) == status:
            continue
        shown[fmt] = status
        required = " (required)" if export.get("required") else ""
        lines.append(
            Text(f"  export {fmt}{required}: {status}{_export_detail(export)}", style=_export_style(status))
        )
    return lines


def _export_detail(export: Mapping[str, Any]) -> str:
    parity = export.get("parity") or {}
    if export.get("status") == "passed" and isinstance(parity, dict):
        return (
            f" — max |diff| {_num(parity.get('max_abs_diff'))} ≤ atol {_num(parity.get('atol'))}"
            f" in {export.get('runtime') or '?'}, {_size(export.get('size')) or '?'}"
        )
    if export.get("error"):
        return f" — {export['error']}"
    return ""


def _parity_summary(parity: Any) -> str:
    if not isinstance(parity, dict) or parity.get("max_abs_diff") is None:
        return ""
    samples = f" over {parity['samples']}" if parity.get("samples") else ""
    return f"max |diff| {_num(parity['max_abs_diff'])} (atol {_num(parity.get('atol'))}){samples}"


def _export_style(status: str) -> str:
    return {"passed": "green", "failed": "red", "not_applicable": "dim"}.get(status, "yellow")


def _describe_gate(gate: Mapping[str, Any]) -> str:
    name = str(gate.get("gate"))
    if gate.get("metric"):
        name += f" {gate['metric']}"
    parts = [f"value {_num(gate.get('value'))}", f"threshold {_num(gate.get('threshold'))}"]
    if gate.get("baseline") is not None:
        parts.append(f"baseline {_num(gate.get('baseline'))}")
    if gate.get("slice"):
        parts.append(f"slice {gate['slice']}")
    return f"{name}: " + ", ".join(parts)


def _latest_attempts(gates: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """A revalidation adds attempt 2, 3…; only the newest attempt of each gate row counts."""
    latest: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    for gate in gates:
        key = (gate.get("gate"), gate.get("metric"), gate.get("slice"))
        if key not in latest or (gate.get("attempt") or 0) >= (latest[key].get("attempt") or 0):
            latest[key] = gate
    return list(latest.values())


def _gate_key(gate: Mapping[str, Any]) -> tuple[Any, ...]:
    return (gate.get("gate"), gate.get("metric"), gate.get("slice"), gate.get("attempt"))


def _gate_done(gate: Mapping[str, Any]) -> bool:
    return gate.get("passed") is not None or bool(gate.get("skipped_reason"))


# -- datasets ----------------------------------------------------------------------------------


@cli.group()
def datasets() -> None:
    """Validation and training datasets (CSV, Parquet, NPZ)."""


@datasets.command("push")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Dataset name, e.g. holdout.")
@click.option("--version", type=click.IntRange(min=1), help="Version number (default: the next one).")
@click.option("--json", "as_json", is_flag=True, help="Print the dataset as JSON.")
@click.pass_obj
def datasets_push(settings: Settings, file: Path, name: str, version: int | None, as_json: bool) -> None:
    """Upload FILE as a version of dataset --name."""
    client = settings.client()
    with _transfer(
        _console(stderr=True), "uploading", file.name, file.stat().st_size, done_verb="uploaded"
    ) as report:
        dataset = client.push_dataset(file, name, version, progress=report)
    if as_json:
        _print_json(dataset)
        return
    rows = dataset.get("rows")
    details = [f"{rows:,} rows" if isinstance(rows, int) else None, _size(dataset.get("size"))]
    details.append(f"sha256 {dataset.get('sha256', '?')}")
    summary = ", ".join(d for d in details if d)
    click.echo(f"pushed dataset {dataset.get('name', name)} v{dataset.get('version')} ({summary})")


# -- status ------------------------------------------------------------------------------------


@cli.command()
@click.argument("ref", metavar="NAME[:V]")
@click.option("--json", "as_json", is_flag=True, help="Print the model or version as JSON.")
@click.pass_obj
def status(settings: Settings, ref: str, as_json: bool) -> None:
    """Show a model (its champion, counts and latest versions) or one version with its gates."""
    name, _, v = ref.partition(":")
    if not name:
        raise click.BadParameter("expected NAME or NAME:VERSION", param_hint="NAME[:V]")
    client = settings.client()
    console = _console()
    if v:
        version = client.get_version(name, v)
        if as_json:
            _print_json(version)
        else:
            _render_version(console, version)
        return
    model = client.get_model(name)
    if as_json:
        _print_json(model)
        return
    _render_model(console, model)
    recent = []
    for item in client.iter_versions(name):
        recent.append(item)
        if len(recent) == 10:
            break
    if recent:
        table = Table(title="versions", title_justify="left", box=None, padding=(0, 2, 0, 0))
        for column in ("version", "status", "created", "by", "sha256"):
            table.add_column(column)
        for item in recent:
            table.add_row(
                f"v{item.get('version')}",
                Text(str(item.get("status")), style=_status_style(str(item.get("status")))),
                str(item.get("created_at") or ""),
                str(item.get("created_by") or ""),
                str(item.get("sha256") or "")[:12],
            )
        console.print(table)


# -- download ----------------------------------------------------------------------------------


@cli.command()
@click.argument("ref", metavar="NAME:V")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="File (or existing directory) to write. Default: ./NAME-vV.<ext>",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(EXPORT_FORMATS),
    help="Download this export instead of the artifact.",
)
@click.pass_obj
def download(settings: Settings, ref: str, output: Path | None, fmt: str | None) -> None:
    """Download a version's artifact (or an export), verifying its sha256.

    Exit code 2 when the bytes do not match the server's checksum; nothing is left on disk then.
    """
    name, _, v = ref.partition(":")
    if not name or not v:
        raise click.BadParameter("expected NAME:VERSION, e.g. fraud:3", param_hint="NAME:V")
    client = settings.client()
    # The version record names the format (for the file name) and the sha256 the registry stored,
    # checked below in addition to the X-Checksum-Sha256 header of the download itself.
    version = client.get_version(name, v)
    if fmt:
        record = next((e for e in version.get("exports") or [] if e.get("format") == fmt), None)
        if record is None:
            raise CliError(f"{name} v{version.get('version', v)} has no {fmt} export")
    else:
        record = version
    default_name = f"{name}-v{version.get('version', v)}{SUFFIXES.get(fmt or str(version.get('format')), '')}"
    dest = output or Path(default_name)
    if dest.is_dir():
        dest = dest / default_name

    chatter = _console(stderr=True)
    size = record.get("size")
    with _transfer(
        chatter,
        "downloading",
        dest.name,
        size if isinstance(size, int) else None,
        done_verb="downloaded",
    ) as report:
        sha256 = client.download(name, v, dest, fmt, progress=report, total=report.set_total)
    expected = record.get("sha256")
    if expected and expected != sha256:
        dest.unlink(missing_ok=True)
        raise CliError(
            f"checksum mismatch for {dest.name}: the registry recorded {expected}, the bytes hash to {sha256}"
        )
    what = f"{name} v{version.get('version', v)}" + (f" ({fmt})" if fmt else "")
    click.echo(f"downloaded {what} to {dest} (sha256 {sha256}, verified)")


# -- rendering ---------------------------------------------------------------------------------


def _console(stderr: bool = False) -> Console:
    """A console for the current streams (CliRunner swaps them); wide enough for CI logs."""
    probe = Console(stderr=stderr)
    return Console(stderr=stderr, highlight=False, width=None if probe.is_terminal else 120)


def _render_model(console: Console, model: Mapping[str, Any]) -> None:
    console.print(Text(str(model.get("name")), style="bold"))
    if model.get("description"):
        console.print(f"  {model['description']}", markup=False)
    champion = model.get("champion")
    console.print(f"  champion: {f'v{champion}' if champion is not None else 'none'}", markup=False)
    counts = model.get("counts") or {}
    if counts:
        console.print("  versions: " + ", ".join(f"{k} {n}" for k, n in counts.items() if n), markup=False)
    if model.get("tags"):
        console.print(f"  tags: {_join(model['tags'])}", markup=False)
    if model.get("created_at"):
        console.print(f"  created: {model['created_at']}", markup=False)


def _render_version(console: Console, version: Mapping[str, Any]) -> None:
    status = str(version.get("status"))
    console.print(
        Text.assemble(
            (f"{version.get('model')} v{version.get('version')}  ", "bold"),
            (status, _status_style(status)),
        )
    )
    lines: list[tuple[str, Any]] = [
        ("reason", version.get("status_reason")),
        ("sha256", version.get("sha256")),
        ("size", _size(version.get("size"))),
        ("format", version.get("format")),
        ("aliases", _join(version.get("aliases") or [])),
        ("tags", _join(version.get("tags") or [])),
        (
            "created",
            " by ".join(str(x) for x in (version.get("created_at"), version.get("created_by")) if x),
        ),
    ]
    source = version.get("source") or {}
    lines += [(k.replace("_", " "), source.get(k)) for k in SOURCE_FIELDS]
    datasets = version.get("datasets") or []
    lines.append(
        (
            "datasets",
            ", ".join(f"{d.get('name')}:{d.get('version')} ({d.get('role')})" for d in datasets),
        )
    )
    parents = version.get("parents") or []
    lines.append(
        (
            "parents",
            ", ".join(f"{p.get('model')} v{p.get('version')} ({p.get('kind')})" for p in parents),
        )
    )
    metrics = version.get("metrics") or {}
    lines.append(("metrics", ", ".join(f"{k}={_num(v)}" for k, v in metrics.items())))
    for label, value in lines:
        if value:
            console.print(f"  {label}: {value}", markup=False, soft_wrap=True)
    gates = version.get("gates") or []
    if gates:
        console.print(_gates_table(gates))
    exports = version.get("exports") or []
    if exports:
        table = Table(title="exports", title_justify="left")
        for column in ("format", "status", "size", "parity", "runtime", "error"):
            table.add_column(column)
        for e in exports:
            table.add_row(
                str(e.get("format")) + (" (required)" if e.get("required") else ""),
                str(e.get("status")),
                _size(e.get("size")) or "",
                _parity_summary(e.get("parity")),
                str(e.get("runtime") or ""),
                str(e.get("error") or ""),
                style="red" if e.get("status") == "failed" else None,
            )
        console.print(table)
    shadow = version.get("shadow")
    if isinstance(shadow, dict) and shadow:
        console.print(
            "  shadow: " + ", ".join(f"{k}={_num(v)}" for k, v in shadow.items()),
            markup=False,
            soft_wrap=True,
        )
    for approval in version.get("approvals") or []:
        comment = f" — {approval['comment']}" if approval.get("comment") else ""
        console.print(
            f"  {approval.get('decision')} by {approval.get('actor')} via {approval.get('channel')}"
            f" at {approval.get('at')}{comment}",
            markup=False,
            soft_wrap=True,
        )


def _gates_table(gates: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(title="gates", title_justify="left")
    for column in (
        "gate",
        "metric",
        "slice",
        "value",
        "baseline",
        "threshold",
        "result",
        "attempt",
    ):
        table.add_column(
            column,
            justify="right" if column in ("value", "baseline", "threshold", "attempt") else "left",
        )
    for g in gates:
        if g.get("skipped_reason"):
            result, style = f"skipped: {g['skipped_reason']}", "dim"
        elif g.get("passed") is True:
            result, style = "pass", ""
        elif g.get("passed") is False:
            result, style = "FAIL", "red"
        else:
            result, style = "pending", "dim"
        table.add_row(
            str(g.get("gate") or ""),
            str(g.get("metric") or ""),
            str(g.get("slice") or ""),
            _num(g.get("value")),
            _num(g.get("baseline")),
            _num(g.get("threshold")),
            result,
            str(g.get("attempt") or ""),
            style=style or None,
        )
    return table


def _status_style(status: str) -> str:
    if status in FAILED_STATES:
        return "bold red"
    if status in ("awaiting_approval", "production"):
        return "bold green"
    return "yellow"


def _num(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _join(values: Any) -> str:
    if isinstance(values, dict):
        return ", ".join(f"{k}={v}" for k, v in values.items())
    if isinstance(values, (list, tuple)):
        return ", ".join(str(v) for v in values)
    return str(values)


def _size(n: Any) -> str | None:
    if not isinstance(n, int):
        return None
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return None


def _print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


def _load_json_object(path: Path, option: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CliError(f"{option} {path}: invalid JSON: {e}") from e
    if not isinstance(data, dict):
        raise CliError(f"{option} {path}: expected a JSON object")
    return data


def _error(message: str) -> None:
    click.echo(f"error: {message}", err=True)


def _print_api_error(e: ApiError) -> None:
    hint = " (check MODELGATE_TOKEN or --token)" if e.status in (401, 403) else ""
    _error(f"{e.message}{hint}")
    for path, message in _flatten_fields(e.fields):
        click.echo(f"  {path}: {message}", err=True)


def _flatten_fields(fields: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """DRF-style field errors, nested or not: `metadata.datasets.0.name: unknown dataset`."""
    if isinstance(fields, dict):
        for key, value in fields.items():
            yield from _flatten_fields(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(fields, list) and fields and all(isinstance(x, str) for x in fields):
        yield prefix or "error", "; ".join(fields)
    elif isinstance(fields, list):
        for i, value in enumerate(fields):
            if value:
                yield from _flatten_fields(value, f"{prefix}.{i}" if prefix else str(i))
    else:
        yield prefix or "error", str(fields)


class _Transfer:
    """Progress of one transfer: a live bar on a terminal, a few plain lines in CI logs.

    Called with the bytes done so far. It finishes by itself when `done` reaches `total`, and
    starts over (a retried upload) when `done` goes back down after that.
    """

    def __init__(
        self, console: Console, verb: str, name: str, total: int | None, *, done_verb: str | None
    ) -> None:
        self.console = console
        self.verb = verb
        self.done_verb = done_verb
        self.name = name
        self.total = total
        self.done = 0
        self.started = time.monotonic()
        self._bar: Progress | None = None
        self._task: Any = None
        self._quarters = 0
        self._active = False
        self._finished = False

    def set_total(self, total: int | None) -> None:
        if total is not None:
            self.total = total
            if self._bar is not None:
                self._bar.update(self._task, total=total)

    def __call__(self, done: int) -> None:
        if self._finished and done < self.done:
            self._finished = False  # a retry sends the file again
        self.done = done
        if self._finished:
            return
        if not self._active:
            self.start()
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
        elif self.total and self.total >= QUIET_BELOW:
            quarters = min(done * 4 // self.total, 4)
            if 0 < quarters < 4 and quarters > self._quarters:
                self.console.print(f"  {quarters * 25}% ({_size(done)})", markup=False)
            self._quarters = max(self._quarters, quarters)
        if self.total is not None and done >= self.total:
            self.finish()

    def start(self) -> None:
        self._active = True
        self._quarters = 0
        self.started = time.monotonic()
        if self.console.is_terminal:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(f"{self.verb} {self.name}", total=self.total)
        else:
            size = f" ({_size(self.total)})" if self.total is not None else ""
            self.console.print(f"{self.verb} {self.name}{size}", markup=False, soft_wrap=True)

    def finish(self) -> None:
        if not self._active:
            return
        self._active = False
        self._finished = True
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        if self.done_verb:
            seconds = time.monotonic() - self.started
            self.console.print(f"{self.done_verb} {_size(self.done)} in {seconds:.1f}s", markup=False)

    def abort(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        self._active = False


@contextmanager
def _transfer(
    console: Console, verb: str, name: str, total: int | None, *, done_verb: str | None
) -> Iterator[_Transfer]:
    """Nothing is shown until the first bytes move (the upload waits for the hashing)."""
    transfer = _Transfer(console, verb, name, total, done_verb=done_verb)
    try:
        yield transfer
    except BaseException:
        transfer.abort()
        raise
    transfer.finish()
