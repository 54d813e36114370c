"""What every part of a job system shares: its name, statuses, store, queues, keys and limits.

:class:`Context` is internal. The public :class:`~remotejob.Queue` builds one and delegates to the
modules that use it (``lifecycle``, ``records``, ``batch``, ``dead``, ``worker``...); nothing inside
the package imports ``queue.py``.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Sequence

from . import keys, legacy
from .backends.base import Message, MessageQueue, ObjectStore, QueueAttributes
from .control import Cancellations
from .envelope import PRIORITIES, Envelope, decode, wrap_dead
from .errors import ConfigError, EnvelopeError, UnknownStatus
from .journal import Journal, JournalingStore
from .limits import MAX_DELAY_S, MAX_VISIBILITY_S, MAX_WAIT_S, validate_queue_name
from .signing import Keyring

logger = logging.getLogger(__name__)

DEFAULT_STATUSES = ("pending", "inprogress", "completed")


def _journal(store: ObjectStore, journal: bool | float) -> Journal | None:
    """The journal ``connect(journal=)`` asks for: True (one entry a second at most), False
    (none), or the least seconds between two entries."""
    if journal is True or journal is False:
        return Journal(store) if journal else None
    if not isinstance(journal, (int, float)) or not 0 < journal < 3600:
        raise ConfigError(f"journal must be True, False or 0-3600 seconds between entries, got {journal!r}")
    return Journal(store, interval=float(journal))


def check_priority(priority: object) -> str | None:
    """A priority as queues name it: ``"high"`` or ``"low"``, or None for normal.

    Raises:
        ValueError: not one of ``high``, ``normal``, ``low`` (or None).
    """
    if priority is None or priority == "normal":
        return None
    if priority in ("high", "low"):
        return str(priority)
    raise ValueError(f"priority must be one of {', '.join(PRIORITIES)} (or None for normal), "
                     f"got {priority!r}")


class Context:
    """One job system's settings and connections, validated once.

    Raises:
        ConfigError: an invalid name, status list or option.
    """

    def __init__(
        self,
        name: str,
        store: ObjectStore,
        queues: MessageQueue,
        statuses: Sequence[str] = DEFAULT_STATUSES,
        visibility_timeout: int = 30,
        wait_time: int = 20,
        max_attempts: int = 5,
        signing: Keyring | None = None,
        journal: bool | float = True,
        legacy_mode: bool = False,
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
        self.object_store = store
        """The store as given (``store`` is it, wrapped to feed the journal when there is one)."""
        self.journal = _journal(store, journal)
        """Which jobs' records this process wrote, appended to the store's journal (see
        ``journal.py``); None with ``journal=False``."""
        self.store: ObjectStore = store if self.journal is None else JournalingStore(store, self.journal)
        self.queues = queues
        self.signing = signing
        self.legacy_bucket = legacy.check(self.name, store, queues, signing) if legacy_mode else None
        """In legacy mode (see ``legacy.py``), the 2014 package's bucket; else None."""
        self.rejected: Counter[str] = Counter()
        self.cancellations = Cancellations(store)
        """The jobs this process knows to be cancelled (read from the store's cancellation log)."""
        self.lock = threading.Lock()
        self._ensured = False
        self._levels: set[str] = set()
        self.max_delay_s = MAX_DELAY_S
        """The longest delay a message queue applies to a message itself (SQS: 15 minutes); a
        job due later is parked in the store until then (see ``timers.py``). Tests lower it."""

    def close(self) -> None:
        """Write the journal's pending entry now."""
        if self.journal is not None:
            self.journal.close()

    @property
    def dead_letters(self) -> str:
        """The dead-letter queue's name, ``<name>-dead``."""
        return keys.dead_letter_name(self.name)

    def level_queues(self, status: str) -> dict[str, str]:
        """The priority levels of a status whose queues this process created, by level."""
        with self.lock:
            return {p: keys.queue_name(self.name, status, p) for p in ("high", "low")
                    if keys.queue_name(self.name, status, p) in self._levels}

    def queue_names(self) -> list[str]:
        """Every status queue's name, then the dead-letter queue's."""
        return [keys.queue_name(self.name, s) for s in self.statuses] + [self.dead_letters]

    def ensure_queues(self) -> None:
        """Create the status and dead-letter queues if missing (once per process)."""
        if self._ensured:
            return
        with self.lock:
            if not self._ensured:
                self.queues.ensure(self.queue_names(), self._attributes())
                self._ensured = True

    def _attributes(self) -> QueueAttributes:
        attributes = QueueAttributes(visibility_s=self.visibility_timeout, wait_s=self.wait_time,
                                     dead_letter=self.dead_letters, max_receive_count=self.max_attempts)
        return attributes if self.legacy_bucket is None else legacy.queue_attributes(attributes)

    def status_queue(self, status: str, priority: str | None = None) -> str:
        """The queue of a configured status (created on first use), or of one of its priority
        levels (``"high"``, ``"low"``; None and ``"normal"`` are the status's own queue).

        Raises:
            UnknownStatus: the status is not configured. ValueError: an unknown priority.
        """
        priority = check_priority(priority)
        if priority is not None:
            self.status_queue(status)
            name = keys.queue_name(self.name, status, priority)
            if name not in self._levels:
                # Every status's queue of the level at once (but the completion notices'): a
                # worker, which may not create queues, can then hand a job on in its level.
                names = [keys.queue_name(self.name, s, priority)
                         for s in self.statuses if s != "completed" or s == status]
                for level_queue in names:
                    validate_queue_name(level_queue)
                    if level_queue in self.queue_names():
                        raise ConfigError(f"queue {level_queue!r} of priority {priority!r} is also a "
                                          "status's queue: rename that status to use priorities")
                self.queues.ensure(names, self._attributes())
                with self.lock:
                    self._levels.update(names)
            return name
        if status not in self.statuses:
            raise UnknownStatus(
                f"status {status!r} is not configured for {self.name!r}; configured: "
                f"{', '.join(self.statuses)} (pass statuses=... to connect())"
            )
        self.ensure_queues()
        return keys.queue_name(self.name, status)

    def seal(self, text: str) -> str:
        """A message as sent: signed when this job system has signing keys."""
        return text if self.signing is None else self.signing.sign(text)

    def open(self, queue: str, message: Message, delete: bool = True) -> tuple[Envelope, Message] | None:
        """Verify (with signing keys) and decode a received message; a message that fails goes
        to the dead-letter queue with the reason (and is deleted from ``queue`` unless not
        ``delete``), is counted in ``rejected``, and gives None.

        Returns the envelope and the message to run it from: the message itself, or, for a 2014
        package's message in legacy mode, a copy whose body is its envelope (see ``legacy.py``).
        """
        try:
            if self.signing is not None:
                self.signing.verify(message.body)
            elif (doc := legacy.parse(message.body)) is not None:
                if self.legacy_bucket is None:
                    raise legacy.not_enabled("this message")
                message = legacy.translate(doc, message, self._status_of(queue), self.legacy_bucket)
            envelope = decode(message.body)
            if envelope.legacy and self.legacy_bucket is None:
                raise legacy.not_enabled(f"job {envelope.job!r}")
            return envelope, message
        except EnvelopeError as exc:
            self.reject(queue, message, getattr(exc, "reason", "undecodable"), str(exc), delete)
            return None

    def _status_of(self, queue: str) -> str:
        """The status whose queue (or priority level's queue) ``queue`` is."""
        for status in self.statuses:
            if queue in (keys.queue_name(self.name, status, p) for p in PRIORITIES):
                return status
        raise legacy.LegacyRefused("legacy-bad-field", f"queue {queue!r} is not one of a status")

    def reject(self, queue: str, message: Message, reason: str, detail: str, delete: bool = True) -> None:
        """Count a refused message and move it to the dead-letter queue with the reason (with
        ``delete`` false, only a copy: its deletion is left to whoever received it)."""
        with self.lock:
            self.rejected[reason] += 1
        logger.warning("moving a refused message from %s to the dead-letter queue: %s: %s",
                       queue, reason, detail)
        self.queues.send(self.dead_letters, wrap_dead(message.body, queue, f"{reason}: {detail}"))
        if delete:
            self.queues.delete(queue, message.receipt)

    def count_rejected(self, reason: str) -> None:
        """Count a message refused without moving it (e.g. a replay dropped)."""
        with self.lock:
            self.rejected[reason] += 1
