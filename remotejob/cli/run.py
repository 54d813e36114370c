"""Commands that run jobs: worker (a command or a Python handler per job) and demo."""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from ..command import CommandHandler
from ..worker import Handler, Worker
from .app import Context, err, main, out, pass_context, table

KILL_MARGIN_S = 15.0
"""How much longer than ``--cancel-grace`` a worker waits for an ``--exec`` handler that was asked
to stop: the handler's SIGKILL comes after the grace, and it waits up to 10 s for the group."""


def _load_handler(target: str) -> Handler:
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise click.BadParameter(f"{target!r} is not MODULE:FUNCTION", param_hint="TARGET")
    sys.path.insert(0, ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint="TARGET") from exc
    handler = getattr(module, attr, None)
    if not callable(handler):
        raise click.BadParameter(f"{module_name} has no function {attr!r}", param_hint="TARGET")
    return handler  # type: ignore[no-any-return]


@main.command()
@click.argument("target", metavar="[MODULE:FUNCTION]", required=False)
@click.option("--exec", "command", metavar="CMD",
              help="Run CMD per job: {input} is the input file, {outdir} a folder for outputs, {job_id}.")
@click.option("--shell", is_flag=True, help="Run --exec through /bin/sh (metadata stays in the environment).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Kill --exec commands after S seconds (the attempt fails).")
@click.option("--status", default="pending", show_default=True, help="Status queue to serve.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=1, show_default=True,
              help="Jobs running at once.")
@click.option("--prefetch", type=click.IntRange(min=0), default=None,
              help="Jobs held waiting for a free handler [default: as many as handlers, 2 to 10; "
                   "0 for long jobs spread over many workers].")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
@click.option("--max-jobs", type=click.IntRange(min=1), default=None, help="Exit after N jobs.")
@click.option("--max-attempts", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="Attempts before a job is recorded failed and dead-lettered (set on queue creation).")
@click.option("--retry-delay", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Backoff before the first retry, in seconds; doubles per attempt.")
@click.option("--grace-period", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds running jobs get to finish after SIGTERM/SIGINT.")
@click.option("--dead-letter-check", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="While idle, settle jobs the queue dead-lettered by itself at most this often (seconds).")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
              help="Stop a job that runs longer than S seconds (if it was submitted without a "
                   "--time-limit of its own); the attempt fails with TimeLimitExceeded and is retried.")
@click.option("--cancel-grace", type=click.FloatRange(min=0), default=10.0, show_default=True, metavar="S",
              help="Seconds a job asked to stop (cancelled, or past its time limit) gets before the "
                   "worker goes on without it (--exec: SIGTERM, then SIGKILL after S).")
@click.option("--cancel-check", type=click.FloatRange(min=0, min_open=True), default=5.0, show_default=True,
              metavar="S", help="While holding jobs, read the store's list of cancelled jobs at most "
                                "this often (one LIST per interval, not per job).")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, metavar="N",
              help="Serve Prometheus metrics at http://HOST:N/metrics (needs remotejob[metrics]).")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, metavar="HOST",
              help="The address --metrics-port listens on.")
@click.option("--schedule-check", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, metavar="S",
              help="Send parked far-future jobs and make periodic jobs' ticks this often (one LIST "
                   "of timers/ and one of schedules/ each time).")
@click.option("--legacy", is_flag=True,
              help="Also take the 2014 Node.js package's jobs (as `remotejob --legacy worker`).")
@click.option("--no-schedules", is_flag=True,
              help="Neither send parked jobs nor make ticks (other workers do).")
@pass_context
def worker(
    ctx: Context, target: str | None, command: str | None, shell: bool, timeout: float | None, status: str,
    concurrency: int, prefetch: int | None, burst: bool, max_jobs: int | None, max_attempts: int,
    retry_delay: float, grace_period: float, dead_letter_check: float, time_limit: float | None,
    cancel_grace: float, cancel_check: float, metrics_port: int | None, metrics_host: str,
    schedule_check: float, legacy: bool, no_schedules: bool,
) -> None:
    """Work jobs: run a command (--exec) or a Python handler (MODULE:FUNCTION) on each.

    With --exec, each job's input is downloaded to a temporary file; every file the command
    leaves in {outdir} becomes an output, and its stdout and stderr become the outputs
    `stdout` and `stderr`. Job metadata reaches the command only as environment variables
    REMOTEJOB_META_<KEY> (and REMOTEJOB_JOB_ID), never inside the command line. A non-zero
    exit or a timeout fails the attempt; it is retried, then recorded failed.

    A handler FUNCTION(job) returns output assets (a list of {"key", "body"} dicts) or None.
    It may report progress with job.progress(done, total, message) and should stop when
    job.cancelled is true (or call job.check(), which raises remotejob.Cancelled).

    A cancelled job (`remotejob cancel`) is dropped if it has not started; a running one is
    asked to stop (--exec: SIGTERM to its process group, SIGKILL after --cancel-grace). A job
    running past its time limit (`submit --time-limit`, else --time-limit) is stopped the same
    way and its attempt fails.

    SIGTERM or Ctrl-C stops taking jobs and lets running ones finish within the grace period;
    then, or on a second signal, unfinished jobs are released to other workers at once.

    With --metrics-port, Prometheus metrics (jobs taken, succeeded, failed, retried, cancelled
    and dead-lettered, handler duration, jobs running, queue depths) are served at
    http://127.0.0.1:N/metrics while the worker runs.

    \b
    Example:
      remotejob worker --exec 'convert {input} {outdir}/thumb.png' --concurrency 4
      remotejob worker --exec 'python3 transform.py {input} {outdir}' --timeout 600 --burst
      remotejob worker thumbnails:make_thumbnail --burst
      remotejob worker --exec './render.sh {input} {outdir}' --time-limit 900 --cancel-grace 30
    """
    if (target is None) == (command is None):
        raise click.UsageError("give either MODULE:FUNCTION or --exec CMD")
    ctx.legacy = ctx.legacy or legacy
    if command is None and (shell or timeout is not None):
        raise click.UsageError("--shell and --timeout go with --exec")
    handler: Handler
    if command is not None:
        try:
            handler = CommandHandler(command, shell=shell, timeout=timeout, grace=cancel_grace)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--exec") from exc
    else:
        handler = _load_handler(str(target))
    with ctx.errors():
        runner = Worker(
            ctx.connect(max_attempts=max_attempts), handler, status=status, concurrency=concurrency,
            prefetch=prefetch, max_jobs=max_jobs, burst=burst, retry_delay=retry_delay,
            max_retry_delay=max(retry_delay, 900.0), grace_period=grace_period,
            dead_letter_check=dead_letter_check, time_limit=time_limit, cancel_check=cancel_check,
            # a command gets SIGTERM, then SIGKILL after cancel_grace: the worker waits for that
            # (and the group to be gone) before it goes on without the handler
            cancel_grace=cancel_grace + (KILL_MARGIN_S if command is not None else 0.0),
            metrics_port=metrics_port, metrics_host=metrics_host,
            schedule_check=None if no_schedules else schedule_check,
        )
        if runner.metrics is not None:
            click.echo(f"serving metrics on http://{metrics_host}:{runner.metrics.port}/metrics", err=True)
        count = runner.run()
        click.echo(f"processed {count} job(s)", err=True)
    if runner.interrupted:
        if isinstance(handler, CommandHandler):
            handler.kill_all()  # they run in their own sessions: nothing else would stop them
        sys.stderr.flush()
        os._exit(130)  # handler threads still running must not keep the process alive


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
    """Round trip on the embedded default: submit samples, work them, print the results.

    \b
    Example:
      remotejob --name demo demo
    """
    with ctx.errors(), tempfile.TemporaryDirectory() as tmp:
        q = ctx.connect()
        ids = {}
        for filename, text in SAMPLES.items():
            path = Path(tmp) / filename
            path.write_text(text)
            job_id = ids[filename] = q.submit({"body": path, "filename": filename, "sample": "yes"})
            out.print(f"submitted [bold]{filename}[/] as job {job_id}")
        done = Worker(q, _demo_handler, burst=True).run()
        out.print(f"worker processed {done} job(s) from {q.name}-pending")
        rows, shouted = [], []
        for filename, job_id in ids.items():
            st = q.wait(job_id, timeout=30)
            stats = json.loads(q.output(job_id, "stats").read())
            rows.append((filename, job_id, st.state, ", ".join(st.outputs), stats["words"]))
            shouted.append((filename, q.output(job_id, "output").read().decode()))
        title = f"results in {q.object_store.location}"
        table(("input", "job", "state", "outputs", "words"), rows, title=title)
        for filename, text in shouted:
            out.print(f"[bold]out/<job>/output[/] of {filename}:")
            out.print(text.rstrip(), markup=False)
    err.file.flush()
