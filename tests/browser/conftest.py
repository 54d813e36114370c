"""Fixtures of the browser tests: Debian's Chromium driven by Playwright, and ``remotejob ui``
serving a seeded job system on the embedded backend.

Chromium is the system's (``apt-get install chromium``; ``.ci/run`` installs it), never one that
``playwright install`` downloads. Without it, or without Playwright or the ``ui`` extra, the tests
skip with a one-line reason (see ``test_ui_browser.py``).

The ui runs as a subprocess, as a user starts it (``remotejob --name N ui --port 0``), on the same
folder (``REMOTEJOB_HOME``) as the test process, which seeds jobs through the Python API:

- ``done-*``: completed, each with an output asset ``output`` (its input upper-cased);
- ``failed-*``: failed on their only attempt (``max_attempts=1``), so dead-lettered too;
- ``pending-*``: submitted after the worker stopped, so still waiting;
- ``script``: pending, with metadata ``note=<script>alert(1)</script>``;
- ``blue-*``: pending, with metadata ``color=blue`` (the others have none).

Tests that change a job (cancel, retry) use one reserved for them, so tests can share the system
and run in any order.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import remotejob
from tests.conftest import unique

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
SCRIPT = Path(sys.executable).with_name("remotejob")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
XSS = "<script>alert(1)</script>"


def wait_for_chromium(timeout: float = 300.0) -> bool:
    """True once Chromium is installed. ``.ci/run`` installs it while the package installs and
    the linters run, and names the installer in ``REMOTEJOB_CHROMIUM_INSTALL_PID``: while that
    process lives (at most ``timeout`` s), wait for the executable instead of skipping."""
    pid = os.environ.get("REMOTEJOB_CHROMIUM_INSTALL_PID", "")
    deadline = time.monotonic() + timeout
    while not CHROMIUM.exists() and pid.isdigit() and time.monotonic() < deadline:
        try:
            os.kill(int(pid), 0)
        except OSError:
            break  # the installer is gone: Chromium is there or never will be
        time.sleep(1)  # polling an installer we do not control; nothing to wait on instead
    return CHROMIUM.exists()


def expected_output(body: bytes) -> bytes:
    """What the seeding handler writes as a completed job's ``output`` asset."""
    return body.upper() + b"\n"


def _handler(job: remotejob.Job) -> list[dict[str, Any]]:
    with job.open() as src:
        body = src.read()
    if job.metadata.get("outcome") == "fail":
        raise RuntimeError(f"failing on purpose: {body.decode()}")
    return [{"key": "output", "body": expected_output(body)}]


@dataclass
class Seeded:
    """The seeded job system and the ui serving it."""

    name: str
    home: Path
    queue: remotejob.Queue
    url: str
    ids: dict[str, str] = field(default_factory=dict)
    """Job ids by seed label (``done-0``, ``failed-retry``, ``script``...)."""
    bodies: dict[str, bytes] = field(default_factory=dict)
    """Input bodies by job id."""

    def page_url(self, path: str) -> str:
        return self.url.rstrip("/") + path


@dataclass
class UiProcess:
    popen: subprocess.Popen[str]
    url: str
    stderr: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def start_ui(name: str, home: Path, tmp: Path, *args: str) -> UiProcess:
    """``remotejob --name NAME ui --port 0 ARGS`` on the embedded folder ``home``; wait for its
    ``remotejob ui: serving on URL`` line and return the process and URL."""
    env = {**os.environ, "REMOTEJOB_HOME": str(home), "PYTHONPATH": str(REPO)}
    for var in ("REMOTEJOB_STORE", "REMOTEJOB_QUEUES", "REMOTEJOB_NAME", "REMOTEJOB_UI_TOKEN"):
        env.pop(var, None)
    err = tmp / f"ui-{unique()}.stderr"
    index = tmp / f"{unique('index')}.sqlite"
    argv = [str(SCRIPT), "--name", name, "ui", "--port", "0", "--index", str(index), "--refresh", "0.5",
            *args]
    with err.open("w") as err_file:
        popen = subprocess.Popen(argv, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=err_file, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            lines.put(line)
        lines.put("")  # end of output

    threading.Thread(target=read, daemon=True).start()
    prefix = "remotejob ui: serving on "
    seen: list[str] = []
    try:
        while True:
            line = lines.get(timeout=60)
            if not line:
                raise AssertionError(f"remotejob ui exited {popen.wait(10)} before serving; stdout: "
                                     f"{''.join(seen)!r}; stderr: {err.read_text()}")
            if line.startswith(prefix):
                return UiProcess(popen, line[len(prefix):].strip(), err)
            seen.append(line)
    except BaseException:
        popen.kill()
        popen.wait(10)
        raise


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    tmp = tmp_path_factory.mktemp("ui")
    home = tmp / "home"
    name = unique("ui")
    q = remotejob.connect(name, home=home, max_attempts=1, visibility_timeout=5, wait_time=1)
    ids: dict[str, str] = {}
    bodies: dict[str, bytes] = {}

    def submit(label: str, **meta: str) -> None:
        body = f"job {label} of {name}".encode()
        ids[label] = q.submit({"body": body, **meta})
        bodies[ids[label]] = body

    for i in range(3):
        submit(f"done-{i}")
    for label in ("failed-retry", "failed-filter"):
        submit(label, outcome="fail")
    q.work(_handler, burst=True, handle_signals=False, retry_delay=0.1)
    for i in range(2):
        submit(f"pending-{i}")
    submit("pending-cancel")
    submit("pending-csrf")
    submit("script", note=XSS)
    for i in range(2):
        submit(f"blue-{i}", color="blue")
    for label in ("done-0", "failed-retry", "pending-0"):
        st = q.status(ids[label])
        assert st.state == label.split("-")[0].replace("done", "completed"), (label, st)
    ui = start_ui(name, home, tmp)
    try:
        yield Seeded(name, home, q, ui.url, ids, bodies)
    finally:
        ui.stop()
        q.close()
        # the ui's own log, for a failing test's report
        sys.stderr.write(ui.stderr.read_text()[-4000:])


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)  # page conditions on 2 busy cores: 5 s is too short

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (its own cookies) and page; a JavaScript dialog (alert, confirm)
    fails the test: the ui opens none, and an injected script would."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    page = context.new_page()
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    try:
        yield page
    finally:
        context.close()
    assert dialogs == [], f"the page opened JavaScript dialogs: {dialogs}"


def screenshot(page: Any, name: str) -> None:
    """Keep a full-page screenshot as ``test-artifacts/screenshots/<name>.png``."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
