"""The ``remotejob`` command group and what every command shares: connection options, exit
codes, one-line errors, ``--json`` output, tables and progress bars.

Exit codes: 0 ok, 1 a job failed or was cancelled (``cancel``: a job had finished first),
2 usage or configuration error (an unknown job id too; ``retry`` of a job that cannot be retried),
3 backend unavailable, 4 timeout. Expected errors print one line; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import IO, Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn
from rich.table import Table

from .. import errors
from ..queue import Queue, connect
from ..redact import RedactSecrets
from ..status import JobStatus
from ..status import Progress as JobProgress

EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_TIMEOUT = 1, 2, 3, 4
PROGRESS_MIN_BYTES = 8 * 1024 * 1024
"""Transfers from this size on show a progress bar (on a terminal)."""

out = Console(highlight=False, width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True, highlight=False)


class Context:
    """What every command shares: the connection options and --debug."""

    def __init__(
        self, name: str, store: str | None, queues: str | None, debug: bool, legacy: bool = False
    ) -> None:
        self.name, self.store, self.queues, self.debug, self.legacy = name, store, queues, debug, legacy

    def connect(self, **options: Any) -> Queue:
        """The job system the options name."""
        return connect(self.name, store=self.store, queues=self.queues, legacy=self.legacy, **options)

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Expected errors become one line on stderr and an exit code (a traceback with --debug)."""
        try:
            yield
        except (errors.JobFailed, errors.IntegrityError) as exc:
            self.fail(exc, EXIT_FAILED)
        except errors.WaitTimeout as exc:
            self.fail(exc, EXIT_TIMEOUT)
        except errors.BackendUnavailable as exc:
            self.fail(exc, EXIT_UNAVAILABLE)
        except (errors.RemoteJobError, ValueError, TypeError, OSError) as exc:
            self.fail(exc, EXIT_USAGE)

    def fail(self, exc: BaseException | str, code: int) -> NoReturn:
        """Print one error line and exit with ``code`` (re-raise with --debug)."""
        if self.debug and isinstance(exc, BaseException):
            raise exc
        click.echo(f"remotejob: error: {exc}", err=True)
        sys.exit(code)


pass_context = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--name", envvar="REMOTEJOB_NAME", default="jobs", show_default=True,
              help="Job system name (queues are NAME-STATUS). Env: REMOTEJOB_NAME.")
@click.option("--store", envvar="REMOTEJOB_STORE", default=None,
              help="s3://bucket/prefix or a folder (default: embedded). Env: REMOTEJOB_STORE.")
@click.option("--queues", envvar="REMOTEJOB_QUEUES", default=None,
              help="sqs:// or a SQLite file (default: embedded). Env: REMOTEJOB_QUEUES.")
@click.option("--legacy", is_flag=True, envvar="REMOTEJOB_LEGACY",
              help="Talk the 2014 Node.js package's wire format too (see the README's migration "
                   "section). Env: REMOTEJOB_LEGACY=1.")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="remotejob")
@click.pass_context
def main(
    ctx: click.Context, name: str, store: str | None, queues: str | None, legacy: bool, debug: bool
) -> None:
    """Run jobs on remote machines through S3 and SQS (or the embedded default).

    \b
    Example:
      remotejob submit cat.jpg --meta size=128 --wait
      remotejob worker --exec 'convert {input} {outdir}/thumb.png' --concurrency 4
      remotejob fetch JOB_ID -o results/
    """
    handler = logging.StreamHandler()
    handler.addFilter(RedactSecrets())
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[handler],
    )
    # --debug is remotejob's own debug log; botocore's would print request headers.
    logging.getLogger("remotejob").setLevel(logging.DEBUG if debug else logging.WARNING)
    ctx.obj = Context(name, store or None, queues or None, debug, legacy)


def emit_json(doc: Any) -> None:
    """One JSON document on a line of stdout."""
    click.echo(json.dumps(doc, ensure_ascii=False, default=str))


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """A readable table on stdout."""
    grid = Table(title=title, show_edge=False, header_style="bold")
    for i, column in enumerate(columns):
        last = i == len(columns) - 1
        grid.add_column(
            column, no_wrap=True, overflow="ellipsis" if last else "fold", max_width=80 if last else None
        )
    for row in rows:
        grid.add_row(*("" if cell is None else str(cell) for cell in row))
    out.print(grid)


def progress() -> Progress:
    """A progress display on stderr, silent when stderr is not a terminal."""
    return Progress(
        TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        console=err, disable=not err.is_terminal, transient=True,
    )


class ProgressReader:
    """A binary reader that advances a progress bar as it is read."""

    def __init__(self, source: IO[bytes], bar: Progress, task: Any) -> None:
        self._source, self._bar, self._task = source, bar, task
        self.mode = "rb"

    def read(self, size: int = -1) -> bytes:
        chunk = self._source.read(size)
        self._bar.advance(self._task, len(chunk))
        return chunk


def progress_count(p: JobProgress) -> str:
    """How far a job says it has got, as a count: ``40/100 (40%)``, or ``40`` without a total."""
    if p.total is None:
        return f"{p.done:g}"
    fraction = p.fraction
    percent = "" if fraction is None else f" ({fraction * 100:.0f}%)"
    return f"{p.done:g}/{p.total:g}{percent}"


MAX_JOB_BARS = 20
"""``wait`` shows a bar for each of the first this many jobs (and one for all, for several)."""


class JobBars:
    """Live progress bars for jobs being waited on, drawn on ``console`` while it is a terminal
    (nothing at all otherwise): one per job (its state, a bar whose total is the job's reported
    ``progress.total``, the count and ``progress.message``), for the first :data:`MAX_JOB_BARS`
    jobs, and one counting the jobs done when there are several. Transient: gone when it stops.

    Use it as a context manager and call :meth:`update` with each status read.
    """

    def __init__(self, console: Console, job_ids: Sequence[str]) -> None:
        self.bar = Progress(
            TextColumn("{task.fields[job]}", markup=False), TextColumn("{task.fields[state]}", markup=False),
            BarColumn(), TextColumn("{task.fields[count]}", markup=False),
            TextColumn("{task.description}", markup=False),  # a handler's text: no rich markup
            console=console, disable=not console.is_terminal, transient=True,
        )
        ids = list(dict.fromkeys(job_ids))
        self._tasks = {job_id: self.bar.add_task("", total=None, job=job_id, state="", count="")
                       for job_id in ids[:MAX_JOB_BARS]}
        self._total = len(ids)
        self._done: set[str] = set()
        self._all: TaskID | None = None
        if len(ids) > 1:
            self._all = self.bar.add_task("", total=len(ids), job="jobs done", state="",
                                          count=f"0/{len(ids)}")

    def update(self, st: JobStatus) -> None:
        """Show where job ``st.id`` stands."""
        if st.done and st.id not in self._done:
            self._done.add(st.id)
            if self._all is not None:
                done = len(self._done)
                self.bar.update(self._all, completed=done, count=f"{done}/{self._total}")
        task = self._tasks.get(st.id)
        if task is None:
            return
        p = st.progress
        if p is not None and p.total:
            self.bar.update(task, total=p.total, completed=min(p.done, p.total))
        elif st.state == "completed":
            self.bar.update(task, total=1, completed=1)
        self.bar.update(task, state=st.state, count="" if p is None else progress_count(p),
                        description=(p.message or "") if p is not None else "")

    def __enter__(self) -> JobBars:
        self.bar.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.bar.stop()
