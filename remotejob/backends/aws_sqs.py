"""SqsQueues: a MessageQueue on Amazon SQS (or any SQS-compatible endpoint), through boto3."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import boto3
from botocore.exceptions import ClientError

from ..errors import (
    BackendUnavailable,
    BatchPartlyFailed,
    ConfigError,
    InvalidReceipt,
    NotFound,
    PayloadTooLarge,
    VisibilityLimit,
)
from ..limits import (
    DEAD_LETTER_RETENTION_S,
    MAX_MESSAGE_BYTES,
    MAX_RETENTION_S,
    MIN_RETENTION_S,
    validate_batch,
    validate_delay,
    validate_message_body,
    validate_queue_name,
    validate_sse,
    validate_visibility,
    validate_wait,
)
from ._aws import LazyClient, Translate, safe_endpoint
from .base import CAPPED, GONE, Message, OutgoingMessage, QueueAttributes, QueueDepth

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.literals import QueueAttributeNameType

logger = logging.getLogger(__name__)

MAX_RECEIVE_COUNT = 1000
AWS_MANAGED_SQS_KEY = "alias/aws/sqs"
_ALREADY_EXISTS = {"QueueAlreadyExists", "QueueNameExists", "AWS.SimpleQueueService.QueueNameExists"}
_PURGE_IN_PROGRESS = {"PurgeQueueInProgress", "AWS.SimpleQueueService.PurgeQueueInProgress"}
_RECEIPT_FAILURES = ("ReceiptHandleIsInvalid", "InvalidReceiptHandle", "MessageNotInflight")
_DEPTH: list[QueueAttributeNameType] = [
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
]


class SqsQueues:
    """A MessageQueue on Amazon SQS (or any SQS-compatible endpoint).

    Queue URLs are looked up once per name and cached.

    Args:
        endpoint_url: an SQS-compatible endpoint; default: ``AWS_ENDPOINT_URL_SQS`` or AWS.
        region: the region; default: ``AWS_REGION``, ``AWS_DEFAULT_REGION`` or the profile's.
        session: a boto3 session to take credentials and settings from.
        sse: how queues this creates are encrypted at rest: None or ``"AES256"`` for SQS-managed
            keys (SSE-SQS), ``"aws:kms"`` for KMS (``kms_key_id``, else SQS's AWS-managed key).
        kms_key_id: the KMS key for ``"aws:kms"`` (id, ARN or ``alias/NAME``).

    Raises:
        ConfigError: an invalid encryption option.
    """

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        session: boto3.session.Session | None = None,
        sse: str | None = None,
        kms_key_id: str | None = None,
    ) -> None:
        self.sse, self.kms_key_id = validate_sse(sse, kms_key_id)
        self._session = session
        self._client = LazyClient("sqs", endpoint_url, region, session)
        self._urls: dict[str, str] = {}
        env = os.environ
        endpoint = endpoint_url or env.get("AWS_ENDPOINT_URL_SQS") or env.get("AWS_ENDPOINT_URL")
        where = self._client.region() or os.environ.get("AWS_DEFAULT_REGION") or (
            session.region_name if session else None
        )
        self.location = safe_endpoint(endpoint) if endpoint else f"sqs://{where or ''}"

    def __repr__(self) -> str:
        return f"SqsQueues({self.location!r})"

    @property
    def _sqs(self) -> SQSClient:
        return cast("SQSClient", self._client.get())

    def client_settings(self) -> dict[str, Any]:
        """Where this backend's client sends requests, ``{"endpoint_url", "region_name"}``, for
        another client of the same queues (``remotejob.aio``'s)."""
        meta = self._sqs.meta
        return {"endpoint_url": meta.endpoint_url, "region_name": meta.region_name}

    def endpoint(self) -> str:
        """The SQS endpoint in use (a URL, never a credential)."""
        return self._client.endpoint()

    def region_name(self) -> str | None:
        """The region queues live in, if known without asking AWS: the argument, ``AWS_REGION``,
        ``AWS_DEFAULT_REGION`` or the profile's."""
        region = self._client.region()
        if region:
            return region
        try:
            return (self._session or boto3.session.Session()).region_name or None
        except Exception:  # noqa: BLE001 - a broken profile: unknown
            return None

    def encryption_attributes(self) -> dict[str, str]:
        """The attributes that encrypt a new queue at rest, as configured."""
        if self.sse == "aws:kms":
            return {"KmsMasterKeyId": self.kms_key_id or AWS_MANAGED_SQS_KEY}
        return {"SqsManagedSseEnabled": "true"}

    def attributes(self, queue: str) -> dict[str, str]:
        """Every attribute of a queue (``GetQueueAttributes All``), e.g. for `remotejob doctor`.

        Raises:
            NotFound: no such queue.
            BackendUnavailable: SQS cannot be reached, or refuses us.
        """
        url = self._url(queue)
        with self.translating("reading the attributes of", queue):
            reply = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
        return {str(name): str(value) for name, value in reply.get("Attributes", {}).items()}

    def queue_url(self, queue: str) -> str:
        """The queue's URL (looked up once).

        Raises:
            NotFound: no such queue.
            BackendUnavailable: SQS cannot be reached, or refuses us.
        """
        return self._url(queue)

    @contextmanager
    def translating(self, action: str, queue: str, ok: Collection[str] = ()) -> Iterator[Translate]:
        """Turn the botocore failures of a request about ``queue`` into remotejob errors."""
        endpoint = self._client.endpoint()
        missing = (
            f"queue {queue!r} does not exist at {endpoint}: run `remotejob init` or connect() first"
        )
        try:
            with Translate("SQS", endpoint, action, f"queue {queue!r}", missing=missing, ok=ok) as call:
                yield call
        except NotFound:
            self._urls.pop(queue, None)  # a queue deleted since we cached its URL
            raise

    def _url(self, queue: str) -> str:
        url = self._urls.get(queue)
        if url is None:
            validate_queue_name(queue)
            with self.translating("looking up", queue):
                url = self._sqs.get_queue_url(QueueName=queue)["QueueUrl"]
            self._urls[queue] = url
        return url

    def ensure(self, names: Sequence[str], attributes: QueueAttributes) -> None:
        """Create the named queues if missing; existing queues keep their attributes.

        A queue named as ``attributes.dead_letter`` is created first, without a redrive policy
        of its own and keeping messages for ``DEAD_LETTER_RETENTION_S`` (14 days), longer than
        its sources, so one call can create a queue and its dead-letter queue. Every queue is
        created encrypted at rest (see ``sse``).

        Raises:
            ConfigError: an invalid queue name, retention or redrive policy, or a retention that
                leaves no room for the dead-letter queue to keep messages longer.
            NotFound: the dead-letter queue neither exists nor is among ``names``.
            ValueError: a visibility timeout or wait outside SQS's limits.
            BackendUnavailable: SQS cannot be reached, or refuses us.
        """
        for name in names:
            validate_queue_name(name)
        validate_visibility(attributes.visibility_s)
        validate_wait(attributes.wait_s)
        if not MIN_RETENTION_S <= attributes.retention_s <= MAX_RETENTION_S:
            raise ConfigError(
                f"retention {attributes.retention_s} s is outside SQS's {MIN_RETENTION_S}-{MAX_RETENTION_S} s"
            )
        dead = attributes.dead_letter
        if (dead is None) != (attributes.max_receive_count is None):
            raise ConfigError("a redrive policy needs both dead_letter and max_receive_count")
        if dead is not None:
            validate_queue_name(dead)
            if not 1 <= (attributes.max_receive_count or 0) <= MAX_RECEIVE_COUNT:
                raise ConfigError(
                    f"max_receive_count {attributes.max_receive_count} is outside SQS's 1-{MAX_RECEIVE_COUNT}"
                )
            if attributes.retention_s >= DEAD_LETTER_RETENTION_S:
                raise ConfigError(
                    f"retention {attributes.retention_s} s leaves the dead-letter queue no room to keep "
                    f"messages longer than its sources: use less than {DEAD_LETTER_RETENTION_S} s"
                )
        plain: dict[QueueAttributeNameType, str] = {
            "VisibilityTimeout": str(int(attributes.visibility_s)),
            "ReceiveMessageWaitTimeSeconds": str(int(attributes.wait_s)),
            "MessageRetentionPeriod": str(int(attributes.retention_s)),
            **cast("dict[QueueAttributeNameType, str]", self.encryption_attributes()),
        }
        redrive: str | None = None
        for name in sorted(names, key=lambda n: n != dead):  # the dead-letter queue first
            if self._exists(name):
                continue
            own = dict(plain)
            if dead is not None and name != dead:
                redrive = redrive or self._redrive_policy(dead, attributes.max_receive_count or 0)
                own["RedrivePolicy"] = redrive
            elif dead is not None:
                own["MessageRetentionPeriod"] = str(DEAD_LETTER_RETENTION_S)
            with self.translating("creating", name, ok=_ALREADY_EXISTS) as call:
                self._urls[name] = self._sqs.create_queue(QueueName=name, Attributes=own)["QueueUrl"]
            if call.swallowed:  # created concurrently with other attributes: it exists, leave it
                self._url(name)
            else:
                logger.info("created queue %s", name)

    def _exists(self, queue: str) -> bool:
        try:
            self._url(queue)
        except NotFound:
            return False
        return True

    def _redrive_policy(self, dead: str, max_receive_count: int) -> str:
        try:
            url = self._url(dead)
        except NotFound:
            raise NotFound(
                f"dead-letter queue {dead!r} does not exist at {self.location}: create it first, "
                "or ensure it together with the queues that use it"
            ) from None
        with self.translating("reading the ARN of", dead):
            reply = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        arn = reply["Attributes"]["QueueArn"]
        return json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": max_receive_count})

    def send(self, queue: str, body: str, delay_s: int = 0) -> str:
        """Send one message and return its message id.

        Raises:
            NotFound: no such queue.
            PayloadTooLarge: the body exceeds the queue's maximum size.
            ValueError: a body SQS refuses, or a delay outside 0-900 s.
            BackendUnavailable: SQS cannot be reached, or refuses us.
        """
        validate_message_body(body)
        validate_delay(delay_s)
        url = self._url(queue)
        with self.translating("sending to", queue):
            reply = self._sqs.send_message(QueueUrl=url, MessageBody=body, DelaySeconds=int(delay_s))
        return reply["MessageId"]

    def send_batch(self, queue: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        """Send 1-10 messages in one request and return their ids, in order.

        Entries SQS fails on its side are retried once.

        Raises:
            NotFound: no such queue.
            PayloadTooLarge: over 10 entries, or over the batch's total size.
            BackendUnavailable: some entries were still refused (the others were sent).
        """
        validate_batch(len(messages), "send batch")
        total = 0
        for message in messages:
            validate_message_body(message.body)
            validate_delay(message.delay_s)
            total += len(message.body.encode("utf-8"))
        if total > MAX_MESSAGE_BYTES:
            raise PayloadTooLarge(
                f"send batch is {total} bytes; SQS allows {MAX_MESSAGE_BYTES} per batch: split it"
            )
        url = self._url(queue)
        ids: dict[str, str] = {}
        pending = {str(i): m for i, m in enumerate(messages)}
        failed: list[Any] = []
        for attempt in (1, 2):
            entries: list[Any] = [
                {"Id": i, "MessageBody": m.body, "DelaySeconds": int(m.delay_s)} for i, m in pending.items()
            ]
            with self.translating("sending a batch to", queue):
                reply = self._sqs.send_message_batch(QueueUrl=url, Entries=entries)
            for sent in reply.get("Successful", []):
                ids[sent["Id"]] = sent["MessageId"]
            failed = list(reply.get("Failed", []))
            if not failed or attempt == 2 or any(f.get("SenderFault") for f in failed):
                break
            pending = {f["Id"]: pending[f["Id"]] for f in failed}
        if failed:
            listed = "; ".join(f"entry {f['Id']}: {f.get('Code')}" for f in failed)
            raise BatchPartlyFailed(
                f"SQS at {self._client.endpoint()} refused {len(failed)} of {len(messages)} messages "
                f"sent to queue {queue!r} ({listed}); the others were sent",
                failed={int(f["Id"]): str(f.get("Code")) for f in failed},
                done={int(i): message_id for i, message_id in ids.items()},
            )
        return [ids[str(i)] for i in range(len(messages))]

    def receive(
        self,
        queue: str,
        max_messages: int = 1,
        wait_s: float = 0,
        visibility_s: int | None = None,
        cancel: threading.Event | None = None,
    ) -> list[Message]:
        """Receive up to ``max_messages`` (1-10), long-polling up to ``wait_s`` (0-20) seconds.

        ``cancel`` is accepted for the protocol's sake: an SQS long poll cannot be cut short.

        Raises:
            NotFound: no such queue.
            PayloadTooLarge: ``max_messages`` over 10.
            ValueError: a wait or visibility timeout outside SQS's limits.
            BackendUnavailable: SQS cannot be reached, or refuses us.
        """
        args = self.receive_request(queue, max_messages, wait_s, visibility_s)
        with self.translating("receiving from", queue):
            reply = self._sqs.receive_message(**args)
        return self.received(queue, args, reply)

    def receive_request(
        self, queue: str, max_messages: int, wait_s: float, visibility_s: int | None
    ) -> dict[str, Any]:
        """The checked ``ReceiveMessage`` arguments of :meth:`receive` (its queue URL looked
        up), for a client that sends it another way (``remotejob.aio``'s aiobotocore one)."""
        validate_batch(max_messages, "receive")
        validate_wait(wait_s)
        args: dict[str, Any] = {
            "QueueUrl": self._url(queue),
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": math.ceil(wait_s),
            "MessageSystemAttributeNames": ["ApproximateReceiveCount", "SentTimestamp"],
        }
        if visibility_s is not None:
            args["VisibilityTimeout"] = math.ceil(validate_visibility(visibility_s))
        return args

    def received(self, queue: str, args: Mapping[str, Any], reply: Mapping[str, Any]) -> list[Message]:
        """The messages of a ``ReceiveMessage`` reply to ``args``.

        Raises:
            BackendUnavailable: the endpoint left out the receive count (the messages are
                given back first).
        """
        received = []
        for m in reply.get("Messages", []):
            attrs = m.get("Attributes", {})
            count = attrs.get("ApproximateReceiveCount")
            if count is None:
                # Without it no attempt is ever the last one: jobs would retry forever.
                self._give_back(args["QueueUrl"], reply.get("Messages", []))
                raise BackendUnavailable(
                    f"SQS at {self._client.endpoint()} returned messages of queue {queue!r} without "
                    "their ApproximateReceiveCount attribute: remotejob counts attempts with it, so "
                    "this SQS-compatible endpoint cannot be used for jobs (use AWS SQS or the embedded queue)"
                )
            received.append(Message(
                body=m["Body"],
                message_id=m["MessageId"],
                receipt=m["ReceiptHandle"],
                receive_count=int(count),
                sent_at=int(attrs.get("SentTimestamp", "0")) / 1000,
            ))
        return received

    def _give_back(self, url: str, messages: list[Any]) -> None:
        """Make received messages visible again (best effort), before an error drops them."""
        entries: list[Any] = [
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
            for i, m in enumerate(messages)
        ]
        try:
            self._sqs.change_message_visibility_batch(QueueUrl=url, Entries=entries)
        except Exception:  # noqa: BLE001 - the error about to be raised matters more
            logger.debug("could not give back messages", exc_info=True)

    def delete(self, queue: str, receipt: str) -> None:
        """Delete the delivery named by ``receipt``.

        Raises:
            NotFound: no such queue.
            InvalidReceipt: SQS does not accept the receipt handle.
            BackendUnavailable: SQS cannot be reached, or refuses us.
        """
        url = self._url(queue)
        with self.translating("deleting a message from", queue):
            self._sqs.delete_message(QueueUrl=url, ReceiptHandle=receipt)

    def delete_batch(self, queue: str, receipts: Sequence[str]) -> None:
        """Delete 1-10 deliveries in one request.

        Raises:
            NotFound: no such queue.
            InvalidReceipt: SQS refused some receipt handles (the others were deleted).
            PayloadTooLarge: more than 10 receipts.
            BackendUnavailable: SQS cannot be reached, refuses us, or failed some entries.
        """
        validate_batch(len(receipts), "delete batch")
        url = self._url(queue)
        entries: list[Any] = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts)]
        with self.translating("deleting messages from", queue):
            reply = self._sqs.delete_message_batch(QueueUrl=url, Entries=entries)
        failed = reply.get("Failed", [])
        if not failed:
            return
        listed = "; ".join(f"entry {f['Id']}: {f.get('Code')}" for f in failed)
        if all(str(f.get("Code")).endswith(_RECEIPT_FAILURES) for f in failed):
            raise InvalidReceipt(f"queue {queue!r} refused receipt handles ({listed})")
        codes = {int(f["Id"]): _entry_code(f) for f in failed}
        raise BatchPartlyFailed(
            f"SQS at {self._client.endpoint()} could not delete messages of queue {queue!r} ({listed})",
            failed=codes, done={i: "" for i in range(len(receipts)) if i not in codes},
        )

    def change_visibility(self, queue: str, receipt: str, seconds: int) -> None:
        """Make the delivery visible again after ``seconds`` (0 = now) from this moment.

        Raises:
            NotFound: no such queue.
            InvalidReceipt: the receipt is not valid, or the message is no longer in flight.
            ValueError: ``seconds`` outside 0 s to 12 h.
            BackendUnavailable: SQS cannot be reached, or refuses us.
        """
        validate_visibility(seconds)
        url = self._url(queue)
        try:
            with self.translating("changing the visibility of a message in", queue):
                self._sqs.change_message_visibility(
                    QueueUrl=url, ReceiptHandle=receipt, VisibilityTimeout=math.ceil(seconds)
                )
        except BackendUnavailable as exc:
            if isinstance(exc.__cause__, ClientError) and _is_capped(exc.__cause__.response.get("Error", {})):
                raise VisibilityLimit(_CAPPED_TEXT) from exc
            raise

    def change_visibility_batch(self, queue: str, entries: Sequence[tuple[str, int]]) -> list[int]:
        """``change_visibility`` for 1-10 ``(receipt, seconds)`` entries in one request.

        Returns the indices of the entries SQS refused as stale receipts.

        Raises:
            NotFound: no such queue.
            PayloadTooLarge: more than 10 entries.
            ValueError: a visibility outside 0 s to 12 h.
            BackendUnavailable: SQS cannot be reached, refuses us, or failed some entries for
                another reason.
        """
        validate_batch(len(entries), "visibility batch")
        for _, seconds in entries:
            validate_visibility(seconds)
        url = self._url(queue)
        batch: list[Any] = [
            {"Id": str(i), "ReceiptHandle": receipt, "VisibilityTimeout": math.ceil(seconds)}
            for i, (receipt, seconds) in enumerate(entries)
        ]
        with self.translating("changing the visibility of messages in", queue):
            reply = self._sqs.change_message_visibility_batch(QueueUrl=url, Entries=batch)
        failed = reply.get("Failed", [])
        codes = {int(f["Id"]): _entry_code(f) for f in failed}
        if any(code != GONE for code in codes.values()):
            listed = "; ".join(f"entry {i}: {code}" for i, code in sorted(codes.items()))
            raise BatchPartlyFailed(
                f"SQS at {self._client.endpoint()} could not change visibility in queue {queue!r} ({listed})",
                failed=codes, done={i: "" for i in range(len(entries)) if i not in codes},
            )
        return sorted(codes)

    def depth(self, queue: str) -> QueueDepth:
        """Return the queue's approximate message counts (``oldest_age_s`` stays None: SQS
        reports the age of the oldest message only to CloudWatch, as
        ``ApproximateAgeOfOldestMessage``).

        Raises:
            NotFound: no such queue.
            BackendUnavailable: SQS cannot be reached, or refuses us.
        """
        url = self._url(queue)
        with self.translating("counting the messages of", queue):
            attrs = self._sqs.get_queue_attributes(QueueUrl=url, AttributeNames=_DEPTH)["Attributes"]
        waiting, in_flight, delayed = (int(attrs.get(name, "0")) for name in _DEPTH)
        return QueueDepth(waiting, in_flight, delayed)

    def purge(self, queue: str) -> None:
        """Delete every message in the queue (SQS allows one purge per queue per 60 s).

        Raises:
            NotFound: no such queue.
            BackendUnavailable: SQS cannot be reached, or refuses us.
        """
        url = self._url(queue)
        with self.translating("purging", queue, ok=_PURGE_IN_PROGRESS) as call:
            self._sqs.purge_queue(QueueUrl=url)
        if call.swallowed:
            logger.info("a purge of queue %s is already in progress; not purging again", queue)


_CAPPED_TEXT = (
    "the delivery cannot stay invisible for longer: SQS ends a message's visibility at most 12 hours "
    "after it was received"
)


def _is_capped(entry: Any) -> bool:
    """Whether a failure is SQS refusing to extend a visibility past 12 h from receipt."""
    text = str(entry.get("Message", "")).lower()
    return entry.get("Code") == "InvalidParameterValue" and ("beyond" in text or "43200" in text)


def _entry_code(entry: Any) -> str:
    """A failed batch entry's code, with stale receipts as GONE and the 12 h cap as CAPPED."""
    code = str(entry.get("Code"))
    if code.endswith(_RECEIPT_FAILURES):
        return GONE
    return CAPPED if _is_capped(entry) else code
