"""``remotejob ui``: serve the web dashboard."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from .app import Context, main, pass_context


@main.command("ui")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; beyond loopback a token or password is required.")
@click.option("--port", default=8377, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port).")
@click.option("--read-only", is_flag=True, help="Hide every action (cancel, retry, redrive, purge).")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file holding the password (HTTP basic auth, any user name). "
                   "Or set REMOTEJOB_UI_TOKEN.")
@click.option("--index", "index_path", type=click.Path(dir_okay=False, path_type=Path),
              help="The index's SQLite file (default: in ~/.cache/remotejob/ui/).")
@click.option("--refresh", default=5.0, show_default=True, type=click.FloatRange(0.1, 3600),
              help="Seconds between index refreshes while a page is open (60 otherwise).")
@click.option("--rescan", default=3600.0, show_default=True, type=click.FloatRange(10),
              help="Seconds between full listings of the store.")
@click.option("--status", "statuses", multiple=True, metavar="S",
              help="A status queue of the job system (repeat for a pipeline; default: pending, "
                   "inprogress, completed).")
@pass_context
def ui(ctx: Context, host: str, port: int, read_only: bool, password_file: Path | None,
       index_path: Path | None, refresh: float, rescan: float, statuses: tuple[str, ...]) -> None:
    """Serve a web dashboard of the job system: queues, jobs, dead letters, workers, /metrics.

    Pages read a local index that follows the store's journal, so they stay fast however many
    jobs there are. Actions (cancel, retry, redrive, purge) are logged on stderr.

    \b
    Example:
      remotejob ui                                # http://127.0.0.1:8377/
      REMOTEJOB_UI_TOKEN=$(openssl rand -hex 16) remotejob ui --host 0.0.0.0
    """
    from ..ui import serve

    secret = os.environ.get("REMOTEJOB_UI_TOKEN") or None
    if password_file is not None:
        secret = password_file.read_text().strip()
        if not secret:
            ctx.fail(f"{password_file} is empty: write the password in it", 2)
    logging.getLogger("remotejob.ui").setLevel(logging.INFO)

    def ready(url: str) -> None:
        click.echo(f"remotejob ui: serving on {url}")
        sys.stdout.flush()

    with ctx.errors():
        queue = ctx.connect(**({"statuses": statuses} if statuses else {}))
        try:
            serve(queue, host, port, read_only=read_only, secret=secret, index_path=index_path,
                  refresh_s=refresh, rescan_s=rescan, ready=ready)
        except KeyboardInterrupt:
            pass
