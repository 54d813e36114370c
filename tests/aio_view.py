"""A synchronous view over the async API, so the public-API tests written for ``remotejob.Queue``
run unchanged against ``remotejob.aio.Queue``.

``SyncView(aq)`` owns an event loop on a thread of its own. Every method of the async queue runs
on that loop (a coroutine is awaited there; ``retrieve()``/``output()``'s lazy streams are opened
there, so ``NotFound`` is raised by the call, as the sync API does) and the caller's thread blocks
on the result. Results that are ``remotejob.aio.Job`` / ``remotejob.aio.Stream`` come back as
views of the same kind. Attributes the async queue does not have (``context``, ``object_store``,
``message_queue``, ``signing``...) fall through to ``aq.sync``.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import remotejob
import remotejob.aio

T = TypeVar("T")


def run_on_fresh_loop(coro: Coroutine[Any, Any, T], timeout: float) -> T:
    """``asyncio.run(coro)`` (failing past ``timeout`` seconds) on a thread of its own: the test's
    thread may already have a running loop of another library's (Playwright's sync API leaves
    one in the xdist worker that ran the browser tests)."""
    with ThreadPoolExecutor(1, thread_name_prefix="aio-test-loop") as runner:
        return runner.submit(asyncio.run, asyncio.wait_for(coro, timeout)).result()


class _Loop:
    """An event loop running on a daemon thread until :meth:`stop`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="aio-view-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.get_ident() == self.thread.ident:
            coro.close()
            raise RuntimeError("a SyncView call from its own event loop would deadlock")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        if not self.thread.is_alive():
            self.loop.close()


def _aio() -> Any:
    import remotejob.aio

    return remotejob.aio


class _View:
    """What the Queue and Job views share: calls run on the loop, results are wrapped."""

    def __init__(self, target: Any, loop: _Loop) -> None:
        self._target = target
        self._loop = loop

    def _fallback(self, name: str) -> Any:
        raise AttributeError(name)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            value = getattr(self._target, name)
        except AttributeError:
            return self._fallback(name)
        if not callable(value) or inspect.isclass(value):
            return self._wrap(value)
        return self._bridge(value)

    def _bridge(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            return self._wrap(self._loop.run(self._invoke(method, args, kwargs)))

        call.__name__ = getattr(method, "__name__", "call")
        call.__doc__ = getattr(method, "__doc__", None)
        return call

    @staticmethod
    async def _invoke(method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call ``method`` on the loop; await what it returns if it is awaitable (a coroutine, or
        a lazy Stream, which opens it)."""
        result = method(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    def _wrap(self, value: Any) -> Any:
        aio = _aio()
        if isinstance(value, aio.Stream):
            return StreamView(value, self._loop)
        if isinstance(value, aio.Job):
            return JobView(value, self._loop)
        return value


class SyncView(_View):
    """``remotejob.aio.Queue`` seen through the sync ``remotejob.Queue`` API."""

    def __init__(self, aq: Any) -> None:
        super().__init__(aq, _Loop())
        self.aq = aq

    def _fallback(self, name: str) -> Any:
        return getattr(self.aq.sync, name)

    def close(self) -> None:
        """Close the async queue (and the sync one under it), then stop the loop."""
        if self._loop.loop.is_closed():
            return
        try:
            self._loop.run(self.aq.close())
        finally:
            self._loop.stop()

    def __enter__(self) -> SyncView:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SyncView({self.aq!r})"


class JobView(_View):
    """``remotejob.aio.Job`` seen through the sync ``remotejob.Job`` API."""

    def __init__(self, job: Any, loop: _Loop) -> None:
        super().__init__(job, loop)
        self.aio_job = job

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobView) and other.aio_job == self.aio_job

    def __hash__(self) -> int:
        return hash(self.aio_job)

    def __repr__(self) -> str:
        return f"JobView({self.aio_job!r})"


class StreamView:
    """An opened ``remotejob.aio.Stream`` seen through the sync ``StoredObject`` API."""

    def __init__(self, stream: Any, loop: _Loop) -> None:
        self.stream = stream
        self._loop = loop

    @property
    def key(self) -> str:
        return str(self.stream.key)

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.stream.metadata)

    @property
    def content_type(self) -> str:
        return str(self.stream.content_type)

    @property
    def size(self) -> int:
        return int(self.stream.size)

    def read(self, n: int = -1) -> bytes:
        data: bytes = self._loop.run(self.stream.read(n))
        return data

    def save(self, path: str | Path, *args: Any, **kwargs: Any) -> None:
        self._loop.run(self.stream.save(path, *args, **kwargs))

    def open(self) -> io.BufferedReader:
        """A binary file object that reads the body through the async stream."""
        return io.BufferedReader(_Reader(self))

    def close(self) -> None:
        self._loop.run(self.stream.close())

    def __enter__(self) -> StreamView:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.stream, name)

    def __repr__(self) -> str:
        return f"StreamView({self.stream!r})"


class _Reader(io.RawIOBase):
    def __init__(self, view: StreamView) -> None:
        super().__init__()
        self._view = view

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._view.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._view.close()
            finally:
                super().close()


def async_view(q: remotejob.Queue) -> SyncView:
    """``q`` seen through the async API: a :class:`SyncView` of ``remotejob.aio.Queue(q)``."""
    return SyncView(remotejob.aio.Queue(q))
