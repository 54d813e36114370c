"""The dashboard (``remotejob ui``) over every backend, through Flask's test client: what its pages
show, what its filters find, what its actions do, what it refuses, and what its index costs.
The same pages in a real browser: tests/browser/.

The index is refreshed explicitly (``index.refresh()``) where a test needs it up to date, and a
writer's journal is flushed with ``Queue.close()``: no sleeps.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import remotejob
from tests.conftest import BackendSetup, unique
from tests.faults import Faults, FaultyStore

flask = pytest.importorskip("flask", reason="the ui extra is not installed: pip install 'remotejob[ui]'")
prometheus_parser = pytest.importorskip("prometheus_client.parser")

from remotejob.errors import ConfigError  # noqa: E402
from remotejob.ui import is_loopback, serve  # noqa: E402
from remotejob.ui.app import create_app  # noqa: E402
from remotejob.ui.index import PAGE_SIZE, Index  # noqa: E402

Assets = list[dict[str, Any]]
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
ANY = "0.0.0.0"  # noqa: S104 - an address the ui must refuse to bind without a secret


def connect(backend: BackendSetup, **options: Any) -> remotejob.Queue:
    options.setdefault("visibility_timeout", 3)
    options.setdefault("wait_time", 1)
    options.setdefault("max_attempts", 1)
    return backend.connect(**options)  # type: ignore[no-any-return]


def handler(job: remotejob.Job) -> Assets:
    data = job.open().read()
    if data.startswith(b"fail"):
        raise ValueError("the input asked to fail")
    return [{"key": "output", "filename": "out.txt", "body": data.upper()}]


def run_all(q: remotejob.Queue, n: int) -> None:
    """Run ``n`` jobs to their outcome with a burst worker."""
    w = remotejob.Worker(q, handler, burst=True, max_jobs=n, handle_signals=False, retry_delay=0)
    w.run()


class Ui:
    """A dashboard app over a queue, with its index, a test client and a counted store."""

    def __init__(self, q: remotejob.Queue, **options: Any) -> None:
        self.q = q
        self.index = Index(q.context, None, refresh_s=60, rescan_s=3600)
        self.app = create_app(q, self.index, **options)
        self.client = self.app.test_client()

    def page(self, path: str, status: int = 200, **kwargs: Any) -> str:
        response = self.client.get(path, **kwargs)
        assert response.status_code == status, response.get_data(as_text=True)[:500]
        return response.get_data(as_text=True)

    def csrf(self, path: str = "/") -> str:
        match = CSRF.search(self.page(path))
        assert match is not None, "the page has no form with a CSRF token"
        return match[1]

    def post(self, path: str, data: dict[str, str], status: int = 302) -> Any:
        response = self.client.post(path, data=data)
        assert response.status_code == status, response.get_data(as_text=True)[:500]
        return response

    def job_ids(self, path: str) -> list[str]:
        return re.findall(r'<tr data-job="([^"]+)"', self.page(path))


@pytest.fixture
def ui_factory() -> Iterator[Callable[..., Ui]]:
    made: list[Ui] = []

    def make(q: remotejob.Queue, **options: Any) -> Ui:
        made.append(Ui(q, **options))
        return made[-1]

    yield make
    for ui in made:
        ui.index.stop()


def test_pages_show_every_job_with_its_state_metadata_and_outputs(
    backend: BackendSetup, ui_factory: Callable[..., Ui]
) -> None:
    q = connect(backend)
    done = q.submit({"body": b"hello", "colour": "blue"})
    bad = q.submit({"body": b"fail please", "colour": "red"})
    run_all(q, 2)
    waiting = q.submit({"body": b"later", "colour": "green"})
    q.close()
    ui = ui_factory(q)
    ui.index.refresh()

    assert set(ui.job_ids("/jobs")) == {done, bad, waiting}
    assert ui.job_ids("/jobs")[0] == waiting, "the newest job comes first"
    overview = ui.page("/")
    pending_row = re.search(r'<tr data-queue="pending">(.*?)</tr>', overview, re.S)
    assert pending_row is not None
    assert re.search(r'class="n waiting">1<', pending_row[1]), "one message waits in pending"
    assert 'id="dead-count">1<' in overview, "the failed job's message is a dead letter"

    page = ui.page(f"/jobs/{bad}")
    assert 'id="state" class="st st-failed">failed<' in page
    assert "the input asked to fail" in page
    assert "in handler" in page, "the traceback names the handler"
    assert "<th>colour</th><td>red</td>" in page
    assert "11 bytes" in page, "the input size"

    page = ui.page(f"/jobs/{done}")
    link = re.search(r'class="download" href="([^"]+)"', page)
    assert link is not None
    response = ui.client.get(link[1].replace("&amp;", "&"))
    assert response.status_code == 200
    assert response.data == b"HELLO"
    assert "attachment" in response.headers["Content-Disposition"]

    dead = ui.page("/dead")
    assert f'data-job="{bad}"' in dead and "the input asked to fail" in dead
    workers = ui.page("/workers")
    assert re.search(r'<tr data-worker="[^"]+:\d+">', workers), "the worker that ran the jobs"
    assert ui.page("/jobs/no-such-job", status=404)


def test_filters_find_jobs_by_state_queue_metadata_and_time(
    backend: BackendSetup, ui_factory: Callable[..., Ui]
) -> None:
    q = connect(backend, statuses=("pending", "review"))
    a = q.submit({"body": b"one", "team": "a"})
    b = q.submit({"body": b"fail two", "team": "b"})
    run_all(q, 2)
    c = q.submit({"body": b"three", "team": "a"}, status="review")
    q.close()
    ui = ui_factory(q)
    ui.index.refresh()

    assert ui.job_ids("/jobs?state=completed") == [a]
    assert ui.job_ids("/jobs?state=failed") == [b]
    assert ui.job_ids("/jobs?queue=review") == [c]
    assert set(ui.job_ids("/jobs?meta=team%3Da")) == {a, c}
    assert ui.job_ids("/jobs?meta=team%3Da&state=pending") == [c]
    assert ui.job_ids("/jobs?since=2000-01-01T00:00&until=2001-01-01T00:00") == []
    assert len(ui.job_ids("/jobs?since=2000-01-01T00:00")) == 3
    later = q.submit_many([{"body": b"four"}], delay=3600)  # a batch: its manifest stands for it
    keyed = q.submit({"body": b"five", "key": f"k-{a}"}, delay=3600)  # its own queued record
    q.close()
    ui.index.refresh()
    assert set(ui.job_ids("/jobs?state=scheduled")) == {*later, keyed}
    page = ui.page("/jobs?state=bogus")
    assert "unknown state" in page, "a bad filter says what is wrong"
    assert "use YYYY-MM-DDTHH:MM" in ui.page("/jobs?since=yesterday")


def test_the_jobs_list_pages_through_every_job_once(
    backend: BackendSetup, ui_factory: Callable[..., Ui]
) -> None:
    q = connect(backend)
    ids = q.submit_many([{"body": b"x"} for _ in range(PAGE_SIZE + 7)])
    q.close()
    ui = ui_factory(q)
    ui.index.refresh()
    first = ui.page("/jobs")
    seen = re.findall(r'<tr data-job="([^"]+)"', first)
    assert len(seen) == PAGE_SIZE
    more = re.search(r'id="next-page" href="([^"]+)"', first)
    assert more is not None
    second = ui.job_ids(more[1].replace("&amp;", "&"))
    assert sorted(seen + second) == sorted(ids)


def test_the_index_follows_the_journal_and_costs_one_list_when_nothing_changes(
    backend: BackendSetup, ui_factory: Callable[..., Ui]
) -> None:
    q = connect(backend)
    first = q.submit({"body": b"first"})
    q.close()
    faults = Faults()  # no rules: it only counts the reader's requests to the store
    reader = remotejob.Queue(q.name, FaultyStore(q.object_store, faults), q.message_queue, journal=False)
    ui = ui_factory(reader)
    ui.index.refresh()  # the initial sync
    assert ui.job_ids("/jobs") == [first]

    before = faults.ops()
    ui.index.refresh()
    assert faults.ops() - before == Counter({"store.list": 1}), \
        "an idle refresh lists the journal once, nothing else"

    second = q.submit({"body": b"second"})
    run_all(q, 2)
    q.close()
    before = faults.ops()
    ui.index.refresh()
    assert (faults.ops() - before)["store.list"] == 1, "no listing of jobs/: the journal names what changed"
    assert ui.job_ids("/jobs") == [second, first]
    assert ui.job_ids("/jobs?state=completed") == [second, first]


@pytest.mark.backends("embedded", "aws-real-s3")  # the ui over the public API; CI time
def test_actions_cancel_retry_redrive_and_purge(
    backend: BackendSetup, ui_factory: Callable[..., Ui], caplog: pytest.LogCaptureFixture
) -> None:
    q = connect(backend)
    waiting = q.submit({"body": b"wait"})
    ui = ui_factory(q)
    ui.index.refresh()
    token = ui.csrf(f"/jobs/{waiting}")
    ui.post("/actions/cancel", {"csrf": token, "job": waiting})
    assert q.status(waiting).state == "cancelled"
    page = ui.page(f"/jobs/{waiting}")
    assert 'id="state" class="st st-cancelled"' in page
    assert f"job {waiting} cancelled" in page, "the flash message says what happened"
    assert f"ui action cancel {waiting} from 127.0.0.1: job {waiting} cancelled" in caplog.text, \
        "every action is logged"

    bad1 = q.submit({"body": b"fail 1"})
    bad2 = q.submit({"body": b"fail 2"})
    run_all(q, 3)  # drops the cancelled job's message (kept for a retry), fails the other two
    ui.post("/actions/retry", {"csrf": token, "job": waiting})
    assert q.status(waiting).state == "pending"
    assert q.status(waiting).run == 1

    assert {d.job for d in q.dead_letters()} == {bad1, bad2}
    ui.post("/actions/redrive", {"csrf": token, "job": bad1})
    assert {d.job for d in q.dead_letters()} == {bad2}, "redrive one sends back only that job"
    assert q.status(bad1).state == "pending"
    ui.post("/actions/redrive", {"csrf": token})
    assert q.dead_letters() == []
    assert q.status(bad2).state == "pending"

    ui.post("/actions/purge", {"csrf": token, "status": "pending", "confirm": "nope"})
    assert q.message_queue.depth(q.queue_name("pending")).waiting == 3, "a wrong confirmation purges nothing"
    ui.post("/actions/purge", {"csrf": token, "status": "pending", "confirm": "pending"})
    assert q.message_queue.depth(q.queue_name("pending")).waiting == 0
    assert "ui action purge pending" in caplog.text


@pytest.mark.backends("embedded", "aws-real-s3")  # the app's own checks: the backend only stores
def test_posts_without_the_csrf_token_or_in_read_only_mode_are_refused(
    backend: BackendSetup, ui_factory: Callable[..., Ui]
) -> None:
    q = connect(backend)
    job = q.submit({"body": b"x"})
    ui = ui_factory(q)
    ui.index.refresh()
    ui.page(f"/jobs/{job}")  # gets the CSRF cookie
    ui.post("/actions/cancel", {"job": job}, status=403)
    ui.post("/actions/cancel", {"job": job, "csrf": "forged"}, status=403)
    token = ui.csrf(f"/jobs/{job}")
    response = ui.client.post("/actions/cancel", data={"job": job, "csrf": token},
                              headers={"Origin": "http://evil.example"})
    assert response.status_code == 403, "a cross-origin post is refused"
    assert q.status(job).state == "pending"

    ro = ui_factory(q, read_only=True)
    page = ro.page(f"/jobs/{job}")
    assert "<form" not in page, "read-only pages show no action"
    assert "<form" not in ro.page("/").split("</header>")[1].replace('<form id="filters"', "")
    ro.post("/actions/cancel", {"job": job, "csrf": "any"}, status=403)
    assert q.status(job).state == "pending"


@pytest.mark.backends("embedded", "aws-real-s3")  # the app's own checks: the backend only stores
def test_metadata_renders_as_text(backend: BackendSetup, ui_factory: Callable[..., Ui]) -> None:
    q = connect(backend)
    script = "<script>alert(1)</script>"
    job = q.submit({"body": b"x", "note": script, "key": f"k{unique()}"})
    q.close()
    ui = ui_factory(q)
    ui.index.refresh()
    for path in ("/jobs", f"/jobs/{job}", "/jobs?meta=note%3D" + script):
        page = ui.page(path)
        assert script not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


@pytest.mark.backends("embedded", "aws-real-s3")  # the app's own checks: the backend only stores
def test_a_token_is_required_when_one_is_set(backend: BackendSetup, ui_factory: Callable[..., Ui]) -> None:
    q = connect(backend)
    ui = ui_factory(q, secret="s3cret-token")
    assert ui.client.get("/").status_code == 401
    assert ui.client.get("/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert ui.client.get("/", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    basic = "Basic " + base64.b64encode(b"anyone:s3cret-token").decode()
    assert ui.client.get("/", headers={"Authorization": basic}).status_code == 200
    fresh = ui.app.test_client()
    assert fresh.get("/?token=s3cret-token").status_code == 200
    assert fresh.get("/jobs").status_code == 200, "the token is kept in a cookie"


@pytest.mark.backends("embedded", "aws-real-s3")  # the app's own checks: the backend only stores
def test_serving_beyond_loopback_needs_a_secret(backend: BackendSetup) -> None:
    q = connect(backend)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback(ANY) and not is_loopback("192.168.1.5")
    with pytest.raises(ConfigError, match="REMOTEJOB_UI_TOKEN"):
        serve(q, host=ANY, port=0)


def test_metrics_count_the_indexed_jobs(backend: BackendSetup, ui_factory: Callable[..., Ui]) -> None:
    q = connect(backend)
    q.submit({"body": b"a"})
    q.submit({"body": b"fail b"})
    q.submit({"body": b"c"})
    run_all(q, 3)
    q.submit({"body": b"d"})
    q.close()
    ui = ui_factory(q)
    ui.index.refresh()
    text = ui.page("/metrics")
    jobs = {(s.labels["queue"], s.labels["state"]): s.value
            for family in prometheus_parser.text_string_to_metric_families(text)
            if family.name == "remotejob_index_jobs" for s in family.samples}
    assert jobs[("pending", "completed")] == 2
    assert jobs[("pending", "failed")] == 1
    assert jobs[("pending", "pending")] == 1
    waiting = {s.labels["queue"]: s.value for family in prometheus_parser.text_string_to_metric_families(text)
               for s in family.samples
               if family.name == "remotejob_queue_messages" and s.labels["kind"] == "waiting"}
    assert waiting["pending"] == 1
    assert waiting["dead"] == 1


def test_the_command_serves_and_refuses_to_bind_beyond_loopback_without_a_secret(
    backend: BackendSetup,
) -> None:
    if backend.kind != "embedded":
        pytest.skip("the command's plumbing is the same on every backend")
    q = connect(backend)
    job = q.submit({"body": b"x"})
    q.close()
    env = {**os.environ, **backend.env}
    args = [sys.executable, "-m", "remotejob", "--name", q.name]
    refused = subprocess.run([*args, "ui", "--host", ANY, "--port", "0"], capture_output=True,
                             text=True, timeout=60, env=env)
    assert refused.returncode == 2
    assert "REMOTEJOB_UI_TOKEN" in refused.stderr
    with subprocess.Popen([*args, "ui", "--port", "0", "--index", str(backend.tmp / "ui.sqlite")],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            url = re.search(r"serving on (http://\S+)", line)
            assert url is not None, line
            import urllib.request

            with urllib.request.urlopen(url[1] + "healthz", timeout=30) as response:  # noqa: S310
                assert response.read() == b"ok\n"
            with urllib.request.urlopen(url[1] + f"jobs/{job}", timeout=30) as response:  # noqa: S310
                assert job in response.read().decode()
        finally:
            proc.terminate()
            proc.wait(30)
