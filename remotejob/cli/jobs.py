"""Commands for requesters: init, submit, status, wait, cancel, retry, fetch, ls."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import click

from .. import records, timers
from ..errors import InvalidKey, NotFound, NotRetryable, WaitTimeout
from ..queue import Queue
from ..status import STATES, JobStatus
from .app import (
    EXIT_FAILED,
    EXIT_USAGE,
    PROGRESS_MIN_BYTES,
    Context,
    JobBars,
    ProgressReader,
    emit_json,
    err,
    main,
    out,
    pass_context,
    progress,
    progress_count,
    table,
)

UNSUCCESSFUL = ("failed", "cancelled")
"""Outcomes that make submit --wait and wait exit 1."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@pass_context
def init(ctx: Context, as_json: bool) -> None:
    """Create the bucket or folder and the status and dead-letter queues; print what exists.

    \b
    Example:
      remotejob --store s3://my-bucket/jobs --queues sqs:// init
    """
    with ctx.errors():
        made = ctx.connect().init()
    if as_json:
        emit_json(made)
        return
    click.echo(f"store: {made['store']}")
    for name in made["queues"]:
        click.echo(f"queue: {name}")


def parse_meta(pairs: tuple[str, ...]) -> dict[str, str]:
    """``--meta KEY=VALUE`` options as a mapping (click's BadParameter for a malformed one)."""
    meta: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--meta")
        meta[name] = value
    return meta


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(allow_dash=True, dir_okay=False))
@click.option("--meta", "meta_pairs", multiple=True, metavar="KEY=VALUE",
              help="Metadata for every job (repeatable).")
@click.option("--status", default="pending", show_default=True, help="Status queue to send to.")
@click.option("--wait", "wait_", is_flag=True,
              help="Wait for the jobs; exit 1 if any failed or was cancelled.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, help="With --wait: give up after S s.")
@click.option("--fetch", "fetch_dir", type=click.Path(file_okay=False), default=None,
              help="Wait, then download each job's outputs to DIR/JOB_ID/.")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
              help="Each attempt may run S seconds; past it the job is stopped and the attempt fails "
                   "(and is retried) [default: the worker's --time-limit].")
@click.option("--delay", default=None, metavar="DURATION",
              help="Start no earlier than DURATION from now: 90s, 15m, 2h, 3d, 1w, 1h30m (any length).")
@click.option("--at", "at_", default=None, metavar="TIME",
              help="Start no earlier than TIME, ISO 8601 with a zone: 2026-12-01T09:00Z.")
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), default=None,
              help="Workers take higher priorities first, never starving lower ones [default: normal].")
@click.option("--legacy", is_flag=True,
              help="Submit jobs a 2014 Node.js package worker can take (as `remotejob --legacy submit`).")
@click.option("--dedup-key", default=None, metavar="KEY",
              help="While a job submitted with KEY is scheduled, pending or running, print its id "
                   "instead of submitting another (one FILE only).")
@pass_context
def submit(ctx: Context, files: tuple[str, ...], meta_pairs: tuple[str, ...], status: str, wait_: bool,
           timeout: float | None, fetch_dir: str | None, time_limit: float | None, delay: str | None,
           at_: str | None, priority: str | None, legacy: bool, dedup_key: str | None) -> None:
    """Submit one job per FILE ('-' reads stdin); print one job id per line.

    \b
    Example:
      remotejob submit photos/*.jpg --meta size=128
      remotejob submit scan.pdf --wait --fetch results/
      tar c data | remotejob submit - --meta name=backup
      remotejob submit big.csv --time-limit 3600
      remotejob submit report.json --delay 2h --priority low
      remotejob submit report.json --at 2026-12-01T09:00Z --dedup-key report-2026-12
    """
    meta = parse_meta(meta_pairs)
    ctx.legacy = ctx.legacy or legacy
    for name in files:
        if name != "-" and not os.path.isfile(name):
            ctx.fail(f"{name}: no such file (check the path)", 2)
    options: dict[str, Any] = {"time_limit": time_limit, "priority": priority}
    if delay is not None and at_ is not None:
        raise click.UsageError("give --delay or --at, not both")
    try:
        if delay is not None:
            options["delay"] = timers.parse_duration(delay)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--delay") from None
    try:
        if at_ is not None:
            options["at"] = timers.parse_time(at_)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--at") from None
    if dedup_key is not None:
        if len(files) != 1:
            raise click.UsageError("--dedup-key submits one job: give one FILE")
        options["dedup_key"] = dedup_key
    with ctx.errors():
        q = ctx.connect()
        ids = _submit_all(q, files, meta, status, options)
        if wait_ or fetch_dir:
            done = wait_all(q, ids, timeout)
            failed = _report(done.values(), quiet_ok=True)
            if fetch_dir:
                for st in done.values():
                    if st.state == "completed":
                        fetch_outputs(q, st, Path(fetch_dir) / st.id, None)
            if failed:
                sys.exit(EXIT_FAILED)


def _submit_all(
    q: Queue, files: Sequence[str], meta: dict[str, str], status: str,
    options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Submit the files (big ones one by one with a progress bar, the rest in batches); print
    and return the job ids in FILE order. ``options``: ``submit()``'s keywords."""
    options = dict(options or {})
    small = [i for i, n in enumerate(files) if n == "-" or os.path.getsize(n) < PROGRESS_MIN_BYTES]
    if "dedup_key" in options:
        small = []  # submit() alone takes a dedup key
    ids: dict[int, str] = {}
    if small:
        items = [{"body": sys.stdin.buffer, **meta} if files[i] == "-"
                 else {"body": Path(files[i]), "filename": Path(files[i]).name, **meta} for i in small]
        ids.update(zip(small, q.submit_many(items, status=status, **options), strict=True))
    for i, name in enumerate(files):
        if i not in ids:
            ids[i] = _submit_one(q, name, meta, status, options)
        click.echo(ids[i])
    sys.stdout.flush()
    return [ids[i] for i in range(len(files))]


def _submit_one(q: Queue, name: str, meta: dict[str, str], status: str, options: Mapping[str, Any]) -> str:
    if name == "-":
        job_id = q.submit({"body": sys.stdin.buffer, **meta}, status=status, **options)
    else:
        path = Path(name)
        size = path.stat().st_size
        with open(path, "rb") as body, progress() as bar:
            stream: Any = body
            if size >= PROGRESS_MIN_BYTES:
                stream = ProgressReader(body, bar, bar.add_task(f"upload {path.name}", total=size))
            job_id = q.submit({"body": stream, "filename": path.name, **meta}, status=status, **options)
    return job_id


def wait_all(q: Queue, ids: Sequence[str], timeout: float | None) -> dict[str, JobStatus]:
    """Wait until every job is completed, failed or cancelled; return their statuses in ``ids``
    order. On a terminal, stderr shows live progress bars meanwhile (:class:`JobBars`).

    Raises:
        WaitTimeout: some jobs were not done after ``timeout`` seconds.
        NotFound: an id was never submitted.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    done: dict[str, JobStatus] = {}
    pending = list(dict.fromkeys(ids))
    delay = 0.05
    with JobBars(err, pending) as bars:
        while True:
            for job_id in list(pending):
                st = q.status(job_id)
                bars.update(st)
                if st.done:
                    done[job_id] = st
                    pending.remove(job_id)
            if not pending:
                return {job_id: done[job_id] for job_id in ids}
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimeout(
                    f"{len(pending)} job(s) not done after {timeout:g} s: {', '.join(pending[:5])}"
                    f"{' ...' if len(pending) > 5 else ''} (wait again, or raise --timeout)"
                )
            time.sleep(delay if left is None else min(delay, left))
            delay = min(delay * 1.5, 1.0)


def _report(statuses: Any, quiet_ok: bool = False) -> int:
    """Print failed and cancelled jobs on stderr (and completed ones on stdout unless quiet);
    return how many failed or were cancelled."""
    failed = 0
    for st in statuses:
        if st.state in UNSUCCESSFUL:
            failed += 1
            reason = st.error or ("no reason given" if st.state == "cancelled" else "")
            click.echo(f"{st.id}  {st.state}  {reason}", err=True)
        elif not quiet_ok:
            click.echo(f"{st.id}  {st.state}  {', '.join(st.outputs)}")
    return failed


def status_doc(st: JobStatus) -> dict[str, Any]:
    """A status as the --json output shows it."""
    return {
        "id": st.id, "state": st.state, "status": st.status, "error": st.error,
        "outputs": st.outputs, "created": st.created, "updated": st.updated,
        "attempt": st.attempt, "worker": st.worker, "started": st.started,
        "assets": {n: {"size": a.size, "sha256": a.sha256, "content_type": a.content_type}
                   for n, a in st.assets.items()},
        "progress": None if st.progress is None else {
            "done": st.progress.done, "total": st.progress.total, "message": st.progress.message,
            "updated": st.progress.updated},
        "run": st.run,
        "input_size": st.input_size, "traceback": st.traceback, "due": st.due, "priority": st.priority,
        "history": [{"state": a.state, "error": a.error, "worker": a.worker, "attempt": a.attempt,
                     "started": a.started, "updated": a.updated} for a in st.history],
    }


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _summary(error: str | None, width: int = 60) -> str:
    if not error:
        return ""
    line = error.strip().splitlines()[0] if error.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def progress_text(st: JobStatus, now: float) -> str:
    """A job's latest progress as the tables show it: ``40/100 (40%) resizing, 5s ago``."""
    p = st.progress
    if p is None:
        return f"due in {_age(max(0.0, st.due - now))}" if st.state == "scheduled" and st.due else ""
    text = progress_count(p) + (f" {_summary(p.message, 40)}" if p.message else "")
    return text if st.done else f"{text}, {_age(max(0.0, now - p.updated))} ago"


def _status_table(statuses: Sequence[JobStatus]) -> None:
    now = time.time()
    table(
        ("job", "state", "status", "age", "attempts", "earlier runs", "progress", "outputs", "error"),
        [(st.id, st.state, st.status, _age(now - st.created), st.attempt or "", len(st.history) or "",
          progress_text(st, now), ", ".join(st.outputs), _summary(st.error)) for st in statuses],
    )


@main.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_context
def status(ctx: Context, job_ids: tuple[str, ...], as_json: bool) -> None:
    """Show where jobs stand: pending, inprogress, completed, failed or cancelled.

    With each job: the progress its handler last reported (done/total, message, how long ago),
    the error of a failed job or the reason of a cancelled one, and how many earlier runs a
    retried job had (--json: "progress", "run" and "history"); below the table, the
    traceback of each job whose handler raised (--json: "traceback", and "input_size").

    \b
    Example:
      remotejob status 0190a1b2c3d4e5f6a7b8c9d0e1f2
      remotejob status --json JOB_ID | jq .progress
    """
    with ctx.errors():
        q = ctx.connect()
        statuses = [q.status(job_id) for job_id in job_ids]
    if as_json:
        for st in statuses:
            emit_json(status_doc(st))
    else:
        _status_table(statuses)
        for st in statuses:
            if st.traceback:
                out.print(f"\njob {st.id}: traceback of its last attempt", style="bold", markup=False,
                          highlight=False)
                out.print(st.traceback.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)


@main.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--timeout", type=click.FloatRange(min=0), default=None,
              help="Give up after S seconds (exit 4).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_context
def wait(ctx: Context, job_ids: tuple[str, ...], timeout: float | None, as_json: bool) -> None:
    """Wait until jobs are completed, failed or cancelled; exit 1 if any failed or was
    cancelled (listed on stderr), 4 on timeout.

    On a terminal, stderr shows a live progress bar per job while it waits (from what each
    handler reports with job.progress()); in a pipe or a file, nothing but the results.

    \b
    Example:
      remotejob wait $(remotejob submit *.csv) --timeout 600
    """
    with ctx.errors():
        done = wait_all(ctx.connect(), job_ids, timeout)
    if as_json:
        for st in done.values():
            emit_json(status_doc(st))
        failed = sum(st.state in UNSUCCESSFUL for st in done.values())
    else:
        failed = _report(done.values())
    if failed:
        sys.exit(EXIT_FAILED)


def _control_table(statuses: Sequence[JobStatus]) -> None:
    now = time.time()
    table(
        ("job", "state", "status", "earlier runs", "progress", "error"),
        [(st.id, st.state, st.status, len(st.history) or "", progress_text(st, now),
          _summary(st.error)) for st in statuses],
    )


def _problems(problems: list[str]) -> str:
    return "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")


@main.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--reason", default=None, metavar="TEXT", help="Why: recorded as the cancelled job's error.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_context
def cancel(ctx: Context, job_ids: tuple[str, ...], reason: str | None, as_json: bool) -> None:
    """Cancel jobs: a queued job never runs, a running one is asked to stop; print their states.

    Workers hear of a cancel within their --cancel-check interval: a Python handler sees
    job.cancelled (job.check() raises remotejob.Cancelled), a --exec command gets SIGTERM,
    then SIGKILL after the worker's --cancel-grace. A cancelled job publishes no outputs and is
    not retried (unless you `remotejob retry` it). A job that finished first keeps its outcome.

    Exit code 0 if every job is now cancelled (cancelling one again is harmless), 1 if a job
    had already completed or failed (the table shows which), 2 for an unknown job id (the
    others are still cancelled).

    \b
    Example:
      remotejob cancel JOB_ID --reason "wrong input"
      remotejob ls --state pending --json | jq -r .id | xargs remotejob cancel
    """
    statuses: list[JobStatus] = []
    unknown: list[str] = []
    with ctx.errors():
        q = ctx.connect()
        for job_id in dict.fromkeys(job_ids):
            try:
                statuses.append(q.cancel(job_id, reason))
            except (NotFound, InvalidKey) as exc:
                unknown.append(str(exc))
    if as_json:
        for st in statuses:
            emit_json(status_doc(st))
    elif statuses:
        _control_table(statuses)
    finished = [st for st in statuses if st.state != "cancelled"]
    if unknown:
        ctx.fail(_problems(unknown), EXIT_USAGE)
    if finished:
        ctx.fail("not cancelled, finished first: " + ", ".join(f"{st.id} ({st.state})" for st in finished),
                 EXIT_FAILED)


@main.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_context
def retry(ctx: Context, job_ids: tuple[str, ...], as_json: bool) -> None:
    """Run failed or cancelled jobs again, under the same ids; print their new states.

    Each job goes back to the status queue it ended in, with its input and metadata; its
    earlier outcome is kept in its history (`remotejob status` counts the earlier runs).

    Exit code 0 if every job was sent again; 2 if a job cannot be retried (the error line
    says why: it is pending, running or completed, or was cancelled while queued and no worker
    has dropped its message yet, or another retry sent it already) or its id is unknown; the
    others are still retried.

    \b
    Example:
      remotejob retry JOB_ID
      remotejob ls --state failed --json | jq -r .id | xargs remotejob retry
    """
    statuses: list[JobStatus] = []
    refused: list[str] = []
    with ctx.errors():
        q = ctx.connect()
        for job_id in dict.fromkeys(job_ids):
            try:
                statuses.append(q.retry(job_id))
            except (NotFound, InvalidKey, NotRetryable) as exc:
                refused.append(str(exc))
    if as_json:
        for st in statuses:
            emit_json(status_doc(st))
    elif statuses:
        _control_table(statuses)
    if refused:
        ctx.fail(_problems(refused), EXIT_USAGE)


def _digest(st: JobStatus, name: str) -> str | None:
    output = st.assets.get(name)
    return None if output is None else output.sha256


def fetch_outputs(q: Queue, st: JobStatus, folder: Path, asset: str | None) -> list[str]:
    """Download a job's outputs (or one) into ``folder``; return the paths written."""
    names = st.outputs if asset is None else [asset]
    if asset is not None and asset not in st.outputs:
        raise NotFound(f"job {st.id!r} has no output {asset!r}; it has: {', '.join(st.outputs) or 'none'}")
    written = []
    for name in names:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with q.output(st.id, name, _digest(st, name)) as obj, progress() as bar:
            advance = None
            if obj.size >= PROGRESS_MIN_BYTES:
                advance = partial(bar.advance, bar.add_task(f"download {name}", total=obj.size))
            obj.save(target, progress=advance)  # in parts from S3, checked, renamed into place
        written.append(str(target))
    return written


@main.command()
@click.argument("job_id")
@click.option("-o", "--output", "folder", default=None,
              help="Folder to write to (default ./JOB_ID); '-' writes --asset to stdout.")
@click.option("--asset", default=None, help="Only this output (e.g. output, stderr).")
@pass_context
def fetch(ctx: Context, job_id: str, folder: str | None, asset: str | None) -> None:
    """Download a finished job's outputs; print the paths written.

    \b
    Example:
      remotejob fetch JOB_ID -o results/
      remotejob fetch JOB_ID --asset stdout -o - | less
    """
    if folder == "-" and asset is None:
        raise click.UsageError("-o - writes one output to stdout: name it with --asset")
    with ctx.errors():
        q = ctx.connect()
        st = q.status(job_id)
        if not st.done:
            raise NotFound(f"job {job_id!r} is {st.state}: it has no outputs yet (remotejob wait it first)")
        if folder == "-":
            fetch_to_stdout(q, st, str(asset))
            return
        for path in fetch_outputs(q, st, Path(folder or job_id), asset):
            click.echo(path)


def fetch_to_stdout(q: Queue, st: JobStatus, asset: str) -> None:
    """Stream one output to stdout."""
    if asset not in st.outputs:
        raise NotFound(f"job {st.id!r} has no output {asset!r}; it has: {', '.join(st.outputs) or 'none'}")
    with q.output(st.id, asset, _digest(st, asset)) as obj:
        stream = obj.open()
        while chunk := stream.read(1024 * 1024):
            sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


@main.command(name="ls")
@click.option("--state", type=click.Choice(list(STATES)),
              default=None,
              help="Only jobs in this state.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True, help="At most N jobs.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_context
def ls(ctx: Context, state: str | None, limit: int, as_json: bool) -> None:
    """List recent jobs: state, age, attempts and error summary, newest first.

    \b
    Example:
      remotejob ls --state failed --limit 50
    """
    with ctx.errors():
        q = ctx.connect()
        found: list[JobStatus] = []
        for job_id in records.recent_jobs(q.object_store):
            try:
                st = q.status(job_id)
            except NotFound:
                continue
            if state is None or st.state == state:
                found.append(st)
                if len(found) >= limit:
                    break
    if as_json:
        for st in found:
            emit_json({**status_doc(st), "attempts": st.attempt or 0})
    elif found:
        _status_table(found)
    else:
        out.print("no jobs" + (f" in state {state}" if state else ""))
