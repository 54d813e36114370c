"""Deploying safely: private, encrypted buckets and queues, and `remotejob doctor` checking them.

Against the real servers: moto (S3 and SQS) and SeaweedFS (S3, without public access blocks or,
as started here, an SSE key), plus the embedded backend's folders.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import remotejob
from remotejob import doctor
from remotejob.backends import aws_s3
from remotejob.backends.aws import S3Store, SqsQueues
from remotejob.backends.base import QueueAttributes
from remotejob.backends.local import SqliteQueues
from remotejob.cli import main
from remotejob.errors import BackendUnavailable, ConfigError
from remotejob.limits import DEAD_LETTER_RETENTION_S
from tests import servers
from tests.conftest import BackendSetup, unique

FOUR_DAYS = 4 * 24 * 3600


def _raw(service: str, endpoint: str | None) -> Any:
    assert endpoint
    return servers._client(service, endpoint)


def _doctor(name: str, store: str | None, queues: str | None, *args: str, **env: str) -> Result:
    argv = ["--name", name]
    if store:
        argv += ["--store", store]
    if queues:
        argv += ["--queues", queues]
    return CliRunner().invoke(main, [*argv, "doctor", *args], env=env or None)


def _levels(checks: list[doctor.Check]) -> dict[tuple[str, str], str]:
    return {(c.check, c.subject): c.level for c in checks}


# -- creating buckets and queues ----------------------------------------------------------------


def test_new_bucket_is_private_and_encrypted_and_doctor_passes(backend: BackendSetup) -> None:
    if backend.kind != "aws":
        pytest.skip("moto implements every bucket setting; SeaweedFS is tested below")
    name, bucket = unique("doc"), unique("remotejob-doc-")
    store = f"s3://{bucket}/p"
    q = remotejob.connect(name, store=store, queues="sqs://", sse="AES256")
    q.init()
    job_id = q.submit({"body": b"secret input", "key": unique("k")})

    s3, sqs = _raw("s3", backend.s3_endpoint), _raw("sqs", backend.sqs_endpoint)
    blocked = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert blocked == aws_s3.PUBLIC_ACCESS_BLOCK
    [rule] = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    assert s3.head_object(Bucket=bucket, Key=f"p/in/{job_id}")["ServerSideEncryption"] == "AES256"
    attrs = {
        status: sqs.get_queue_attributes(
            QueueUrl=sqs.get_queue_url(QueueName=f"{name}-{status}")["QueueUrl"], AttributeNames=["All"]
        )["Attributes"]
        for status in ("pending", "completed", "dead")
    }
    assert all(a["SqsManagedSseEnabled"] == "true" for a in attrs.values())
    assert attrs["pending"]["MessageRetentionPeriod"] == str(FOUR_DAYS)
    assert attrs["dead"]["MessageRetentionPeriod"] == str(DEAD_LETTER_RETENTION_S)

    result = _doctor(name, store, "sqs://", REMOTEJOB_SSE="AES256")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert not [line for line in lines if line.startswith("FAIL")]
    assert any(line.startswith("ok    public access block") for line in lines)
    assert any(line.startswith("ok    default encryption") and "AES256" in line for line in lines)
    assert any(line.startswith("ok    dead-letter retention") for line in lines)
    assert sum(line.startswith("ok    redrive policy") for line in lines) == 3
    assert sum(line.startswith("ok    queue encryption") for line in lines) == 4
    # moto listens on plain http, which is only acceptable for this machine
    assert sum(line.startswith("warn  TLS") for line in lines) == 2
    assert lines[-1].endswith("0 FAIL")


def test_kms_encrypts_objects_copies_bucket_default_and_queues(backend: BackendSetup, tmp_path: Path) -> None:
    if backend.kind != "aws":
        pytest.skip("moto only")
    name, bucket, key = unique("kms"), unique("remotejob-kms-"), "alias/remotejob-test"
    q = remotejob.connect(name, store=f"s3://{bucket}/p", queues="sqs://", sse="aws:kms", kms_key_id=key)
    q.init()
    source = tmp_path / "in.bin"
    source.write_bytes(b"x" * 1000)
    q.object_store.put("in/file", source)                    # upload_file
    q.object_store.put("in/bytes", b"y")                     # put_object
    q.object_store.copy("in/bytes", "out/j/copy")            # server-side copy

    s3, sqs = _raw("s3", backend.s3_endpoint), _raw("sqs", backend.sqs_endpoint)
    for written in ("in/file", "in/bytes", "out/j/copy"):
        head = s3.head_object(Bucket=bucket, Key=f"p/{written}")
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", key), written
    default = q.object_store.default_encryption()
    assert default == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key}
    url = sqs.get_queue_url(QueueName=f"{name}-pending")["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["KmsMasterKeyId"] == key
    checks = doctor.run(q)
    assert not doctor.failed(checks), [c.line() for c in checks]
    assert any(c.check == "queue encryption" and key in c.message for c in checks)


def test_bucket_creation_goes_on_without_public_access_blocks(
    backend: BackendSetup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if backend.kind != "aws-real-s3":
        pytest.skip("SeaweedFS lacks PutPublicAccessBlock")
    monkeypatch.setattr(aws_s3, "_warned", set())  # earlier tests may have warned already
    caplog.set_level(logging.WARNING, logger="remotejob")
    stores = [S3Store(unique("remotejob-weed-"), "p", endpoint_url=backend.s3_endpoint) for _ in range(2)]
    for store in stores:
        store.ensure()
        store.put("k", b"usable")
        assert store.get("k").read() == b"usable"
    warnings = [r.getMessage() for r in caplog.records if "public access block" in r.getMessage()]
    assert len(warnings) == 1, warnings  # once per endpoint, not per bucket
    assert "does not support it" in warnings[0] and "NotImplemented" in warnings[0]

    check = doctor.check_public_access_block(stores[0])
    assert check.level == "warn" and "does not support public access blocks" in check.message
    encryption = doctor.check_bucket_encryption(stores[0])
    assert encryption.level == "fail" and "put-bucket-encryption" in (encryption.fix or "")


def test_sse_on_a_store_that_cannot_encrypt_fails_closed_and_says_why(backend: BackendSetup) -> None:
    if backend.kind != "aws-real-s3":
        pytest.skip("SeaweedFS, started without an SSE key")
    store = S3Store(unique("remotejob-weedsse-"), "p", endpoint_url=backend.s3_endpoint, sse="AES256")
    store.ensure()  # creating the bucket works either way
    try:
        store.put("k", b"must be encrypted")
    except BackendUnavailable as exc:  # this SeaweedFS has no key to encrypt with: nothing is stored
        assert "REMOTEJOB_SSE" in str(exc) and "unset" in str(exc)
    else:  # a SeaweedFS that has a key encrypts
        head = _raw("s3", backend.s3_endpoint).head_object(Bucket=store.bucket, Key="p/k")
        assert head.get("ServerSideEncryption") == "AES256"


# -- doctor finding problems --------------------------------------------------------------------


def test_doctor_reports_each_misconfiguration_with_its_fix(backend: BackendSetup) -> None:
    if backend.kind != "aws":
        pytest.skip("moto: every setting can be changed")
    name, bucket = unique("bad"), unique("remotejob-bad-")
    store = f"s3://{bucket}/p"
    remotejob.connect(name, store=store, queues="sqs://").init()  # no REMOTEJOB_SSE
    s3, sqs = _raw("s3", backend.s3_endpoint), _raw("sqs", backend.sqs_endpoint)

    def url(status: str) -> str:
        return str(sqs.get_queue_url(QueueName=f"{name}-{status}")["QueueUrl"])

    s3.delete_public_access_block(Bucket=bucket)
    sqs.set_queue_attributes(QueueUrl=url("inprogress"), Attributes={"SqsManagedSseEnabled": "false"})
    sqs.set_queue_attributes(QueueUrl=url("pending"), Attributes={"RedrivePolicy": ""})
    sqs.set_queue_attributes(QueueUrl=url("dead"), Attributes={"MessageRetentionPeriod": "60"})
    sqs.delete_queue(QueueUrl=url("completed"))

    result = _doctor(name, store, "sqs://", "--json")
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["ok"] is False
    found = {(c["check"], c["subject"]): c for c in report["checks"]}

    def level(check: str, subject: str) -> str:
        return str(found[(check, subject)]["level"])

    assert level("public access block", f"s3://{bucket}") == "fail"
    assert "put-public-access-block" in found[("public access block", f"s3://{bucket}")]["fix"]
    assert level("default encryption", f"s3://{bucket}") == "fail"  # moto has no default; no SSE asked
    assert level("queue encryption", f"queue {name}-inprogress") == "fail"
    assert "SqsManagedSseEnabled=true" in found[("queue encryption", f"queue {name}-inprogress")]["fix"]
    assert level("queue encryption", f"queue {name}-pending") == "ok"
    assert level("redrive policy", f"queue {name}-pending") == "fail"
    assert level("redrive policy", f"queue {name}-inprogress") == "ok"
    assert level("queue", f"queue {name}-completed") == "fail"
    assert "remotejob init" in found[("queue", f"queue {name}-completed")]["fix"]
    retention = found[("dead-letter retention", f"queue {name}-dead")]
    assert retention["level"] == "fail"
    assert f"MessageRetentionPeriod={DEAD_LETTER_RETENTION_S}" in retention["fix"]

    text = _doctor(name, store, "sqs://")
    assert text.exit_code == 1
    fails = [line for line in text.output.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 6 and all(". Fix: " in line for line in fails)


def test_dead_letter_retention_rule() -> None:
    def attrs(seconds: int) -> dict[str, str]:
        return {"MessageRetentionPeriod": str(seconds)}

    sources = {"j-pending": attrs(FOUR_DAYS), "j-completed": attrs(7 * 86400)}
    assert doctor.check_dead_retention("j-dead", attrs(14 * 86400), sources).level == "ok"
    equal = doctor.check_dead_retention("j-dead", attrs(7 * 86400), sources)
    assert equal.level == "fail" and "j-completed" in equal.message
    longest = doctor.check_dead_retention("j-dead", attrs(14 * 86400), {"j-pending": attrs(14 * 86400)})
    assert longest.level == "fail" and "lower the source" in (longest.fix or "")


def test_queues_need_room_for_dead_letters_to_outlive_them(tmp_path: Path) -> None:
    attributes = QueueAttributes(
        retention_s=DEAD_LETTER_RETENTION_S, dead_letter="j-dead", max_receive_count=3
    )
    for queues in (SqsQueues(endpoint_url="http://127.0.0.1:9"), SqliteQueues(tmp_path / "q.db")):
        with pytest.raises(ConfigError, match="dead-letter queue no room"):
            queues.ensure(["j-pending", "j-dead"], attributes)


@pytest.mark.parametrize(
    ("url", "level"),
    [
        ("https://s3.eu-west-1.amazonaws.com", "ok"),
        ("http://127.0.0.1:9000", "warn"),
        ("http://localhost:4566", "warn"),
        ("http://s3.internal.example.com", "fail"),
        ("http://10.0.0.5:9000", "fail"),
    ],
)
def test_endpoints_must_use_tls(url: str, level: str) -> None:
    check = doctor.check_endpoint("S3", url)
    assert check.level == level
    if level != "ok":
        assert "AWS_ENDPOINT_URL_S3" in (check.fix or "")


def test_embedded_folders_must_not_be_world_writable(backend: BackendSetup) -> None:
    if backend.kind != "embedded":
        pytest.skip("embedded only")
    q = backend.connect()
    q.init()
    assert not doctor.failed(doctor.run(q))
    root = q.object_store.root
    os.chmod(root, 0o777)  # noqa: S103 - the misconfiguration under test
    try:
        result = _doctor(q.name, None, None)
        assert result.exit_code == 1, result.output
        [line] = [line for line in result.output.splitlines() if line.startswith("FAIL")]
        assert f"chmod o-w {root}" in line
    finally:
        os.chmod(root, 0o755)  # noqa: S103 - back to a normal folder
    assert _doctor(q.name, None, None).exit_code == 0


# -- configuration ------------------------------------------------------------------------------


def test_encryption_comes_from_arguments_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REMOTEJOB_SSE", "aws:kms")
    monkeypatch.setenv("REMOTEJOB_KMS_KEY_ID", "alias/jobs")
    q = remotejob.connect("enc", store="s3://remotejob-enc/p", queues="sqs://us-east-1")
    assert isinstance(q.object_store, S3Store) and isinstance(q.message_queue, SqsQueues)
    assert (q.object_store.sse, q.object_store.kms_key_id) == ("aws:kms", "alias/jobs")
    assert q.message_queue.encryption_attributes() == {"KmsMasterKeyId": "alias/jobs"}

    monkeypatch.delenv("REMOTEJOB_KMS_KEY_ID")
    q = remotejob.connect("enc", store="s3://remotejob-enc/p", queues="sqs://us-east-1", sse="aes256")
    assert q.object_store.sse == "AES256"  # the argument wins, spelled as S3 wants
    assert q.message_queue.encryption_attributes() == {"SqsManagedSseEnabled": "true"}

    monkeypatch.delenv("REMOTEJOB_SSE")
    q = remotejob.connect("enc", store="s3://remotejob-enc/p", queues="sqs://us-east-1")
    assert q.object_store.sse is None
    assert q.message_queue.encryption_attributes() == {"SqsManagedSseEnabled": "true"}  # always at rest

    with pytest.raises(ConfigError, match="use AES256 .* or aws:kms"):
        remotejob.connect("enc", store="s3://remotejob-enc/p", sse="rot13")
    with pytest.raises(ConfigError, match="needs server-side encryption aws:kms"):
        remotejob.connect("enc", store="s3://remotejob-enc/p", kms_key_id="alias/jobs")
    monkeypatch.setenv("REMOTEJOB_SSE", "AES256")
    monkeypatch.setenv("REMOTEJOB_HOME", "/nonexistent-remotejob-home")
    remotejob.connect("enc")  # the embedded backend ignores it
