"""The ``remotejob`` command group and what every command shares: connection options, exit
codes, one-line errors, ``--json`` output, tables and progress bars.

Exit codes: 0 ok, 1 a job failed, 2 usage or configuration error (an unknown job id too),
3 backend unavailable, 4 timeout. Expected errors print one line; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any, NoReturn

import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from .. import errors
from ..queue import Queue, connect
from ..redact import RedactSecrets

EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_TIMEOUT = 1, 2, 3, 4
PROGRESS_MIN_BYTES = 8 * 1024 * 1024
"""Transfers from this size on show a progress bar (on a terminal)."""

out = Console(highlight=False, width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True, highlight=False)


class Context:
    """What every command shares: the connection options and --debug."""

    def __init__(self, name: str, store: str | None, queues: str | None, debug: bool) -> None:
        self.name, self.store, self.queues, self.debug = name, store, queues, debug

    def connect(self, **options: Any) -> Queue:
        """The job system the options name."""
        return connect(self.name, store=self.store, queues=self.queues, **options)

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
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.version_option(package_name="remotejob")
@click.pass_context
def main(ctx: click.Context, name: str, store: str | None, queues: str | None, debug: bool) -> None:
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
    ctx.obj = Context(name, store or None, queues or None, debug)


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
