"""SqsQueues: a MessageQueue on Amazon SQS (or any SQS-compatible endpoint), through boto3."""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import boto3
from botocore.exceptions import (
    ClientError,
)

from ..errors import (
    BackendUnavailable,
    InvalidReceipt,
    NotFound,
    PayloadTooLarge,
)
from ..limits import (
    MAX_MESSAGE_BYTES,
    validate_batch,
    validate_delay,
    validate_message_body,
    validate_queue_name,
    validate_visibility,
    validate_wait,
)
from .base import (
    Message,
    OutgoingMessage,
    QueueAttributes,
    QueueDepth,
)

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

from ._aws import _Clients, _code, _translate

logger = logging.getLogger(__name__)


class SqsQueues:
    """MessageQueue on Amazon SQS (or any SQS-compatible endpoint)."""

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        session: boto3.session.Session | None = None,
    ) -> None:
        self._clients = _Clients("sqs", endpoint_url, region, session, read_timeout=40)
        self._urls: dict[str, str] = {}
        self._max_bytes: dict[str, int] = {}
        self._lock = threading.Lock()
        self.location = f"sqs://{region or ''}" if not endpoint_url else endpoint_url

    @property
    def _sqs(self) -> SQSClient:
        return cast("SQSClient", self._clients.get())

    def _translate(self, what: str) -> Any:
        return _translate("SQS", self._clients.endpoint(), what)

    def _url(self, queue: str) -> str:
        url = self._urls.get(queue)
        if url is None:
            validate_queue_name(queue)
            try:
                with self._translate(f"looking up queue {queue}"):
                    url = self._sqs.get_queue_url(QueueName=queue)["QueueUrl"]
            except NotFound:
                raise NotFound(
                    f"queue {queue!r} does not exist: run `remotejob init` or use connect() first"
                ) from None
            self._urls[queue] = url
        return url

    def ensure(self, names: Sequence[str], attributes: QueueAttributes) -> None:
        """Create missing queues (the dead-letter queue first); existing ones are left as they are."""
        ordered = sorted(names, key=lambda n: n != attributes.dead_letter)
        for name in ordered:
            try:
                self._url(name)
                continue
            except NotFound:
                pass
            attrs: dict[Any, str] = {
                "VisibilityTimeout": str(attributes.visibility_s),
                "ReceiveMessageWaitTimeSeconds": str(attributes.wait_s),
                "MessageRetentionPeriod": str(attributes.retention_s),
            }
            if attributes.dead_letter and name != attributes.dead_letter:
                with self._translate(f"reading the ARN of {attributes.dead_letter}"):
                    arn = self._sqs.get_queue_attributes(
                        QueueUrl=self._url(attributes.dead_letter), AttributeNames=["QueueArn"]
                    )["Attributes"]["QueueArn"]
                attrs["RedrivePolicy"] = json.dumps(
                    {"deadLetterTargetArn": arn, "maxReceiveCount": attributes.max_receive_count or 5}
                )
            with self._translate(f"creating queue {name}"):
                try:
                    url = self._sqs.create_queue(QueueName=name, Attributes=attrs)["QueueUrl"]
                except ClientError as exc:
                    if "QueueAlreadyExists" not in _code(exc) and "QueueNameExists" not in _code(exc):
                        raise
                    url = self._sqs.get_queue_url(QueueName=name)["QueueUrl"]
            self._urls[name] = url
            logger.info("created queue %s", name)

    def send(self, queue: str, body: str, delay_s: int = 0) -> str:
        """Send one message; return its id."""
        validate_message_body(body, MAX_MESSAGE_BYTES)
        validate_delay(delay_s)
        url = self._url(queue)
        with self._translate(f"sending to {queue}"):
            return self._sqs.send_message(QueueUrl=url, MessageBody=body, DelaySeconds=delay_s)[
                "MessageId"
            ]

    def send_batch(self, queue: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Send 1-10 messages in one request (failed entries are retried once)."""
        validate_batch(len(messages), "send batch")
        total = 0
        for message in messages:
            validate_message_body(message.body, MAX_MESSAGE_BYTES)
            validate_delay(message.delay_s)
            total += len(message.body.encode("utf-8"))
        if total > MAX_MESSAGE_BYTES:
            raise PayloadTooLarge(
                f"send batch is {total} bytes; SQS allows {MAX_MESSAGE_BYTES} per batch: split it"
            )
        url = self._url(queue)
        ids: dict[str, str] = {}
        pending = {str(i): m for i, m in enumerate(messages)}
        for _attempt in range(2):
            entries = [
                {"Id": i, "MessageBody": m.body, "DelaySeconds": m.delay_s} for i, m in pending.items()
            ]
            with self._translate(f"sending a batch to {queue}"):
                reply = self._sqs.send_message_batch(QueueUrl=url, Entries=entries)  # type: ignore[arg-type]
            for ok in reply.get("Successful", []):
                ids[ok["Id"]] = ok["MessageId"]
                pending.pop(ok["Id"], None)
            failed = reply.get("Failed", [])
            if not pending or any(f.get("SenderFault") for f in failed):
                break
        if pending:
            codes = sorted({str(f.get("Code")) for f in reply.get("Failed", [])})
            raise BackendUnavailable(f"SQS refused {len(pending)} of the batch to {queue}: {codes}")
        return [ids[str(i)] for i in range(len(messages))]

    def receive(
        self, queue: str, max_messages: int = 1, wait_s: float = 0, visibility_s: int | None = None
    ) -> list[Message]:
        """Receive up to ``max_messages``, long-polling up to ``wait_s`` seconds."""
        validate_batch(max_messages, "receive")
        validate_wait(wait_s)
        args: dict[str, Any] = {
            "QueueUrl": self._url(queue),
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": int(math.ceil(wait_s)),
            "MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp"],
        }
        if visibility_s is not None:
            args["VisibilityTimeout"] = int(validate_visibility(visibility_s))
        with self._translate(f"receiving from {queue}"):
            reply = self._sqs.receive_message(**args)
        return [
            Message(
                body=m["Body"],
                message_id=m["MessageId"],
                receipt=m["ReceiptHandle"],
                receive_count=int(m.get("Attributes", {}).get("ApproximateReceiveCount", 1)),
                sent_at=int(m.get("Attributes", {}).get("SentTimestamp", 0)) / 1000,
            )
            for m in reply.get("Messages", [])
        ]

    def _receipt_call(self, what: str, call: Any, **args: Any) -> None:
        try:
            with self._translate(what):
                call(**args)
        except BackendUnavailable as exc:
            cause = exc.__cause__
            if isinstance(cause, ClientError) and "ReceiptHandle" in _code(cause):
                raise InvalidReceipt(f"{what}: the receipt handle is not valid ({_code(cause)})") from cause
            raise

    def delete(self, queue: str, receipt: str) -> None:
        """Delete one delivery."""
        self._receipt_call(f"deleting from {queue}", self._sqs.delete_message,
                           QueueUrl=self._url(queue), ReceiptHandle=receipt)

    def delete_batch(self, queue: str, receipts: Sequence[str]) -> None:
        """Delete 1-10 deliveries in one request."""
        validate_batch(len(receipts), "delete batch")
        entries: list[Any] = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)]
        with self._translate(f"deleting a batch from {queue}"):
            reply = self._sqs.delete_message_batch(QueueUrl=self._url(queue), Entries=entries)
        failed = [f for f in reply.get("Failed", []) if "ReceiptHandle" not in str(f.get("Code"))]
        if failed:
            raise BackendUnavailable(f"SQS failed to delete {len(failed)} messages from {queue}")

    def change_visibility(self, queue: str, receipt: str, seconds: int) -> None:
        """Make the delivery visible again ``seconds`` from now."""
        validate_visibility(seconds)
        self._receipt_call(f"changing visibility in {queue}", self._sqs.change_message_visibility,
                           QueueUrl=self._url(queue), ReceiptHandle=receipt,
                           VisibilityTimeout=int(seconds))

    def depth(self, queue: str) -> QueueDepth:
        """Approximate waiting / in-flight / delayed counts."""
        names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                 "ApproximateNumberOfMessagesDelayed"]
        with self._translate(f"reading the depth of {queue}"):
            attrs = self._sqs.get_queue_attributes(
                QueueUrl=self._url(queue), AttributeNames=names  # type: ignore[arg-type]
            )["Attributes"]
        waiting, in_flight, delayed = (int(attrs.get(n, "0")) for n in names)  # type: ignore[call-overload]
        return QueueDepth(waiting, in_flight, delayed)

    def purge(self, queue: str) -> None:
        """Delete every message (SQS allows one purge per queue per 60 s)."""
        try:
            with self._translate(f"purging {queue}"):
                self._sqs.purge_queue(QueueUrl=self._url(queue))
        except BackendUnavailable as exc:
            if isinstance(exc.__cause__, ClientError) and "PurgeQueueInProgress" in _code(exc.__cause__):
                logger.info("purge of %s already in progress", queue)
                return
            raise
