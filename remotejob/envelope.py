"""The message envelope: versioned JSON, never pickle.

``{"v": 1, "kind": "job", "job": id, "key": key, "meta": {...}, "status": s, "sent": t}``;
a completion notice (``kind: "notice"``) adds ``"state"`` and, for a failed job, ``"error"``.
A small input travels inline as ``"body"`` (base64) instead of under ``in/<key>``.
A job may carry a ``"limit"`` (its time limit, seconds) and ``"retry"`` (how often
``Queue.retry()`` sent it again). A pipeline stage's job adds ``"input"`` (the store key of the
previous stage's output it reads) and ``"outputs"`` (the earlier stages' outputs). A job sent
while an OpenTelemetry span was current carries its W3C trace context as ``"trace"``:
``{"traceparent": ..., "tracestate": ...}`` (inside the signed envelope, not in message
attributes, so a signature covers it and SQS's ten-attribute limit never bites; see
``tracing.py``). A delayed job carries ``"due"`` (seconds since the epoch before which it must
not start); one whose message may be sent more than once (dispatched from the store: a
far-future job or a periodic job's tick, see ``timers.py``) carries ``"once": true``, so that its
first delivery claims the run; a job of another priority than normal carries ``"priority"``
(``"high"`` or ``"low"``), the level whose queue it is in. A job of the 2014 Node.js package
taken in legacy mode (see ``legacy.py``) carries ``"legacy": true``: its ``"input"`` may be a key
at the bucket's root (outside remotejob's own areas) and its outputs are also published where
the 2014 package puts them. Decoding is bounded and validates
every field; anything else raises :class:`EnvelopeError`.

A message moved to the dead-letter queue by remotejob is wrapped with the reason
(:func:`wrap_dead`); one moved there by a queue's redrive policy arrives as it was.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import EnvelopeError, InvalidKey, MetadataError
from .keys import in_areas
from .limits import MAX_MESSAGE_BYTES, validate_key, validate_metadata

VERSION = 1
KINDS = ("job", "notice")
_STATES = ("completed", "failed", "cancelled")
_FIELDS = frozenset({
    "v", "kind", "job", "key", "meta", "status", "sent", "state", "error", "input", "outputs", "body",
    "sha256", "after", "partial", "limit", "retry", "trace", "due", "once", "priority",
    "legacy", "at", "kid", "sig",  # the signature (see signing.py)
})
PRIORITIES = ("high", "normal", "low")
"""The priority levels, highest first; ``normal`` is the status's own queue."""
_OUTPUT_FIELDS = {"size": int, "sha256": str, "content_type": str, "stage": str}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TRACEPARENT = re.compile(r"(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")
_TRACESTATE = re.compile(r"[\x20-\x7e]{0,512}")
"""W3C trace context: a version-00-shaped ``traceparent`` (no all-zero ids) and a ``tracestate`` of
at most 512 printable characters (what W3C asks every vendor to pass on)."""


@dataclass(frozen=True)
class Envelope:
    """One queue message: which job, where its input is, and where it stands."""

    job: str
    key: str
    status: str
    sent: float
    meta: dict[str, str] = field(default_factory=dict)
    kind: str = "job"
    state: str | None = None
    error: str | None = None
    input: str | None = None
    """The store key of the input when it is not ``in/<key>`` (a pipeline stage's)."""
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Outputs of earlier pipeline stages, as their records list them."""
    body: str | None = None
    """The input body itself, base64, when it travels inline (see ``batch.py``)."""
    sha256: str | None = None
    """SHA-256 hex of a stored input, checked as the worker reads it."""
    after: str | None = None
    """For a pipeline stage's job: the status of the stage that handed it on."""
    partial: bool = False
    """``outputs`` lists only part of the outputs (they would not fit in a message): the full
    list is in the record of the stage named by ``after`` (a job), or the final record (a notice)."""
    limit: float | None = None
    """The job's time limit in seconds (``submit(..., time_limit=)``), or None."""
    retry: int = 0
    """How often ``Queue.retry()`` sent the job again (its earlier runs are in its history)."""
    trace: dict[str, str] | None = None
    """The W3C trace context of the span that sent the job (``traceparent``, maybe
    ``tracestate``), or None; see ``tracing.py``."""
    due: float | None = None
    """When a delayed job may start, seconds since the epoch; None: at once."""
    once: bool = False
    """The message may exist more than once (see ``timers.py``): its first delivery claims the run."""
    priority: str | None = None
    """``"high"`` or ``"low"``: the priority level whose queue holds the message; None: normal."""
    legacy: bool = False
    """A job of the 2014 Node.js package (see ``legacy.py``): its input may be at the bucket's
    root, and its outputs are published at the root too."""

    def inline_body(self) -> bytes | None:
        """The inline input's bytes, or None when the input is in the store."""
        return None if self.body is None else base64.b64decode(self.body)


def encode(envelope: Envelope) -> str:
    """Serialise an envelope to the compact JSON text sent on the queue."""
    doc: dict[str, Any] = {
        "v": VERSION,
        "kind": envelope.kind,
        "job": envelope.job,
        "key": envelope.key,
        "meta": envelope.meta,
        "status": envelope.status,
        "sent": envelope.sent,
    }
    if envelope.state is not None:
        doc["state"] = envelope.state
    if envelope.error is not None:
        doc["error"] = envelope.error
    if envelope.input is not None:
        doc["input"] = envelope.input
    if envelope.outputs:
        doc["outputs"] = envelope.outputs
    if envelope.body is not None:
        doc["body"] = envelope.body
    if envelope.sha256 is not None:
        doc["sha256"] = envelope.sha256
    if envelope.after is not None:
        doc["after"] = envelope.after
    if envelope.partial:
        doc["partial"] = True
    if envelope.limit is not None:
        doc["limit"] = envelope.limit
    if envelope.retry:
        doc["retry"] = envelope.retry
    if envelope.trace is not None:
        doc["trace"] = envelope.trace
    if envelope.due is not None:
        doc["due"] = envelope.due
    if envelope.once:
        doc["once"] = True
    if envelope.priority is not None:
        doc["priority"] = envelope.priority
    if envelope.legacy:
        doc["legacy"] = True
    return sqs_safe(json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False))


_SQS_REFUSES = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def sqs_safe(text: str) -> str:
    """JSON text with every character SQS refuses in a message (lone surrogates, U+FFFE...)
    written as a ``\\uXXXX`` escape, which decodes back to the same string."""
    return _SQS_REFUSES.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for name, value in pairs:
        if name in doc:
            raise EnvelopeError(f"duplicate field {name!r}")
        doc[name] = value
    return doc


def _no_constants(name: str) -> Any:
    raise EnvelopeError(f"non-finite number {name} is not allowed")


def decode(body: str) -> Envelope:
    """Parse and validate a message body.

    Raises:
        EnvelopeError: not JSON, too large, an unknown version, or a field of the wrong type.
    """
    if len(body) > MAX_MESSAGE_BYTES:
        raise EnvelopeError(f"message of {len(body)} characters is larger than any envelope")
    try:
        doc = json.loads(body, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        raise EnvelopeError(f"message is not a remotejob envelope: {exc}") from exc
    if not isinstance(doc, dict):
        raise EnvelopeError("message is not a JSON object")
    if doc.get("v") != VERSION:
        raise EnvelopeError(f"unsupported envelope version {doc.get('v')!r}; expected {VERSION}")
    if unknown := sorted(set(doc) - _FIELDS):
        raise EnvelopeError(f"unknown envelope fields {unknown[:5]} for version {VERSION}")
    kind = doc.get("kind", "job")
    if kind not in KINDS:
        raise EnvelopeError(f"unknown message kind {kind!r}")
    sent = doc.get("sent")
    if not isinstance(sent, (int, float)) or isinstance(sent, bool) or not math.isfinite(sent):
        raise EnvelopeError("field 'sent' must be a number")
    fields = {}
    for name in ("job", "key", "status"):
        value = doc.get(name)
        if not isinstance(value, str) or not value:
            raise EnvelopeError(f"field {name!r} must be a non-empty string")
        fields[name] = value
    meta = doc.get("meta", {})
    if not isinstance(meta, dict):
        raise EnvelopeError("field 'meta' must be an object")
    state, error = doc.get("state"), doc.get("error")
    if kind == "notice" and state not in _STATES:
        raise EnvelopeError(f"notice state {state!r} must be one of {_STATES}")
    if error is not None and not isinstance(error, str):
        raise EnvelopeError("field 'error' must be a string")
    source, outputs, legacy = doc.get("input"), doc.get("outputs", {}), doc.get("legacy", False)
    if not isinstance(legacy, bool):
        raise EnvelopeError("field 'legacy' must be true or false")
    if source is not None and (not isinstance(source, str) or not (
            source.startswith(("in/", "out/")) or (legacy and not in_areas(source)))):
        raise EnvelopeError("field 'input' must be a key under in/ or out/ (or, for a 2014 job, "
                            "a key outside remotejob's own areas)")
    if not isinstance(outputs, dict) or not all(isinstance(v, dict) for v in outputs.values()):
        raise EnvelopeError("field 'outputs' must map asset names to objects")
    for output in outputs.values():
        for name, value in output.items():
            expected = _OUTPUT_FIELDS.get(name)
            if expected is None or type(value) is not expected:
                raise EnvelopeError(f"output field {name!r} is unknown or of the wrong type")
    digest = doc.get("sha256")
    if digest is not None and (not isinstance(digest, str) or not _SHA256.fullmatch(digest)):
        raise EnvelopeError("field 'sha256' must be 64 lower-case hex digits")
    after, partial = doc.get("after"), doc.get("partial", False)
    if after is not None and (not isinstance(after, str) or not after):
        raise EnvelopeError("field 'after' must be a non-empty string")
    if not isinstance(partial, bool):
        raise EnvelopeError("field 'partial' must be true or false")
    limit, retry = doc.get("limit"), doc.get("retry", 0)
    if limit is not None and (not isinstance(limit, (int, float)) or isinstance(limit, bool)
                              or not math.isfinite(limit) or limit <= 0):
        raise EnvelopeError("field 'limit' must be a positive number of seconds")
    if not isinstance(retry, int) or isinstance(retry, bool) or retry < 0:
        raise EnvelopeError("field 'retry' must be a non-negative integer")
    trace = doc.get("trace")
    if trace is not None and not _is_trace(trace):
        raise EnvelopeError("field 'trace' must be {\"traceparent\": a W3C traceparent, \"tracestate\": "
                            "at most 512 printable characters (optional)}")
    due, once, priority = doc.get("due"), doc.get("once", False), doc.get("priority")
    if due is not None and (not isinstance(due, (int, float)) or isinstance(due, bool)
                            or not math.isfinite(due)):
        raise EnvelopeError("field 'due' must be a number (seconds since the epoch)")
    if not isinstance(once, bool):
        raise EnvelopeError("field 'once' must be true or false")
    if priority is not None and (priority not in PRIORITIES or priority == "normal"):
        raise EnvelopeError("field 'priority' must be 'high' or 'low' (normal is left out)")
    if legacy and (in_areas(fields["job"]) or in_areas(fields["key"])):
        raise EnvelopeError("a 2014 job's id and key may not lie in remotejob's own areas")
    inline = doc.get("body")
    if inline is not None:
        if not isinstance(inline, str) or source is not None:
            raise EnvelopeError("field 'body' must be base64 text, and not beside 'input'")
        try:
            base64.b64decode(inline, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise EnvelopeError(f"field 'body' is not base64: {exc}") from exc
    try:
        validate_key(fields["job"])
        validate_key(fields["key"])
        if source is not None:
            validate_key(source)
        for name in outputs:
            validate_key(name)
        meta = validate_metadata(meta)
    except (InvalidKey, MetadataError) as exc:
        raise EnvelopeError(f"invalid envelope: {exc}") from exc
    return Envelope(
        job=fields["job"],
        key=fields["key"],
        status=fields["status"],
        sent=float(sent),
        meta=meta,
        kind=kind,
        state=state if kind == "notice" else None,
        error=error,
        input=source,
        outputs=outputs,
        body=inline,
        sha256=digest,
        after=after,
        partial=partial,
        limit=None if limit is None else float(limit),
        retry=retry,
        trace=trace,
        due=None if due is None else float(due),
        once=once,
        priority=priority,
        legacy=legacy,
    )


def _is_trace(trace: Any) -> bool:
    if not isinstance(trace, dict) or "traceparent" not in trace:
        return False
    if set(trace) - {"traceparent", "tracestate"}:
        return False
    parent, state = trace["traceparent"], trace.get("tracestate", "")
    return (isinstance(parent, str) and _TRACEPARENT.fullmatch(parent) is not None
            and isinstance(state, str) and _TRACESTATE.fullmatch(state) is not None)


@dataclass(frozen=True)
class DeadLetter:
    """A message in the dead-letter queue: the original body and why it is there."""

    body: str
    """The message exactly as it was in its status queue."""
    reason: str
    source: str | None
    """The queue it came from, when remotejob moved it (None after a redrive policy moved it)."""
    message_id: str = ""
    receive_count: int = 0
    """How often the dead-letter message itself has been received (listing counts too)."""
    job: str | None = None
    """The job id, when the body is a remotejob envelope."""
    status: str | None = None
    """The status queue the job was in, when the body is a remotejob envelope."""


def wrap_dead(body: str, source: str, reason: str) -> str:
    """The dead-letter message for ``body``: the body and the reason, so both survive the move.

    A body too large to wrap keeps its first part, flagged ``"truncated"``.
    """
    doc: dict[str, Any] = {"v": VERSION, "kind": "dead", "source": source, "reason": reason[:1000]}
    text = sqs_safe(json.dumps({**doc, "body": body}, ensure_ascii=False, separators=(",", ":")))
    if len(text.encode("utf-8")) <= MAX_MESSAGE_BYTES:
        return text
    room = MAX_MESSAGE_BYTES - 8192  # the wrapper and the reason
    doc["body"], doc["truncated"] = body[: room // 12], True  # JSON escaping is at most 6 bytes a char
    return sqs_safe(json.dumps(doc, ensure_ascii=False, separators=(",", ":")))


def unwrap_dead(text: str, message_id: str = "", receive_count: int = 0) -> DeadLetter:
    """Read a dead-letter queue message: a :func:`wrap_dead` wrapper or a raw moved message."""
    body, reason, source = text, "received more times than the queue's redrive policy allows", None
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (ValueError, RecursionError, EnvelopeError):
        doc = None
    if isinstance(doc, dict) and doc.get("kind") == "dead" and isinstance(doc.get("body"), str):
        body, reason, source = doc["body"], str(doc.get("reason", "")), str(doc.get("source") or "") or None
    job = status = None
    try:
        envelope = decode(body)
        job, status = envelope.job, envelope.status
    except EnvelopeError:
        pass
    return DeadLetter(body, reason, source, message_id, receive_count, job, status)
