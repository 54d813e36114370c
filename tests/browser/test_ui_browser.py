"""``remotejob ui`` in a real browser: headless Chromium (Debian's) driven by Playwright.

Each test is one flow a user goes through: load the pages, filter the jobs, open one, download an
output, cancel, retry, watch a live update, and the safety of what the pages show and accept.
Every page's screenshot is kept in ``test-artifacts/screenshots/`` (CI keeps that folder).

The test process never sleeps: Playwright's ``expect`` waits (up to 20 s) for a page condition.
"""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from tests.browser.conftest import CHROMIUM, XSS, Seeded, expected_output, screenshot, wait_for_chromium

if not wait_for_chromium():
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium", allow_module_level=True)
if importlib.util.find_spec("playwright") is None:
    pytest.skip("no Playwright: pip install -e '.[test]'", allow_module_level=True)
if importlib.util.find_spec("flask") is None or importlib.util.find_spec("waitress") is None:
    pytest.skip("the ui extra is missing: pip install -e '.[ui]'", allow_module_level=True)

from playwright.sync_api import expect  # noqa: E402

import remotejob  # noqa: E402
from tests.conftest import running  # noqa: E402


def _rows(page: Any) -> Any:
    return page.locator("table#jobs tr[data-job]")


def _row_ids(page: Any) -> set[str]:
    return set(_rows(page).evaluate_all("rows => rows.map(r => r.dataset.job)"))


def test_every_page_loads_and_is_kept_as_a_screenshot(page: Any, seeded: Seeded) -> None:
    ids = seeded.ids
    page.goto(seeded.url)
    for status in ("pending", "inprogress", "completed"):
        row = page.locator(f"table#queues tr[data-queue={status}]")
        for cell in ("waiting", "in-flight", "delayed", "oldest"):
            expect(row.locator(f"td.{cell}")).to_have_count(1)
    # the depths come from the queue: 6 seeded jobs wait in pending that no test touches; the
    # cancel, retry and live-update tests (sharing this system, in any order) may add up to 3
    expect(page.locator("tr[data-queue=pending] td.waiting")).to_have_text(re.compile(r"^\s*[6-9]\s*$"))
    expect(page.locator("#dead-count")).not_to_have_text("?")
    expect(page.locator("#rates")).to_contain_text("completed")
    expect(page.locator("svg#chart")).to_be_visible()
    screenshot(page, "overview")

    page.goto(seeded.page_url("/jobs"))
    for label in ("done-0", "done-1", "failed-filter", "pending-0", "blue-0", "script"):
        expect(page.locator(f"tr[data-job='{ids[label]}'] a.job-link")).to_have_count(1)
    expect(page.locator(f"tr[data-job='{ids['done-0']}'] td.state")).to_have_text("completed")
    expect(page.locator(f"tr[data-job='{ids['failed-filter']}'] td.state")).to_have_text("failed")
    screenshot(page, "jobs")

    done = ids["done-0"]
    page.goto(seeded.page_url(f"/jobs/{done}"))
    expect(page.locator("#state")).to_have_text("completed")
    expect(page.locator("#input-size")).to_contain_text(str(len(seeded.bodies[done])))
    expect(page.locator("table#attempts")).to_be_visible()
    expect(page.locator("ul#stages")).to_be_attached()
    expect(page.locator("#progress")).to_be_attached()
    expect(page.locator("table#outputs a.download")).to_have_text("output")
    screenshot(page, "job")

    failed = ids["failed-filter"]
    page.goto(seeded.page_url(f"/jobs/{failed}"))
    expect(page.locator("#state")).to_have_text("failed")
    expect(page.locator("pre#traceback")).to_contain_text("failing on purpose")
    screenshot(page, "job-failed")

    page.goto(seeded.page_url("/dead"))
    letter = page.locator(f"table#dead tr.dead-letter[data-job='{failed}']")
    expect(letter).to_have_count(1)
    expect(letter.locator("td.reason")).not_to_be_empty()
    expect(letter.locator("form.redrive-one")).to_have_count(1)
    expect(page.locator("form#redrive-all")).to_have_count(1)
    screenshot(page, "dead")

    page.goto(seeded.page_url("/workers"))
    # the seeding worker ran in this process: its status records name it HOST:PID
    me = f"{socket.gethostname()}:{os.getpid()}"
    row = page.locator(f"table#workers tr[data-worker='{me}']")
    expect(row.locator("td.host")).to_have_text(socket.gethostname())
    expect(row.locator("td.pid")).to_have_text(str(os.getpid()))
    expect(row.locator("td.running")).to_have_text("0")
    screenshot(page, "workers")


def test_filter_jobs_by_state_and_by_metadata(page: Any, seeded: Seeded) -> None:
    ids = seeded.ids
    page.goto(seeded.page_url("/jobs"))
    page.locator("form#filters select[name=state]").select_option("completed")
    page.locator("form#filters button[type=submit]").click()
    expect(page).to_have_url(re.compile(r"[?&]state=completed"))
    # exactly the three completed jobs: nothing else here completes
    expect(_rows(page)).to_have_count(3)
    assert _row_ids(page) == {ids["done-0"], ids["done-1"], ids["done-2"]}
    for state in _rows(page).locator("td.state").all_inner_texts():
        assert state.strip() == "completed"
    screenshot(page, "jobs-filtered-state")

    page.locator("form#filters select[name=state]").select_option("")
    page.locator("form#filters input[name=meta]").fill("color=blue")
    page.locator("form#filters button[type=submit]").click()
    expect(page).to_have_url(re.compile(r"[?&]meta=color%3Dblue"))
    expect(_rows(page)).to_have_count(2)
    assert _row_ids(page) == {ids["blue-0"], ids["blue-1"]}


def test_open_a_job_from_the_list(page: Any, seeded: Seeded) -> None:
    job_id = seeded.ids["done-1"]
    page.goto(seeded.page_url("/jobs"))
    page.locator(f"tr[data-job='{job_id}'] a.job-link").click()
    expect(page).to_have_url(seeded.page_url(f"/jobs/{job_id}"))
    expect(page.locator("#state")).to_have_text("completed")
    expect(page.locator("h1")).to_contain_text(job_id)


def test_download_an_output_gives_its_bytes(page: Any, seeded: Seeded) -> None:
    job_id = seeded.ids["done-2"]
    page.goto(seeded.page_url(f"/jobs/{job_id}"))
    link = page.locator("table#outputs a.download", has_text="output")
    with page.expect_download() as info:
        link.click()
    download = info.value
    assert download.suggested_filename == "output"
    assert open(download.path(), "rb").read() == expected_output(seeded.bodies[job_id])


def test_cancel_a_pending_job(page: Any, seeded: Seeded) -> None:
    job_id = seeded.ids["pending-cancel"]
    page.goto(seeded.page_url(f"/jobs/{job_id}"))
    expect(page.locator("#state")).to_have_text("pending")
    expect(page.locator("form#retry")).to_have_count(0)  # a pending job has nothing to retry
    page.locator("form#cancel button[type=submit]").click()
    expect(page.locator("#flash")).to_contain_text("cancelled")
    expect(page.locator("#state")).to_have_text("cancelled")
    expect(page.locator("form#cancel")).to_have_count(0)
    screenshot(page, "job-cancelled")
    # what the page says is what the job system holds
    assert seeded.queue.status(job_id).state == "cancelled"


def test_retry_a_failed_job_queues_it_again(page: Any, seeded: Seeded) -> None:
    job_id = seeded.ids["failed-retry"]
    page.goto(seeded.page_url(f"/jobs/{job_id}"))
    expect(page.locator("#state")).to_have_text("failed")
    page.locator("form#retry button[type=submit]").click()
    expect(page.locator("#flash")).to_contain_text(job_id)
    expect(page.locator("#state")).to_have_text("pending")
    # the failed attempt stays in the history, above the new run
    expect(page.locator("table#attempts tbody tr")).to_have_count(2)
    assert seeded.queue.status(job_id).state == "pending"


def test_the_jobs_page_shows_a_new_job_without_a_reload(page: Any, seeded: Seeded) -> None:
    page.goto(seeded.page_url("/jobs"))
    updated = page.locator("#updated-at")
    expect(updated).not_to_be_empty()
    before = updated.inner_text()
    # a reload would lose this marker: the live update must replace parts of the page only
    page.evaluate("window.__no_reload = true")
    job_id = seeded.queue.submit({"body": b"submitted while the page is open", "live": "yes"})
    row = page.locator(f"table#jobs tr[data-job='{job_id}']")
    expect(row).to_have_count(1)
    expect(row.locator("td.state")).to_have_text("pending")
    expect(updated).not_to_have_text(before)
    assert page.evaluate("window.__no_reload") is True


def test_a_running_job_shows_on_the_workers_page(page: Any, seeded: Seeded) -> None:
    # a job of its own status queue, so the worker takes no other test's job
    q = seeded.queue
    job_id = q.submit({"body": b"hold"}, status="inprogress")
    started, release = threading.Event(), threading.Event()

    def hold(job: remotejob.Job) -> list[dict[str, Any]]:
        started.set()
        release.wait(60)
        return [{"key": "output", "body": b"held"}]

    worker = remotejob.Worker(q, hold, status="inprogress", handle_signals=False)
    me = f"{socket.gethostname()}:{os.getpid()}"
    with running(worker):
        assert started.wait(30), "the worker did not start the job"
        page.goto(seeded.page_url("/workers"))
        expect(page.locator(f"table#workers tr[data-worker='{me}'] td.running")).to_have_text("1")
        release.set()
        # the page follows without a reload once the job ends
        expect(page.locator(f"table#workers tr[data-worker='{me}'] td.running")).to_have_text("0")
    assert q.wait(job_id, timeout=30, poll=0.1).state == "completed"


def test_metadata_with_a_script_tag_renders_as_text(page: Any, seeded: Seeded) -> None:
    job_id = seeded.ids["script"]
    # (the page fixture fails the test if any dialog opens)
    page.goto(seeded.page_url(f"/jobs/{job_id}"))
    expect(page.locator("table#meta")).to_contain_text(XSS)
    expect(page.locator("table#meta script")).to_have_count(0)
    page.goto(seeded.page_url("/jobs?meta=" + urllib.parse.quote(f"note={XSS}")))
    row = page.locator(f"tr[data-job='{job_id}']")
    expect(row).to_contain_text(XSS)
    expect(row.locator("script")).to_have_count(0)


def test_a_post_without_the_csrf_field_is_refused(page: Any, seeded: Seeded) -> None:
    job_id = seeded.ids["pending-csrf"]
    page.goto(seeded.page_url(f"/jobs/{job_id}"))  # the browser now holds the ui's cookies
    form = page.locator("form#cancel")
    action = form.get_attribute("action")
    assert action is not None
    target = urllib.parse.urljoin(page.url, action)
    # the browser's own cookies, the form's fields but not its csrf field
    response = page.request.post(target, form={"job": job_id}, max_redirects=0)
    assert response.status == 403
    # with a wrong token neither
    response = page.request.post(target, form={"job": job_id, "csrf": "x" * 43}, max_redirects=0)
    assert response.status == 403
    # nor from a client without the cookie, even with a token copied from the page
    token = form.locator("input[name=csrf]").get_attribute("value")
    data = urllib.parse.urlencode({"job": job_id, "csrf": token}).encode()
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(urllib.request.Request(target, data=data, method="POST"), timeout=10)  # noqa: S310
    assert refused.value.code == 403
    assert seeded.queue.status(job_id).state == "pending"
    page.reload()
    expect(page.locator("#state")).to_have_text("pending")
