"""The embedded backend: objects in a local folder, queues in an SQLite file.

Nothing to install or run: several processes on one machine share a store folder and a queue
database safely. See :mod:`.local_store` and :mod:`.local_queue` for how each works.
"""

from __future__ import annotations

from .local_queue import SqliteQueues
from .local_store import LocalStore

__all__ = ["LocalStore", "SqliteQueues"]
