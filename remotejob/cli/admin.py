"""Commands for operators: stats, dead (list, redrive, purge) and purge."""

from __future__ import annotations

from typing import Any

import click

from .. import keys, levels
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
@pass_context
def stats(ctx: Context, as_json: bool, probe: int | None) -> None:
    """Per status queue (and its priority levels' queues, once they exist): messages waiting, in
    flight and delayed; dead letters; on AWS, the
    requests this command made by operation; with --probe, what a job costs.

    \b
    Example:
      remotejob stats
      remotejob stats --probe 50
      remotejob stats --json | jq '.queues[] | select(.waiting > 0)'
    """
    with ctx.errors():
        q = ctx.connect()
        q.init()
        rows: list[dict[str, Any]] = []
        found = levels.level_depths(q.context)  # the priority levels' queues that exist
        for status in q.statuses:
            for level in (None, "high", "low"):
                name = keys.queue_name(q.name, status, level)
                depth = found.get(f"{status}-{level}") if level else q.message_queue.depth(name)
                if depth is not None:
                    rows.append({"queue": name, "status": status, "priority": level or "normal",
                                 "waiting": depth.waiting, "in_flight": depth.in_flight,
                                 "delayed": depth.delayed})
        dead = q.message_queue.depth(keys.dead_letter_name(q.name))
        doc: dict[str, Any] = {"name": q.name, "store": q.object_store.location, "queues": rows,
               "dead_letters": dead.waiting + dead.in_flight + dead.delayed, "requests": _counts()}
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
    out.print(f"dead letters: {doc['dead_letters']} (remotejob dead list)")
    if probe is not None:
        _print_cost(cost)
    elif doc["requests"]:
        title = "AWS requests this command made"
        table(("operation", "requests"), sorted(doc["requests"].items()), title=title)


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
