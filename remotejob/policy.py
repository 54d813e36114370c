"""Least-privilege IAM policies for the roles of a job system on AWS.

``remotejob iam-policy --role ROLE`` prints one. Each is scoped to the job system's own bucket
prefix and queues (see :mod:`remotejob.keys` for the layout) and grants what that role's code
actually calls, no more:

- **submitter** (``submit``, ``trigger``, ``status``, ``wait``, ``fetch``, ``ls``, ``cancel``,
  ``retry``): writes inputs (``in/``), batch manifests (``batches/``) and ``jobs/<id>/queued``
  records, and removes them again when a send fails; reads records, manifests and outputs; sends
  jobs to the status queues (not to ``completed``, which only workers write: its messages are
  completion notices) and reads and deletes those notices. To cancel it creates a job's
  ``final`` record only where there is none (S3's ``s3:if-none-match`` condition: it can never
  overwrite an outcome) and writes the cancellation log (``cancels/``); to retry a failed or
  cancelled job it writes ``history`` and ``retry-<n>`` records and removes the job's ``final``,
  ``progress`` and ``start-*`` records (S3 cannot tell a failed record from a completed one, so
  drop the ``RetryJobs`` and ``ReopenRetriedJobs`` statements where only admins may retry).
  It appends to the journal (``journal/``: which jobs it wrote records of, for dashboards).
  It parks jobs due later than 15 minutes (``timers/``), writes and removes schedules
  (``schedules/``), and claims dedup keys create-once (``dedup/``).
- **worker** (``remotejob worker``, :class:`~remotejob.Worker`): takes, extends, releases and
  deletes messages of the status queues and sends to them (the next pipeline stage, completion
  notices); sends to the dead-letter queue, and (while idle) receives from it to settle jobs the
  queue dead-lettered by itself, replacing such a message with one wrapped with the reason; reads
  inputs, manifests, records
  and outputs; writes only under ``jobs/`` (records, staged assets) and ``out/`` (published
  assets, copied from staging), and a periodic job's tick's input (``in/<name>@<tick>``, copied
  from the schedule's); deletes only staged assets, progress records and the parked jobs' timers
  it sent (``timers/``); lists and reads ``timers/`` and ``schedules/``; lists the
  cancellation log (``cancels/``) and removes its entries older than 15 days; appends to the
  journal (``journal/``) and removes its entries older than a day. It cannot purge or delete
  queues, change their attributes, or write inputs.
- **dashboard** (``remotejob ui``): reads and lists records, manifests, the journal (and prunes
  it), inputs' sizes and outputs (downloads); reads the queues' depths; lists the dead-letter
  queue (settling jobs the queue dead-lettered by itself, as a listing does). The statements
  whose ``Sid`` starts with ``Act`` are what its actions need: cancel, retry, redrive and purge
  (the status and dead-letter queues); drop them for a ``--read-only`` dashboard.
- **scaler** (``remotejob metrics --cloudwatch``): reads the depths of the status queues (and
  their priority levels'), puts metrics in one CloudWatch namespace (``cloudwatch:namespace``
  condition: PutMetricData has no resource to scope) and reads ECS services' task counts
  (``ecs:DescribeServices`` on one service, or the account's). Nothing in S3, no message.
- **admin** (``init``, ``doctor``, ``stats``, ``dead``, ``purge``): everything under the prefix
  and on the queues (including ``<name>-probe-*`` for ``stats --probe``), and the bucket's
  settings: creation, public access block, default encryption.

Notes on the choices:

- A status's queues include its priority levels' (``<name>-<status>-high`` and ``-low``). The
  first submit (or dashboard retry) of a level creates its queue: ``sqs:CreateQueue`` on exactly
  those names, and ``sqs:GetQueueAttributes`` on the dead-letter queue to name it in the new
  queue's redrive policy. Workers read the levels' depths to find them, but create no queue:
  a later pipeline stage's level queue must exist before a job of that level is handed on to it.

- SQS authorises ``SendMessageBatch``, ``DeleteMessageBatch`` and
  ``ChangeMessageVisibilityBatch`` as their single-message actions. The policies name them as
  ``sqs:SendMessage*`` etc.: on AWS that matches exactly the one action; tools that check the
  batch name itself (moto) match it too.
- ``s3:ListBucket`` is granted with ``StringLikeIfExists`` on ``s3:prefix``: listings are limited
  to the role's prefixes, while requests that carry no prefix still count as allowed. S3 answers
  a read of a missing key with 404 only to callers that may list the bucket (403 otherwise), and
  remotejob relies on telling "not there yet" from "refused"; ``HeadBucket`` also needs it.
- With ``aws:kms`` and a key of your own, the roles may use that key only through S3 and SQS
  (``kms:ViaService``). SSE-S3, SSE-SQS and AWS-managed KMS keys need no KMS permissions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import keys, scaling
from .errors import ConfigError

if TYPE_CHECKING:
    from .queue import Queue

ROLES = ("submitter", "worker", "admin", "dashboard", "scaler")
PRIORITY_LEVELS = ("high", "low")
"""The levels whose jobs wait in queues of their own, ``<name>-<status>-<level>``."""
NOTICES = "completed"
"""The status whose queue carries completion notices (see ``Queue._notice``)."""

_ACCOUNT = re.compile(r"\d{12}")
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d")

_SEND = "sqs:SendMessage*"
_DELETE = "sqs:DeleteMessage*"
_VISIBILITY = "sqs:ChangeMessageVisibility*"


@dataclass(frozen=True)
class Scope:
    """What a policy is scoped to: one job system's bucket prefix and queues."""

    name: str
    statuses: tuple[str, ...]
    bucket: str | None
    """None when the store is not on S3 (then the policy has no S3 statements)."""
    prefix: str
    """The key prefix inside the bucket, ``""`` or ending in ``/``."""
    sqs: bool
    """Whether the queues are on SQS (else the policy has no SQS statements)."""
    region: str = "*"
    account: str = "*"
    sse: str | None = None
    kms_key_id: str | None = None
    legacy: bool = False
    """Legacy mode (the 2014 package's inputs and outputs at the bucket's root) is on."""

    @property
    def partition(self) -> str:
        """The AWS partition of the region (``aws``, ``aws-cn``, ``aws-us-gov``)."""
        if self.region.startswith("cn-"):
            return "aws-cn"
        if self.region.startswith("us-gov-"):
            return "aws-us-gov"
        return "aws"

    def objects(self, *paths: str) -> list[str]:
        """ARNs of object keys under the prefix, e.g. ``objects("in/*")``."""
        return [f"arn:{self.partition}:s3:::{self.bucket}/{self.prefix}{path}" for path in paths]

    def bucket_arn(self) -> str:
        """The bucket's ARN."""
        return f"arn:{self.partition}:s3:::{self.bucket}"

    def queues(self, *names: str) -> list[str]:
        """ARNs of queues (full names, or patterns with ``*``)."""
        return [f"arn:{self.partition}:sqs:{self.region}:{self.account}:{name}" for name in names]

    def status_queues(self, *, but: tuple[str, ...] = ()) -> list[str]:
        """The queue names of the statuses, except ``but``, each with its priority levels'."""
        return [keys.queue_name(self.name, s, level) for s in self.statuses if s not in but
                for level in (None, *PRIORITY_LEVELS)]

    def level_queues(self, *, but: tuple[str, ...] = ()) -> list[str]:
        """The priority levels' queue names of the statuses, except ``but``."""
        return [keys.queue_name(self.name, s, level) for s in self.statuses if s not in but
                for level in PRIORITY_LEVELS]


def scope(
    queue: Queue,
    *,
    region: str | None = None,
    account: str | None = None,
) -> Scope:
    """The :class:`Scope` of a connected job system.

    Args:
        queue: the job system (its store and queues say the bucket, prefix and encryption).
        region: the queues' region; default: what the SQS backend knows (``sqs://REGION``,
            ``AWS_REGION``, the profile), else ``*``.
        account: the 12-digit AWS account id; default ``*`` (any account).

    Raises:
        ConfigError: neither the store nor the queues are on AWS, or an invalid region/account.
    """
    from .backends.aws import S3Store, SqsQueues

    store, queues = queue.object_store, queue.message_queue
    bucket = store.bucket if isinstance(store, S3Store) else None
    prefix = store.prefix if isinstance(store, S3Store) else ""
    on_sqs = isinstance(queues, SqsQueues)
    if bucket is None and not on_sqs:
        raise ConfigError(
            f"{queue.name!r} is not on AWS (store {store.location}, queues {queues.location}): an IAM "
            "policy needs --store s3://BUCKET/prefix and/or --queues sqs:// (or REMOTEJOB_STORE/_QUEUES)"
        )
    if region is None and isinstance(queues, SqsQueues):
        region = queues.region_name()
    region = region or "*"
    account = account or "*"
    if region != "*" and not _REGION.fullmatch(region):
        raise ConfigError(f"{region!r} is not an AWS region name, e.g. us-east-1 (or leave it out: *)")
    if account != "*" and not _ACCOUNT.fullmatch(account):
        raise ConfigError(f"{account!r} is not a 12-digit AWS account id (or leave it out: *)")
    sse = kms = None
    for backend in (store, queues):
        if isinstance(backend, (S3Store, SqsQueues)) and backend.sse is not None:
            sse, kms = backend.sse, backend.kms_key_id
    return Scope(queue.name, tuple(queue.statuses), bucket, prefix, on_sqs, region, account, sse, kms,
                 queue.legacy)


def policy(role: str, where: Scope, *, namespace: str = "remotejob", ecs_service: str | None = None
           ) -> dict[str, Any]:
    """The IAM policy document (``{"Version": ..., "Statement": [...]}``) for ``role``.

    ``namespace`` and ``ecs_service`` (``CLUSTER/SERVICE``; None: any service) scope the
    scaler's CloudWatch and ECS statements.

    Raises:
        ConfigError: an unknown role.
    """
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    if role == "scaler":
        return {"Version": "2012-10-17", "Statement": _scaler(where, namespace, ecs_service)}
    statements: list[dict[str, Any]] = []
    if where.bucket is not None:
        statements += {"submitter": _submitter_s3, "worker": _worker_s3, "admin": _admin_s3,
                       "dashboard": _dashboard_s3}[role](where)
    if where.sqs:
        statements += {"submitter": _submitter_sqs, "worker": _worker_sqs, "admin": _admin_sqs,
                       "dashboard": _dashboard_sqs}[role](where)
    statements += _kms(role, where)
    return {"Version": "2012-10-17", "Statement": statements}


def _allow(sid: str, actions: list[str], resources: list[str], condition: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    statement: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources}
    if condition:
        statement["Condition"] = condition
    return statement


def _list(where: Scope, *prefixes: str) -> dict[str, Any]:
    patterns = [f"{where.prefix}{p}" for p in prefixes]
    return _allow("ListOwnPrefixes", ["s3:ListBucket"], [where.bucket_arn()],
                  {"StringLikeIfExists": {"s3:prefix": patterns}})


# -- S3 ----------------------------------------------------------------------------------------


def _submitter_s3(where: Scope) -> list[dict[str, Any]]:
    written = where.objects("in/*", "batches/*", "jobs/*/queued", "timers/*", "schedules/*")
    return [
        _allow("SubmitInputs", ["s3:PutObject", "s3:AbortMultipartUpload"], written),
        # submit() removes what it stored when sending fails; remove("in", key) removes inputs.
        _allow("TakeBackUnsentJobs", ["s3:DeleteObject"], written),
        _allow("ReadJobs", ["s3:GetObject"],
               where.objects("in/*", "batches/*", "jobs/*", "out/*", "schedules/*", "dedup/*")),
        _list(where, "jobs/*", "batches/*", "schedules/*", "dedup/*"),
        # submit(dedup_key=): a key's next generation is created once; old ones are removed
        _allow("ClaimDedupKeys", ["s3:PutObject"], where.objects("dedup/*"),
               {"Null": {"s3:if-none-match": "false"}}),
        _allow("PruneDedupKeys", ["s3:DeleteObject"], where.objects("dedup/*")),
        # cancel(): create the outcome record only where there is none (If-None-Match: *)
        _allow("CancelJobs", ["s3:PutObject"], where.objects("jobs/*/final", "jobs/*/retry-*"),
               {"Null": {"s3:if-none-match": "false"}}),
        _allow("LogCancels", ["s3:PutObject"], where.objects("cancels/*")),
        _allow("RetryJobs", ["s3:PutObject"], where.objects("jobs/*/history")),
        _allow("ReopenRetriedJobs", ["s3:DeleteObject"],
               where.objects("jobs/*/final", "jobs/*/progress", "jobs/*/start-*")),
        _allow("AppendJournal", ["s3:PutObject"], where.objects("journal/*")),
        *_legacy_submitter(where),
    ]


def _legacy_submitter(where: Scope) -> list[dict[str, Any]]:
    """Legacy mode: inputs at the bucket's root (stored, read back by trigger(), removed when
    unsent), and a Node worker's outputs there (``<id>-<asset>``). IAM cannot leave remotejob's
    own areas out of ``bucket/*``; remotejob refuses keys in them itself."""
    if not where.legacy:
        return []
    return [
        _allow("LegacyInputsAndOutputs", ["s3:PutObject", "s3:GetObject", "s3:DeleteObject",
                                          "s3:AbortMultipartUpload"], where.objects("*")),
    ]


def _worker_s3(where: Scope) -> list[dict[str, Any]]:
    legacy = [
        # a 2014 job's input is anywhere at the root; its outputs go there too, <id>-<asset>,
        # where the id is an SQS message id, a UUID: five hyphens at least, one more than the
        # UUID keys the 2014 package stores inputs under (IAM's "?" would be tighter still, but
        # moto, which the tests enforce policies with, cannot match it)
        _allow("LegacyReadInputs", ["s3:GetObject"], where.objects("*")),
        _allow("LegacyPublishOutputs", ["s3:PutObject", "s3:AbortMultipartUpload"],
               where.objects("*-*-*-*-*-*")),
    ] if where.legacy else []
    return [*legacy,
        # Records (progress, final, handoff, queued for the next stage), staged assets, and
        # published outputs (put, or copied server-side from staging: GetObject + PutObject).
        _allow("RecordOutcomes", ["s3:PutObject", "s3:AbortMultipartUpload"],
               where.objects("jobs/*", "out/*")),
        _allow("ClearStagingAndProgress", ["s3:DeleteObject"],
               where.objects("jobs/*/attempts/*", "jobs/*/progress")),
        _allow("ReadJobs", ["s3:GetObject"],
               where.objects("in/*", "batches/*", "jobs/*", "out/*", "timers/*", "schedules/*")),
        _list(where, "jobs/*", "cancels/*", "journal/*", "timers/*", "schedules/*"),
        # The clock: send parked jobs, then remove their timer; copy a schedule's stored input
        # to each tick's own input (in/<name>@<tick>).
        _allow("DispatchTimers", ["s3:DeleteObject"], where.objects("timers/*")),
        _allow("CopyTickInputs", ["s3:PutObject"], where.objects("in/*@*")),
        _allow("PruneCancelLog", ["s3:DeleteObject"], where.objects("cancels/*")),
        _allow("AppendJournal", ["s3:PutObject"], where.objects("journal/*")),
        _allow("PruneJournal", ["s3:DeleteObject"], where.objects("journal/*")),
    ]


def _dashboard_s3(where: Scope) -> list[dict[str, Any]]:
    return [
        _allow("ReadJobs", ["s3:GetObject"],
               where.objects("in/*", "batches/*", "jobs/*", "out/*", "journal/*")),
        _list(where, "jobs/*", "batches/*", "journal/*"),
        # What it writes is journaled like any writer's; it prunes the journal like workers do.
        _allow("AppendJournal", ["s3:PutObject"], where.objects("journal/*")),
        _allow("PruneJournal", ["s3:DeleteObject"], where.objects("journal/*")),
        # Listing the dead letters settles jobs the queue dead-lettered by itself: their outcome
        # is created only where there is none (If-None-Match: *), their progress removed.
        _allow("SettleDeadLetters", ["s3:PutObject"], where.objects("jobs/*/final"),
               {"Null": {"s3:if-none-match": "false"}}),
        _allow("ClearSettledProgress", ["s3:DeleteObject"], where.objects("jobs/*/progress")),
        # Cancel (the final record, as above, and the log); retry claims its run create-once.
        _allow("ActClaimRetries", ["s3:PutObject"], where.objects("jobs/*/final", "jobs/*/retry-*"),
               {"Null": {"s3:if-none-match": "false"}}),
        _allow("ActLogCancels", ["s3:PutObject"], where.objects("cancels/*")),
        # Retry and redrive: the history, the queued record, and reopening the job.
        _allow("ActRequeueJobs", ["s3:PutObject"], where.objects("jobs/*/history", "jobs/*/queued")),
        _allow("ActReopenJobs", ["s3:DeleteObject"],
               where.objects("jobs/*/final", "jobs/*/progress", "jobs/*/start-*")),
    ]


def _admin_s3(where: Scope) -> list[dict[str, Any]]:
    everything = where.objects("*")
    listing = _list(where, "*")
    if not where.prefix:
        del listing["Condition"]
    return [
        _allow("ManageObjects", ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                                 "s3:AbortMultipartUpload"], everything),
        listing,
        _allow("ManageBucket", [
            "s3:CreateBucket", "s3:GetBucketLocation",
            "s3:PutBucketPublicAccessBlock", "s3:GetBucketPublicAccessBlock",
            "s3:PutEncryptionConfiguration", "s3:GetEncryptionConfiguration",
        ], [where.bucket_arn()]),
    ]


# -- SQS ---------------------------------------------------------------------------------------


def _dead(where: Scope) -> str:
    return keys.dead_letter_name(where.name)


def _submitter_sqs(where: Scope) -> list[dict[str, Any]]:
    statements = [
        _allow("LookUpQueues", ["sqs:GetQueueUrl"], where.queues(*where.status_queues(), _dead(where))),
    ]
    targets = where.status_queues(but=(NOTICES,))
    if targets:
        statements.append(_allow("SendJobs", [_SEND], where.queues(*targets)))
    statements += _create_levels(where, "CreatePriorityQueues")
    if NOTICES in where.statuses:
        statements.append(_allow("ReadCompletionNotices", ["sqs:ReceiveMessage", _DELETE, _VISIBILITY],
                                 where.queues(keys.queue_name(where.name, NOTICES))))
    return statements


def _worker_sqs(where: Scope) -> list[dict[str, Any]]:
    return [
        _allow("LookUpQueues", ["sqs:GetQueueUrl"], where.queues(*where.status_queues(), _dead(where))),
        # Take, heartbeat, retry (visibility), finish (delete); hand on and notify (send).
        _allow("WorkJobs", ["sqs:ReceiveMessage", _DELETE, _VISIBILITY, _SEND],
               where.queues(*where.status_queues())),
        # Dead-letter failed jobs (send); settle jobs the queue moved there by itself (receive,
        # give back, replace with a wrapped copy).
        _allow("DeadLetterJobs", ["sqs:ReceiveMessage", _DELETE, _VISIBILITY, _SEND],
               where.queues(_dead(where))),
        # Find the priority levels' queues (a depth read). No CreateQueue: a level's queue in a
        # later pipeline stage must exist before a job of that level is handed on to it.
        _allow("FindPriorityQueues", ["sqs:GetQueueAttributes"], where.queues(*where.level_queues())),
    ]


def _create_levels(where: Scope, sid: str) -> list[dict[str, Any]]:
    """Creating a priority level's queue on first use (a submit, a hand-on, a retry): the queue
    itself, with the dead-letter queue's ARN (read from its attributes) in its redrive policy."""
    return [_allow(sid, ["sqs:CreateQueue"], where.queues(*where.level_queues(but=(NOTICES,)))),
            _allow(f"{sid}ReadDeadLetterArn", ["sqs:GetQueueAttributes"], where.queues(_dead(where)))]


def _dashboard_sqs(where: Scope) -> list[dict[str, Any]]:
    every = where.queues(*where.status_queues(), _dead(where))
    return [
        _allow("LookUpQueues", ["sqs:GetQueueUrl"], every),
        _allow("ReadQueueDepths", ["sqs:GetQueueAttributes"], every),
        # A listing receives the dead letters and gives them back, replacing a job the queue
        # dead-lettered by itself with a copy wrapped with the reason (and notifying of it).
        _allow("ListDeadLetters", ["sqs:ReceiveMessage", _VISIBILITY, _DELETE, _SEND],
               where.queues(_dead(where))),
        *([_allow("NotifySettled", [_SEND], where.queues(keys.queue_name(where.name, NOTICES)))]
          if NOTICES in where.statuses else []),
        # Retry and redrive send jobs back to their status queues (their priority levels').
        _allow("ActSendJobs", [_SEND], where.queues(*where.status_queues())),
        *_create_levels(where, "ActCreatePriorityQueues"),
        _allow("ActPurgeQueues", ["sqs:PurgeQueue"], every),
    ]


def _admin_sqs(where: Scope) -> list[dict[str, Any]]:
    names = [*where.status_queues(), _dead(where), f"{where.name}-probe-*"]
    return [
        _allow("ManageQueues", [
            "sqs:CreateQueue", "sqs:DeleteQueue", "sqs:PurgeQueue",
            "sqs:GetQueueUrl", "sqs:GetQueueAttributes", "sqs:SetQueueAttributes",
            "sqs:ListDeadLetterSourceQueues",
            "sqs:ReceiveMessage", _DELETE, _VISIBILITY, _SEND,
        ], where.queues(*names)),
    ]


# -- the scaler --------------------------------------------------------------------------------


def _scaler(where: Scope, namespace: str, ecs_service: str | None) -> list[dict[str, Any]]:
    """Depth reads (``GetQueueUrl`` finds a queue, ``GetQueueAttributes`` reads its counts; a
    level's queue that does not exist is looked up and skipped), metrics in ``namespace`` only,
    and one ECS service's (or any service's) description."""
    statements = []
    if where.sqs:
        statements.append(_allow("ReadQueueDepths", ["sqs:GetQueueUrl", "sqs:GetQueueAttributes"],
                                 where.queues(*where.status_queues())))
    statements.append(_allow("PutBacklogMetrics", ["cloudwatch:PutMetricData"], ["*"],
                             {"StringEquals": {"cloudwatch:namespace": namespace}}))
    service = "*"
    if ecs_service:
        cluster, name = scaling.ecs_service(ecs_service)
        service = f"{cluster.rpartition(':cluster/')[2]}/{name}"  # a cluster's ARN: its name
    statements.append(_allow("ReadServiceTasks", ["ecs:DescribeServices"],
                             [f"arn:{where.partition}:ecs:{where.region}:{where.account}:service/{service}"]))
    return statements


# -- KMS ---------------------------------------------------------------------------------------


def _kms(role: str, where: Scope) -> list[dict[str, Any]]:
    key = where.kms_key_id
    if where.sse != "aws:kms" or not key:
        return []
    services = []
    if where.bucket is not None:
        services.append(f"s3.{where.region}.amazonaws.com")
    if where.sqs:
        services.append(f"sqs.{where.region}.amazonaws.com")
    condition: dict[str, Any] = {"StringLike": {"kms:ViaService": services}}
    alias = key if key.startswith("alias/") else None
    if key.startswith("arn:") and ":alias/" in key:
        alias = "alias/" + key.split(":alias/", 1)[1]
    if alias is not None:
        resource = f"arn:{where.partition}:kms:{where.region}:{where.account}:key/*"
        condition["ForAnyValue:StringEquals"] = {"kms:ResourceAliases": alias}
    elif key.startswith("arn:"):
        resource = key
    else:
        resource = f"arn:{where.partition}:kms:{where.region}:{where.account}:key/{key}"
    actions = ["kms:GenerateDataKey", "kms:Decrypt"] + (["kms:DescribeKey"] if role == "admin" else [])
    return [_allow("UseJobSystemKey", actions, [resource], condition)]
