"""The dashboard's index at scale: how long the initial sync of N jobs takes, how fast pages and
filters answer after it, and what a refresh costs in requests (idle, and with jobs changing).

    .venv/bin/python -m bench.ui [--jobs 100000] [--out bench/results/ui.json] [--no-report]

merges its results into ``bench/results/latest.json`` (when a full run saved one) and renders
BENCHMARKS.md again (section "Dashboard index").

On the embedded backend (a fresh folder): the jobs' status records are written straight into the
store (a mix of states, metadata and two status queues, as a busy system leaves them), then the
index syncs from the store exactly as ``remotejob ui`` does, and every page is requested through
Flask's test client (server-side time, no network). Requests are counted by wrapping the store.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import remotejob
from bench import report
from remotejob import keys, records
from remotejob.ui.app import create_app
from remotejob.ui.index import Index
from tests.faults import Faults, FaultyStore

STATES = ("completed",) * 7 + ("failed", "cancelled", "pending", "inprogress")
TEAMS = ("search", "billing", "media", "ml", "ops")


def requests(faults: Faults, before: Counter[str]) -> dict[str, int]:
    """The store requests made since ``before`` (a ``faults.ops()``), by method: ``{"list": 1}``."""
    return {op.removeprefix("store."): n for op, n in (faults.ops() - before).items()}


def seed(store: Any, n: int, now: float) -> list[str]:
    """Write ``n`` jobs' records as a week of work leaves them; return their ids."""
    rng = random.Random(7)
    ids = []
    for i in range(n):
        job_id = keys.new_key()
        created = now - 7 * 86400 * (1 - i / n)
        state = rng.choice(STATES)
        status = "pending" if rng.random() < 0.8 else "review"
        doc: dict[str, Any] = {"job": job_id, "state": state, "status": status, "created": created,
                               "updated": created + rng.uniform(0.05, 30), "meta": {
                                   "team": rng.choice(TEAMS), "customer": f"c{rng.randrange(5000)}"}}
        record = "queued"
        if state in ("completed", "failed", "cancelled"):
            record = "final"
            doc.update(worker=f"host{rng.randrange(20)}:{rng.randrange(1000, 9000)}", attempt=1,
                       started=created + 0.01, outputs={}, published=True, attempt_id=f"a{i}")
            if state == "failed":
                doc["error"] = "ValueError: bad input"
        elif state == "inprogress":
            record = "progress"
            doc.update(worker=f"host{rng.randrange(20)}:{rng.randrange(1000, 9000)}", attempt=1,
                       started=created + 0.01)
        else:
            doc["state"] = "pending"
        store.put(keys.record_key(job_id, record), records.encode(doc), content_type="application/json")
        ids.append(job_id)
    return ids


def timed(client: Any, path: str, repeats: int = 5) -> float:
    """The median server time of a page, seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        response = client.get(path)
        times.append(time.perf_counter() - start)
        assert response.status_code == 200, (path, response.status_code)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--out", type=Path, default=Path("bench/results/ui.json"))
    parser.add_argument("--no-report", dest="report", action="store_false",
                        help="Do not merge into bench/results/latest.json and BENCHMARKS.md.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        q = remotejob.connect("uibench", store=str(root / "store"), queues=str(root / "queues.db"),
                              statuses=("pending", "review", "completed"), journal=False)
        now = time.time()
        start = time.perf_counter()
        seed(q.object_store, args.jobs, now)
        seeded_s = time.perf_counter() - start
        faults = Faults()  # no rules: it only counts the index's requests to the store
        reader = remotejob.Queue("uibench", FaultyStore(q.object_store, faults), q.message_queue,
                                 statuses=("pending", "review", "completed"), journal=False)
        index = Index(reader.context, root / "ui.sqlite")
        start = time.perf_counter()
        index.refresh()
        sync_s = time.perf_counter() - start
        sync_calls = requests(faults, Counter())
        before = faults.ops()
        index.refresh()
        idle_calls = requests(faults, before)
        client = create_app(reader, index).test_client()
        day_ago = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now - 86400))
        pages = {
            "overview": "/",
            "jobs, first page": "/jobs",
            "jobs, state=failed": "/jobs?state=failed",
            "jobs, queue=review": "/jobs?queue=review",
            "jobs, meta team=ml": "/jobs?meta=team%3Dml",
            "jobs, meta customer=c42 (rare)": "/jobs?meta=customer%3Dc42",
            "jobs, last 24 h and failed": f"/jobs?since={day_ago}&state=failed",
            "workers": "/workers",
            "metrics": "/metrics",
        }
        times = {name: timed(client, path) for name, path in pages.items()}
        restart = Index(reader.context, root / "ui.sqlite")
        before = faults.ops()
        start = time.perf_counter()
        restart.refresh()
        restart_s = time.perf_counter() - start
        restart_calls = requests(faults, before)
    depth_requests = len(reader.statuses) + 1
    result = {
        "jobs": args.jobs, "seed_s": round(seeded_s, 1), "initial_sync_s": round(sync_s, 1),
        "initial_sync_requests": sync_calls, "restart_sync_s": round(restart_s, 1),
        "restart_sync_requests": restart_calls, "idle_refresh_store_requests": idle_calls,
        "idle_refresh_queue_requests": depth_requests,
        "pages_ms": {name: round(t * 1000, 1) for name, t in times.items()},
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if args.report:  # merged into the saved results, BENCHMARKS.md rendered again
        report.merge("ui", result)


if __name__ == "__main__":
    main()
