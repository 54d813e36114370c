"""The async handles on a job and on a stored body: :class:`Job` and :class:`Stream`.

Each wraps its sync counterpart (``remotejob.Job``, ``StoredObject``) and runs its I/O in the
connection's pool (:mod:`.offload`), so a handler or a caller on an event loop never blocks it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Generator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from ..backends.base import StoredObject
from ..job import Job as SyncJob
from ..job import JobView
from ..status import JobStatus
from .offload import Offload

CHUNK = 256 * 1024
"""Bytes per step of ``async for chunk in stream``."""


class Stream:
    """A stored body, opened on first use: ``async with q.retrieve("out", key) as body:`` or
    ``body = await q.retrieve("out", key)``; then ``await body.read()``, ``async for chunk in
    body``, ``await body.save(path)``. Close it (``async with`` does) when not read to the end.

    A recorded SHA-256 is checked as for the sync ``StoredObject``: the read that reaches the
    end of a damaged body raises ``IntegrityError``.
    """

    def __init__(self, opener: Callable[[], StoredObject | BinaryIO], offload: Offload) -> None:
        self._opener = opener
        self._offload = offload
        self._object: StoredObject | None = None
        self._file: BinaryIO | None = None

    def _open_now(self) -> None:
        opened = self._opener()
        if isinstance(opened, StoredObject):
            self._object = opened
            self._file = opened.open()
        else:
            self._file = opened

    async def open(self) -> Stream:
        """Open the body now (``await stream`` does the same).

        Raises:
            NotFound: nothing is stored there.
        """
        if self._file is None:
            await self._offload(self._open_now)
        return self

    def __await__(self) -> Generator[Any, None, Stream]:
        return self.open().__await__()

    async def __aenter__(self) -> Stream:
        return await self.open()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def _stored(self) -> StoredObject:
        if self._object is None:
            raise RuntimeError("open the stream first (await it or use async with); a job's inline "
                               "input has no stored object's key, metadata or size")
        return self._object

    @property
    def key(self) -> str:
        """The object's key."""
        return self._stored().key

    @property
    def metadata(self) -> dict[str, str]:
        """User metadata, exactly as stored."""
        return self._stored().metadata

    @property
    def content_type(self) -> str:
        """The MIME type the object was stored with."""
        return self._stored().content_type

    @property
    def size(self) -> int:
        """Body size in bytes."""
        return self._stored().size

    async def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes (all that is left with -1, then close the stream)."""
        await self.open()
        assert self._file is not None  # noqa: S101 - open() set it
        data = await self._offload(self._file.read, n)
        if n < 0:
            await self.close()
        return data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while chunk := await self.read(CHUNK):
            yield chunk
        await self.close()

    async def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the body into the file at ``path`` atomically (as ``StoredObject.save``), then
        close; return the path."""
        await self.open()
        await self._offload(self._stored().save, path)
        return Path(path)

    async def close(self) -> None:
        """Release the body stream."""
        target = self._object or self._file
        if target is not None:
            await self._offload(target.close)


class Job(JobView):
    """One delivery of a job, for coroutines: what ``await q.next()`` returns and what an
    ``async def`` handler receives. Its attributes and :meth:`check` are ``remotejob.Job``'s
    (:class:`~remotejob.job.JobView`); its I/O methods are coroutines; ``sync`` is the
    ``remotejob.Job`` underneath.
    """

    def __init__(self, job: SyncJob, offload: Offload) -> None:
        super().__init__(job.delivery)
        self.sync = job
        self._offload = offload

    def open(self) -> Stream:
        """The job's input body: ``async with job.open() as body: data = await body.read()``."""
        return Stream(self.sync.open, self._offload)

    async def download(self, path: str | os.PathLike[str]) -> Path:
        """Stream the input into ``path``, written atomically; return the path."""
        return await self._offload(self.sync.download, path)

    async def acknowledge(self) -> None:
        """Delete this delivery now (at-most-once), as ``remotejob.Job.acknowledge``."""
        await self._offload(self.sync.acknowledge)

    async def extend(self, seconds: int) -> None:
        """Keep this delivery invisible for ``seconds`` more, as ``remotejob.Job.extend``."""
        await self._offload(self.sync.extend, seconds)

    async def release(self, delay_s: int = 0) -> None:
        """Give the delivery back, visible after ``delay_s`` seconds."""
        await self._offload(self.sync.release, delay_s)

    async def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """Report progress, as ``remotejob.Job.progress`` (writes are coalesced)."""
        await self._offload(self.sync.progress, done, total, message)

    async def complete(self, error: BaseException | str | None = None,
                       assets: Sequence[Mapping[str, Any]] | None = None, next_status: str | None = None,
                       next_input: str | None = None) -> JobStatus:
        """Record the outcome and publish the assets, as ``remotejob.Job.complete`` (same
        arguments, same errors)."""
        return await self._offload(self.sync.complete, error, assets, next_status, next_input)
