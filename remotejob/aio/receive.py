"""Receiving for ``remotejob.aio``'s ``next()`` without a thread held for the wait.

On SQS, with ``remotejob[aio]`` installed, the long poll goes through one aiobotocore client per
connection, awaited on the event loop: a thousand ``next()`` callers wait on no thread at all.
The request's arguments and the reply's parsing are :class:`~remotejob.backends.aws.SqsQueues`'
own, and its errors are translated in the same place. Without aiobotocore, an SQS long poll runs
in the connection's pool (a thread held for up to the wait, ``wait_time``); any other queue
(the embedded SQLite one) is polled in the pool one second at a time.
"""

from __future__ import annotations

import importlib.util
import logging
from contextlib import AsyncExitStack
from typing import Any

from ..backends.aws import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, SqsQueues
from ..backends.base import Message, MessageQueue
from .offload import Offload

logger = logging.getLogger(__name__)

POOL_WAIT_S = 1.0
"""The longest wait of one receive in the pool (embedded queues): the thread it holds is free
again within this."""


def aiobotocore_installed() -> bool:
    """True if ``remotejob[aio]`` (aiobotocore) can be imported."""
    return importlib.util.find_spec("aiobotocore") is not None


class Receiver:
    """``receive()`` for coroutines, on one connection's queues."""

    def __init__(self, queues: MessageQueue, offload: Offload) -> None:
        self._queues = queues
        self._offload = offload
        self._sqs = queues if isinstance(queues, SqsQueues) else None
        self._native = self._sqs is not None and aiobotocore_installed()
        self._stack = AsyncExitStack()
        self._client: Any = None

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
            client = await self._aio_client(sqs)
            with sqs.translating("receiving from", queue):
                reply = await client.receive_message(**args)
            if not reply.get("Messages"):
                return []
            return await self._offload(sqs.received, queue, args, reply)
        if self._sqs is None:
            wait_s = min(wait_s, POOL_WAIT_S)
        return await self._offload(self._queues.receive, queue, max_messages, wait_s, visibility_s)

    async def _aio_client(self, sqs: SqsQueues) -> Any:
        if self._client is None:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session

            settings = await self._offload(sqs.client_settings)
            config = AioConfig(retries={"mode": "standard"}, connect_timeout=CONNECT_TIMEOUT_S,
                               read_timeout=READ_TIMEOUT_S)
            client = get_session().create_client("sqs", config=config, **settings)
            self._client = await self._stack.enter_async_context(client)
        return self._client

    async def close(self) -> None:
        """Close the aiobotocore client, if one was made."""
        self._client = None
        await self._stack.aclose()
