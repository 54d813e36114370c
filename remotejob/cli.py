"""The command line: ``remotejob`` (or ``python -m remotejob``).

Exit codes: 0 ok, 1 a job failed, 2 usage or configuration error, 3 backend unavailable,
4 timeout. Expected errors print one line; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from . import errors
from .queue import Queue, connect
from .status import JobStatus
from .worker import Handler, Worker, work

EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_TIMEOUT = 1, 2, 3, 4


@contextmanager
def _expected_errors(debug: bool) -> Iterator[None]:
    try:
        yield
    except errors.JobFailed as exc:
        _fail(exc, EXIT_FAILED, debug)
    except errors.WaitTimeout as exc:
        _fail(exc, EXIT_TIMEOUT, debug)
    except errors.BackendUnavailable as exc:
        _fail(exc, EXIT_UNAVAILABLE, debug)
    except (errors.RemoteJobError, ValueError, TypeError, OSError) as exc:
        _fail(exc, EXIT_USAGE, debug)


def _fail(exc: BaseException, code: int, debug: bool) -> None:
    if debug:
        raise exc
    click.echo(f"remotejob: error: {exc}", err=True)
    sys.exit(code)


class Context:
    """What every command shares: the connection options and --debug."""

    def __init__(self, name: str, store: str | None, queues: str | None, debug: bool) -> None:
        self.name, self.store, self.queues, self.debug = name, store, queues, debug

    def connect(self, **options: Any) -> Queue:
        return connect(self.name, store=self.store, queues=self.queues, **options)


pass_context = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--name", envvar="REMOTEJOB_NAME", default="jobs", show_default=True,
              help="Job system name (queues are NAME-STATUS). Env: REMOTEJOB_NAME.")
@click.option("--store", envvar="REMOTEJOB_STORE", default=None,
              help="s3://bucket/prefix or a folder (default: embedded). Env: REMOTEJOB_STORE.")
@click.option("--queues", envvar="REMOTEJOB_QUEUES", default=None,
              help="sqs:// or a SQLite file (default: embedded). Env: REMOTEJOB_QUEUES.")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="remotejob")
@click.pass_context
def main(ctx: click.Context, name: str, store: str | None, queues: str | None, debug: bool) -> None:
    """Run jobs on remote machines through S3 and SQS (or the embedded default).

    \b
    Example:
      remotejob submit cat.jpg --meta size=128
      remotejob worker mymodule:handler
      remotejob status JOB_ID
    """
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    ctx.obj = Context(name, store, queues, debug)


@main.command()
@pass_context
def init(ctx: Context) -> None:
    """Create the bucket or folder and the status and dead-letter queues.

    \b
    Example:
      remotejob --store s3://my-bucket/jobs --queues sqs:// init
    """
    with _expected_errors(ctx.debug):
        made = ctx.connect().init()
        click.echo(f"store: {made['store']}")
        for name in made["queues"]:
            click.echo(f"queue: {name}")


def _parse_meta(pairs: tuple[str, ...]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--meta")
        meta[name] = value
    return meta


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(allow_dash=True))
@click.option("--meta", "meta_pairs", multiple=True, metavar="KEY=VALUE",
              help="Metadata for every job (repeatable).")
@click.option("--status", default="pending", show_default=True, help="Status queue to send to.")
@pass_context
def submit(ctx: Context, files: tuple[str, ...], meta_pairs: tuple[str, ...], status: str) -> None:
    """Submit one job per FILE ('-' reads stdin); print one job id per line.

    \b
    Example:
      remotejob submit photos/*.jpg --meta size=128
    """
    meta = _parse_meta(meta_pairs)
    with _expected_errors(ctx.debug):
        q = ctx.connect()
        for name in files:
            if name == "-":
                data: dict[str, Any] = {"body": sys.stdin.buffer, **meta}
            else:
                path = Path(name)
                data = {"body": path, "filename": path.name, **meta}
            click.echo(q.submit(data, status=status))


def _load_handler(target: str) -> Handler:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise click.BadParameter(f"{target!r} is not MODULE:FUNCTION", param_hint="TARGET")
    sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(
            f"cannot import {module_name!r}: {exc}", param_hint="TARGET"
        ) from exc
    handler = getattr(module, attr, None)
    if not callable(handler):
        raise click.BadParameter(f"{module_name} has no function {attr!r}", param_hint="TARGET")
    return handler  # type: ignore[no-any-return]


@main.command()
@click.argument("target", metavar="MODULE:FUNCTION")
@click.option("--status", default="pending", show_default=True, help="Status queue to serve.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=1, show_default=True,
              help="Handlers running at once (threads).")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option("--max-jobs", type=click.IntRange(min=1), default=None, help="Exit after N jobs.")
@click.option("--max-attempts", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="Attempts before a job is recorded failed and dead-lettered (set on queue creation).")
@click.option("--retry-delay", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Backoff before the first retry, in seconds; doubles per attempt.")
@click.option("--grace-period", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds running jobs get to finish after SIGTERM/SIGINT.")
@pass_context
def worker(
    ctx: Context, target: str, status: str, concurrency: int, burst: bool, max_jobs: int | None,
    max_attempts: int, retry_delay: float, grace_period: float,
) -> None:
    """Run a Python handler on each job: FUNCTION(job) returns output assets or None.

    SIGTERM or Ctrl-C stops taking jobs and lets running ones finish within the grace period;
    a second one stops at once. Unfinished jobs become visible to other workers immediately.

    \b
    Example:
      remotejob worker thumbnails:make_thumbnail --concurrency 8 --burst
    """
    handler = _load_handler(target)
    with _expected_errors(ctx.debug):
        runner = Worker(
            ctx.connect(max_attempts=max_attempts), handler, status=status, concurrency=concurrency,
            max_jobs=max_jobs, burst=burst, retry_delay=retry_delay,
            max_retry_delay=max(retry_delay, 900.0), grace_period=grace_period,
        )
        count = runner.run()
        click.echo(f"processed {count} job(s)", err=True)
    if runner.interrupted:
        sys.stderr.flush()
        os._exit(130)  # handler threads still running must not keep the process alive


def _status_doc(st: JobStatus) -> dict[str, Any]:
    return {
        "id": st.id, "state": st.state, "status": st.status, "error": st.error,
        "outputs": st.outputs, "created": st.created, "updated": st.updated,
        "attempt": st.attempt, "worker": st.worker,
    }


@main.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_context
def status(ctx: Context, job_ids: tuple[str, ...], as_json: bool) -> None:
    """Show the state of jobs.

    \b
    Example:
      remotejob status 0190a1b2c3d4e5f6a7b8c9d0e1f2
    """
    with _expected_errors(ctx.debug):
        q = ctx.connect()
        for job_id in job_ids:
            st = q.status(job_id)
            if as_json:
                click.echo(json.dumps(_status_doc(st)))
            else:
                extra = f"  error: {st.error}" if st.error else ""
                outputs = f"  outputs: {', '.join(st.outputs)}" if st.outputs else ""
                click.echo(f"{st.id}  {st.state}{outputs}{extra}")


def _demo_handler(job: Any) -> list[dict[str, Any]]:
    with job.open() as stream:
        text = stream.read().decode("utf-8")
    words = len(text.split())
    return [
        {"key": "output", "filename": "shout.txt", "body": text.upper()},
        {"key": "stats", "filename": "stats.json", "body": json.dumps({"words": words})},
    ]


SAMPLES = {
    "haiku.txt": "an old silent pond\na frog jumps into the pond\nsplash silence again\n",
    "seed.txt": "remotejob runs jobs on remote machines through S3 and SQS\n",
    "hello.txt": "hello from the embedded backend\n",
}


@main.command()
@pass_context
def demo(ctx: Context) -> None:
    """Round trip on the embedded default: submit samples, work them, print the results."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    with _expected_errors(ctx.debug), tempfile.TemporaryDirectory() as tmp:
        q = ctx.connect()
        ids = []
        for filename, text in SAMPLES.items():
            path = Path(tmp) / filename
            path.write_text(text)
            ids.append(q.submit({"body": path, "filename": filename, "sample": "yes"}))
            console.print(f"submitted [bold]{filename}[/] as job {ids[-1]}")
        done = work(q, _demo_handler, burst=True)
        console.print(f"worker processed {done} job(s) from {q.name}-pending")
        table = Table(title=f"results in {q.object_store.location}")
        for column in ("input", "job", "state", "outputs", "words"):
            table.add_column(column)
        shouted = []
        for job_id in ids:
            st = q.wait(job_id, timeout=30)
            filename = q.retrieve("in", job_id).metadata.get("filename", "")
            stats = json.loads(q.retrieve("out", f"{job_id}/stats").read())
            table.add_row(filename, job_id, st.state, ", ".join(st.outputs), str(stats["words"]))
            shouted.append((filename, q.retrieve("out", f"{job_id}/output").read().decode()))
        console.print(table)
        for filename, text in shouted:
            console.print(f"[bold]out/<job>/output[/] of {filename}:", markup=True)
            console.print(text.rstrip(), markup=False, highlight=False)
