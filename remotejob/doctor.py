"""``remotejob doctor``: check how a job system is deployed, and say what to fix.

Each check is a plain function returning :class:`Check` results (``ok``, ``warn`` or ``fail``,
what was found, and the fix as a command or setting). :func:`run` runs every check that applies
to a job system's backends, reading only: it never creates or changes anything.

On AWS: the bucket's public access block and default encryption, each queue's encryption at
rest, each status queue's redrive policy to ``<name>-dead``, the dead-letter queue keeping
messages longer than every source queue, and TLS to the endpoints. Embedded: the folders and the
queue database are not world-writable.
"""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import urlsplit

from . import keys
from .errors import BackendUnavailable, NotFound
from .limits import DEAD_LETTER_RETENTION_S

if TYPE_CHECKING:
    from .backends.aws import S3Store, SqsQueues
    from .queue import Queue

logger = logging.getLogger(__name__)

Level = Literal["ok", "warn", "fail"]
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
PUBLIC_ACCESS_SETTINGS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")


@dataclass(frozen=True)
class Check:
    """One finding: ``level`` is ``ok``, ``warn`` or ``fail``; ``fix`` says what to do."""

    check: str
    """What was checked, e.g. ``public access block``."""
    subject: str
    """Where, e.g. ``s3://bucket`` or ``queue jobs-pending`` (never a secret)."""
    level: Level
    message: str
    fix: str | None = None

    def line(self) -> str:
        """One line for a terminal: ``ok    check (subject): message. Fix: ...``."""
        label = "FAIL" if self.level == "fail" else self.level
        fix = f". Fix: {self.fix}" if self.fix and self.level != "ok" else ""
        return f"{label:<4}  {self.check} ({self.subject}): {self.message}{fix}"

    def doc(self) -> dict[str, Any]:
        """The check as a JSON-ready mapping."""
        return asdict(self)


def failed(checks: Iterable[Check]) -> bool:
    """Whether any check failed."""
    return any(check.level == "fail" for check in checks)


def exit_code(checks: Iterable[Check]) -> int:
    """0 if no check failed, else 1."""
    return 1 if failed(checks) else 0


def run(queue: Queue) -> list[Check]:
    """Every check that applies to ``queue``'s backends, in a stable order.

    Raises:
        BackendUnavailable: an endpoint cannot be reached or rejects the credentials outright.
    """
    from .backends.aws import S3Store, SqsQueues
    from .backends.local import LocalStore, SqliteQueues

    store, queues = queue.object_store, queue.message_queue
    checks: list[Check] = []
    if isinstance(store, S3Store):
        checks.append(check_endpoint("S3", store.endpoint()))
        try:
            exists = store.exists()
        except BackendUnavailable as exc:  # HeadBucket needs s3:ListBucket: try the settings anyway
            logger.debug("could not check bucket %s: %s", store.bucket, exc)
            exists = True
        if not exists:
            checks.append(Check("bucket", f"s3://{store.bucket}", "fail", "the bucket does not exist",
                                "run `remotejob init` (with the admin role)"))
        else:
            checks.append(check_public_access_block(store))
            checks.append(check_bucket_encryption(store))
    elif isinstance(store, LocalStore):
        checks.append(check_folder(store.root, "store folder"))
    if isinstance(queues, SqsQueues):
        checks.append(check_endpoint("SQS", queues.endpoint()))
        checks += check_queues(queues, queue.name, queue.statuses, queue.max_attempts)
    elif isinstance(queues, SqliteQueues):
        checks.append(check_folder(queues.path.parent, "queue folder"))
        checks.append(check_folder(queues.path, "queue database"))
    if not isinstance(store, S3Store) and not isinstance(queues, SqsQueues):
        if os.environ.get("REMOTEJOB_SSE"):
            checks.append(Check("encryption", "embedded", "warn",
                                "REMOTEJOB_SSE has no effect on the embedded backend",
                                "encrypt the disk the folder lives on, or unset REMOTEJOB_SSE"))
    return checks


# -- endpoints ---------------------------------------------------------------------------------


def check_endpoint(service: str, url: str) -> Check:
    """TLS to an endpoint: https is ok; plain http only to this machine (a warning)."""
    env = f"AWS_ENDPOINT_URL_{service.upper()}"
    parts = urlsplit(url)
    subject = f"{service} endpoint"
    if parts.scheme == "https":
        return Check("TLS", subject, "ok", f"{url} uses https")
    if not parts.scheme:  # boto3's own default endpoint, which is https
        return Check("TLS", subject, "ok", f"{url} (https)")
    if parts.scheme == "http" and (parts.hostname or "") in LOCAL_HOSTS:
        return Check("TLS", subject, "warn", f"{url} is plain http, to this machine only (a test server?)",
                     f"use an https:// endpoint in {env} outside tests")
    return Check("TLS", subject, "fail",
                 f"{url} is not https: requests, job data and credentials' signatures cross the network "
                 "unencrypted", f"use an https:// endpoint in {env} (or endpoint_url=)")


# -- S3 ----------------------------------------------------------------------------------------


def check_public_access_block(store: S3Store) -> Check:
    """The bucket blocks public access with all four settings."""
    from .backends._aws import NotSupported

    subject = f"s3://{store.bucket}"
    fix = (f"aws s3api put-public-access-block --bucket {store.bucket} --public-access-block-configuration "
           "BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true")
    try:
        settings = store.public_access_block()
    except NotSupported:
        return Check("public access block", subject, "warn",
                     "this S3-compatible store does not support public access blocks (NotImplemented)",
                     "make sure the store never serves the bucket anonymously (no public ACLs, "
                     "policies or anonymous identity)")
    except BackendUnavailable as exc:
        return _unchecked("public access block", subject, exc, "s3:GetBucketPublicAccessBlock")
    if settings is None:
        return Check("public access block", subject, "fail", "the bucket has no public access block", fix)
    off = [name for name in PUBLIC_ACCESS_SETTINGS if not settings.get(name)]
    if off:
        return Check("public access block", subject, "fail", f"{', '.join(off)} off", fix)
    return Check("public access block", subject, "ok", "all four settings on")


def check_bucket_encryption(store: S3Store) -> Check:
    """The bucket encrypts new objects by default, as ``REMOTEJOB_SSE`` asks if set."""
    from .backends._aws import NotSupported

    subject = f"s3://{store.bucket}"
    wanted = store.sse or "AES256"
    key = f',"KMSMasterKeyID":"{store.kms_key_id}"' if store.kms_key_id else ""
    rule = f'{{"Rules":[{{"ApplyServerSideEncryptionByDefault":{{"SSEAlgorithm":"{wanted}"{key}}}}}]}}'
    fix = (f"aws s3api put-bucket-encryption --bucket {store.bucket} "
           f"--server-side-encryption-configuration '{rule}'")
    try:
        found = store.default_encryption()
    except NotSupported:
        found, unsupported = None, True
    except BackendUnavailable as exc:
        return _unchecked("default encryption", subject, exc, "s3:GetEncryptionConfiguration")
    else:
        unsupported = False
    if found is None:
        where = "this store does not support default encryption" if unsupported else "no default encryption"
        if store.sse is not None:
            return Check("default encryption", subject, "warn",
                         f"{where}; remotejob writes its objects with {store.sse} (REMOTEJOB_SSE)",
                         fix + " (other writers' objects are not encrypted)")
        return Check("default encryption", subject, "fail",
                     f"{where}, and REMOTEJOB_SSE is not set: objects are stored unencrypted",
                     f"{fix}, or set REMOTEJOB_SSE=AES256 (on an S3-compatible store, first enable "
                     "server-side encryption there)")
    algorithm = found.get("SSEAlgorithm", "")
    described = algorithm + (f" with key {found['KMSMasterKeyID']}" if found.get("KMSMasterKeyID") else "")
    if store.sse == "aws:kms" and algorithm not in ("aws:kms", "aws:kms:dsse"):
        return Check("default encryption", subject, "warn",
                     f"the bucket's default is {described}, not aws:kms as REMOTEJOB_SSE asks (remotejob's "
                     "own objects are written with aws:kms)", fix)
    if store.kms_key_id and found.get("KMSMasterKeyID") not in (None, store.kms_key_id):
        return Check("default encryption", subject, "warn",
                     f"the bucket's default is {described}, not REMOTEJOB_KMS_KEY_ID's key", fix)
    return Check("default encryption", subject, "ok", described)


# -- SQS ---------------------------------------------------------------------------------------


def check_queues(
    queues: SqsQueues, name: str, statuses: Sequence[str], max_attempts: int = 5
) -> list[Check]:
    """Encryption of every queue, the status queues' (and their priority levels' queues', where
    they exist) redrive policies and the dead-letter queue's retention; a missing queue fails
    with the fix (``remotejob init``)."""
    dead = keys.dead_letter_name(name)
    sources = [keys.queue_name(name, status) for status in statuses]
    found: dict[str, dict[str, str]] = {}
    checks: list[Check] = []
    for queue in [*sources, dead]:
        try:
            found[queue] = queues.attributes(queue)
        except NotFound:
            checks.append(Check("queue", f"queue {queue}", "fail", "the queue does not exist",
                                "run `remotejob init` (with the admin role)"))
        except BackendUnavailable as exc:
            checks.append(_unchecked("queue", f"queue {queue}", exc, "sqs:GetQueueAttributes"))
    for level in (keys.queue_name(name, status, p) for status in statuses for p in ("high", "low")):
        try:  # a priority level's queue exists once a job of that level was submitted
            found[level] = queues.attributes(level)
            sources.append(level)
        except (NotFound, BackendUnavailable):
            pass
    for queue, attrs in found.items():
        checks.append(check_queue_encryption(queue, attrs, queues.sse, queues.kms_key_id))
    dead_attrs = found.get(dead)
    for queue in sources:
        if queue in found:
            checks.append(check_redrive(queue, found[queue], dead, dead_attrs, max_attempts))
    if dead_attrs is not None:
        checks.append(check_dead_retention(dead, dead_attrs, {q: found[q] for q in sources if q in found}))
    return checks


def _set_attributes(queue: str, attributes: str) -> str:
    return f"aws sqs set-queue-attributes --queue-url $(aws sqs get-queue-url --queue-name {queue} " \
           f"--query QueueUrl --output text) --attributes {attributes}"


def check_queue_encryption(
    queue: str, attrs: Mapping[str, str], sse: str | None = None, kms_key_id: str | None = None
) -> Check:
    """The queue is encrypted at rest: SSE-SQS, or SSE-KMS (the configured key, if one is)."""
    subject = f"queue {queue}"
    key = attrs.get("KmsMasterKeyId")
    if key:
        if kms_key_id and key != kms_key_id:
            return Check("queue encryption", subject, "warn",
                         f"SSE-KMS with key {key}, not REMOTEJOB_KMS_KEY_ID's key",
                         _set_attributes(queue, f"KmsMasterKeyId={kms_key_id}"))
        return Check("queue encryption", subject, "ok", f"SSE-KMS with key {key}")
    if str(attrs.get("SqsManagedSseEnabled", "")).lower() == "true":
        if sse == "aws:kms":
            return Check("queue encryption", subject, "warn",
                         "SSE-SQS (SQS-managed keys), not KMS as REMOTEJOB_SSE=aws:kms asks",
                         _set_attributes(queue, f"KmsMasterKeyId={kms_key_id or 'alias/aws/sqs'}"))
        return Check("queue encryption", subject, "ok", "SSE-SQS (SQS-managed keys)")
    return Check("queue encryption", subject, "fail", "messages are stored unencrypted",
                 _set_attributes(queue, "SqsManagedSseEnabled=true"))


def check_redrive(
    queue: str, attrs: Mapping[str, str], dead: str, dead_attrs: Mapping[str, str] | None,
    max_attempts: int = 5,
) -> Check:
    """A status queue moves messages received too often to ``dead`` (its redrive policy)."""
    subject = f"queue {queue}"
    dead_arn = (dead_attrs or {}).get("QueueArn") or f"<the ARN of {dead}>"
    fix = _set_attributes(queue, "RedrivePolicy=" + json.dumps(
        json.dumps({"deadLetterTargetArn": dead_arn, "maxReceiveCount": max_attempts})))
    raw = attrs.get("RedrivePolicy")
    if not raw:
        return Check("redrive policy", subject, "fail",
                     f"no redrive policy: a job that kills its worker is delivered forever, never to {dead}",
                     fix)
    try:
        redrive = json.loads(raw)
        target = str(redrive.get("deadLetterTargetArn", ""))
        count = int(redrive.get("maxReceiveCount", 0))
    except (ValueError, TypeError, AttributeError):
        return Check("redrive policy", subject, "fail", "the redrive policy is not valid JSON", fix)
    if target.rsplit(":", 1)[-1] != dead:
        return Check("redrive policy", subject, "fail",
                     f"dead letters go to {target.rsplit(':', 1)[-1] or 'nowhere'}, not {dead}", fix)
    if count < 1:
        return Check("redrive policy", subject, "fail", "the redrive policy has no maxReceiveCount", fix)
    return Check("redrive policy", subject, "ok", f"to {dead} after {count} receives")


def check_dead_retention(
    dead: str, dead_attrs: Mapping[str, str], sources: Mapping[str, Mapping[str, str]]
) -> Check:
    """The dead-letter queue keeps messages longer than every source queue: a dead-lettered
    message keeps its original enqueue time, so with an equal or shorter retention it expires
    early (AWS's advice)."""
    subject = f"queue {dead}"
    kept = _int(dead_attrs.get("MessageRetentionPeriod"))
    longest = max(((_int(a.get("MessageRetentionPeriod")), q) for q, a in sources.items()), default=(0, ""))
    if kept > longest[0]:
        return Check("dead-letter retention", subject, "ok",
                     f"{_days(kept)}, longer than every source queue ({_days(longest[0])} at most)")
    if longest[0] >= DEAD_LETTER_RETENTION_S:
        fix = (f"lower the source queues' MessageRetentionPeriod below {DEAD_LETTER_RETENTION_S} "
               "(14 days), e.g. " + _set_attributes(longest[1], "MessageRetentionPeriod=345600"))
    else:
        fix = _set_attributes(dead, f"MessageRetentionPeriod={DEAD_LETTER_RETENTION_S}")
    return Check("dead-letter retention", subject, "fail",
                 f"dead letters are kept {_days(kept)}, not longer than {longest[1]}'s {_days(longest[0])}: "
                 "they keep their first enqueue time, so they expire before anyone can look at them", fix)


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def _days(seconds: int) -> str:
    days = seconds / 86400
    return f"{days:g} days" if seconds >= 86400 else f"{seconds} s"


# -- embedded ----------------------------------------------------------------------------------


def check_folder(path: Path, what: str) -> Check:
    """A folder or file of the embedded backend is not writable by every user of the machine."""
    subject = f"{what} {path}"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return Check("permissions", subject, "warn", "does not exist yet",
                     "run `remotejob init` to create it with your umask")
    except OSError as exc:
        return Check("permissions", subject, "warn", f"cannot check: {exc.strerror or exc}")
    if mode & stat.S_IWOTH:
        sticky = " (sticky, but every user may still add files)" if mode & stat.S_ISVTX else ""
        return Check("permissions", subject, "fail",
                     f"writable by every user ({stat.filemode(mode)}){sticky}: anyone on this machine "
                     "can add or replace jobs and results", f"chmod o-w {path}")
    return Check("permissions", subject, "ok", f"not world-writable ({stat.filemode(mode)})")


def _unchecked(check: str, subject: str, exc: BackendUnavailable, permission: str) -> Check:
    return Check(check, subject, "warn", f"cannot check: {exc}",
                 f"run `remotejob doctor` with the admin role (it needs {permission})")
