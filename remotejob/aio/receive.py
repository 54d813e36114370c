"""Receiving for ``remotejob.aio``'s ``next()`` without a thread held for the wait.

On SQS, with ``remotejob[aio]`` installed, the long poll goes through one aiobotocore client per
connection, awaited on that connection's own small event loop: a thousand ``next()`` callers
wait on one thread in all.
The request's arguments and the reply's parsing are :class:`~remotejob.backends.aws.SqsQueues`'
own, and its errors are translated in the same place. Without aiobotocore, an SQS long poll runs
in the connection's pool (a thread held for up to the wait, ``wait_time``); any other queue
(the embedded SQLite one) is polled in the pool one second at a time.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import threading
from collections.abc import Coroutine
from contextlib import AsyncExitStack
from typing import Any, TypeVar

from ..backends.aws import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, SqsQueues
from ..backends.base import Message, MessageQueue
from .offload import Offload

logger = logging.getLogger(__name__)

T = TypeVar("T")

POOL_WAIT_S = 1.0
"""The longest wait of one receive in the pool (embedded queues): the thread it holds is free
again within this."""


def aiobotocore_installed() -> bool:
    """True if ``remotejob[aio]`` (aiobotocore) can be imported."""
    return importlib.util.find_spec("aiobotocore") is not None


class Receiver:
    """``receive()`` for coroutines, on one connection's queues.

    The aiobotocore client lives on an event loop of its own, on one thread per connection
    (started on the first native receive): creating the client and signing and parsing its
    requests cost CPU that must not hold up the caller's loop. Every long poll of the connection
    waits there together, so no waiter holds a thread of its own.
    """

    def __init__(self, queues: MessageQueue, offload: Offload) -> None:
        self._queues = queues
        self._offload = offload
        self._sqs = queues if isinstance(queues, SqsQueues) else None
        self._native = self._sqs is not None and aiobotocore_installed()
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def native(self) -> bool:
        """True when long polls are awaited through aiobotocore (no thread held)."""
        return self._native

    async def receive(
        self, queue: str, max_messages: int, wait_s: float, visibility_s: int | None
    ) -> list[Message]:
        """Like ``MessageQueue.receive``; raises what it raises."""
        if self._sqs is not None and self._native:
            sqs = self._sqs
            args = await self._offload(sqs.receive_request, queue, max_messages, wait_s, visibility_s)
            reply = await self._on_own_loop(self._receive_message(sqs, queue, args))
            if not reply.get("Messages"):
                return []
            return await self._offload(sqs.received, queue, args, reply)
        if self._sqs is None:
            wait_s = min(wait_s, POOL_WAIT_S)
        return await self._offload(self._queues.receive, queue, max_messages, wait_s, visibility_s)

    def _on_own_loop(self, coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name="remotejob-aio-sqs",
                                                daemon=True)
                self._thread.start()
            loop = self._loop
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    async def _receive_message(self, sqs: SqsQueues, queue: str, args: dict[str, Any]) -> dict[str, Any]:
        if self._client is None:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session

            config = AioConfig(retries={"mode": "standard"}, connect_timeout=CONNECT_TIMEOUT_S,
                               read_timeout=READ_TIMEOUT_S)
            client = get_session().create_client("sqs", config=config, **sqs.client_settings())
            self._client = await self._stack.enter_async_context(client)
        with sqs.translating("receiving from", queue):
            reply: dict[str, Any] = await self._client.receive_message(**args)
        return reply

    async def close(self) -> None:
        """Close the aiobotocore client and its loop, if they were made."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        try:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._stack.aclose(), loop))
        finally:
            self._client = None
            loop.call_soon_threadsafe(loop.stop)
            await asyncio.get_running_loop().run_in_executor(None, thread.join)
            loop.close()
