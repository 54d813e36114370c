"""remotejob for asyncio: ``await remotejob.aio.connect(...)`` returns a :class:`Queue` with the
sync ``Queue``'s names and semantics, awaited; ``async def`` handlers run in
:class:`remotejob.Worker` on one event loop.

Example::

    import remotejob.aio

    async def main() -> None:
        async with await remotejob.aio.connect("thumbnails") as q:
            job_id = await q.submit({"body": b"..."})
            status = await q.wait(job_id, timeout=60)
            async with q.output(job_id, "output") as body:
                data = await body.read()

On SQS, ``pip install 'remotejob[aio]'`` (aiobotocore) lets ``next()`` long-poll without a
thread; everything else works with the base install.
"""

from __future__ import annotations

from .job import Job, Stream
from .pool import AsyncHandler
from .queue import Queue, connect

__all__ = ["AsyncHandler", "Job", "Queue", "Stream", "connect"]
