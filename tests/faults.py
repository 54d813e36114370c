"""Fault injection for tests: wrappers around any ObjectStore / MessageQueue that crash the
process at a named point, lose a reply after applying a request, fail some entries of a batch,
raise an error, or delay a call, by rules a test adds to a shared :class:`Faults`.

The wrappers implement the protocols of ``remotejob/backends/base.py`` and forward to a real
store or queue, so the same faults run over every backend setting::

    faults = Faults()
    store = FaultyStore(backend.make_store(), faults)
    queues = FaultyQueues(backend.make_queues(), faults)
    q = remotejob.connect(unique("q"), store=store, queues=queues, visibility_timeout=2)
    faults.crash("store.put", match="/final")            # the next claim is applied, then the process dies
    ...
    faults.revive()                                      # a fresh process over the same store and queues

Operation names are ``store.<method>`` and ``queue.<method>``. A rule's ``match`` is a substring of
the call's first positional argument (the key for store ops, the queue name for queue ops), or a
callable given the call's ``(*args, **kwargs)``. A rule fires for ``times`` matching calls, then it
is spent; rules are checked in the order they were added, and at most one fires per call.

After a :class:`Crash` fired, the process is *dead*: every later call through any wrapper sharing
the :class:`Faults` raises :class:`Crash` without being applied (a call already under way when the
crash fired raises it on return), until :meth:`Faults.revive`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from remotejob.backends.base import (
    Body,
    Message,
    MessageQueue,
    ObjectInfo,
    ObjectStore,
    OutgoingMessage,
    QueueAttributes,
    QueueDepth,
    StoredObject,
)
from remotejob.errors import BatchPartlyFailed, UncertainResult

Match = Callable[..., bool] | str | None

BATCH_OPS = ("queue.send_batch", "queue.delete_batch", "queue.change_visibility_batch")


class Crash(BaseException):
    """The process died here. A BaseException, so ``except Exception`` in the library does not
    swallow it: it ends the thread that made the call, as a real crash would end the process."""


@dataclass
class _Rule:
    kind: str  # crash, lose_reply, fail_entries, fail, delay
    op: str
    match: Match
    times: int
    when: str = "before"
    exc: BaseException | Callable[[], BaseException] | None = None
    indices: frozenset[int] = frozenset()
    pick: Callable[[list[Any]], Iterable[int]] | None = None
    code: str = "InternalError"
    until: threading.Event | None = None
    seconds: float | None = None
    entered: threading.Event | None = None
    fired: int = field(default=0)

    def matches(self, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        if self.op != op or self.times <= 0:
            return False
        if self.match is None:
            return True
        if isinstance(self.match, str):
            return bool(args) and isinstance(args[0], str) and self.match in args[0]
        return bool(self.match(*args, **kwargs))


def _check_when(when: str) -> None:
    if when not in ("before", "after"):
        raise ValueError(f"when must be 'before' or 'after', not {when!r}")


class Faults:
    """The rules and the record of calls shared by a set of wrappers (one simulated process)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        """Every call made through the wrappers while alive: ``(op, args, kwargs)``."""
        self.dead = False
        self.died = threading.Event()
        """Set when a crash fires (cleared by :meth:`revive`): ``delay(op, until=faults.died)``
        holds a call until the process dies, so it is never applied."""
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()

    # -- rules -----------------------------------------------------------------------------

    def crash(self, op: str, *, when: str = "after", match: Match = None, times: int = 1) -> None:
        """Die at ``op``: ``before`` it is applied, or ``after`` it was applied (the default)."""
        _check_when(when)
        self._add(_Rule("crash", op, match, times, when=when))

    def lose_reply(self, op: str, *, match: Match = None, times: int = 1) -> None:
        """Apply ``op``, then raise :class:`remotejob.errors.UncertainResult` (the reply was lost)."""
        self._add(_Rule("lose_reply", op, match, times, when="after"))

    def fail_entries(self, op: str, indices: Iterable[int] | Callable[[list[Any]], Iterable[int]], *,
                     code: str = "InternalError", match: Match = None, times: int = 1) -> None:
        """For a batch op: apply only the entries not in ``indices``, then raise
        :class:`remotejob.errors.BatchPartlyFailed` naming the failed ones (if every entry fails,
        nothing is applied). Indices past the end of a batch are ignored. ``indices`` may be a
        callable given the batch's entries (e.g. to fail one receipt wherever it appears); a call
        where it picks none is applied as it is."""
        if op not in BATCH_OPS:
            raise ValueError(f"fail_entries needs a batch op ({', '.join(BATCH_OPS)}), not {op!r}")
        if callable(indices):
            self._add(_Rule("fail_entries", op, match, times, pick=indices, code=code))
        else:
            self._add(_Rule("fail_entries", op, match, times, indices=frozenset(indices), code=code))

    def fail(self, op: str, exc: BaseException | Callable[[], BaseException], *, when: str = "before",
             match: Match = None, times: int = 1) -> None:
        """Raise ``exc`` (an exception, or a factory of one) ``before`` the call (not applied) or
        ``after`` it (applied)."""
        _check_when(when)
        self._add(_Rule("fail", op, match, times, when=when, exc=exc))

    def delay(self, op: str, *, until: threading.Event | None = None, seconds: float | None = None,
              match: Match = None, times: int = 1, entered: threading.Event | None = None) -> None:
        """Hold the call (setting ``entered`` when it starts waiting) until ``until`` is set or
        ``seconds`` passed, whichever comes first, then apply it."""
        if until is None and seconds is None:
            raise ValueError("delay needs until= or seconds=")
        self._add(_Rule("delay", op, match, times, until=until, seconds=seconds, entered=entered))

    def revive(self) -> None:
        """A fresh process: calls go through again (rules not yet spent stay armed)."""
        with self._lock:
            self.dead = False
            self.died.clear()

    def clear(self) -> None:
        """Drop every rule not yet spent."""
        with self._lock:
            self._rules.clear()

    def count(self, op: str, match: Match = None) -> int:
        """How many calls of ``op`` (matching ``match``) were made while alive."""
        probe = _Rule("count", op, match, 1)
        with self._lock:
            calls = list(self.calls)
        return sum(1 for name, args, kwargs in calls if probe.matches(name, args, kwargs))

    def ops(self) -> Counter[str]:
        """How many calls of each op were made while alive, e.g. ``{"store.list": 3}``."""
        with self._lock:
            return Counter(name for name, _, _ in self.calls)

    def fired(self, op: str | None = None) -> int:
        """How many times rules (of ``op``) fired."""
        with self._lock:
            return sum(rule.fired for rule in self._rules if op is None or rule.op == op)

    def _add(self, rule: _Rule) -> None:
        if rule.times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._rules.append(rule)

    # -- calling ---------------------------------------------------------------------------

    def _die(self) -> Crash:
        with self._lock:
            self.dead = True
            self.died.set()
        return Crash("the process died here")

    def _check_alive(self, op: str) -> None:
        if self.dead:
            raise Crash(f"the process is dead ({op} not applied)")

    def invoke(self, op: str, real: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run one call through the rules."""
        with self._lock:
            if self.dead:
                raise Crash(f"the process is dead ({op} not applied)")
            self.calls.append((op, args, kwargs))
            rule = next((r for r in self._rules if r.matches(op, args, kwargs)), None)
            if rule is not None:
                rule.times -= 1
                rule.fired += 1
        if rule is None:
            result = real(*args, **kwargs)
            self._check_alive(op)
            return result
        if rule.kind == "crash":
            if rule.when == "after":
                try:
                    real(*args, **kwargs)
                except Exception:  # noqa: BLE001, S110 - applied (or refused); the process dies either way
                    pass
            raise self._die()
        if rule.kind == "fail":
            assert rule.exc is not None
            exc = rule.exc if isinstance(rule.exc, BaseException) else rule.exc()
            if rule.when == "after":
                real(*args, **kwargs)
                self._check_alive(op)
            if isinstance(exc, Crash):
                self._die()
            raise exc
        if rule.kind == "lose_reply":
            real(*args, **kwargs)
            self._check_alive(op)
            raise UncertainResult(f"{op}: the reply was lost (the request was applied)")
        if rule.kind == "delay":
            if rule.entered is not None:
                rule.entered.set()
            if rule.until is not None:
                rule.until.wait(rule.seconds)
            else:
                assert rule.seconds is not None
                threading.Event().wait(rule.seconds)
            self._check_alive(op)
            result = real(*args, **kwargs)
            self._check_alive(op)
            return result
        if rule.kind == "fail_entries":
            return self._fail_entries(op, rule, real, args, kwargs)
        raise AssertionError(rule.kind)

    def _fail_entries(self, op: str, rule: _Rule, real: Callable[..., Any], args: tuple[Any, ...],
                      kwargs: dict[str, Any]) -> Any:
        queue, entries = args[0], list(args[1])
        chosen = rule.indices if rule.pick is None else frozenset(rule.pick(entries))
        failed = {i: rule.code for i in range(len(entries)) if i in chosen}
        if not failed:
            result = real(queue, entries)
            self._check_alive(op)
            return result
        kept = [i for i in range(len(entries)) if i not in failed]
        done: dict[int, str] = {}
        if kept:
            result = real(queue, [entries[i] for i in kept])
            self._check_alive(op)
            if op == "queue.send_batch":
                done = {i: message_id for i, message_id in zip(kept, result, strict=True)}
            elif op == "queue.change_visibility_batch":  # a gone delivery fails as SQS reports it
                gone = {kept[j] for j in result}
                failed.update({i: "ReceiptHandleIsInvalid" for i in gone})
                done = {i: "" for i in kept if i not in gone}
            else:
                done = {i: "" for i in kept}
        raise BatchPartlyFailed(
            f"{op}: {len(failed)} of {len(entries)} entries failed ({rule.code})", failed=failed, done=done
        )



class FaultyStore:
    """An :class:`ObjectStore` that forwards to ``inner`` through ``faults``' rules."""

    def __init__(self, inner: ObjectStore, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults
        self.location = inner.location

    def ensure(self) -> None:
        self.faults.invoke("store.ensure", self.inner.ensure, (), {})

    def put(self, key: str, body: Body, metadata: Mapping[str, str] | None = None,
            content_type: str = "application/octet-stream", if_absent: bool = False) -> ObjectInfo:
        result: ObjectInfo = self.faults.invoke(
            "store.put", self.inner.put, (key, body),
            {"metadata": metadata, "content_type": content_type, "if_absent": if_absent},
        )
        return result

    def get(self, key: str) -> StoredObject:
        result: StoredObject = self.faults.invoke("store.get", self.inner.get, (key,), {})
        return result

    def head(self, key: str) -> ObjectInfo:
        result: ObjectInfo = self.faults.invoke("store.head", self.inner.head, (key,), {})
        return result

    def copy(self, source: str, key: str) -> ObjectInfo:
        """Matched on ``source`` like every op's first argument; match ``key`` with a callable."""
        result: ObjectInfo = self.faults.invoke("store.copy", self.inner.copy, (source, key), {})
        return result

    def delete(self, key: str) -> None:
        self.faults.invoke("store.delete", self.inner.delete, (key,), {})

    def list(self, prefix: str = "", start_after: str = "") -> Iterator[ObjectInfo]:
        infos: list[ObjectInfo] = self.faults.invoke(
            "store.list", lambda p, a: list(self.inner.list(p, a)), (prefix, start_after), {}
        )
        return iter(infos)


class FaultyQueues:
    """A :class:`MessageQueue` that forwards to ``inner`` through ``faults``' rules."""

    def __init__(self, inner: MessageQueue, faults: Faults) -> None:
        self.inner = inner
        self.faults = faults
        self.location = inner.location

    def ensure(self, names: Sequence[str], attributes: QueueAttributes) -> None:
        # first argument is a sequence: a str match never fires on it; use a callable
        self.faults.invoke("queue.ensure", self.inner.ensure, (names, attributes), {})

    def send(self, queue: str, body: str, delay_s: int = 0) -> str:
        result: str = self.faults.invoke("queue.send", self.inner.send, (queue, body), {"delay_s": delay_s})
        return result

    def send_batch(self, queue: str, messages: Sequence[OutgoingMessage]) -> list[str]:
        result: list[str] = self.faults.invoke(
            "queue.send_batch", self.inner.send_batch, (queue, messages), {}
        )
        return result

    def receive(self, queue: str, max_messages: int = 1, wait_s: float = 0,
                visibility_s: int | None = None, cancel: threading.Event | None = None) -> list[Message]:
        kwargs: dict[str, Any] = {"max_messages": max_messages, "wait_s": wait_s, "cancel": cancel}
        if visibility_s is not None:
            kwargs["visibility_s"] = visibility_s
        result: list[Message] = self.faults.invoke("queue.receive", self.inner.receive, (queue,), kwargs)
        return result

    def delete(self, queue: str, receipt: str) -> None:
        self.faults.invoke("queue.delete", self.inner.delete, (queue, receipt), {})

    def delete_batch(self, queue: str, receipts: Sequence[str]) -> None:
        self.faults.invoke("queue.delete_batch", self.inner.delete_batch, (queue, receipts), {})

    def change_visibility(self, queue: str, receipt: str, seconds: int) -> None:
        self.faults.invoke(
            "queue.change_visibility", self.inner.change_visibility, (queue, receipt, seconds), {}
        )

    def change_visibility_batch(self, queue: str, entries: Sequence[tuple[str, int]]) -> list[int]:
        result: list[int] = self.faults.invoke(
            "queue.change_visibility_batch", self.inner.change_visibility_batch, (queue, entries), {}
        )
        return result

    def depth(self, queue: str) -> QueueDepth:
        result: QueueDepth = self.faults.invoke("queue.depth", self.inner.depth, (queue,), {})
        return result

    def purge(self, queue: str) -> None:
        self.faults.invoke("queue.purge", self.inner.purge, (queue,), {})


def connect_faulty(backend: Any, faults: Faults | None = None, **options: Any) -> tuple[Any, Faults]:
    """``remotejob.connect()`` on a test's backend setting (a ``conftest.BackendSetup``) with its
    store and queues wrapped, under a unique name; returns the Queue and its :class:`Faults`."""
    import remotejob
    from tests.conftest import unique

    faults = Faults() if faults is None else faults
    q = remotejob.connect(unique("q"), store=FaultyStore(backend.make_store(), faults),
                          queues=FaultyQueues(backend.make_queues(), faults), **options)
    return q, faults

