"""Real S3/SQS servers on 127.0.0.1 for the tests: a moto server and SeaweedFS.

Each starts on free ports, in its own process group, and is stopped by pid. Nothing here
patches boto3: the AWS backend talks HTTP to these servers exactly as it would to AWS.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config

ACCESS_KEY = "AKIAREMOTEJOBTEST000"
SECRET_KEY = "remotejob-test-secret-0123456789abcdef"  # noqa: S105 - a test server's identity
REGION = "us-east-1"


@dataclass
class Server:
    """A running test server: its endpoint, its process and its scratch folder."""

    name: str
    endpoint: str
    process: subprocess.Popen[bytes]
    workdir: Path
    log: Path
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        """Stop the server's whole process group and remove its scratch folder."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        shutil.rmtree(self.workdir, ignore_errors=True)
        for port in self.extra.get("ports", "").split():  # SeaweedFS leaves its unix sockets behind
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(also_plus_10000: bool = False) -> int:
    """A free TCP port on 127.0.0.1 (and port+10000 free too, for SeaweedFS's gRPC)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if also_plus_10000:
            if port >= 55535 or not _port_free(port + 10000):
                port = 20000 + (port % 30000)
                if not (_port_free(port) and _port_free(port + 10000)):
                    continue
        return port
    raise RuntimeError("no free port found on 127.0.0.1")


def _binary(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed: run the README's test command")
    return found


def _client(service: str, endpoint: str) -> object:
    return boto3.client(
        service,  # type: ignore[call-overload]
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=2),
    )


def _wait_ready(server: Server, check: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            check()  # type: ignore[operator]
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last = exc
            time.sleep(0.25)
    log = server.log.read_text(errors="replace")[-3000:] if server.log.exists() else ""
    exited = server.process.poll() is not None
    server.stop()
    error = ServerExited if exited else RuntimeError
    raise error(f"{server.name} did not become ready: {last!r}\n{log}")


class ServerExited(RuntimeError):
    """The server process ended while starting (e.g. a port taken before it could bind)."""


def _started(start: Callable[[], Server], attempts: int = 3) -> Server:
    """``start()``, again on fresh ports if the server exits while starting: the test processes
    pick free ports independently, and another may bind one between our check and the server's
    own bind. A server that never answers is not retried (that is no port race)."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except ServerExited as exc:
            if attempt == attempts:
                raise
            print(f"retrying on other ports: {exc}", file=sys.stderr)
    raise AssertionError("unreachable")


def start_moto(env: dict[str, str] | None = None) -> Server:
    """Start ``moto_server`` (SQS, S3, IAM... over HTTP) on a free port.

    ``env`` adds to the server's environment, e.g. ``{"INITIAL_NO_AUTH_ACTION_COUNT": "4"}``:
    moto then serves that many requests without checking credentials and enforces IAM policies
    on every later one (the readiness check below spends one of them).
    """
    return _started(lambda: _start_moto(env))


def _start_moto(env: dict[str, str] | None) -> Server:
    workdir = Path(tempfile.mkdtemp(prefix="remotejob-moto-"))
    port = free_port()
    log = workdir / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv
            [_binary("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **env} if env else None,
        )
    server = Server("moto", f"http://127.0.0.1:{port}", proc, workdir, log)
    atexit.register(server.stop)  # also when the session ends without fixture teardown
    sqs = _client("sqs", server.endpoint)
    _wait_ready(server, lambda: sqs.list_queues())  # type: ignore[attr-defined]
    return server


def start_seaweedfs() -> Server:
    """Start SeaweedFS (``weed server -s3``) with an S3 identity, so anonymous access is refused."""
    return _started(_start_seaweedfs)


def _start_seaweedfs() -> Server:
    workdir = Path(tempfile.mkdtemp(prefix="remotejob-weed-"))
    identities = workdir / "identities.json"
    identities.write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "admin",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                    }
                ]
            }
        )
    )
    master, volume, filer, s3 = (free_port(also_plus_10000=True) for _ in range(4))
    data = workdir / "data"
    data.mkdir()
    log = workdir / "weed.log"
    argv = [
        _binary("weed"),
        f"-logdir={workdir}",  # glog writes its files here, not into /tmp
        "server",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.config={identities}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        # Every bucket is a collection that grows 7 volumes on its first write; the default slot
        # count is derived from free disk / 30 GB and runs out after one or two test buckets.
        "-master.volumeSizeLimitMB=64",
        "-volume.max=2000",
        "-webdav=false",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    ports = " ".join(str(p + offset) for p in (master, volume, filer, s3) for offset in (0, 10000))
    server = Server("seaweedfs", f"http://127.0.0.1:{s3}", proc, workdir, log, {"ports": ports})
    atexit.register(server.stop)
    s3c = _client("s3", server.endpoint)

    def ready() -> None:
        try:
            s3c.create_bucket(Bucket="remotejob-ready")  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001
            if "BucketAlreadyOwnedByYou" not in str(exc) and "BucketAlreadyExists" not in str(exc):
                raise
        s3c.put_object(Bucket="remotejob-ready", Key="probe", Body=b"ok")  # type: ignore[attr-defined]

    _wait_ready(server, ready, timeout=90)
    return server
