"""What only the AWS backend does, shown against real servers: moto (S3 and SQS) and SeaweedFS.

Nothing here patches boto3: every call goes over HTTP to a server on 127.0.0.1. The contract
suites show that S3Store and SqsQueues behave like every other backend; these tests show the
AWS-specific parts: endpoints and credentials, bucket and queue creation, metadata encoding
and multipart streaming.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from remotejob.backends.aws import S3Store, SqsQueues
from remotejob.backends.base import ObjectStore, QueueAttributes
from remotejob.errors import BackendUnavailable, ConfigError, NotFound
from tests import servers
from tests.conftest import BackendSetup, unique

MIB = 1024 * 1024


@pytest.fixture
def aws(backend: BackendSetup) -> BackendSetup:
    """The two AWS settings: S3 on moto, and S3 on SeaweedFS (SQS is moto's in both)."""
    if backend.kind == "embedded":
        pytest.skip("AWS backend only")
    return backend


@pytest.fixture
def sqs(backend: BackendSetup) -> BackendSetup:
    """The AWS setting once (both settings share moto's SQS)."""
    if backend.kind != "aws":
        pytest.skip("SQS is moto's in both AWS settings; run once")
    return backend


def raw_client(service: str, endpoint: str | None, region: str = servers.REGION) -> Any:
    """A plain boto3 client, to look at what the backend left on the server."""
    import boto3

    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=servers.ACCESS_KEY,
        aws_secret_access_key=servers.SECRET_KEY,
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bucket", ["Upper", "under_score", "ab", "x" * 64, "-dash", "dots..dots", "192.168.0.1", "xn--abc"]
)
def test_invalid_bucket_name_is_a_config_error_with_the_fix(bucket: str) -> None:
    with pytest.raises(ConfigError, match="lower-case letters, digits"):
        S3Store(bucket)


def test_invalid_prefix_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="prefix"):
        S3Store("good-bucket", "a/../b")


def test_locations_name_bucket_prefix_and_endpoint(aws: BackendSetup) -> None:
    assert S3Store("my-bucket", "/jobs/x/").location == "s3://my-bucket/jobs/x/"
    assert S3Store("my-bucket").location == "s3://my-bucket/"
    assert SqsQueues(endpoint_url=aws.sqs_endpoint).location == aws.sqs_endpoint
    assert SqsQueues(region="eu-west-1").location == aws.sqs_endpoint  # AWS_ENDPOINT_URL_SQS is set
    assert isinstance(S3Store("my-bucket"), ObjectStore)


def test_endpoints_come_from_the_environment(aws: BackendSetup) -> None:
    store = S3Store(aws.bucket or "", unique("env-"))  # no endpoint_url: AWS_ENDPOINT_URL_S3
    store.put("k", b"via env")
    assert store.get("k").read() == b"via env"

    queues = SqsQueues()  # AWS_ENDPOINT_URL_SQS
    name = unique("env-")
    queues.ensure([name], QueueAttributes())
    queues.send(name, "hello")
    assert [m.body for m in queues.receive(name, wait_s=5)] == ["hello"]


def test_aws_region_is_honoured(sqs: BackendSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_REGION", "eu-west-2")
    name = unique("region-")

    SqsQueues(endpoint_url=sqs.sqs_endpoint).ensure([name], QueueAttributes())

    # moto keeps each region's queues apart, so the queue is found in eu-west-2 only.
    url = raw_client("sqs", sqs.sqs_endpoint, "eu-west-2").get_queue_url(QueueName=name)["QueueUrl"]
    assert url.endswith(name)


# -- reachability and credentials -------------------------------------------------------------


def test_unreachable_endpoint_is_backend_unavailable_quickly(
    aws: BackendSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    endpoint = f"http://127.0.0.1:{closed_port()}"
    store = S3Store("some-bucket", "p", endpoint_url=endpoint)
    queues = SqsQueues(endpoint_url=endpoint)

    calls = [
        lambda: store.put("k", b"x"),
        lambda: store.put("k", io.BytesIO(b"x")),
        lambda: store.get("k"),
        lambda: list(store.list()),
        lambda: store.ensure(),
        lambda: queues.send("q", "x"),
        lambda: queues.ensure(["q"], QueueAttributes()),
    ]
    for call in calls:
        with pytest.raises(BackendUnavailable) as caught:
            call()
        assert endpoint in str(caught.value)
        assert "AWS_ENDPOINT_URL_" in str(caught.value)
        assert caught.value.__cause__ is not None


@pytest.mark.parametrize("access_key", ["AKIACANARYKEYID00000", servers.ACCESS_KEY])
def test_rejected_credentials_name_the_endpoint_and_no_secret(
    backend: BackendSetup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    access_key: str,
) -> None:
    if backend.kind != "aws-real-s3":
        pytest.skip("only SeaweedFS checks credentials")
    secret = "canary-secret-value-0123456789abcdef"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    store = S3Store(backend.bucket or "", unique("p-"), endpoint_url=backend.s3_endpoint)
    caplog.set_level("DEBUG", logger="remotejob")

    calls = [
        lambda: store.put("k", b"x"),
        lambda: store.put("k", b"x", if_absent=True),
        lambda: store.get("k"),
        lambda: store.head("k"),
        lambda: list(store.list()),
        lambda: store.ensure(),
    ]
    for call in calls:
        with pytest.raises(BackendUnavailable) as caught:
            call()
        message = str(caught.value)
        assert backend.s3_endpoint and backend.s3_endpoint in message
        assert "credentials" in message
        assert secret not in message and access_key not in message
    assert secret not in caplog.text and access_key not in caplog.text


def test_missing_credentials_say_how_to_provide_them(
    aws: BackendSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    with pytest.raises(BackendUnavailable, match="no AWS credentials found.*AWS_PROFILE"):
        S3Store(aws.bucket or "", "p", endpoint_url=aws.s3_endpoint).put("k", b"x")
    with pytest.raises(BackendUnavailable, match="no AWS credentials found.*AWS_PROFILE"):
        SqsQueues(endpoint_url=aws.sqs_endpoint).send("q", "x")


# -- buckets ----------------------------------------------------------------------------------


def test_missing_bucket_is_created_on_first_put(aws: BackendSetup) -> None:
    s3 = raw_client("s3", aws.s3_endpoint)
    for body in (b"bytes body", io.BytesIO(b"streamed body")):
        bucket = unique("remotejob-new-")
        store = S3Store(bucket, "p", endpoint_url=aws.s3_endpoint)

        info = store.put("first", body)

        assert info.size == len(store.get("first").read())
        assert s3.head_bucket(Bucket=bucket)["ResponseMetadata"]["HTTPStatusCode"] == 200


def test_missing_bucket_is_created_in_the_region(sqs: BackendSetup) -> None:
    bucket = unique("remotejob-eu-")
    store = S3Store(bucket, endpoint_url=sqs.s3_endpoint, region="eu-west-2")

    store.put("k", b"x")

    location = raw_client("s3", sqs.s3_endpoint).get_bucket_location(Bucket=bucket)
    assert location["LocationConstraint"] == "eu-west-2"


def test_missing_bucket_without_create_bucket_is_not_found(aws: BackendSetup) -> None:
    bucket = unique("remotejob-absent-")
    store = S3Store(bucket, endpoint_url=aws.s3_endpoint, create_bucket=False)

    if aws.kind == "aws":  # SeaweedFS creates a missing bucket on PutObject by itself
        with pytest.raises(NotFound, match=bucket):
            store.put("k", b"x")
    with pytest.raises(NotFound, match="'k'"):
        store.get("k")
    assert list(store.list()) == []
    store.delete("k")


def test_ensure_twice_and_existing_bucket_are_fine(aws: BackendSetup) -> None:
    fresh = S3Store(unique("remotejob-ens-"), endpoint_url=aws.s3_endpoint)
    fresh.ensure()
    fresh.ensure()
    existing = S3Store(aws.bucket or "", unique("p-"), endpoint_url=aws.s3_endpoint)
    existing.ensure()
    existing.put("k", b"x")
    S3Store(aws.bucket or "", endpoint_url=aws.s3_endpoint).ensure()
    assert existing.get("k").read() == b"x"


# -- queues -----------------------------------------------------------------------------------


def test_ensure_creates_queues_with_attributes_and_redrive_then_leaves_them(sqs: BackendSetup) -> None:
    base = unique("ens-")
    pending, dead = f"{base}-pending", f"{base}-dead"
    attributes = QueueAttributes(
        visibility_s=45, wait_s=7, retention_s=3600, dead_letter=dead, max_receive_count=3
    )

    SqsQueues(endpoint_url=sqs.sqs_endpoint).ensure([pending, dead], attributes)
    SqsQueues(endpoint_url=sqs.sqs_endpoint).ensure([pending, dead], QueueAttributes(visibility_s=5))

    client = raw_client("sqs", sqs.sqs_endpoint)
    attrs = client.get_queue_attributes(
        QueueUrl=client.get_queue_url(QueueName=pending)["QueueUrl"], AttributeNames=["All"]
    )["Attributes"]
    dead_arn = client.get_queue_attributes(
        QueueUrl=client.get_queue_url(QueueName=dead)["QueueUrl"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    assert (attrs["VisibilityTimeout"], attrs["ReceiveMessageWaitTimeSeconds"]) == ("45", "7")
    assert attrs["MessageRetentionPeriod"] == "3600"
    assert json.loads(attrs["RedrivePolicy"]) == {"deadLetterTargetArn": dead_arn, "maxReceiveCount": 3}


def test_redrive_to_a_missing_dead_letter_queue_is_not_found(sqs: BackendSetup) -> None:
    queues = SqsQueues(endpoint_url=sqs.sqs_endpoint)
    absent = unique("absent-")
    with pytest.raises(NotFound, match=absent):
        queues.ensure([unique("src-")], QueueAttributes(dead_letter=absent, max_receive_count=2))


def test_unknown_queue_says_to_run_init(sqs: BackendSetup) -> None:
    with pytest.raises(NotFound, match="remotejob init"):
        SqsQueues(endpoint_url=sqs.sqs_endpoint).depth(unique("nope-"))


def test_purge_twice_in_a_row_is_fine(sqs: BackendSetup) -> None:
    queues = SqsQueues(endpoint_url=sqs.sqs_endpoint)
    name = unique("purge-")
    queues.ensure([name], QueueAttributes())
    queues.send(name, "x")

    queues.purge(name)
    queues.purge(name)

    assert queues.receive(name) == []


# -- metadata and bodies ----------------------------------------------------------------------


def test_unicode_and_upper_case_metadata_round_trips_exactly(aws: BackendSetup) -> None:
    metadata = {
        "Content-Owner": "Zoë Ünïcode ☃ 𝄞",
        "UPPER": "MiXeD CaSe",
        "naïve name": "  padded\tvalue  ",
        "looks-encoded": "=?UTF-8?B?Zm9v?=",
        "plain": "ascii",
        "empty": "",
    }
    store = aws.make_store()

    store.put("meta", b"x", metadata, content_type="text/plain; charset=utf-8")

    assert store.head("meta").metadata == metadata
    with store.get("meta") as obj:
        assert (obj.metadata, obj.content_type) == (metadata, "text/plain; charset=utf-8")
    # What S3 holds is plain lower-case ASCII, so any S3 client can carry it unchanged.
    raw = raw_client("s3", aws.s3_endpoint).head_object(Bucket=aws.bucket, Key=f"{store.prefix}meta")
    assert all(k == k.lower() and k.isascii() and v.isascii() for k, v in raw["Metadata"].items())
    assert raw["Metadata"]["plain"] == "ascii"


class _Recording(io.RawIOBase):
    """A file reader that remembers the largest read asked of it."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.largest = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self.largest = max(self.largest, len(buffer))
        return self._file.readinto(buffer)

    def read(self, size: int | None = -1) -> bytes:
        self.largest = max(self.largest, size if size is not None and size >= 0 else 1 << 62)
        return self._file.read(size)

    def close(self) -> None:
        self._file.close()
        super().close()


def test_20_mib_file_streams_in_parts_and_out(aws: BackendSetup, tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with open(source, "wb") as out:
        for _ in range(20):
            chunk = os.urandom(MIB)
            digest.update(chunk)
            out.write(chunk)
    store = aws.make_store()

    with _Recording(source) as body:
        info = store.put("big", body, {"sha256": digest.hexdigest()})
        assert body.largest <= 8 * MIB, "read in bounded parts, never whole"

    assert info.size == 20 * MIB
    head = store.head("big")
    assert (head.size, head.metadata) == (20 * MIB, {"sha256": digest.hexdigest()})
    assert head.etag.endswith("-3"), "uploaded as a three-part multipart upload"

    class Sink:
        def __init__(self) -> None:
            self.digest, self.size = hashlib.sha256(), 0

        def write(self, data: bytes) -> int:
            self.digest.update(data)
            self.size += len(data)
            return len(data)

    sink = Sink()
    with store.get("big") as obj:
        shutil.copyfileobj(obj.open(), sink, MIB)  # type: ignore[misc]
    assert (sink.digest.hexdigest(), sink.size) == (digest.hexdigest(), 20 * MIB)

    copy = tmp_path / "copy.bin"
    store.get("big").save(str(copy))
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == digest.hexdigest()


def test_streamed_body_reads_like_a_file(aws: BackendSetup) -> None:
    store = aws.make_store()
    store.put("lines", b"one\ntwo\nthree\n")

    with store.get("lines") as obj:
        stream = obj.open()
        assert stream.read(4) == b"one\n"
        assert stream.readline() == b"two\n"
        assert list(stream) == [b"three\n"]
        assert stream.read() == b""
    assert stream.closed


def test_threads_share_one_lazily_created_client(aws: BackendSetup) -> None:
    store = aws.make_store()

    def work(i: int) -> bytes:
        store.put(f"t/{i}", str(i).encode())
        return store.get(f"t/{i}").read()

    with ThreadPoolExecutor(16) as pool:  # map re-raises the first failure here
        assert list(pool.map(work, range(16))) == [str(i).encode() for i in range(16)]
    assert len(list(store.list("t/"))) == 16
