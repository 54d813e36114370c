"""S3 and SQS limits as named constants, and the validators every backend applies.

Each backend calls these same functions, so a key, metadata map, batch or timeout that AWS would
refuse is refused by the embedded backend too, with the same error: a bug cannot pass locally and
fail on AWS.

User metadata is also *encoded* here for S3: S3 lower-cases metadata names, trims values and
refuses non-ASCII, so names and values that would not survive are written in a reversible form
(values as RFC 2047 ``=?UTF-8?B?...?=``, as S3 itself returns non-ASCII metadata; names as
``b32.<base32>``). The 2 KB limit is measured on that encoded form, the bytes S3 actually counts,
by every backend.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping, Sequence

from .errors import ConfigError, InvalidKey, MetadataError, PayloadTooLarge

MAX_KEY_BYTES = 1024
"""S3's longest object key, in UTF-8 bytes."""

MAX_METADATA_BYTES = 2048
"""S3's user-defined metadata limit: the UTF-8 bytes of all names and values together."""

MAX_BATCH = 10
"""SQS entries per SendMessageBatch / DeleteMessageBatch and messages per ReceiveMessage."""

MAX_WAIT_S = 20
"""SQS's longest long-poll wait, seconds."""

MAX_VISIBILITY_S = 12 * 60 * 60
"""SQS's longest visibility timeout, seconds."""

MAX_DELAY_S = 900
"""SQS's longest message delay, seconds."""

MAX_MESSAGE_BYTES = 256 * 1024
"""SQS's default MaximumMessageSize for a queue, bytes (body plus attributes)."""

MAX_QUEUE_NAME = 80
"""SQS's longest queue name."""

MIN_RETENTION_S, MAX_RETENTION_S = 60, 14 * 24 * 3600
"""SQS's shortest and longest MessageRetentionPeriod, seconds."""

DEAD_LETTER_RETENTION_S = MAX_RETENTION_S
"""How long a dead-letter queue keeps messages: as long as SQS allows. A standard queue's message
keeps its original enqueue time when it is dead-lettered, so a dead-letter queue must keep
messages longer than its source queues or dead letters expire before anyone looks at them."""

SSE_MODES = ("AES256", "aws:kms")
"""Server-side encryption modes remotejob asks S3 for (SSE-S3 and SSE-KMS)."""

_QUEUE_NAME = re.compile(r"[A-Za-z0-9_-]+")
_SAFE_META_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_ENCODED_NAME_PREFIX = "b32."
_ENCODED_VALUE = re.compile(r"=\?UTF-8\?B\?([A-Za-z0-9+/=]*)\?=")


def validate_key(key: object) -> str:
    """Check that ``key`` is an object key both S3 and the embedded store can hold.

    Raises:
        InvalidKey: empty, not a str, over 1,024 UTF-8 bytes, absolute, with a ``.`` or ``..``
            segment, with NUL, or not encodable as UTF-8.
    """
    if (type(key) is str and key.isascii() and 0 < len(key) <= MAX_KEY_BYTES and "." not in key
            and "\x00" not in key and key[0] != "/"):
        return key  # the common case (ASCII, no dot): none of the checks below can refuse it
    if not isinstance(key, str):
        raise InvalidKey(f"object key must be a str, got {type(key).__name__}")
    if not key:
        raise InvalidKey("object key is empty: give a non-empty key such as 'cat.jpg'")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidKey(f"object key {key!r} is not valid Unicode text") from exc
    if size > MAX_KEY_BYTES:
        raise InvalidKey(
            f"object key is {size} bytes; S3 allows at most {MAX_KEY_BYTES} (UTF-8): shorten it"
        )
    if "\x00" in key:
        raise InvalidKey(f"object key {key!r} contains NUL: remove it")
    if key.startswith("/"):
        raise InvalidKey(f"object key {key!r} is absolute: drop the leading '/'")
    if any(part in (".", "..") for part in key.split("/")):
        raise InvalidKey(f"object key {key!r} has a '.' or '..' segment: use a plain path")
    return key


def validate_queue_name(name: object) -> str:
    """Check an SQS queue name: 1-80 characters of letters, digits, ``-`` and ``_``.

    Raises:
        ConfigError: the name is not a valid SQS queue name.
    """
    if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
        raise ConfigError(
            f"queue name {name!r} is invalid: use letters, digits, '-' and '_' only"
        )
    if len(name) > MAX_QUEUE_NAME:
        raise ConfigError(
            f"queue name {name!r} is {len(name)} characters; SQS allows {MAX_QUEUE_NAME}: "
            "choose a shorter job system name"
        )
    return name


def _encode_name(name: str) -> str:
    if _SAFE_META_NAME.fullmatch(name):
        return name
    encoded = base64.b32encode(name.encode("utf-8")).decode("ascii").rstrip("=").lower()
    return _ENCODED_NAME_PREFIX + encoded


def _decode_name(name: str) -> str:
    if not name.startswith(_ENCODED_NAME_PREFIX):
        return name
    body = name[len(_ENCODED_NAME_PREFIX) :].upper()
    body += "=" * (-len(body) % 8)
    try:
        return base64.b32decode(body).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return name


def _value_is_safe(value: str) -> bool:
    return (
        bool(value)
        and value.isascii()
        and value.isprintable()
        and value == value.strip()
        and not value.startswith("=?")
    )


def _encode_value(value: str) -> str:
    if _value_is_safe(value):
        return value
    return "=?UTF-8?B?" + base64.b64encode(value.encode("utf-8")).decode("ascii") + "?="


def _decode_value(value: str) -> str:
    match = _ENCODED_VALUE.fullmatch(value)
    if not match:
        return value
    try:
        return base64.b64decode(match.group(1), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return value


def validate_metadata(metadata: Mapping[str, object]) -> dict[str, str]:
    """Check user metadata and return it as a plain ``dict[str, str]``.

    Names and values must be str; the encoded size (see the module docstring) must fit S3's 2 KB.

    Raises:
        MetadataError: naming the field that is not text, or the one that crosses the limit.
    """
    checked: dict[str, str] = {}
    total = 0
    for name, value in metadata.items():
        if not isinstance(name, str) or not name:
            raise MetadataError(f"metadata name {name!r} must be a non-empty str")
        if not isinstance(value, str):
            raise MetadataError(
                f"metadata field {name!r} is a {type(value).__name__}; values must be str: "
                f"convert it, e.g. str({value!r})"
            )
        try:
            total += len(_encode_name(name)) + len(_encode_value(value))
        except UnicodeEncodeError as exc:
            raise MetadataError(f"metadata field {name!r} is not valid Unicode text") from exc
        if total > MAX_METADATA_BYTES:
            raise MetadataError(
                f"metadata field {name!r} takes the metadata to {total} bytes; S3 allows "
                f"{MAX_METADATA_BYTES} in all: shorten it or put large values in the body"
            )
        checked[name] = value
    return checked


def encode_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Return metadata in a form that survives S3 headers exactly (validate it first)."""
    return {_encode_name(k): _encode_value(v) for k, v in metadata.items()}


def decode_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    """Invert :func:`encode_metadata` on the metadata S3 returns."""
    return {_decode_name(k): _decode_value(v) for k, v in metadata.items()}


def validate_batch(count: int, what: str = "batch") -> None:
    """Check an SQS batch size (1-10 entries).

    Raises:
        PayloadTooLarge: more than 10 entries.
        ValueError: no entries.
    """
    if count < 1:
        raise ValueError(f"{what} is empty: give at least one entry")
    if count > MAX_BATCH:
        raise PayloadTooLarge(f"{what} has {count} entries; SQS allows {MAX_BATCH}: split it")


def send_batches(bodies: Sequence[str]) -> list[list[int]]:
    """Indices of ``bodies`` grouped into SendMessageBatch requests: at most ten entries and
    ``MAX_MESSAGE_BYTES`` of bodies each, in order."""
    return group([len(body.encode("utf-8")) for body in bodies], MAX_BATCH, MAX_MESSAGE_BYTES)


def group(sizes: Sequence[int], max_entries: int, max_bytes: int) -> list[list[int]]:
    """Indices of entries of ``sizes`` bytes grouped in order: at most ``max_entries`` entries and
    ``max_bytes`` each (an entry larger than that alone in its group)."""
    groups: list[list[int]] = []
    total = 0
    for index, size in enumerate(sizes):
        if not groups or len(groups[-1]) >= max_entries or total + size > max_bytes:
            groups.append([])
            total = 0
        groups[-1].append(index)
        total += size
    return groups


def validate_wait(seconds: float) -> float:
    """Check a long-poll wait (0-20 s).

    Raises:
        ValueError: out of range.
    """
    if not 0 <= seconds <= MAX_WAIT_S:
        raise ValueError(f"wait time {seconds} s is outside SQS's 0-{MAX_WAIT_S} s")
    return seconds


def validate_visibility(seconds: float) -> float:
    """Check a visibility timeout (0 s to 12 h).

    Raises:
        ValueError: out of range.
    """
    if not 0 <= seconds <= MAX_VISIBILITY_S:
        raise ValueError(
            f"visibility timeout {seconds} s is outside SQS's 0-{MAX_VISIBILITY_S} s"
        )
    return seconds


def validate_delay(seconds: float) -> float:
    """Check a message delay (0-900 s).

    Raises:
        ValueError: out of range.
    """
    if not 0 <= seconds <= MAX_DELAY_S:
        raise ValueError(f"delay {seconds} s is outside SQS's 0-{MAX_DELAY_S} s")
    return seconds


def validate_message_body(body: object, max_bytes: int = MAX_MESSAGE_BYTES) -> str:
    """Check a message body: text SQS accepts, within the queue's maximum size.

    Raises:
        PayloadTooLarge: over ``max_bytes`` UTF-8 bytes.
        ValueError: not a str, empty, or with characters SQS refuses.
    """
    if not isinstance(body, str) or not body:
        raise ValueError("message body must be a non-empty str")
    size = len(body.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise PayloadTooLarge(
            f"message body is {size} bytes; the queue allows {max_bytes}: store large data "
            "as an object and send its key"
        )
    if _SQS_FORBIDDEN.search(body):
        raise ValueError("message body has characters SQS does not accept (see the SQS docs)")
    return body


# SQS allows #x9 | #xA | #xD | #x20 to #xD7FF | #xE000 to #xFFFD | #x10000 to #x10FFFF.
_SQS_FORBIDDEN = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def validate_sse(sse: str | None, kms_key_id: str | None) -> tuple[str | None, str | None]:
    """Check a server-side encryption choice: ``None``, ``"AES256"`` or ``"aws:kms"`` (with an
    optional KMS key id, ARN or ``alias/...``). Returns ``(sse, kms_key_id)``, normalised.

    Raises:
        ConfigError: an unknown mode, or a KMS key without ``aws:kms``.
    """
    mode = sse.strip() if isinstance(sse, str) else sse
    key = kms_key_id.strip() if isinstance(kms_key_id, str) else kms_key_id
    if mode is not None and not isinstance(mode, str):
        raise ConfigError(f"sse must be a string, got {type(mode).__name__}")
    if mode:
        canonical = {m.lower(): m for m in SSE_MODES}.get(mode.lower())
        if canonical is None:
            raise ConfigError(
                f"unknown server-side encryption {mode!r} (REMOTEJOB_SSE / sse=): use AES256 "
                "(S3-managed keys) or aws:kms (KMS, with REMOTEJOB_KMS_KEY_ID for your own key)"
            )
        mode = canonical
    else:
        mode = None
    if key is not None and not isinstance(key, str):
        raise ConfigError(f"kms_key_id must be a string, got {type(key).__name__}")
    if key and mode != "aws:kms":
        raise ConfigError(
            "a KMS key (REMOTEJOB_KMS_KEY_ID / kms_key_id=) needs server-side encryption aws:kms: "
            "set REMOTEJOB_SSE=aws:kms (or sse='aws:kms')"
        )
    if key and (len(key) > 2048 or any(c.isspace() for c in key)):
        raise ConfigError("the KMS key id is not a key id, key ARN or alias/NAME: check REMOTEJOB_KMS_KEY_ID")
    return mode, key or None
