"""Commands for operators: stats, dead (list, redrive, purge) and purge."""

from __future__ import annotations

from typing import Any

import click

from .. import keys, scaling
from ..cost import PRICES_TAKEN, Cost, price_per_million
from ..cost import probe as cost_probe
from ..queue import Queue
from .app import Context, emit_json, main, out, pass_context, table


def _counts() -> dict[str, int]:
    from ..backends.aws import request_counts

    return request_counts()


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option("--probe", type=click.IntRange(min=1, max=1000), default=None, metavar="N",
              help="Run N no-op jobs in queues <name>-probe-* and show their requests per job and "
                   "$ per million jobs.")
@click.option("--workers", type=click.IntRange(min=0), default=None, metavar="N",
              help="The workers (or tasks) running now: show each status's backlog per worker "
                   "(0 workers: the whole backlog).")
@click.option("--per-worker", "target", type=click.FloatRange(min=0, min_open=True), default=None,
              metavar="T", help="The backlog one worker should have (acceptable latency / job time x "
                                "concurrency): show the workers each status wants, ceil(backlog / T).")
@click.option("--min-workers", type=click.IntRange(min=0), default=None, metavar="N",
              help="With --per-worker: want at least N workers (default 0).")
@click.option("--max-workers", type=click.IntRange(min=0), default=None, metavar="N",
              help="With --per-worker: want at most N workers (default: no bound).")
@pass_context
def stats(ctx: Context, as_json: bool, probe: int | None, workers: int | None, target: float | None,
          min_workers: int | None, max_workers: int | None) -> None:
    """Per status queue (and its priority levels' queues, once they exist): messages waiting, in
    flight and delayed; per status, its backlog (waiting + in flight, over its levels' queues),
    per worker with --workers, and the workers it wants with --per-worker; dead letters; on AWS,
    the requests this command made by operation; with --probe, what a job costs.

    \b
    Example:
      remotejob stats
      remotejob stats --probe 50
      remotejob stats --json | jq '.queues[] | select(.waiting > 0)'
      remotejob stats --json --workers 4 --per-worker 100 --max-workers 20 | jq '.backlog[0]'
    """
    _check_bounds(target, min_workers, max_workers)
    with ctx.errors():
        q = ctx.connect()
        q.init()
        found = scaling.depths(q)
        rows: list[dict[str, Any]] = [
            {"queue": r.queue, "status": r.status, "priority": r.priority, "waiting": r.depth.waiting,
             "in_flight": r.depth.in_flight, "delayed": r.depth.delayed} for r in found]
        backlog = [b.doc(workers, target, min_workers or 0, max_workers) for b in scaling.backlogs(found)]
        dead = q.message_queue.depth(keys.dead_letter_name(q.name))
        doc: dict[str, Any] = {"name": q.name, "store": q.object_store.location, "queues": rows,
               "dead_letters": dead.waiting + dead.in_flight + dead.delayed, "requests": _counts(),
               "backlog": backlog}
        if probe is not None:
            cost = cost_probe(q, probe)
            doc["per_job"] = {"jobs": cost.jobs, "requests": cost.per_job, "sqs": cost.sqs, "s3": cost.s3,
                              "usd_per_million_jobs": round(cost.usd_per_million_jobs, 4),
                              "prices_taken": PRICES_TAKEN}
    if as_json:
        emit_json(doc)
        return
    table(("queue", "waiting", "in flight", "delayed"),
          [(r["queue"], r["waiting"], r["in_flight"], r["delayed"]) for r in rows],
          title=f"{q.name} in {q.object_store.location}")
    _print_backlog(backlog, workers, target)
    out.print(f"dead letters: {doc['dead_letters']} (remotejob dead list)")
    if probe is not None:
        _print_cost(cost)
    elif doc["requests"]:
        title = "AWS requests this command made"
        table(("operation", "requests"), sorted(doc["requests"].items()), title=title)


def _check_bounds(target: float | None, min_workers: int | None, max_workers: int | None) -> None:
    if target is None and (min_workers is not None or max_workers is not None):
        raise click.UsageError("--min-workers and --max-workers bound the workers --per-worker asks for: "
                               "give --per-worker T too")
    if min_workers is not None and max_workers is not None and min_workers > max_workers:
        raise click.UsageError(f"--min-workers ({min_workers}) is more than --max-workers ({max_workers})")


def _print_backlog(backlog: list[dict[str, Any]], workers: int | None, target: float | None) -> None:
    columns = ["status", "backlog", "waiting", "in flight", "delayed"]
    columns += ["per worker"] if workers is not None else []
    columns += ["workers wanted"] if target is not None else []
    rows = []
    for b in backlog:
        row = [b["status"], b["backlog"], b["visible"], b["in_flight"], b["delayed"]]
        row += [f"{b['per_worker']:g}"] if workers is not None else []
        row += [b["desired_workers"]] if target is not None else []
        rows.append(row)
    title = "backlog per status (waiting + in flight, over its priority levels)"
    if workers is not None:
        title += f", {workers} worker(s)"
    if target is not None:
        title += f", aiming at {target:g} per worker"
    table(columns, rows, title=title)


def _print_cost(cost: Cost) -> None:
    if not cost.per_job:
        out.print(f"requests per job ({cost.jobs} probe jobs): none reach AWS on this backend, $0")
        return
    table(("operation", "requests per job", "$ per million jobs"),
          [(op, f"{n:.3f}", f"{n * price_per_million(op):.2f}") for op, n in cost.per_job.items()],
          title=f"requests per job ({cost.jobs} probe jobs: submit, take, complete, one status read)")
    out.print(f"SQS {cost.sqs:.2f} + S3 {cost.s3:.2f} requests per job: "
              f"${cost.usd_per_million_jobs:.2f} per million jobs at us-east-1 list prices of "
              f"{PRICES_TAKEN} (requests only; storage and transfer not included)")


@main.group()
def dead() -> None:
    """The dead-letter queue: jobs that failed every attempt, and messages that are not jobs.

    \b
    Example:
      remotejob dead list
      remotejob dead redrive
    """


@dead.command(name="list")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N messages.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_context
def dead_list(ctx: Context, limit: int | None, as_json: bool) -> None:
    """List dead letters (they stay in the queue).

    \b
    Example:
      remotejob dead list --json | jq -r .job
    """
    with ctx.errors():
        letters = ctx.connect().dead_letters(limit)
    if as_json:
        for letter in letters:
            emit_json({"job": letter.job, "status": letter.status, "source": letter.source,
                       "reason": letter.reason, "message_id": letter.message_id, "body": letter.body})
    elif letters:
        table(("job", "status", "from", "reason"),
              [(d.job or "(not a job)", d.status, d.source, d.reason[:100]) for d in letters])
    else:
        out.print("no dead letters")


@dead.command(name="redrive")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N messages.")
@pass_context
def dead_redrive(ctx: Context, limit: int | None) -> None:
    """Send dead-lettered jobs back to their status queues (failed jobs are reopened).

    \b
    Example:
      remotejob dead redrive
    """
    with ctx.errors():
        moved = ctx.connect().redrive(limit)
    click.echo(f"redrove {moved} job(s)")


def _purge(ctx: Context, q: Queue, queue: str, yes: bool) -> None:
    if not yes:
        click.confirm(f"Delete every message in {queue}? This cannot be undone", abort=True)
    with ctx.errors():
        q.message_queue.purge(queue)
    click.echo(f"purged {queue}")


@dead.command(name="purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_context
def dead_purge(ctx: Context, yes: bool) -> None:
    """Delete every dead letter.

    \b
    Example:
      remotejob dead purge --yes
    """
    with ctx.errors():
        q = ctx.connect()
        q.init()
    _purge(ctx, q, keys.dead_letter_name(q.name), yes)


@main.command()
@click.argument("status")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_context
def purge(ctx: Context, status: str, yes: bool) -> None:
    """Delete every message waiting in a status queue (SQS allows one purge a minute).

    \b
    Example:
      remotejob purge pending --yes
    """
    with ctx.errors():
        q = ctx.connect()
        queue = q.queue_name(status)
    _purge(ctx, q, queue, yes)
