"""The printed IAM policies, enforced: a worker can do its job and nothing more.

A moto server of this module's own runs with IAM enforcement on (``INITIAL_NO_AUTH_ACTION_COUNT``:
the first requests are served without checking credentials, every later one must be signed by
a known IAM user and allowed by its policies). The first few requests create a bootstrap user
with every permission; everything after that is checked. Each role's user gets exactly the
policy `remotejob iam-policy --role ROLE` prints, plus one statement moto needs (see
``MOTO_GET_QUEUE_URL``), and runs the real code: ``submit``, a :class:`remotejob.Worker`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from click.testing import CliRunner

import remotejob
from remotejob import doctor, journal
from remotejob.backends._aws import Translate
from remotejob.backends.aws import S3Store, SqsQueues
from remotejob.backends.base import QueueAttributes
from remotejob.cli import main
from remotejob.errors import BackendUnavailable, ConfigError
from remotejob.policy import Scope, policy
from tests import servers
from tests.conftest import unique

BOOTSTRAP_REQUESTS = 3
"""Unchecked requests after the server is ready: CreateUser, CreateAccessKey, PutUserPolicy."""

MOTO_UNSCOPED = {"submitter": ["sqs:GetQueueUrl"], "worker": ["sqs:GetQueueUrl"],
                 "admin": ["sqs:GetQueueUrl", "sqs:CreateQueue"], "dashboard": ["sqs:GetQueueUrl"]}
"""moto checks these SQS actions against resource ``*``: it finds the queue ARN only in a
request naming an existing queue's URL, so not for GetQueueUrl and CreateQueue. AWS checks them
against the queue's ARN, and the printed policy grants them on the job system's queue ARNs
(asserted in ``JobSystem.user``); the test adds them on ``*`` for moto, and nothing else."""

STATUSES = ("pending", "inprogress", "completed")


@dataclass
class Identity:
    """An IAM user's access key (the secret never appears in any message)."""

    key_id: str
    secret: str

    def session(self) -> boto3.session.Session:
        return boto3.session.Session(
            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret, region_name=servers.REGION
        )

    def client(self, service: str, endpoint: str) -> Any:
        return self.session().client(  # type: ignore[call-overload]
            service, endpoint_url=endpoint, config=Config(retries={"mode": "standard", "max_attempts": 1})
        )


@dataclass
class EnforcingMoto:
    """moto with IAM enforcement on, and the bootstrap user allowed everything."""

    server: servers.Server
    root: Identity

    def user(self, role: str, document: dict[str, Any]) -> Identity:
        iam = self.root.client("iam", self.server.endpoint)
        name = unique(f"{role}-")
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="remotejob", PolicyDocument=json.dumps(document))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return Identity(key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture(scope="module")
def moto_iam() -> Iterator[EnforcingMoto]:
    # The readiness check spends one unchecked request, the bootstrap the others.
    server = servers.start_moto(env={"INITIAL_NO_AUTH_ACTION_COUNT": str(1 + BOOTSTRAP_REQUESTS)})
    try:
        iam = servers._client("iam", server.endpoint)  # any key, while nothing is checked yet
        iam.create_user(UserName="bootstrap")  # type: ignore[attr-defined]
        iam.put_user_policy(  # type: ignore[attr-defined]
            UserName="bootstrap", PolicyName="all",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
        )
        key = iam.create_access_key(UserName="bootstrap")["AccessKey"]  # type: ignore[attr-defined]
        with pytest.raises(ClientError, match="InvalidClientTokenId|security token"):
            servers._client("sqs", server.endpoint).list_queues()  # type: ignore[attr-defined]
        yield EnforcingMoto(server, Identity(key["AccessKeyId"], key["SecretAccessKey"]))
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SQS",
                 "REMOTEJOB_SSE", "REMOTEJOB_KMS_KEY_ID", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    monkeypatch.setenv("AWS_REGION", servers.REGION)


@dataclass
class JobSystem:
    """One job system on the enforcing server, created by the bootstrap user."""

    moto: EnforcingMoto
    name: str
    bucket: str
    legacy: bool = False
    """In legacy mode: the store is the bucket's root (the 2014 package's layout)."""

    @property
    def store_url(self) -> str:
        return f"s3://{self.bucket}" if self.legacy else f"s3://{self.bucket}/p"

    def connect(self, who: Identity) -> remotejob.Queue:
        endpoint, session = self.moto.server.endpoint, who.session()
        return remotejob.connect(
            self.name,
            store=S3Store(self.bucket, "" if self.legacy else "p", endpoint_url=endpoint,
                          region=servers.REGION, session=session, sse="AES256"),
            queues=SqsQueues(endpoint_url=endpoint, region=servers.REGION, session=session),
            visibility_timeout=3, wait_time=1, max_attempts=2, legacy=self.legacy,
        )

    def printed(self, role: str) -> dict[str, Any]:
        """What `remotejob iam-policy --role ROLE --json` prints for this job system."""
        result = CliRunner().invoke(
            main, ["--name", self.name, "--store", self.store_url, "--queues", "sqs://",
                   *(["--legacy"] if self.legacy else []), "iam-policy", "--role", role, "--json"],
            env={"REMOTEJOB_SSE": "AES256"},
        )
        assert result.exit_code == 0, result.output
        document: dict[str, Any] = json.loads(result.output)
        return document

    def user(self, role: str) -> Identity:
        document = self.printed(role)
        queue_arns = f"arn:aws:sqs:{servers.REGION}:*:{self.name}-"
        for action in MOTO_UNSCOPED[role]:
            granted = [s for s in document["Statement"] if action in s["Action"]]
            assert granted and all(r.startswith(queue_arns) for s in granted for r in s["Resource"])
        document["Statement"].append(
            {"Sid": "MotoUnscoped", "Effect": "Allow", "Action": MOTO_UNSCOPED[role], "Resource": "*"}
        )
        return self.moto.user(role, document)


@pytest.fixture
def system(moto_iam: EnforcingMoto) -> JobSystem:
    made = JobSystem(moto_iam, unique("iam"), unique("remotejob-iam-"))
    made.connect(moto_iam.root).init()
    return made


def _refused(call: Any, *secrets: str) -> str:
    """Run ``call``; it must be refused with a remotejob error that leaks no secret."""
    with pytest.raises(BackendUnavailable) as caught:
        call()
    message = str(caught.value)
    assert "refused" in message, message
    for secret in secrets:
        assert secret not in message
    return message


def _queue_call(queues: SqsQueues, action: str, queue: str, call: Any) -> Any:
    """A raw SQS call that remotejob itself never makes, translated the one way remotejob does."""
    with Translate("SQS", queues.endpoint(), action, f"queue {queue!r}"):
        return call()


def test_worker_policy_runs_jobs_and_nothing_more(system: JobSystem, tmp_path: Path) -> None:
    submitter, worker = system.user("submitter"), system.user("worker")
    sub = system.connect(submitter)
    large = tmp_path / "large.bin"
    large.write_bytes(bytes(range(256)) * 1024)  # 256 KiB: stored under in/, not inline
    ids = sub.submit_many([
        {"body": b"slow"}, {"body": large}, {"body": b"fail once"}, {"body": b"fail always"},
    ])

    def handler(job: remotejob.Job) -> list[dict[str, Any]]:
        data = job.open().read()
        if data == b"fail always" or (data == b"fail once" and job.receive_count == 1):
            raise RuntimeError(f"asked to fail ({job.receive_count})")
        if data == b"slow":  # until a heartbeat (a third of the 3 s visibility) extended it and recorded
            deadline = time.monotonic() + 30  # its progress, under the worker's own credentials
            while sub.status(job.id).state != "inprogress":
                assert time.monotonic() < deadline, "the heartbeat never recorded the job in progress"
                time.sleep(0.05)
        out = tmp_path / f"{job.id}.out"
        out.write_bytes(data[::-1] * (200_000 // len(data) + 1))  # over 64 KiB: staged, then copied
        return [{"key": "output", "body": out}, {"key": "note", "body": b"small, inline in the record"}]

    wq = system.connect(worker)
    worker_run = remotejob.Worker(wq, handler, concurrency=4, burst=True, retry_delay=0, handle_signals=False)
    taken = worker_run.run()

    assert taken == 6  # four jobs, two of them twice
    sub.close()  # the journal: both roles may append to it (a refused entry would be only logged)
    reader = system.connect(system.moto.root).object_store
    assert set(ids) <= {job_id for entry in journal.read(reader) for job_id in entry.jobs}
    states = {job_id: sub.status(job_id).state for job_id in ids}
    assert list(states.values()) == ["completed", "completed", "completed", "failed"], states
    for job_id, body in zip(ids[:3], (b"slow", large.read_bytes(), b"fail once"), strict=True):
        assert sub.retrieve("out", f"{job_id}/output").read() == body[::-1] * (200_000 // len(body) + 1)
        assert sub.retrieve("out", f"{job_id}/note").read() == b"small, inline in the record"
    admin = system.connect(system.moto.root)
    assert admin.object_store.head(f"jobs/{ids[0]}/progress").size > 0  # the heartbeat wrote it
    [letter] = admin.dead_letters()
    assert letter.job == ids[3] and "asked to fail (2)" in letter.reason
    retried = sub.retry(ids[3])  # the submitter may run a failed job again
    assert retried.state == "pending" and [a.state for a in retried.history] == ["failed"]

    queues = wq.message_queue
    assert isinstance(queues, SqsQueues)
    secrets = (worker.secret, submitter.secret, system.moto.root.secret)
    pending, dead = f"{system.name}-pending", f"{system.name}-dead"
    sqs = worker.client("sqs", system.moto.server.endpoint)
    url = queues.queue_url(pending)
    _refused(lambda: queues.purge(pending), *secrets)
    _refused(lambda: _queue_call(queues, "deleting", pending, lambda: sqs.delete_queue(QueueUrl=url)),
             *secrets)
    _refused(lambda: _queue_call(queues, "changing", pending, lambda: sqs.set_queue_attributes(
        QueueUrl=url, Attributes={"MessageRetentionPeriod": "60"})), *secrets)
    for letter_message in queues.receive(dead, 1, 0):  # it settles jobs the queue dead-lettered by itself
        queues.change_visibility(dead, letter_message.receipt, 0)
    for outside in ("in/forged", "batches/forged", "elsewhere"):
        message = _refused(lambda key=outside: wq.object_store.put(key, b"not a worker's to write"), *secrets)
        assert "AccessDenied" in message and "iam-policy" in message
    other = S3Store(system.bucket, "other-system", endpoint_url=system.moto.server.endpoint,
                    region=servers.REGION, session=worker.session())
    _refused(lambda: other.put("out/x/output", b"outside this job system's prefix"), *secrets)
    _refused(lambda: wq.object_store.delete(f"jobs/{ids[0]}/final"), *secrets)
    _refused(lambda: wq.object_store.delete(f"out/{ids[0]}/output"), *secrets)
    # and all of it is still there: the admin's purge is what the worker's was not allowed
    assert admin.status(ids[0]).state == "completed"
    admin.message_queue.purge(pending)


def test_legacy_policies_run_2014_jobs_both_ways(moto_iam: EnforcingMoto) -> None:
    name = unique("iam")
    system = JobSystem(moto_iam, name, f"remotejobs-{name}", legacy=True)
    system.connect(moto_iam.root).init()
    submitter, worker = system.user("submitter"), system.user("worker")
    sub = system.connect(submitter)
    job_id = sub.submit({"body": b"cat", "filename": "cat.txt"})  # at the root, the flat message
    inputs: list[str] = []

    def handler(job: remotejob.Job) -> list[dict[str, Any]]:
        inputs.append(job.key)
        return [{"key": "output", "filename": "o.txt", "body": job.open().read()[::-1]}]

    wq = system.connect(worker)
    taken = remotejob.Worker(wq, handler, burst=True, handle_signals=False).run()

    assert taken == 1 and sub.status(job_id).state == "completed"
    [key] = inputs
    assert sub.output(job_id, "output").read() == b"tac"
    root = system.connect(moto_iam.root).object_store
    assert root.get(f"{job_id}-output").read() == b"tac"  # where a Node requester looks
    secrets = (worker.secret, submitter.secret, moto_iam.root.secret)
    _refused(lambda: wq.object_store.put(key, b"a worker writes no inputs"), *secrets)
    _refused(lambda: wq.object_store.delete(key), *secrets)


def test_policies_cover_delays_schedules_and_dedup_keys(system: JobSystem) -> None:
    """A submitter parks a far-future job, adds a schedule with a stored input and submits with
    a dedup key; a worker, under its own policy, dispatches the timer, makes the ticks (copying
    their input) and runs everything."""
    submitter, worker = system.user("submitter"), system.user("worker")
    sub = system.connect(submitter)
    sub.context.max_delay_s = 1  # parked in the store, as a delay over 15 minutes would be
    parked = sub.submit({"body": b"later"}, delay=1.5)
    root = system.connect(system.moto.root).object_store
    assert len(list(root.list("timers/"))) == 1
    deduped = sub.submit({"body": b"once"}, dedup_key="nightly")
    assert sub.submit({"body": b"again"}, dedup_key="nightly") == deduped
    sub.every("tick", cron="* * * * * *", data={"body": b"t" * (200 * 1024)})  # stored, then copied
    ran: set[bytes] = set()

    def handler(job: remotejob.Job) -> None:
        ran.add(job.open().read()[:5])

    wq = system.connect(worker)
    w = remotejob.Worker(wq, handler, schedule_check=0.2, handle_signals=False)
    thread = threading.Thread(target=w.run, daemon=True)
    thread.start()
    try:
        assert sub.wait(parked, timeout=30).state == "completed"
        assert sub.wait(deduped, timeout=30).state == "completed"
        deadline = time.monotonic() + 30
        while b"ttttt" not in ran:
            assert time.monotonic() < deadline, "no tick ran under the worker's policy"
            time.sleep(0.05)
    finally:
        w.stop()
        thread.join(30)
    assert sub.unschedule("tick")
    assert list(root.list("timers/")) == []  # the worker deleted the timer it sent


def test_submitter_policy_submits_and_reads_but_takes_no_jobs(system: JobSystem) -> None:
    submitter = system.user("submitter")
    sub = system.connect(submitter)
    job_id = sub.submit({"body": b"to do", "key": unique("k")})
    inline = sub.submit({"body": b"small"})
    assert sub.status(job_id).state == "pending" and sub.status(inline).state == "pending"
    assert sub.retrieve("in", job_id).read() == b"to do"

    queues = sub.message_queue
    pending = f"{system.name}-pending"
    _refused(lambda: queues.receive(pending, 1, 0), submitter.secret)
    _refused(lambda: queues.purge(pending), submitter.secret)
    _refused(lambda: queues.send(f"{system.name}-completed", "a forged notice"), submitter.secret)
    _refused(lambda: sub.object_store.put(f"out/{job_id}/output", b"forged"), submitter.secret)
    assert queues.receive(f"{system.name}-completed", 1, 0) == []  # it may read completion notices
    # It may cancel (create a final record where there is none: moto does not evaluate the
    # s3:if-none-match condition that stops an overwrite on AWS, so that part is checked on the
    # printed policy) and write the cancellation log.
    assert sub.cancel(job_id, "not needed").state == "cancelled"
    [final] = [s for s in system.printed("submitter")["Statement"]
               if any(r.endswith("jobs/*/final") for r in s["Resource"]) and "s3:PutObject" in s["Action"]]
    assert final["Condition"] == {"Null": {"s3:if-none-match": "false"}}


def test_dashboard_policy_reads_acts_and_prunes_but_takes_no_jobs(system: JobSystem) -> None:
    sub = system.connect(system.user("submitter"))
    failing = [sub.submit({"key": unique("f"), "body": b"fails"}) for _ in range(2)]

    def fail(job: remotejob.Job) -> None:
        raise RuntimeError("asked to fail")

    runner = system.connect(system.moto.root)  # max_attempts=2: failed and dead-lettered
    assert runner.work(fail, burst=True, retry_delay=0, handle_signals=False) == 4
    waiting = sub.submit({"key": unique("w"), "body": b"waits"})
    dashboard = system.user("dashboard")
    dash = system.connect(dashboard)

    assert dash.status(failing[0]).state == "failed" and dash.status(waiting).state == "pending"
    queues = dash.message_queue
    assert queues.depth(f"{system.name}-pending").waiting == 1
    assert sorted(letter.job or "" for letter in dash.dead_letters()) == sorted(failing)
    assert dash.retry(failing[0]).state == "pending"
    assert dash.redrive() == 1  # the other; the retried job's dead letter is removed
    assert dash.status(failing[1]).state == "pending"
    assert dash.cancel(waiting, "from the dashboard").state == "cancelled"
    queues.purge(f"{system.name}-pending")
    dash.close()
    entries = journal.read(dash.object_store)
    assert {*failing, waiting} <= {job_id for entry in entries for job_id in entry.jobs}
    assert journal.prune(dash.object_store, keep_s=-60) == len(entries)

    _refused(lambda: queues.receive(f"{system.name}-pending", 1, 0), dashboard.secret)
    _refused(lambda: dash.object_store.put("in/forged", b"not a dashboard's to write"), dashboard.secret)
    _refused(lambda: dash.object_store.put(f"out/{waiting}/output", b"forged"), dashboard.secret)


def test_admin_policy_manages_queues_and_reads_their_settings(system: JobSystem) -> None:
    admin = system.user("admin")
    q = system.connect(admin)
    queues = q.message_queue
    assert isinstance(queues, SqsQueues)
    queues.purge(f"{system.name}-pending")
    checks = doctor.check_queues(queues, system.name, STATUSES, max_attempts=2)
    assert [c.level for c in checks if c.level != "ok"] == [], [c.line() for c in checks]
    probe = [f"{system.name}-probe-pending", f"{system.name}-probe-dead"]  # as `stats --probe` makes
    queues.ensure(probe, QueueAttributes(dead_letter=probe[1], max_receive_count=2))
    _queue_call(queues, "deleting", probe[0], lambda: admin.client("sqs", system.moto.server.endpoint)
                .delete_queue(QueueUrl=queues.queue_url(probe[0])))


def test_policies_are_scoped_to_the_prefix_and_queues() -> None:
    where = Scope("photos", STATUSES, "my-bucket", "jobs/", True, "eu-west-1", "123456789012")

    def actions(doc: dict[str, Any]) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for statement in doc["Statement"]:
            assert statement["Effect"] == "Allow"
            for action in statement["Action"]:
                found.setdefault(action, set()).update(statement["Resource"])
        return found

    worker = actions(policy("worker", where))
    assert worker["s3:PutObject"] == {"arn:aws:s3:::my-bucket/jobs/jobs/*",
                                      "arn:aws:s3:::my-bucket/jobs/out/*",
                                      "arn:aws:s3:::my-bucket/jobs/journal/*",
                                      "arn:aws:s3:::my-bucket/jobs/in/*@*"}  # a tick's input, copied
    assert worker["s3:DeleteObject"] == {"arn:aws:s3:::my-bucket/jobs/jobs/*/attempts/*",
                                         "arn:aws:s3:::my-bucket/jobs/jobs/*/progress",
                                         "arn:aws:s3:::my-bucket/jobs/cancels/*",
                                         "arn:aws:s3:::my-bucket/jobs/journal/*",
                                         "arn:aws:s3:::my-bucket/jobs/timers/*"}
    assert "arn:aws:sqs:eu-west-1:123456789012:photos-dead" in worker["sqs:SendMessage*"]
    assert "arn:aws:sqs:eu-west-1:123456789012:photos-dead" in worker["sqs:ReceiveMessage"]
    for forbidden in ("sqs:PurgeQueue", "sqs:DeleteQueue", "sqs:SetQueueAttributes", "sqs:CreateQueue",
                      "s3:CreateBucket", "s3:PutBucketPublicAccessBlock", "s3:*", "sqs:*"):
        assert forbidden not in worker
    submitter = actions(policy("submitter", where))
    assert "sqs:ReceiveMessage" in submitter
    assert submitter["sqs:ReceiveMessage"] == {"arn:aws:sqs:eu-west-1:123456789012:photos-completed"}
    assert "arn:aws:sqs:eu-west-1:123456789012:photos-completed" not in submitter["sqs:SendMessage*"]
    admin = actions(policy("admin", where))
    assert {"sqs:PurgeQueue", "sqs:DeleteQueue", "sqs:SetQueueAttributes", "s3:PutBucketPublicAccessBlock",
            "s3:PutEncryptionConfiguration"} <= set(admin)
    assert all("*" not in resource.split(":")[-1] or "probe" in resource
               for resource in admin["sqs:PurgeQueue"])

    kms = Scope("photos", STATUSES, "my-bucket", "", True, "eu-west-1", "123456789012", "aws:kms",
                "1234abcd-12ab-34cd-56ef-1234567890ab")
    [statement] = [s for s in policy("worker", kms)["Statement"] if s["Sid"] == "UseJobSystemKey"]
    assert statement["Resource"] == [
        "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"]
    assert statement["Condition"]["StringLike"]["kms:ViaService"] == [
        "s3.eu-west-1.amazonaws.com", "sqs.eu-west-1.amazonaws.com"]
    with pytest.raises(ConfigError, match="unknown role"):
        policy("root", where)


def test_iam_policy_needs_aws_and_valid_ids(tmp_path: Path) -> None:
    runner = CliRunner()
    embedded = runner.invoke(
        main, ["--name", "x", "iam-policy", "--role", "worker"],
        env={"REMOTEJOB_HOME": str(tmp_path), "REMOTEJOB_STORE": "", "REMOTEJOB_QUEUES": ""},
    )
    assert embedded.exit_code == 2 and "s3://" in embedded.output
    bad = runner.invoke(main, ["--store", "s3://my-bucket", "--queues", "sqs://", "iam-policy", "--role",
                               "worker", "--account", "12"])
    assert bad.exit_code == 2 and "12-digit" in bad.output
    good = runner.invoke(main, ["--store", "s3://my-bucket", "--queues", "sqs://eu-west-1", "iam-policy",
                                "--role", "worker"])
    assert good.exit_code == 0 and "arn:aws:sqs:eu-west-1:*:jobs-pending" in good.output


def test_scaler_policy_publishes_backlog_and_reads_nothing_else(system: JobSystem) -> None:
    """`remotejob metrics --cloudwatch` runs under the scaler's policy: queue depths, metrics in
    one namespace, ECS services' task counts; no message, no object."""
    document = system.printed("scaler")
    granted: dict[str, list[dict[str, Any]]] = {}
    for statement in document["Statement"]:
        for action in statement["Action"]:
            granted.setdefault(action, []).append(statement)
    assert sorted(granted) == ["cloudwatch:PutMetricData", "ecs:DescribeServices", "sqs:GetQueueAttributes",
                               "sqs:GetQueueUrl"]
    [put] = granted["cloudwatch:PutMetricData"]
    assert put["Resource"] == ["*"]  # PutMetricData has no resource: the namespace is the scope
    assert put["Condition"] == {"StringEquals": {"cloudwatch:namespace": "remotejob"}}
    [depths] = granted["sqs:GetQueueAttributes"]
    assert sorted(depths["Resource"]) == sorted(
        f"arn:aws:sqs:{servers.REGION}:*:{system.name}-{status}{level}"
        for status in STATUSES for level in ("", "-high", "-low"))
    # moto checks CloudWatch's and ECS's actions against resource "*", evaluates no
    # cloudwatch:namespace condition and names PutMetricData by its signing name (monitoring:):
    # the test grants those unscoped (their scope is asserted above and in the test below); the
    # SQS part is enforced as printed.
    document["Statement"].append({"Sid": "MotoUnscoped", "Effect": "Allow", "Resource": "*", "Action": [
        "sqs:GetQueueUrl", "monitoring:PutMetricData", "ecs:DescribeServices"]})
    scaler = system.moto.user("scaler", document)
    root = system.connect(system.moto.root)
    root.submit_many([{"body": b"x"}] * 3)
    root.submit({"body": b"y"}, priority="high")

    endpoint = system.moto.server.endpoint
    result = CliRunner().invoke(
        main, ["--name", system.name, "--store", system.store_url, "--queues", "sqs://", "metrics",
               "--cloudwatch", "--workers", "2", "--json"],
        env={"AWS_ACCESS_KEY_ID": scaler.key_id, "AWS_SECRET_ACCESS_KEY": scaler.secret,
             "AWS_ENDPOINT_URL_S3": endpoint, "AWS_ENDPOINT_URL_SQS": endpoint,
             "AWS_ENDPOINT_URL_CLOUDWATCH": endpoint, "AWS_ENDPOINT_URL_ECS": endpoint},
    )
    assert result.exit_code == 0, result.output
    [pending] = json.loads(result.stdout)["backlog"]
    assert (pending["status"], pending["backlog"], pending["per_worker"]) == ("pending", 4, 2)

    q = system.connect(scaler)
    _refused(lambda: q.message_queue.receive(f"{system.name}-pending", 1, 0), scaler.secret)
    _refused(lambda: q.message_queue.send(f"{system.name}-pending", "a forged job"), scaler.secret)
    _refused(lambda: q.object_store.put("in/forged", b"not a scaler's to write"), scaler.secret)


def test_scaler_policy_is_scoped_to_a_namespace_and_a_service() -> None:
    where = Scope("photos", ("pending",), "my-bucket", "", True, "eu-west-1", "123456789012")
    document = policy("scaler", where, namespace="team/jobs", ecs_service="prod/photo-workers")
    by_sid = {s["Sid"]: s for s in document["Statement"]}
    assert by_sid["PutBacklogMetrics"]["Condition"]["StringEquals"] == {"cloudwatch:namespace": "team/jobs"}
    assert by_sid["ReadServiceTasks"]["Resource"] == [
        "arn:aws:ecs:eu-west-1:123456789012:service/prod/photo-workers"]
    assert by_sid["ReadQueueDepths"]["Resource"] == [
        f"arn:aws:sqs:eu-west-1:123456789012:photos-pending{level}" for level in ("", "-high", "-low")]
    arn = policy("scaler", where, ecs_service="arn:aws:ecs:eu-west-1:123456789012:cluster/prod/photo-workers")
    assert [s["Resource"] for s in arn["Statement"] if s["Sid"] == "ReadServiceTasks"] == [
        ["arn:aws:ecs:eu-west-1:123456789012:service/prod/photo-workers"]]
    assert not any(a.startswith("s3:") for s in document["Statement"] for a in s["Action"])
    with pytest.raises(ConfigError, match="CLUSTER/SERVICE"):
        policy("scaler", where, ecs_service="photo-workers")
