"""Legacy mode: the wire format of the 2014 Node.js package (remotejob 2.3.0), so that a team can
move its requesters and its workers over one side at a time.

The 2014 package keeps everything at the root of the bucket ``remotejobs-<name>``. Per job it
sends one flat JSON message to ``<name>-<status>``: ``{...the input's S3 metadata, "bucket": B,
"key": K}``, unsigned and unversioned. The job's id is that message's SQS id, and a worker stores
each output asset at the root as ``<message-id>-<asset>``, recording no status anywhere.

In legacy mode (``connect(..., legacy=True)``):

- a worker takes 2014 messages beside our envelopes. :func:`translate` turns one into an envelope
  with ``"legacy": true`` (job id: the message id; input: the root key; metadata: the other
  fields), so from there on it is a job like ours: heartbeat, retries, dead letters, records,
  effectively-once outputs. ``lifecycle`` publishes each of its outputs at the root as well. A
  retried, dead-lettered or redriven 2014 job travels as that envelope, so it keeps its id;
- a requester writes jobs a 2014 worker can take (:func:`submit`, :func:`trigger`: the input at
  the root, the flat message), and reads a 2014 worker's outputs (:func:`output`).

Legacy messages are unsigned, so legacy mode refuses signing keys (:func:`check`); the size,
JSON and key rules still hold: a 2014 message naming another bucket, or a key inside remotejob's
own areas, is dead-lettered with the reason.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from . import keys, records
from .backends.base import Message, MessageQueue, ObjectStore, QueueAttributes, StoredObject
from .bodies import Entry, open_body, parse_entry
from .config import default_bucket
from .envelope import Envelope, encode
from .errors import (
    ConfigError,
    EnvelopeError,
    InvalidKey,
    MetadataError,
    NotFound,
    RemoteJobError,
    UncertainResult,
)
from .limits import MAX_MESSAGE_BYTES, validate_key, validate_metadata

if TYPE_CHECKING:
    from .context import Context
    from .signing import Keyring

logger = logging.getLogger(__name__)

VISIBILITY_S = 30
WAIT_S = 20
"""The queue attributes the 2014 package creates its queues with. Its ``createQueue`` fails on a
queue whose values differ, so legacy mode creates queues with exactly these (a worker's own
visibility timeout and wait apply per receive instead)."""
_CONTROL = re.compile("[\x00-\x1f\x7f]")
FIELDS = ("bucket", "key")
"""The fields of a 2014 message that are not the input's metadata."""


class LegacyRefused(EnvelopeError):
    """A 2014 message that breaks a rule of legacy mode; ``reason`` names the rule."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def not_enabled(what: str) -> LegacyRefused:
    """The refusal of ``what`` (a 2014 message, or a job that came from one) without legacy mode."""
    return LegacyRefused("legacy-message", f"{what} came from the 2014 Node.js package: run it with legacy "
                         "mode (connect(..., legacy=True), remotejob worker --legacy), then redrive it")


def check(name: str, store: ObjectStore, queues: MessageQueue, signing: Keyring | None) -> str:
    """Check that a job system can talk the 2014 format; return its bucket.

    Raises:
        ConfigError: signing keys are configured, the store is not the root of the bucket
            ``remotejobs-<name>``, or the queues are not SQS.
    """
    if signing is not None:
        raise ConfigError(
            "legacy mode accepts the 2014 package's unsigned messages, so it cannot run with signing "
            "keys: unset REMOTEJOB_SIGNING_KEY (and signing=) for this job system, or connect without "
            "legacy=True"
        )
    bucket = default_bucket(name)
    have_bucket, prefix = getattr(store, "bucket", None), getattr(store, "prefix", None)
    if have_bucket != bucket or prefix != "":
        raise ConfigError(
            f"legacy mode needs the store at the root of the 2014 package's bucket {bucket!r}, where its "
            f"requesters and workers put inputs and outputs; got {store.location}: connect with "
            f"store='s3://{bucket}' (or 's3://')"
        )
    if not callable(getattr(queues, "queue_url", None)):  # only SQS queues have URLs
        raise ConfigError(
            f"legacy mode needs the queues on SQS, where the 2014 package sends and receives; got "
            f"{queues.location}: connect with queues='sqs://'"
        )
    logger.warning("legacy mode is on for %s: unsigned messages of the 2014 Node.js package are "
                   "accepted from its queues, and its inputs read from s3://%s", name, bucket)
    return bucket


def queue_attributes(attributes: QueueAttributes) -> QueueAttributes:
    """The attributes legacy mode creates queues with: the 2014 package's two (see :data:`WAIT_S`)."""
    return replace(attributes, visibility_s=VISIBILITY_S, wait_s=WAIT_S)


def parse(body: str) -> dict[str, Any] | None:
    """The fields of a 2014 message: a JSON object without our ``"v"`` that has a ``key`` or
    ``bucket``; None for anything else."""
    if not body.startswith("{") or body.startswith('{"v":') or len(body) > MAX_MESSAGE_BYTES:
        return None  # not an object, or one of ours (``envelope.encode`` writes "v" first)
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or "v" in doc or not ("key" in doc or "bucket" in doc):
        return None
    return doc


def translate(doc: Mapping[str, Any], message: Message, status: str, bucket: str) -> Message:
    """A 2014 message as the envelope of a legacy job, in a copy of the received message.

    Raises:
        LegacyRefused: it names another bucket, a key outside the bucket or inside remotejob's
            own areas, or has metadata that is not text or over S3's 2 KB.
    """
    if doc.get("bucket") != bucket:
        raise LegacyRefused("legacy-other-bucket", f"the message names bucket {doc.get('bucket')!r}; "
                            f"this job system's is {bucket!r}")
    try:
        key = validate_key(doc.get("key"))
    except InvalidKey as exc:
        raise LegacyRefused("legacy-unsafe-key", f"the message's key is not a key in the bucket: {exc}") \
            from exc
    if _CONTROL.search(key):
        raise LegacyRefused("legacy-unsafe-key", f"the message's key {key!r} has control characters")
    if keys.in_areas(key):
        raise LegacyRefused("legacy-unsafe-key", f"the message's key {key!r} lies in remotejob's own "
                            f"areas ({', '.join(keys.AREAS)}); a 2014 input must be outside them")
    try:
        meta = validate_metadata({k: v for k, v in doc.items() if k not in FIELDS})
        job = validate_key(message.message_id)
    except (MetadataError, InvalidKey) as exc:
        raise LegacyRefused("legacy-bad-field", str(exc)) from exc
    envelope = Envelope(job=job, key=key, status=status, sent=message.sent_at, meta=meta, input=key,
                        legacy=True)
    return replace(message, body=encode(envelope))


def flat_message(metadata: Mapping[str, str], bucket: str, key: str) -> str:
    """The 2014 package's message for an input: ``JSON.stringify({...metadata, bucket, key})``."""
    doc = {**{k: v for k, v in metadata.items() if k not in FIELDS}, "bucket": bucket, "key": key}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


def input_key(key: str) -> str:
    """A root key a legacy requester may store an input under."""
    if keys.in_areas(validate_key(key)):
        raise InvalidKey(f"key {key!r} lies in remotejob's own areas ({', '.join(keys.AREAS)}); a 2014 "
                         "input lives at the bucket's root: choose a key outside them")
    return key


def store(ctx: Context, data: Mapping[str, Any]) -> str:
    """The 2014 ``store(data)``: the body at the bucket's root under ``data["key"]`` (else a
    fresh UUID), every other field but ``body`` as metadata; return the key."""
    return _store(ctx, parse_entry(data))


def _store(ctx: Context, entry: Entry) -> str:
    key = input_key(entry.key if entry.key is not None else str(uuid.uuid4()))
    with open_body(entry.body) as prepared:
        ctx.store.put(key, prepared.body, entry.metadata, entry.content_type)
    return key


def trigger(ctx: Context, key: str, status: str) -> str:
    """The 2014 ``trigger(status, key)``: send the flat message of the input stored at the root
    under ``key`` (its metadata read back, as the 2014 package does); return the message id.

    Raises:
        NotFound: nothing is stored at the key. UnknownStatus: the status is not configured.
    """
    info = ctx.store.head(input_key(key))
    sent = ctx.queues.send(ctx.status_queue(status), flat_message(info.metadata, _bucket(ctx), key))
    _queued(ctx, sent, status, info.metadata)
    return sent


def submit(ctx: Context, data: Mapping[str, Any], status: str) -> str:
    """The 2014 ``submit(data)``: :func:`store`, then the flat message; return the message id,
    the job's id, recorded ``pending``. A generated input is removed again if the message
    surely was not sent."""
    queue = ctx.status_queue(status)
    entry = parse_entry(data)
    key = _store(ctx, entry)
    try:
        sent = ctx.queues.send(queue, flat_message(entry.metadata, _bucket(ctx), key))
    except UncertainResult:
        raise  # it may have been sent: its input stays
    except Exception:
        if entry.key is None:  # ours alone: nobody else can have triggered it
            ctx.store.delete(key)
        raise
    _queued(ctx, sent, status, entry.metadata)
    return sent


def _queued(ctx: Context, job_id: str, status: str, metadata: Mapping[str, str]) -> None:
    """Record the sent job ``pending`` (for ``status()`` and ``wait()``; a Node requester writes
    nothing). The job is sent whatever happens here, so a failure is only logged."""
    now = time.time()
    try:
        records.write_queued(ctx.store, job_id, status, now, now, meta=metadata)
    except RemoteJobError as exc:
        logger.warning("job %s was sent, but its pending record could not be written: %s", job_id, exc)


def output(ctx: Context, job_id: str, asset: str, sha256: str | None) -> StoredObject:
    """A job's output: ``out/<job-id>/<asset>``, else where a 2014 worker put it (the root's
    ``<job-id>-<asset>``).

    Raises:
        NotFound: in neither place.
    """
    key = keys.output_key(job_id, asset)
    try:
        found = ctx.store.get(key)
    except NotFound:
        key = keys.legacy_output_key(job_id, asset)
        found = ctx.store.get(key)
    return found.checked(sha256, f"object {key!r}")


def _bucket(ctx: Context) -> str:
    if ctx.legacy_bucket is None:
        raise ConfigError("this job system is not in legacy mode: connect with legacy=True")
    return ctx.legacy_bucket
