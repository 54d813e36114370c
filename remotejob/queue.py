"""Queue: one named job system, its object store and its status queues.

The requester's side (``store``, ``retrieve``, ``remove``, ``trigger``, ``submit``, ``status``,
``wait``) and the worker's way in (``next``). Speaks only to the two backend protocols.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from . import batch, completion, config, dead, keys, signing
from .backends.base import Message, MessageQueue, ObjectStore, QueueAttributes, StoredObject
from .bodies import Entry, Prepared, open_body, parse_entry, verified
from .completion import encode_record, public_outputs
from .envelope import DeadLetter, Envelope, decode, encode, wrap_dead
from .errors import (
    AlreadyExists,
    ConfigError,
    EnvelopeError,
    JobFailed,
    NotFound,
    UnknownStatus,
    WaitTimeout,
)
from .job import Job, next_stage, progress_record
from .limits import MAX_VISIBILITY_S, MAX_WAIT_S, validate_key, validate_queue_name
from .signing import Keyring
from .status import JobStatus, decode_manifest, decode_status

if TYPE_CHECKING:
    from .worker import Handler

logger = logging.getLogger(__name__)

DEFAULT_STATUSES = ("pending", "inprogress", "completed")


class Queue:
    """A job system: inputs and outputs in an object store, one message queue per status.

    Build one with :func:`remotejob.connect`. Safe to share between threads.
    """

    def __init__(
        self,
        name: str,
        object_store: ObjectStore,
        message_queue: MessageQueue,
        statuses: Sequence[str] = DEFAULT_STATUSES,
        visibility_timeout: int = 30,
        wait_time: int = 20,
        max_attempts: int = 5,
        signing: Keyring | None = None,
    ) -> None:
        self.name = validate_queue_name(name)
        if isinstance(statuses, str) or not statuses:
            raise ConfigError("statuses must be a non-empty sequence of names, e.g. ('pending',)")
        self.statuses = tuple(statuses)
        for status in self.statuses:
            if status == keys.DEAD:
                raise ConfigError(f"'{keys.DEAD}' is the dead-letter queue; name the status otherwise")
            validate_queue_name(keys.queue_name(name, status))
        validate_queue_name(keys.dead_letter_name(name))
        if not 0 <= wait_time <= MAX_WAIT_S:
            raise ConfigError(f"wait_time must be 0-{MAX_WAIT_S} seconds, got {wait_time}")
        if not 0 <= visibility_timeout <= MAX_VISIBILITY_S:
            raise ConfigError(
                f"visibility_timeout must be 0-{MAX_VISIBILITY_S} seconds, got {visibility_timeout}"
            )
        if type(max_attempts) is not int or not 0 < max_attempts <= 1000:
            raise ConfigError(f"max_attempts must be 1-1000 (SQS's redrive range), got {max_attempts!r}")
        self.visibility_timeout = visibility_timeout
        self.wait_time = wait_time
        self.max_attempts = max_attempts
        self.object_store = object_store
        self.message_queue = message_queue
        self._ensured = False
        self._lock = threading.Lock()
        self.signing = signing if signing is not None else Keyring.from_environment()
        """The keys that sign and verify messages (``$REMOTEJOB_SIGNING_KEY``), or None."""
        self.rejected: Counter[str] = Counter()
        """Messages this process refused before any handler saw them, by reason (``unsigned``,
        ``bad-signature``, ``unknown-key``, ``stale``, ``undecodable``, ``replayed``, ...)."""

    def __repr__(self) -> str:
        return (
            f"Queue({self.name!r}, store={self.object_store.location!r}, "
            f"queues={self.message_queue.location!r})"
        )

    # -- setup -----------------------------------------------------------------------------

    def init(self) -> dict[str, Any]:
        """Create the bucket/folder and every status and dead-letter queue now.

        Other calls create what they need on first use; call this to set up ahead of time.
        Returns what exists: ``{"store": location, "queues": [names]}``.
        """
        self.object_store.ensure()
        self._ensure_queues()
        return {"store": self.object_store.location, "queues": self._queue_names()}

    def _queue_names(self) -> list[str]:
        return [keys.queue_name(self.name, s) for s in self.statuses] + [
            keys.dead_letter_name(self.name)
        ]

    def _ensure_queues(self) -> None:
        if self._ensured:
            return
        with self._lock:
            if not self._ensured:
                attributes = QueueAttributes(
                    visibility_s=self.visibility_timeout,
                    wait_s=self.wait_time,
                    dead_letter=keys.dead_letter_name(self.name),
                    max_receive_count=self.max_attempts,
                )
                self.message_queue.ensure(self._queue_names(), attributes)
                self._ensured = True

    def _status_queue(self, status: str) -> str:
        if status not in self.statuses:
            raise UnknownStatus(
                f"status {status!r} is not configured for {self.name!r}; configured: "
                f"{', '.join(self.statuses)} (pass statuses=... to connect())"
            )
        self._ensure_queues()
        return keys.queue_name(self.name, status)

    # -- objects ---------------------------------------------------------------------------

    def store(self, direction: str, data: Mapping[str, Any]) -> str:
        """Store a body and its metadata in ``in`` or ``out``; return its key.

        ``data`` is ``{"body": ..., "key": ..., "filename": ..., <metadata>...}``: ``body`` is
        bytes, str (UTF-8), a path or a binary file object (streamed); ``key`` is generated
        when absent; ``filename`` sets the content type; other entries are string metadata.

        Raises:
            ValueError: unknown direction or no body. InvalidKey, MetadataError: rejected input
                (nothing is written).
        """
        return self._store(keys.direction(direction), parse_entry(data))[0]

    def _store(self, direction: str, entry: Entry) -> tuple[str, Prepared]:
        """Store an entry; return its key and the body as stored (its ``sha256`` costs a second
        read of a file, so only callers that record it ask for it)."""
        key = entry.key or keys.new_key()
        full_key = keys.object_key(direction, key)
        with open_body(entry.body) as prepared:
            self.object_store.put(full_key, prepared.body, entry.metadata, entry.content_type)
        return key, prepared

    def retrieve(self, direction: str, key: str, sha256: str | None = None) -> StoredObject:
        """Open a stored object for streaming: ``.read()``, ``.open()``, ``.metadata``.

        With ``sha256`` (e.g. ``q.status(job_id).assets["output"].sha256``, recorded when the
        output was written), reading the body to its end checks it.

        Raises:
            NotFound: no such key. ValueError: unknown direction. InvalidKey: a malformed key.
            IntegrityError: (while reading) the bytes do not match ``sha256``.
        """
        full_key = keys.object_key(direction, key)
        obj = self.object_store.get(full_key)
        if sha256 is None:
            return obj
        return StoredObject(obj.info, verified(obj.open(), sha256, f"object {full_key!r}"))

    def output(self, job_id: str, asset: str, sha256: str | None = None) -> StoredObject:
        """Open one output of a job: ``out/<job-id>/<asset>`` (``retrieve("out", ...)`` of
        ``"<job-id>/<asset>"``, with ``/`` and ``%`` in the job id written ``%2F`` and ``%25``).

        With ``sha256`` (``q.status(job_id).assets[asset].sha256``) the bytes are checked.

        Raises:
            NotFound: no such output. IntegrityError: (while reading) the bytes do not match.
        """
        return self.retrieve("out", keys.output_key(job_id, asset).removeprefix("out/"), sha256)

    def remove(self, direction: str, key: str) -> None:
        """Delete a stored object; removing a missing key is not an error."""
        self.object_store.delete(keys.object_key(direction, key))

    # -- jobs ------------------------------------------------------------------------------

    def trigger(self, key: str, status: str = "pending") -> str:
        """Send the input stored under ``in/<key>`` to a status queue; return the job id.

        The job id is the key: stable across deliveries and stages.

        Raises:
            UnknownStatus: the status is not configured. NotFound: nothing is stored at the key.
        """
        return self.trigger_many([key], status)[0]

    def submit(self, data: Mapping[str, Any], status: str = "pending") -> str:
        """Submit one job: its input and metadata, then its message; return the job id.

        ``data`` is like ``store()``'s. Without a ``key``, the job id is generated and a small
        body (one that fits in the message, about 180 KiB) travels inline in the message
        instead of being stored under ``in/``; with a ``key``, the body is stored as
        ``in/<key>`` and the key is the job id. Either way the worker reads it with
        ``job.open()``.

        Raises:
            Everything store() and trigger() raise; nothing is left stored if triggering fails.
        """
        return self.submit_many([data], status)[0]

    def submit_many(self, items: Iterable[Mapping[str, Any]], status: str = "pending") -> list[str]:
        """Submit many jobs, sending their messages in batches (up to 10 per SQS request).

        Each item is a mapping like ``submit()``'s; returns the job ids in order. All items are
        checked before anything is stored. The generated ids share one manifest object, so a
        batch of small jobs costs one S3 request in all. If sending fails, the jobs not yet sent are removed
        again (their generated inputs and records) and the error is raised; jobs sent before
        stay submitted (a warning says how many).
        """
        return batch.submit_many(self, items, status)

    def trigger_many(self, job_keys: Iterable[str], status: str = "pending") -> list[str]:
        """``trigger()`` for many stored inputs, sending in batches; returns the job ids."""
        return batch.trigger_many(self, job_keys, status)

    def _create_queued(self, key: str, status: str, now: float) -> str:
        record = {"job": key, "state": "pending", "status": status, "created": now, "updated": now}
        record_key = keys.record_key(key, "queued")
        try:
            self.object_store.put(
                record_key, encode_record(record), content_type="application/json", if_absent=True
            )
        except AlreadyExists:
            raise AlreadyExists(
                f"job {key!r} was triggered before, and a job id runs once: store the input under "
                "a new key (store() without 'key' makes one) to run it again"
            ) from None
        return record_key

    def next(self, status: str = "pending", timeout: float | None = None) -> Job | None:
        """Take the next job from a status queue, long-polling until one arrives.

        Returns None once ``timeout`` seconds pass (None waits forever). The job stays
        invisible to other workers for the visibility timeout; ``job.complete()`` or
        ``job.acknowledge()`` removes it, otherwise it is delivered again. A message that is
        not a remotejob envelope is moved to the dead-letter queue and skipped.

        Raises:
            UnknownStatus: the status is not configured.
        """
        queue = self._status_queue(status)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            # A blocking next() never short-polls in a loop, even with wait_time=0.
            poll = float(self.wait_time or 1)
            remaining = poll if deadline is None else deadline - time.monotonic()
            wait = max(0.0, min(poll, remaining))
            for message in self.message_queue.receive(queue, 1, wait):
                envelope = self._open(queue, message)
                if envelope is None:
                    continue
                job = Job(self, envelope, message)
                if envelope.kind == "notice" and not self._notice_is_true(job, message):
                    continue
                if envelope.kind == "job":
                    if self._finished_already(job):
                        continue
                    self._record_progress(job)
                return job
            if deadline is not None and time.monotonic() >= deadline:
                return None

    # -- what comes off a queue ------------------------------------------------------------

    def _seal(self, text: str) -> str:
        """A message as sent: signed when this job system has signing keys."""
        return text if self.signing is None else self.signing.sign(text)

    def _open(self, queue: str, message: Message) -> Envelope | None:
        """Verify (with signing keys) and decode a received message; a message that fails goes
        to the dead-letter queue with the reason, is counted in ``rejected``, and gives None."""
        try:
            if self.signing is not None:
                self.signing.verify(message.body)
            return decode(message.body)
        except EnvelopeError as exc:
            self._reject(queue, message, getattr(exc, "reason", "undecodable"), str(exc))
            return None

    def _reject(self, queue: str, message: Message, reason: str, detail: str) -> None:
        with self._lock:
            self.rejected[reason] += 1
        self._dead_letter(queue, message.body, message.receipt, f"{reason}: {detail}")

    def _finished_already(self, job: Job) -> bool:
        """On a redelivery, or always when messages are signed (so a replayed message never runs a
        finished job): if the job's stage is finished, finish its leftovers, drop the delivery."""
        if job.receive_count == 1 and self.signing is None:
            return False
        if not job.finish_if_done():
            return False
        if job.receive_count == 1:
            with self._lock:
                self.rejected["replayed"] += 1
        logger.info("job %s was already finished; dropped its redelivery", job.id)
        return True

    def _notice_is_true(self, job: Job, message: Message) -> bool:
        """With signing keys, a completion notice must match the job's final record."""
        if self.signing is None:
            return True
        record = completion.read_record(self.object_store, keys.record_key(job.id, "final"))
        if record is not None and record.get("state") == job.state:
            return True
        self._reject(keys.queue_name(self.name, job.status), message, "notice-without-outcome",
                     f"job {job.id!r} has no {job.state} outcome recorded")
        return False

    def _record_progress(self, job: Job) -> None:
        self.object_store.put(
            keys.record_key(job.id, "progress"), progress_record(job), content_type="application/json"
        )
        job.progress_recorded = True

    def _dead_letter(self, queue: str, body: str, receipt: str, reason: str) -> None:
        logger.warning("moving an undecodable message from %s to the dead-letter queue: %s", queue, reason)
        self.message_queue.send(keys.dead_letter_name(self.name), wrap_dead(body, queue, reason))
        self.message_queue.delete(queue, receipt)

    def _notice(
        self, job: Job, state: str, error: str | None, outputs: Mapping[str, Any] | None = None
    ) -> tuple[str, str] | None:
        """The completion notice of a finished job, ``(queue, body)``; None without a
        ``completed`` status (or for a job that ran in it)."""
        if "completed" not in self.statuses or job.status == "completed":
            return None
        notice = Envelope(
            job=job.id, key=job.key, status="completed", sent=time.time(), meta=job.metadata,
            kind="notice", state=state, error=error, outputs=public_outputs(outputs or {}),
        )
        return self._status_queue("completed"), self._seal(encode(notice))

    def _hand_on(self, envelope: Envelope, status: str, record: Mapping[str, Any]) -> None:
        now = time.time()
        queued = {"job": envelope.job, "state": "pending", "status": status,
                  "created": record["created"], "updated": now}
        self.object_store.put(
            keys.record_key(envelope.job, "queued"), encode_record(queued), content_type="application/json"
        )
        message = self._seal(encode(next_stage(envelope, status, record)))
        self.message_queue.send(self._status_queue(status), message)

    def _requeue(self, job_id: str, status: str, body: str) -> None:
        now = time.time()
        created = decode(body).sent
        queued = {"job": job_id, "state": "pending", "status": status, "created": created, "updated": now}
        self.object_store.put(
            keys.record_key(job_id, "queued"), encode_record(queued), content_type="application/json"
        )
        self.message_queue.send(self._status_queue(status), self._seal(signing.strip(body)))

    # -- dead letters and workers ----------------------------------------------------------

    def dead_letters(self, limit: int | None = None) -> list[DeadLetter]:
        """List the messages in the dead-letter queue ``<name>-dead`` (they stay there).

        Each :class:`~remotejob.DeadLetter` has the original ``body``, the ``reason`` it was
        moved, and its ``job`` id and ``status`` when it is a job.
        """
        return dead.list_dead(self, limit)

    def redrive(self, limit: int | None = None) -> int:
        """Send dead-lettered jobs back to their status queues; return how many were sent.

        A job recorded ``failed`` is reopened so a (fixed) worker can run it again; messages
        that are not jobs of a configured status stay in the dead-letter queue.
        """
        return dead.redrive(self, limit)

    def work(
        self,
        handler: Handler,
        status: str = "pending",
        concurrency: int = 1,
        max_jobs: int | None = None,
        burst: bool = False,
        **options: Any,
    ) -> int:
        """Run a worker on ``status`` in this thread until stopped; return the jobs it ran.

        See :class:`remotejob.Worker` for the options (``grace_period``, ``retry_delay``...).
        """
        from .worker import Worker

        worker = Worker(
            self, handler, status=status, concurrency=concurrency, max_jobs=max_jobs, burst=burst, **options
        )
        return worker.run()

    def _remove_job(self, status: str, receipt: str) -> None:
        """Delete a delivery from a status queue by its receipt handle (the seed's hidden call)."""
        self.message_queue.delete(self._status_queue(status), receipt)

    # -- status ----------------------------------------------------------------------------

    def status(self, job_id: str) -> JobStatus:
        """Where a job stands: pending, inprogress, completed or failed.

        Raises:
            NotFound: no job with this id was ever submitted. InvalidKey: a malformed id.
        """
        validate_key(job_id)
        for record in ("final", "progress", "queued"):
            try:
                with self.object_store.get(keys.record_key(job_id, record)) as obj:
                    return decode_status(job_id, obj.read())
            except NotFound:
                continue
        batched = keys.parse_batch_job(job_id)
        if batched is not None:
            try:
                with self.object_store.get(keys.batch_key(batched[0])) as obj:
                    pending = decode_manifest(job_id, batched[1], obj.read())
            except NotFound:
                pending = None
            if pending is not None:
                return pending
        raise NotFound(f"no job {job_id!r} in {self.name!r}: it was never submitted")

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 1.0) -> JobStatus:
        """Wait until a job is completed or failed and return its status.

        Polls ``status()``, quickly at first, then every ``poll`` seconds at most.

        Raises:
            JobFailed: the job failed (``.error`` carries its error). WaitTimeout: ``timeout``
                seconds passed. NotFound: the job was never submitted.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.02
        while True:
            st = self.status(job_id)
            if st.state == "failed":
                raise JobFailed(job_id, st.error or "unknown error")
            if st.state == "completed":
                return st
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(f"job {job_id!r} is still {st.state} after {timeout} s")
                delay = min(delay, left)
            time.sleep(delay)
            delay = min(delay * 1.5, poll)


def connect(
    name: str,
    store: str | ObjectStore | None = None,
    queues: str | MessageQueue | None = None,
    *,
    statuses: Sequence[str] = DEFAULT_STATUSES,
    visibility_timeout: int = 30,
    wait_time: int = 20,
    max_attempts: int = 5,
    home: str | os.PathLike[str] | None = None,
    endpoint_url: str | None = None,
    sse: str | None = None,
    kms_key_id: str | None = None,
) -> Queue:
    """Connect to (and lazily create) the job system ``name``.

    Args:
        name: the job system's name; queues are ``<name>-<status>`` and ``<name>-dead``.
        store: ``s3://bucket/prefix``, ``s3://`` (bucket ``remotejobs-<name>``), a folder, or an
            ObjectStore; default ``$REMOTEJOB_STORE`` or the embedded folder.
        queues: ``sqs://``, a SQLite file, or a MessageQueue; default ``$REMOTEJOB_QUEUES`` or
            the embedded SQLite file.
        statuses: the status queues, in pipeline order.
        visibility_timeout: seconds a taken job stays invisible to other workers.
        wait_time: the long-poll wait of one receive, 0-20 seconds.
        max_attempts: deliveries of a job before it is recorded failed and dead-lettered (the
            queues' redrive policy, set when they are created).
        home: the embedded backend's folder (default ``$REMOTEJOB_HOME`` or ``./.remotejob``).
        endpoint_url: an S3/SQS-compatible endpoint for both services (else the AWS chain's).
        sse: server-side encryption on AWS, ``"AES256"`` (S3-managed keys) or ``"aws:kms"``;
            default ``$REMOTEJOB_SSE``. Objects are written with it and a bucket remotejob
            creates gets it as its default; queues are created with SSE-SQS, or with KMS under
            ``"aws:kms"``. Ignored by the embedded backend and by store/queue objects.
        kms_key_id: the KMS key for ``"aws:kms"`` (id, ARN or ``alias/NAME``); default
            ``$REMOTEJOB_KMS_KEY_ID``, else the AWS-managed keys.

    Raises:
        ConfigError: an invalid name, location or option.
    """
    validate_queue_name(name)
    home_dir = config.home(home)
    sse, kms_key_id = config.encryption(sse, kms_key_id)
    return Queue(
        name,
        config.make_store(name, store, home_dir, endpoint_url, sse, kms_key_id),
        config.make_queues(queues, home_dir, endpoint_url, sse, kms_key_id),
        statuses=statuses,
        visibility_timeout=visibility_timeout,
        wait_time=wait_time,
        max_attempts=max_attempts,
    )
