"""Fixtures shared by every suite: real servers once per session (each of `./dev test`'s xdist
processes is a session of its own), and the ``backend`` fixture.

``backend`` is parametrised over the three settings the project supports; only the servers the
selected setting needs are started, so one missing server never hides the others:

- ``embedded``: a local folder and SQLite, in the test's own temporary directory;
- ``aws``: S3 and SQS on a moto server;
- ``aws-real-s3``: S3 on SeaweedFS (with an identity, so anonymous access is refused), SQS on moto.

Tests isolate by unique names (bucket prefixes, queue names), never by flushing shared state.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests import servers

BACKENDS = ("embedded", "aws", "aws-real-s3")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the tests marked slow (the chaos soak setting; CI does not)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backends(*kinds): run a backend-parametrised test on these settings only (say why)")
    config.addinivalue_line(
        "markers", "apis(*apis): run each backend-parametrised test through these APIs: 'sync' "
        "(remotejob.Queue) and/or 'async' (remotejob.aio.Queue seen through tests.aio_view.SyncView)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # @pytest.mark.apis("sync", "async") (a module's pytestmark, or a test's own, which wins):
    # every test using ``backend`` runs once per API; backend.connect() returns that API's queue
    marker = metafunc.definition.get_closest_marker("apis")
    if marker is not None and "api" in metafunc.fixturenames:
        metafunc.parametrize("api", marker.args, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # @pytest.mark.backends(...): a test that proves nothing more on the other settings is not
    # collected on them (deselected, not skipped: it is not a gap to report)
    kept, dropped = [], []
    for item in items:
        marker = item.get_closest_marker("backends")
        callspec = getattr(item, "callspec", None)
        kind = callspec.params.get("backend") if callspec is not None else None
        off = marker is not None and kind is not None and kind not in marker.args
        (dropped if off else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[servers.Server]:
    server = servers.start_moto()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seaweedfs_server() -> Iterator[servers.Server]:
    server = servers.start_seaweedfs()
    yield server
    server.stop()


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0,
               what: str | Callable[[], str] = "condition") -> Any:
    """Poll ``predicate`` every 0.02 s until it returns something truthy; return that. ``what``
    (or what it returns, read at the timeout) says what was awaited."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        if time.monotonic() > deadline:
            awaited = what if isinstance(what, str) else what()
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {awaited}")
        time.sleep(0.02)
    return result


@contextlib.contextmanager
def running(worker: Any) -> Iterator[threading.Thread]:
    """Run a ``remotejob.Worker`` on a thread; stop it (gracefully) and join it on exit."""
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        worker.stop()
        thread.join(30)
        assert not thread.is_alive(), "the worker did not stop"


def unique(prefix: str = "t") -> str:
    """A short unique name, valid as an SQS queue name part and an S3 key segment."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@dataclass
class BackendSetup:
    """One backend setting, ready for one test: builds stores, queues and connected Queues."""

    kind: str
    tmp: Path
    s3_endpoint: str | None = None
    sqs_endpoint: str | None = None
    bucket: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Environment for connect() and for subprocesses (endpoints, credentials, REMOTEJOB_HOME)."""
    api: str = "sync"
    """What connect() returns: "sync", a remotejob.Queue; "async", a remotejob.aio.Queue over
    it, seen through tests.aio_view.SyncView (closed when the test ends)."""
    views: list[Any] = field(default_factory=list)

    def make_store(self) -> Any:
        """A fresh, empty ObjectStore of this setting."""
        if self.kind == "embedded":
            from remotejob.backends.local import LocalStore

            return LocalStore(self.tmp / unique("store-"))
        from remotejob.backends.aws import S3Store

        assert self.bucket is not None
        return S3Store(self.bucket, unique("p-"), endpoint_url=self.s3_endpoint)

    def make_queues(self) -> Any:
        """A MessageQueue of this setting (callers use unique queue names)."""
        if self.kind == "embedded":
            from remotejob.backends.local import SqliteQueues

            return SqliteQueues(self.tmp / "home" / "queues.db")
        from remotejob.backends.aws import SqsQueues

        return SqsQueues(endpoint_url=self.sqs_endpoint)

    def store_url(self) -> str | None:
        """The ``store=`` argument for connect(): a unique prefix in the session's bucket."""
        if self.kind == "embedded":
            return None
        return f"s3://{self.bucket}/{unique('p-')}"

    def queues_url(self) -> str | None:
        """The ``queues=`` argument for connect()."""
        return None if self.kind == "embedded" else "sqs://"

    def connect(self, name: str | None = None, **options: Any) -> Any:
        """remotejob.connect() on this setting with a unique job system name."""
        import remotejob

        options.setdefault("store", self.store_url())
        options.setdefault("queues", self.queues_url())
        q = remotejob.connect(unique("q") if name is None else name, **options)
        if self.api == "sync":
            return q
        from tests.aio_view import async_view

        view = async_view(q)
        self.views.append(view)
        return view


@pytest.fixture
def api(request: pytest.FixtureRequest) -> str:
    """The API ``backend.connect()`` returns (see the ``apis`` marker); "sync" unless marked."""
    return str(getattr(request, "param", "sync"))


@pytest.fixture(params=BACKENDS)
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api: str
) -> Iterator[BackendSetup]:
    kind: str = request.param
    setup = BackendSetup(kind, tmp_path, api=api)
    env = {
        "REMOTEJOB_HOME": str(tmp_path / "home"),
        "AWS_ACCESS_KEY_ID": servers.ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": servers.SECRET_KEY,
        "AWS_DEFAULT_REGION": servers.REGION,
        "AWS_REGION": servers.REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    if kind != "embedded":
        moto = request.getfixturevalue("moto_server")
        s3 = moto if kind == "aws" else request.getfixturevalue("seaweedfs_server")
        setup.s3_endpoint = s3.endpoint
        setup.sqs_endpoint = moto.endpoint
        setup.bucket = _session_bucket(request, s3)
        env["AWS_ENDPOINT_URL_S3"] = s3.endpoint
        env["AWS_ENDPOINT_URL_SQS"] = moto.endpoint
    for name in ("REMOTEJOB_STORE", "REMOTEJOB_QUEUES", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    setup.env = env
    yield setup
    for view in setup.views:
        view.close()


_buckets: dict[str, str] = {}


def _session_bucket(request: pytest.FixtureRequest, server: servers.Server) -> str:
    """One bucket per server per session; tests isolate inside it by prefix."""
    if server.endpoint not in _buckets:
        name = unique("remotejob-test-")
        client = servers._client("s3", server.endpoint)
        client.create_bucket(Bucket=name)  # type: ignore[attr-defined]
        _buckets[server.endpoint] = name
    return _buckets[server.endpoint]
