"""The bounded thread pool where the async API runs the sync code's steps.

Every multi-request step of a job's life (submit, a status read, begin and finish of an attempt)
is the sync code's, run here, so the async API shares it rather than repeating it and the event
loop never waits on S3, SQS, SQLite or a file. A step holds a thread only while it makes its
requests; waiting (``wait()``, a long poll) holds none.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from ..errors import ConfigError

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_THREADS = 32


class Offload:
    """Runs sync callables in a pool of ``threads`` threads, for coroutines to await.

    Each call runs in a copy of the caller's context (as :func:`asyncio.to_thread` does), so
    OpenTelemetry spans and other context variables follow it. A caller cancelled while its
    step runs stops waiting; the step itself completes in the background (a thread cannot be
    interrupted), as with :func:`asyncio.to_thread`.
    """

    def __init__(self, threads: int = DEFAULT_THREADS, name: str = "remotejob-aio") -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"executor_threads must be a positive integer, got {threads!r}")
        self.threads = threads
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._closed = False

    async def __call__(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._closed:
            raise RuntimeError("this remotejob.aio connection is closed: connect again to use it")
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        return await loop.run_in_executor(self._executor, call)

    def close(self, wait: bool = True) -> None:
        """Finish the steps under way (``wait``) and stop the threads."""
        self._closed = True
        self._executor.shutdown(wait=wait, cancel_futures=not wait)
