"""Effectively-once completion: stage, claim, publish.

Several attempts of one job can run at once (a worker that stalled past the visibility timeout,
a duplicate delivery); exactly one outcome may stand, and no published output may be
overwritten. Each attempt therefore:

1. **stages** its assets where no other attempt writes: small ones inside its record, larger ones
   under ``jobs/<id>/attempts/<attempt>/`` (see :mod:`remotejob.keys`);
2. **claims** the outcome with a create-once write of its record (``If-None-Match: *`` on S3). The
   first claim wins. A claim whose reply was lost and whose retry then finds the key taken reads
   the record back: if it names this attempt, it won;
3. **publishes**, if it won, the assets to ``out/<id>/<asset>`` (a server-side copy from staging),
   removes its staging and rewrites its record marked ``published``: until then ``status()``
   reports the job ``inprogress``, so whoever sees it completed can read its outputs. A record
   with nothing to publish is marked at once and costs no second write. A loser removes its
   staging and publishes nothing of its own.

Publishing is repeatable: whoever finds a record whose assets are not all published (the winner
crashed after its claim) finishes the job from the record, never by running the handler again.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from . import keys
from .backends.base import ObjectStore
from .bodies import Entry, open_body
from .errors import AlreadyExists, NotFound

logger = logging.getLogger(__name__)

INLINE_MAX = 64 * 1024
"""Total bytes of an attempt's assets that travel inside its record instead of being staged."""

_RECORD_TYPE = "application/json"


def encode_record(doc: Mapping[str, Any]) -> bytes:
    """Serialise a status record."""
    return json.dumps({"v": 1, **doc}, ensure_ascii=False, separators=(",", ":")).encode()


def stage(store: ObjectStore, job_id: str, attempt_id: str, assets: Sequence[Entry]) -> dict[str, Any]:
    """Put an attempt's assets where only this attempt writes; return the record's ``outputs``.

    Each output is ``{"size", "sha256", "content_type", "meta"}`` plus either ``"inline"`` (the
    bytes, base64) or ``"staged": true``.
    """
    outputs: dict[str, Any] = {}
    budget = INLINE_MAX
    for entry in assets:
        name = str(entry.key)
        with open_body(entry.body, f"asset {name!r}") as prepared:
            doc: dict[str, Any] = {"content_type": entry.content_type, "meta": entry.metadata}
            if isinstance(prepared.body, bytes) and len(prepared.body) <= budget:
                budget -= len(prepared.body)
                doc["inline"] = base64.b64encode(prepared.body).decode("ascii")
            else:
                store.put(
                    keys.staging_key(job_id, attempt_id, name),
                    prepared.body,
                    entry.metadata,
                    entry.content_type,
                )
                doc["staged"] = True
            doc["size"], doc["sha256"] = prepared.size, prepared.sha256
        outputs[name] = doc
    return outputs


def claim(store: ObjectStore, key: str, record: Mapping[str, Any]) -> dict[str, Any] | None:
    """Create the record at ``key`` once; return None if this attempt won, else the winner's record."""
    try:
        store.put(key, encode_record(record), content_type=_RECORD_TYPE, if_absent=True)
        return None
    except AlreadyExists:
        existing = read_record(store, key)
        if existing is None:  # removed (redriven) in between: try once more
            return claim(store, key, record)
        if existing.get("attempt_id") == record.get("attempt_id"):
            return None  # our own write, whose reply was lost
        return existing


def read_record(store: ObjectStore, key: str) -> dict[str, Any] | None:
    """The record at ``key``, or None if there is none."""
    try:
        with store.get(key) as obj:
            doc = json.loads(obj.read())
    except NotFound:
        return None
    return doc if isinstance(doc, dict) else None


def publish(
    store: ObjectStore, job_id: str, key: str, record: Mapping[str, Any], *, check: bool, sweep: bool = False
) -> bool:
    """Write the record's outputs to ``out/<job-id>/``, remove the staging, then mark the record
    at ``key`` published, so a reader that sees the outcome can read its outputs.

    With ``check``, outputs already published are left alone (finishing a crashed winner's
    work); with ``sweep``, what other attempts left staged (they were killed before their claim)
    is removed too. Returns True if any output had to be written.
    """
    attempt_id = str(record.get("attempt_id", ""))
    wrote = False
    for name, doc in dict(record.get("outputs") or {}).items():
        if doc.get("stage") not in (None, record.get("status")):
            continue  # an earlier pipeline stage's output, published by that stage
        target = keys.output_key(job_id, name)
        if check and _exists(store, target):
            continue
        if "inline" in doc:
            store.put(target, base64.b64decode(doc["inline"]), doc.get("meta") or {}, doc["content_type"])
        else:
            try:
                store.copy(keys.staging_key(job_id, attempt_id, name), target)
            except NotFound:
                if not check:
                    raise
                logger.warning("job %s: staged output %r is gone; it cannot be published", job_id, name)
                continue
        wrote = True
    discard(store, job_id, attempt_id, record.get("outputs") or {})
    if sweep:
        for left in store.list(keys.staging_prefix(job_id, "")):
            store.delete(left.key)
    if record.get("published") is False:
        store.put(key, encode_record({**record, "published": True}), content_type=_RECORD_TYPE)
    return wrote


def discard(store: ObjectStore, job_id: str, attempt_id: str, outputs: Mapping[str, Any]) -> None:
    """Remove what an attempt staged."""
    for name, doc in outputs.items():
        if doc.get("staged"):
            store.delete(keys.staging_key(job_id, attempt_id, name))


def public_outputs(outputs: Mapping[str, Any]) -> dict[str, Any]:
    """The outputs as a record lists them for readers (and the next pipeline stage)."""
    return {
        name: {k: doc[k] for k in ("size", "sha256", "content_type", "stage") if k in doc}
        for name, doc in outputs.items()
    }


def _exists(store: ObjectStore, key: str) -> bool:
    try:
        store.head(key)
    except NotFound:
        return False
    return True
