"""``remotejob ui``: a web dashboard of one job system (``pip install 'remotejob[ui]'``).

:func:`serve` runs it; the pages read a local index (``index.py``) that follows the store's
journal, so they answer from SQLite however many jobs the store holds.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError
from ..queue import Queue

logger = logging.getLogger("remotejob.ui")

DEFAULT_PORT = 8377


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_index_path(queue: Queue) -> Path:
    """Where the index of ``queue``'s job system is kept: the user's cache folder."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    identity = f"{queue.name}|{queue.context.store.location}".encode()
    return base / "remotejob" / "ui" / f"{queue.name}-{hashlib.sha256(identity).hexdigest()[:16]}.sqlite"


def serve(
    queue: Queue,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    *,
    read_only: bool = False,
    secret: str | None = None,
    index_path: Path | None = None,
    refresh_s: float = 5.0,
    rescan_s: float = 3600.0,
    ready: Callable[[str], None] | None = None,
    threads: int = 8,
) -> None:
    """Serve the dashboard until interrupted.

    It answers at once; the index syncs in the background (the pages say so until it has).

    Args:
        host: The address to bind. Beyond loopback a ``secret`` is required.
        port: The port (0: any free one).
        read_only: Hide every action.
        secret: The token or password every request must carry.
        index_path: The index's SQLite file (default: :func:`default_index_path`).
        refresh_s: How often the index refreshes while pages are viewed.
        rescan_s: How often the index lists the whole store again.
        ready: Called with the URL once the server listens.

    Raises:
        ConfigError: bound beyond loopback without a secret, or the ui extra is not installed.
    """
    if not is_loopback(host) and not secret:
        raise ConfigError(
            f"refusing to serve on {host} without authentication: set REMOTEJOB_UI_TOKEN or pass "
            "--password-file (or bind 127.0.0.1)"
        )
    try:
        from waitress import create_server  # type: ignore[import-untyped]

        from .app import create_app
        from .index import Index
    except ImportError as exc:
        raise ConfigError(f"the ui needs its extra: pip install 'remotejob[ui]' ({exc})") from None
    index = Index(queue.context, index_path or default_index_path(queue), refresh_s, rescan_s,
                  prune=not read_only)
    app = create_app(queue, index, read_only=read_only, secret=secret)
    try:
        server = create_server(app, host=host, port=port, threads=threads, ident="remotejob")
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (pick another --port)"
        ) from None
    bound_host = host if ":" not in host else f"[{host}]"
    url = f"http://{bound_host}:{server.effective_port}/"
    index.start()
    if ready is not None:
        ready(url)
    try:
        server.run()
    finally:
        index.stop()
