"""The worker's handler threads: ``size`` threads run jobs handed to them, in order.

Unlike :class:`concurrent.futures.ThreadPoolExecutor`, a thread whose job was abandoned (its
handler outlived the grace after being asked to stop: Python cannot kill a thread) is replaced
at once, so the worker keeps running ``size`` jobs at a time; the stuck thread retires when its
handler finally returns.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

logger = logging.getLogger(__name__)


class HandlerPool(Generic[T]):
    """Runs ``run(item)`` for each submitted item on one of ``size`` threads.

    Args:
        size: threads running at once (not counting retired ones still stuck in a handler).
        run: called with each item; whatever it raises is logged (at debug level) and dropped,
            and the thread goes on to the next item.
        name: the threads' name prefix.
    """

    def __init__(self, size: int, run: Callable[[T], None], name: str) -> None:
        self._run = run
        self._name = name
        self._items: queue.SimpleQueue[T | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._retired: set[threading.Thread] = set()
        self._running: dict[int, threading.Thread] = {}
        self._count = 0
        self._closed = False
        for _ in range(size):
            self._start()

    def _start(self) -> None:
        self._count += 1
        thread = threading.Thread(target=self._loop, name=f"{self._name}_{self._count}", daemon=True)
        self._threads.add(thread)
        thread.start()

    def submit(self, item: T) -> None:
        """Run ``item`` on the next free thread."""
        self._items.put(item)

    def abandon(self, item: T) -> None:
        """Give up on the thread running ``item``: start another in its place; it retires once
        its handler returns."""
        with self._lock:
            thread = self._running.get(id(item))
            if thread is None or thread in self._retired or self._closed:
                return
            self._retired.add(thread)
            self._threads.discard(thread)
            self._start()

    def _loop(self) -> None:
        me = threading.current_thread()
        while True:
            item = self._items.get()
            if item is None:
                return
            with self._lock:
                self._running[id(item)] = me
            try:
                self._run(item)
            except BaseException:  # noqa: BLE001 - as a ThreadPoolExecutor would, keep the thread
                logger.debug("a handler thread's item raised", exc_info=True)
            finally:
                with self._lock:
                    self._running.pop(id(item), None)
                    retired = me in self._retired
                    self._retired.discard(me)
            if retired:
                return

    def shutdown(self, wait: bool, drop_pending: bool = True) -> None:
        """Stop the threads once they finish their current item; items not started are dropped
        (``drop_pending``) or run first. With ``wait``, return once the threads ended (retired
        ones still stuck in a handler are not waited for)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        if drop_pending:
            while True:
                try:
                    self._items.get_nowait()
                except queue.Empty:
                    break
        for _ in threads:
            self._items.put(None)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()
