"""``remotejob schedule``: periodic jobs (add, ls, rm, show), served by the workers themselves."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from ..schedules import MISSED, Schedule
from .app import EXIT_USAGE, Context, emit_json, main, out, pass_context, table
from .jobs import parse_meta


@main.group("schedule")
def schedule() -> None:
    """Periodic jobs: one job on every tick of a cron expression (UTC).

    Schedules live in the store; every worker serves them (no scheduler process to run), and
    each tick makes exactly one job, with the id NAME@YYYYMMDDTHHMMSSZ.

    \b
    Example:
      remotejob schedule add nightly-report --cron '0 2 * * *' report.json --meta kind=daily
      remotejob schedule ls
      remotejob schedule show nightly-report
      remotejob schedule rm nightly-report
    """


def _when(moment: datetime | float | None) -> str:
    if moment is None:
        return ""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _next(s: Schedule, count: int = 1) -> list[datetime]:
    return s.next_ticks(count)


def schedule_doc(s: Schedule, count: int = 1) -> dict[str, Any]:
    """A schedule as the --json output shows it (with its next ``count`` ticks)."""
    ticks = _next(s, count)
    return {
        "name": s.name, "cron": s.cron, "status": s.status, "missed": s.missed, "meta": s.meta,
        "time_limit": s.time_limit, "priority": s.priority, "created": s.created, "updated": s.updated,
        "input_size": s.input_size,
        "next": [{"time": t.isoformat().replace("+00:00", "Z"), "job": s.tick_id(t)} for t in ticks],
    }


@schedule.command("add")
@click.argument("name")
@click.argument("file", required=False, type=click.Path(allow_dash=True, dir_okay=False))
@click.option("--cron", required=True, metavar="EXPR",
              help="When, in UTC: 'minute hour day-of-month month day-of-week' (e.g. '0 2 * * *'), "
                   "or 6 fields with seconds first.")
@click.option("--status", default="pending", show_default=True, help="Status queue the jobs go to.")
@click.option("--missed", type=click.Choice(MISSED), default="latest", show_default=True,
              help="Ticks missed while no worker ran: run the latest once, all of them (100 at most), "
                   "or none.")
@click.option("--meta", "meta_pairs", multiple=True, metavar="KEY=VALUE",
              help="Metadata for every job (repeatable).")
@click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=None, metavar="S",
              help="Each attempt may run S seconds [default: the worker's --time-limit].")
@click.option("--priority", type=click.Choice(["high", "normal", "low"]), default=None,
              help="The jobs' priority [default: normal].")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@pass_context
def add(ctx: Context, name: str, file: str | None, cron: str, status: str, missed: str,
        meta_pairs: tuple[str, ...], time_limit: float | None, priority: str | None, as_json: bool) -> None:
    """Add (or replace) the schedule NAME; each job's input is FILE ('-' reads stdin; none:
    empty). Prints the schedule and its next tick.

    \b
    Example:
      remotejob schedule add nightly-report --cron '0 2 * * *' report.json
      echo '{"days": 7}' | remotejob schedule add weekly --cron '0 6 * * MON' - --missed skip
    """
    meta = parse_meta(meta_pairs)
    if file is not None and file != "-" and not Path(file).is_file():
        ctx.fail(f"{file}: no such file (check the path)", EXIT_USAGE)
    data: dict[str, Any] = {"body": b"", **meta}
    if file == "-":
        data["body"] = sys.stdin.buffer
    elif file is not None:
        data.update(body=Path(file), filename=Path(file).name)
    with ctx.errors():
        s = ctx.connect().every(name, cron=cron, data=data, status=status, missed=missed,
                                time_limit=time_limit, priority=priority)
    if as_json:
        emit_json(schedule_doc(s))
        return
    ticks = _next(s)
    click.echo(f"schedule {s.name}: {s.cron} (UTC) -> {s.status}; next "
               f"{_when(ticks[0]) if ticks else 'never'}")


@schedule.command("ls")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_context
def ls(ctx: Context, as_json: bool) -> None:
    """List the schedules: cron, status queue, missed-tick policy and next tick (UTC)."""
    with ctx.errors():
        found = ctx.connect().schedules()
    if as_json:
        for s in found:
            emit_json(schedule_doc(s))
    elif found:
        table(["NAME", "CRON", "STATUS", "MISSED", "NEXT (UTC)", "META"],
              [(s.name, s.cron, s.status + (f" ({s.priority})" if s.priority else ""), s.missed,
                _when(next(iter(_next(s)), None)), " ".join(f"{k}={v}" for k, v in s.meta.items()))
               for s in found])
    else:
        out.print("no schedules")


@schedule.command("rm")
@click.argument("names", nargs=-1, required=True)
@pass_context
def rm(ctx: Context, names: tuple[str, ...]) -> None:
    """Remove schedules; their ticks already sent (due within minutes) still run: cancel those
    by id (NAME@YYYYMMDDTHHMMSSZ). Exit 2 if one did not exist."""
    missing = []
    with ctx.errors():
        q = ctx.connect()
        for name in names:
            if q.unschedule(name):
                click.echo(f"removed {name}")
            else:
                missing.append(name)
    if missing:
        ctx.fail(f"no schedule {', '.join(missing)} (list them with: remotejob schedule ls)", EXIT_USAGE)


@schedule.command("show")
@click.argument("name")
@click.option("-n", "--count", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="How many next ticks to show.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@pass_context
def show(ctx: Context, name: str, count: int, as_json: bool) -> None:
    """Show a schedule and its next ticks (UTC) with the job id each will have."""
    with ctx.errors():
        s = ctx.connect().schedule(name)
    doc = schedule_doc(s, count)
    if as_json:
        emit_json(doc)
        return
    rows = [("cron", f"{s.cron} (UTC)"), ("status", s.status), ("priority", s.priority or "normal"),
            ("missed", s.missed), ("meta", " ".join(f"{k}={v}" for k, v in s.meta.items())),
            ("time limit", "" if s.time_limit is None else f"{s.time_limit:g} s"),
            ("input", f"{s.input_size} bytes"), ("created", _when(s.created)), ("updated", _when(s.updated))]
    table(["FIELD", "VALUE"], rows, title=f"schedule {s.name}")
    table(["NEXT (UTC)", "JOB ID"], [(_when(t), s.tick_id(t)) for t in _next(s, count)])
