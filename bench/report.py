"""Render ``BENCHMARKS.md`` from the raw results of :mod:`bench.run`.

``python -m bench.report [--results bench/results/latest.json] [--out BENCHMARKS.md]`` renders
it again from saved results (e.g. after editing this file). The section
``## What we changed and what it bought`` of an existing report is carried over verbatim.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LEAD_SECTION = "## What we changed and what it bought"
LEAD_PLACEHOLDER = "_To be written: the changes to remotejob these numbers reflect, and what each bought._"
PACKAGES = ("boto3", "botocore", "moto", "celery", "kombu", "huey", "pycurl")
SETTINGS = {"embedded": "embedded (folder + SQLite)", "moto": "moto S3 + SQS",
            "seaweedfs": "SeaweedFS S3 + moto SQS"}
MODES = {"batch": "`submit_many` (batch)", "one_by_one": "`submit` (one by one)"}


# -- the environment --------------------------------------------------------------------------


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=20,  # noqa: S603
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return done.stdout.strip() if done.returncode == 0 else f"unavailable ({done.stderr.strip()[:200]})"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return None


def _weed_version() -> str:
    weed = Path(sys.executable).parent / "weed"
    text = _run([str(weed) if weed.exists() else "weed", "version"])
    return text.splitlines()[0] if text else "unknown"


def environment() -> dict[str, Any]:
    """The machine, the interpreter and the versions of everything measured."""
    commit = _run(["git", "rev-parse", "--short=12", "HEAD"])
    dirty = _run(["git", "status", "--porcelain", "--", "remotejob"])
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    versions["seaweedfs"] = _weed_version()
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(), "cores": os.cpu_count(), "ram_gib": _ram_gib(),
        "platform": platform.platform(), "python": platform.python_version(),
        "remotejob_commit": commit, "remotejob_dirty": bool(dirty) and not dirty.startswith("unavailable"),
        "versions": versions, "load_before": os.getloadavg(),
    }


# -- small helpers ----------------------------------------------------------------------------


def get(doc: Any, *path: str) -> Any:
    """``doc[p0][p1]...``, or None where a step is missing (or the value is an error)."""
    for step in path:
        if not isinstance(doc, Mapping) or step not in doc:
            return None
        doc = doc[step]
    return doc


def failure(doc: Any) -> str | None:
    """The first line of a recorded failure, or None if ``doc`` is a result."""
    if isinstance(doc, Mapping) and "error" in doc:
        return str(doc["error"]).splitlines()[0][:300]
    return None


def num(value: Any, digits: int = 1) -> str:
    """A number for a table, ``-`` if missing."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def ratio(a: Any, b: Any) -> float | None:
    """``a / b``, or None if either is missing or ``b`` is 0."""
    if isinstance(a, int | float) and isinstance(b, int | float) and b:
        return float(a) / float(b)
    return None


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def one_line(result: Mapping[str, Any]) -> str:
    """A short summary of any result, for the progress log."""
    parts = []
    for key in ("jobs_per_s", "drain_jobs_per_s", "p50_ms", "p95_ms", "receives", "upload_mb_s",
                "download_mb_s", "peak_rss_mib"):
        if isinstance(result.get(key), int | float):
            parts.append(f"{key}={result[key]:.1f}")
    cpu = result.get("cpu_ms_per_job")
    if isinstance(cpu, Mapping):
        parts += [f"{phase}_cpu_ms/job={v:.2f}" for phase, v in cpu.items() if isinstance(v, float)]
    per_job = result.get("requests_per_job")
    if isinstance(per_job, Mapping) and isinstance(per_job.get("total"), Mapping):
        total = per_job["total"]
        parts.append(f"SQS/job={total.get('SQS', 0):.2f} S3/job={total.get('S3', 0):.2f}")
    return " ".join(parts) or "done"


# -- sections ---------------------------------------------------------------------------------


def section_machine(meta: Mapping[str, Any]) -> str:
    """The machine and the versions."""
    versions = meta.get("versions", {})
    commit = str(meta.get("remotejob_commit", "?"))
    if meta.get("remotejob_dirty"):
        commit += " + uncommitted changes in remotejob/"
    load = [meta.get("load_before"), meta.get("load_after")]
    loads = " / ".join(", ".join(f"{x:.2f}" for x in la) if la else "?" for la in load)
    ram = meta.get("ram_gib")
    rows = [
        ["CPU", f"{meta.get('cpu', '?')}, {meta.get('cores', '?')} cores"],
        ["RAM", f"{ram:.1f} GiB" if ram else "?"],
        ["Load average (1, 5, 15 min) before / after", loads],
        ["OS", str(meta.get("platform", "?"))],
        ["Python", str(meta.get("python", "?"))],
        ["remotejob", f"git {commit}"],
        *([name, str(versions.get(name, "?"))] for name in (*PACKAGES, "seaweedfs")),
    ]
    return "## Machine and versions\n\n" + table(["", ""], rows)


def section_counts(results: Mapping[str, Any]) -> str:
    """What ran, how often, and why the counts are what they are."""
    plan = results.get("plan", {})
    skipped = results.get("skipped") or []
    lines = [
        "## What ran",
        "",
        f"- **Throughput** (remotejob): {num(plan.get('jobs'))} jobs per run on the embedded setting and "
        f"{num(plan.get('aws_jobs'))} on moto and SeaweedFS, {plan.get('runs')} run(s) per setting and "
        "submission mode, medians reported. Each job has a 100-byte body and a no-op handler (it does not "
        "read its input); status tracking is on (the default statuses `pending`, `inprogress`, "
        "`completed`). One worker process (`remotejob.Worker`, concurrency 8, `max_jobs` = the jobs) "
        "starts first and waits idle; the clock starts just before the first submit (from the "
        "benchmark process, which is the requester), the worker exits once it has finished every job, "
        "then the requester reads each job's status once (`q.status(id)`, 8 threads) and checks it is "
        "`completed`. **jobs/s** = jobs / (first submit → last status read). **drain jobs/s** = jobs / "
        "(first submit → the worker's `run()` returning), comparable with peers that read no result.",
        f"- Why {num(plan.get('aws_jobs'))} jobs on moto and SeaweedFS (whose SQS is moto too): moto's "
        "SendMessageBatch and ReceiveMessage get slower in proportion to the messages already in the "
        "queue (on the machine this was written on, a SendMessageBatch took ~40 ms into an empty queue "
        "and ~240 ms into one holding 2,000 messages; a ReceiveMessage at 2,000 took ~650 ms). 2,000 "
        "jobs submitted at once take about two minutes per run there and measure moto, not the job "
        "system; for the same reason one-by-one submission, which keeps the queue short, can beat the "
        "batch on moto. Celery and the boto3 floor get the same count on the same server.",
        f"- **Peers**, {plan.get('runs')} run(s) each (median), on the same moto server: Celery 5 on "
        "SQS without a result backend "
        f"({num(plan.get('aws_jobs'))} tasks), Celery with the S3 result backend "
        f"({num(plan.get('celery_s3_jobs'))} tasks: the submitter `.get()`s each result in turn, polling "
        f"every 0.5 s, so it gets fewer), the raw boto3 floor ({num(plan.get('aws_jobs'))} messages), "
        f"and huey's SqliteHuey ({num(plan.get('jobs'))} tasks). See `bench/peers.py` for exactly what "
        "each one times.",
        "- **huey**, configured as `SqliteHuey(filename, results=True, store_none=False)` (its result store "
        "on) with a consumer of 8 threads (`Consumer(workers=8, worker_type='thread')`, as `huey_consumer -w "
        "8 -k thread`, default polling) in its own process; the no-op task returns its number, so every "
        "task stores a result. Measured as ours is: the clock starts just before the first enqueue, the "
        "consumer notes when its last task ran, then the submitter reads every result once "
        "(`Result.get()`, checked) and the clock stops at the last read: **jobs/s** = tasks / (first "
        "enqueue → last result read), as ours is jobs / (first submit → last status read).",
        f"- **AWS-latency profile**: {num(plan.get('aws_latency_jobs'))} jobs per run for ours (batch and "
        f"one by one), Celery without results and the boto3 floor, "
        f"{num(plan.get('aws_latency_celery_s3_jobs'))} for Celery with S3 results, "
        f"{plan.get('aws_latency_runs')} run(s) each (median), and {plan.get('latency_n')} latency jobs "
        "each for ours and Celery, all through one latency-injecting proxy in front of moto (fewer jobs "
        "than on moto: every request now costs tens of milliseconds).",
        "- **CPU per job** comes with every throughput run (see that section).",
        f"- **Latency**: {plan.get('latency_n')} jobs one at a time on an idle worker; **idle cost**: a "
        f"worker on an empty queue for {num(plan.get('idle_s'), 0)} s; **large bodies**: "
        f"{num((plan.get('large_bytes') or 0) / 1024**2, 0)} MiB (`bench/large.py`).",
    ]
    if skipped:
        lines.append(f"- Skipped in this run: {', '.join(skipped)}.")
    return "\n".join(lines)


def _peer(results: Mapping[str, Any], name: str) -> Any:
    if name == "huey":
        return results.get("huey")
    peers = results.get("peers")
    return peers.get(name) if isinstance(peers, Mapping) and "error" not in peers else peers


def _ours(results: Mapping[str, Any], setting: str, mode: str) -> Any:
    return get(results, "throughput", setting, mode)


def section_throughput(results: Mapping[str, Any]) -> str:
    """Ours per setting and mode, then the peers, then the ratios."""
    rows = []
    for setting, label in SETTINGS.items():
        for mode, mode_label in MODES.items():
            doc = _ours(results, setting, mode)
            if doc is None:
                continue
            why = failure(doc)
            run = doc.get("median_run", {})
            if why:
                rows.append([label, mode_label, "-", f"failed: {why}", "", "", "", "", ""])
                continue
            rows.append([
                label, mode_label, num(run.get("jobs")), f"**{num(doc['jobs_per_s'])}**",
                f"{num(doc['min_jobs_per_s'])}–{num(doc['max_jobs_per_s'])}", num(doc["drain_jobs_per_s"]),
                num(run.get("submit_s"), 2), num(run.get("read_s"), 2),
                f"{doc['ok_runs']}/{len(doc['runs'])}",
            ])
    out = ["## Throughput", "", "remotejob, small no-op jobs, one worker process (concurrency 8):", "",
           table(["setting", "submission", "jobs", "jobs/s (median)", "min–max", "drain jobs/s",
                  "submit s", "status reads s", "runs ok"], rows)]
    peer_rows = []
    for name, label, server in (
        ("celery_sqs", "Celery 5, SQS broker, no results", "moto"),
        ("celery_sqs_s3", "Celery 5, SQS broker, S3 result backend", "moto"),
        ("boto3_floor", "raw boto3 floor (SendMessageBatch, ReceiveMessage, DeleteMessageBatch)", "moto"),
        ("huey", "huey SqliteHuey, results stored and read, 8 threads", "local SQLite"),
    ):
        doc = _peer(results, name)
        if doc is None:
            continue
        why = failure(doc)
        peer_rows.append([label, server, num(get(doc, "jobs")),
                          f"failed: {why}" if why else num(get(doc, "jobs_per_s")),
                          str(get(doc, "completion") or "")])
    if peer_rows:
        out += ["", "Peers, on the same servers in the same run:", "",
                table(["system", "server", "jobs", "jobs/s", "completion measured as"], peer_rows)]
    ratio_rows = []
    for peer, peer_label, setting in (
        ("huey", "huey SqliteHuey", "embedded"),
        ("celery_sqs", "Celery SQS, no results", "moto"),
        ("celery_sqs_s3", "Celery SQS + S3 results", "moto"),
        ("boto3_floor", "raw boto3 floor", "moto"),
    ):
        peer_rate = get(_peer(results, peer), "jobs_per_s")
        if peer_rate is None:
            continue
        for mode, mode_label in MODES.items():
            ours_rate = get(_ours(results, setting, mode), "jobs_per_s")
            r = ratio(ours_rate, peer_rate)
            ratio_rows.append([f"ours {SETTINGS[setting]}, {mode_label}", peer_label, num(ours_rate),
                               num(peer_rate), f"**{r:.2f}×**" if r is not None else "-"])
    if ratio_rows:
        out += ["", "Ours as a ratio to each peer (jobs/s ÷ jobs/s; ours with status tracking and every "
                "status read):", "",
                table(["ours", "peer", "ours jobs/s", "peer jobs/s", "ratio"], ratio_rows)]
    return "\n".join(out)


def _per_job_table(per_job: Mapping[str, Mapping[str, float]]) -> str:
    phases = [p for p in ("submit", "worker", "reads", "total") if p in per_job]
    ops = sorted({op for p in phases for op in per_job[p] if op not in ("SQS", "S3")})
    rows = [[f"`{op}`", *(num(per_job[p].get(op) or None, 3) for p in phases)] for op in ops]
    rows += [[f"**{service} total**", *(f"**{num(per_job[p].get(service, 0.0), 3)}**" for p in phases)]
             for service in ("SQS", "S3")]
    names = {"submit": "submit (requester)", "worker": "take, heartbeat, complete (worker)",
             "reads": "status read (requester)", "total": "whole life"}
    return table(["operation", *(names[p] for p in phases)], rows)


def section_requests(results: Mapping[str, Any]) -> str:
    """Requests per job by operation and phase, from each setting's median run."""
    out = ["## Requests per job", "",
           "HTTP requests per job (botocore's `before-send` event via "
           "`remotejob.backends.aws.request_counts()`, retries included), from the median run; "
           "the requester's are counted in the benchmark process phase by phase, the worker's in the "
           "worker process. Setup (`q.init()`: bucket and queues) is excluded on both sides. A "
           "receive that returns several jobs is shared between them, hence fractions. No job here "
           "heartbeats: a worker extends a job's visibility (and records it `inprogress`) only once it "
           "has run for a third of the visibility timeout (10 s), so no-op jobs show none."]
    for setting in ("moto", "seaweedfs"):
        for mode, mode_label in MODES.items():
            per_job = get(_ours(results, setting, mode), "median_run", "requests_per_job")
            if per_job:
                out += ["", f"### {SETTINGS[setting]}, {mode_label}", "", _per_job_table(per_job)]
    peer_rows = []
    for name, label in (("celery_sqs", "Celery SQS, no results"),
                        ("celery_sqs_s3", "Celery SQS + S3 results"), ("boto3_floor", "raw boto3 floor")):
        per_job = get(_peer(results, name), "requests_per_job")
        if not isinstance(per_job, Mapping):
            continue
        by_service = {s: sum(v for op, v in per_job.items() if op.startswith(s + ".")) for s in ("SQS", "S3")}
        detail = ", ".join(f"`{op}` {v:.2f}" for op, v in per_job.items() if "." in op)
        peer_rows.append([label, num(by_service["SQS"], 2), num(by_service["S3"], 2), detail])
    if peer_rows:
        out += ["", "### Peers (whole life, both processes)", "",
                table(["system", "SQS/job", "S3/job", "by operation"], peer_rows)]
    return "\n".join(out)


def section_latency(results: Mapping[str, Any]) -> str:
    """Submit → handler start, p50/p95."""
    rows = []
    for setting in ("embedded", "moto"):
        doc = get(results, "latency", setting)
        if doc is None:
            continue
        why = failure(doc)
        rows.append([f"ours, {SETTINGS[setting]}", num(get(doc, "n")),
                     *([f"failed: {why}", "", "", ""] if why else
                       [f"**{num(doc['p50_ms'])}**", num(doc["p95_ms"]), num(doc.get("submit_call_p50_ms")),
                        num(doc.get("roundtrip_p50_ms"))])])
    celery = _peer(results, "celery_latency")
    if celery is not None:
        why = failure(celery)
        rows.append(["Celery 5, SQS on moto", num(get(celery, "n")),
                     *([f"failed: {why}", "", "", ""] if why else
                       [f"**{num(celery.get('p50_ms'))}**", num(celery.get("p95_ms")), "-", "-"])])
    if not rows:
        return ""
    return "\n".join([
        "## Latency", "",
        "Submit → handler start on an idle worker (concurrency 8, long-polling), one job at a time: "
        "the requester notes `time.time()` before `q.submit()`, the handler on entry; the next job is "
        "submitted once `q.wait()` saw the previous one completed, after a random pause of 0–100 ms "
        "so submissions land at random points of a polling worker's cycle (without it a "
        "polling queue's cycle could phase-lock with the requester's). One warm-up job is not "
        "counted. Celery's (`bench/peers.py`) waits 50 ms after the previous task started.", "",
        table(["system", "n", "p50 ms", "p95 ms", "`submit()` call, p50 ms",
               "submit → `wait()` returns, p50 ms"], rows)])


def section_idle(results: Mapping[str, Any]) -> str:
    """An idle worker's requests."""
    doc = results.get("idle")
    if doc is None:
        return ""
    why = failure(doc)
    if why:
        return f"## Idle cost\n\nfailed: {why}"
    others = {op: n for op, n in doc["requests"].items() if op != "SQS.ReceiveMessage"}
    row = [num(doc["seconds"]), num(doc["receives"]), num(doc["allowed"]), num(doc["receives_per_20s"], 2),
           ", ".join(f"`{op}` {n}" for op, n in others.items()) or "none",
           "yes" if doc["meets_target"] else "**no**"]
    return "\n".join([
        "## Idle cost", "",
        "A worker (concurrency 8) on one empty status queue on moto, counting its requests after "
        "`q.init()`; it stops itself after the time shown (a long poll in flight then is counted). "
        "Allowed: one receive starting every 20 s, the first at once (`ceil(seconds / 20)`). The "
        "embedded setting makes no requests (its long poll looks at SQLite every 10 ms).", "",
        table(["seconds", "ReceiveMessage", "allowed", "receives per 20 s", "other requests", "met"], [row])])


def section_large(results: Mapping[str, Any]) -> str:
    """Large bodies, from bench.large."""
    doc = results.get("large")
    if doc is None:
        return ""
    why = failure(doc)
    if why:
        return f"## Large bodies\n\nnot run: {why}"
    rows = []
    for label, title in (("ours-s3", "ours, SeaweedFS S3 + moto SQS"),
                         ("boto3", "boto3 upload/download_fileobj, SeaweedFS"),
                         ("ours-embedded", "ours, embedded")):
        run = doc.get(label)
        if run is None:
            continue
        why = failure(run)
        rows.append([title, *([f"failed: {why}", "", "", ""] if why else [
            num(run.get("upload_mb_s")), num(run.get("download_mb_s")), num(run.get("peak_rss_mib")),
            num(run.get("body_rss_mib"))])])
    up = ratio(get(doc, "ours-s3", "upload_mb_s"), get(doc, "boto3", "upload_mb_s"))
    down = ratio(get(doc, "ours-s3", "download_mb_s"), get(doc, "boto3", "download_mb_s"))
    size = doc.get("size_bytes") or 0
    lines = ["## Large bodies", "",
             f"One {size / 1024**2:,.0f} MiB body submitted (`q.submit({{'body': Path}})`) and downloaded "
             "(`job.download()`), each in a fresh process (`bench/large.py`); MB = 10^6 bytes; peak RSS is "
             f"the process's `VmHWM`. {get(results, 'plan', 'large_runs') or 1} round(s), interleaved: "
             "median throughputs, largest RSS.", "",
             table(["run", "upload MB/s", "download MB/s", "peak RSS MiB", "RSS for the body MiB"], rows)]
    if up is not None and down is not None:
        lines += ["", f"Ours on S3 vs boto3: upload **{up:.0%}**, download **{down:.0%}**."]
    return "\n".join(lines)


# -- cancel and time limits (issue 13) ---------------------------------------------------------

CONTROL_SETTINGS = {"embedded": SETTINGS["embedded"], "moto": SETTINGS["moto"]}
BEFORE_CANCEL = {"S3": 2.00, "SQS": 0.43}
"""Requests per job (whole life, ``submit_many``, moto) before cancellation existed: BENCHMARKS.md
of 2026-11-30 measured 2.00 S3 (plus the one manifest PUT of a ``submit_many`` call: 2.002 for
500 jobs) and 0.41-0.43 SQS (moto and SeaweedFS)."""


def _control(results: Mapping[str, Any], setting: str, part: str) -> Any:
    return get(results, "control", setting, part)


def _row_or_failure(doc: Any, width: int) -> list[str] | None:
    """A row of ``width - 1`` blank cells after ``failed: ...`` for a failure, else None."""
    why = failure(doc)
    return [f"failed: {why}", *([""] * (width - 1))] if why else None


def control_measured_line(results: Mapping[str, Any]) -> str:
    """The line saying when the control part was measured, if not in the same run as the rest."""
    meta = get(results, "control", "meta")
    if not isinstance(meta, Mapping) or not meta.get("separate"):
        return ""
    commit = str(meta.get("remotejob_commit", "?"))
    if meta.get("remotejob_dirty"):
        commit += " + uncommitted changes in remotejob/"
    return (f"The section Cancel and time limits and its rows in Targets were measured separately, on "
            f"{meta.get('date', '?')} (`{meta.get('command', '?')}`, {num(meta.get('wall_s'), 0)} s, git "
            f"{commit}), and merged into this run's results; everything else is from the run above.")


def section_control(results: Mapping[str, Any]) -> str:
    """Cancel against completion, cancels before the take, stop times, requests per job."""
    doc = results.get("control")
    if doc is None:
        return ""
    why = failure(doc)
    if why:
        return f"## Cancel and time limits\n\nnot run: {why}"
    plan = doc.get("plan") or {}
    check, grace, vis = plan.get("cancel_check_s"), plan.get("cancel_grace_s"), plan.get("visibility_s")
    out = [
        "## Cancel and time limits", "",
        "Issue 13's targets: correctness and bounds, not speed. On each setting a `remotejob.Worker` "
        f"runs in a thread of the benchmark process (concurrency {plan.get('concurrency')}, "
        f"`cancel_check={check}` s, `cancel_grace={grace}` s, `handle_signals=False`; visibility "
        f"timeout {vis} s, so a heartbeat every {num((vis or 0) / 3, 0)} s), on a job system of its "
        "own; the requester is the same process (`bench/control.py`)."
        + (" **A `--quick` run: few rounds.**" if get(doc, "meta", "quick") else ""),
    ]
    rows = []
    for setting, label in CONTROL_SETTINGS.items():
        r = _control(results, setting, "race")
        if r is None:
            continue
        rows.append([label, *(_row_or_failure(r, 8) or [
            num(r["rounds"]), f"0–{r['max_delay_s'] * 1000:,.0f}",
            f"{r['cancel_won']} ({r['cancel_won_handler_started']} after the handler started, "
            f"{r.get('early', 0)} before `submit()` returned)",
            f"**{r['cancel_won_cancelled']}/{r['cancel_won']}**",
            ", ".join(f"`{state}` {n}" for state, n in sorted((r.get("lost_reported") or {}).items())) or "-",
            f"**{r['one_outcome']}/{r['rounds']}**", f"**{r['cancelled_with_output']}**"])])
    if rows:
        out += ["", "### Cancel against completion", "",
                "Each round submits one job whose handler returns an output at once, waits a random delay "
                "from the `submit()` call (made from a thread, under a key of ours, so the id is known "
                "at once) of up to twice the typical time from that call to the worker recording the "
                "outcome (the status's `updated`; the median of 5 warm-up jobs), then calls `q.cancel()` "
                "(again at once while it raises `NotFound`: the job's first record was not written yet; "
                "*before `submit()` returned* counts those rounds). The cancel's claim of the job's "
                "create-once outcome record races the worker's. *Cancel won*: `cancel()` returned "
                "`cancelled` (its claim was first); when it lost it returned the job's status, shown "
                "under *cancel lost, returned*. "
                "After every round ran and the worker stopped, each job's status and output were read "
                "again: *exactly one outcome* means the state is `completed` or `cancelled`, did not "
                "change between the read right after the round and the one at the end, is `cancelled` "
                "exactly when `cancel()` returned `cancelled`, and an output exists (both times) exactly "
                "when the state is `completed`.", "",
                table(["setting", "rounds", "cancel delay ms", "cancel won", "won → `cancelled`",
                       "cancel lost, returned", "exactly one outcome", "cancelled with an output"], rows)]
    rows = []
    for setting, label in CONTROL_SETTINGS.items():
        r = _control(results, setting, "before_take")
        if r is None:
            continue
        rows.append([label, *(_row_or_failure(r, 5) or [
            num(r["jobs"]), num(r["slept_s"]), f"**{r['handler_starts']}**", f"{r['cancelled']}/{r['jobs']}",
            num(r["queue_left"])])])
    if rows:
        out += ["", "### Cancelled more than one check interval before the take", "",
                "`submit_many` of the jobs, `q.cancel()` of each, a sleep of `cancel_check` + 0.5 s, then a "
                "burst worker on the same job system as the race above (after its worker stopped): its view "
                "of the cancellation log is the race's, older than the check interval, so it reads the log's "
                "new entries (one LIST) before the first job would start. Counted: handler starts, jobs "
                "whose state is `cancelled`, messages left in the queue (waiting, in flight or delayed).", "",
                table(["setting", "jobs", "slept s", "handler starts", "cancelled", "messages left"], rows)]
    rows = []
    bound = None
    for setting, label in CONTROL_SETTINGS.items():
        for part, kind in (("stop_python", "Python handler, `job.check()` every 10 ms"),
                           ("stop_exec", "`worker --exec` command ignoring SIGTERM")):
            r = _control(results, setting, part)
            if r is None:
                continue
            if "skipped" in r:
                rows.append([label, kind, f"not measured: {r['skipped']}", "", "", "", "", ""])
                continue
            bound = r.get("bound_s", bound)
            rows.append([label, kind, *(_row_or_failure(r, 6) or [
                num(r["runs"]), f"{num(r['stopped']['median_s'], 2)} / **{num(r['stopped']['max_s'], 2)}**",
                f"{num(r['deleted']['median_s'], 2)} / **{num(r['deleted']['max_s'], 2)}**",
                num(r["bound_s"]),
                f"{r['within_bound']}/{r['runs']}",
                ", ".join(f"{state} {n}" for state, n in r["final_states"].items())])])
    if rows:
        out += ["", "### Stopping a running job", "",
                "One job at a time: once its handler runs (the Python handler signalled it; the "
                "command wrote its pid) and a random 0 to `cancel_check` seconds passed, `q.cancel()`; "
                "timed from `cancel()` returning to the handler's exit (the Python handler's `finally`) "
                "or to no live process left in the command's process group (polled every 5 ms in "
                "`/proc`), and to the worker having deleted the job's message (the queue's depth polled "
                "every 5 ms). The command is `sh -c 'echo $$ > PIDFILE; trap \"\" TERM; sleep 60'` "
                f"through `remotejob.command.CommandHandler(template, grace={grace})`: only SIGKILL ends "
                f"it. Bound: one heartbeat interval plus the grace ({num(bound)} s).", "",
                table(["setting", "handler", "runs", "cancel → stopped s, median / max",
                       "cancel → message deleted s, median / max", "bound s", "within bound", "outcome"],
                      rows)]
    out += _control_requests(results)
    return "\n".join(out)


def _control_requests(results: Mapping[str, Any]) -> list[str]:
    default, fast = _control(results, "moto", "requests"), _control(results, "moto", "requests_check_1s")
    rows = []
    for label, r in (("default (5 s)", default), ("1 s", fast)):
        if r is None:
            continue
        rows.append([label, *(_row_or_failure(r, 7) or [
            num(r["jobs"]), num(r["run_s"]), f"**{r['lists']}**", num(r["lists_allowed"]),
            num(r["s3_per_job"], 3), f"**{num(r['s3_per_job_without_lists'], 3)}**",
            f"**{num(r['sqs_per_job'], 3)}**"])])
    if not rows:
        return []
    before = get(_ours(results, "moto", "batch"), "median_run", "requests_per_job", "total")
    out = ["", "### Requests per job of jobs nobody cancels (moto S3 + SQS)", "",
           "`submit_many` of small jobs, one burst worker in the benchmark process (concurrency "
           f"{get(default, 'concurrency') or 8}, as the Throughput part's worker; `cancel_check` as "
           "shown), then every status read once (the default check: the median of "
           f"{len(get(default, 'runs_sqs_per_job') or [1])} runs by SQS per job, whose SQS per job were "
           + ", ".join(num(x, 3) for x in get(default, "runs_sqs_per_job") or [])
           + "); requests counted with `remotejob.backends.aws.request_counts()` around each phase. "
           "A worker holding jobs lists the cancellation log (`S3.ListObjectsV2`) at most once per "
           "check interval; *LISTs allowed*: one per interval the worker run lasted, plus one. Before "
           "cancellation existed: "
           f"{BEFORE_CANCEL['S3']:.2f} S3 and 0.41–{BEFORE_CANCEL['SQS']:.2f} SQS per job (the "
           "report of 2026-11-30 06:11, at 84a1b89)"
           + (f"; this report's Requests per job, moto batch, which include the LISTs: "
              f"{num(get(before, 'S3'), 3)} S3, {num(get(before, 'SQS'), 3)} SQS" if before else "")
           + ".", "",
           table(["`cancel_check`", "jobs", "worker run s", "LISTs", "LISTs allowed", "S3/job",
                  "S3/job without LISTs", "SQS/job"], rows)]
    per_job = get(default, "requests_per_job")
    if isinstance(per_job, Mapping):
        out += ["", "By operation and phase, default `cancel_check`:", "", _per_job_table(per_job)]
    return out


def _control_target_rows(results: Mapping[str, Any],
                         add: Callable[[str, str, bool | None], None]) -> None:
    """Issue 13's rows of the Targets table."""
    if results.get("control") is None:
        return
    for setting, label in CONTROL_SETTINGS.items():
        r = _control(results, setting, "race")
        won, ok = get(r, "cancel_won"), get(r, "cancel_won_cancelled")
        add(f"Cancel: a cancel committed before the job's claim means the outcome `cancelled`, 100% of "
            f"rounds, on {label}", "-" if won is None else f"{ok}/{won} rounds the cancel won",
            None if won is None else bool(won) and ok == won)
        one, rounds, leaked = get(r, "one_outcome"), get(r, "rounds"), get(r, "cancelled_with_output")
        add("Cancel racing completion: exactly one outcome per round, no output from a cancelled job, "
            f"on {label}",
            "-" if one is None else f"{one}/{rounds} one outcome; {leaked} cancelled with an output",
            None if one is None else one == rounds and leaked == 0)
    for setting, label in CONTROL_SETTINGS.items():
        r = _control(results, setting, "before_take")
        starts = get(r, "handler_starts")
        add(f"A cancel made more than one check interval before the take: the handler never starts, "
            f"on {label}",
            "-" if starts is None else f"{starts} handler starts of {r['jobs']}; "
            f"{r['cancelled']}/{r['jobs']} cancelled; {r['queue_left']} messages left",
            None if starts is None else starts == 0 and r["cancelled"] == r["jobs"] and r["queue_left"] == 0)
    for setting, label in CONTROL_SETTINGS.items():
        for part, kind in (("stop_python", "Python handler"), ("stop_exec", "`--exec` ignoring SIGTERM")):
            r = _control(results, setting, part)
            worst = None if r is None or "skipped" in r else get(r, "stopped", "max_s")
            deleted = None if worst is None else get(r, "deleted", "max_s")
            measured = ("-" if worst is None else
                        f"max {worst:.2f} s stopped, {deleted:.2f} s deleted (bound {r['bound_s']:g} s)")
            if isinstance(r, Mapping) and "skipped" in r:
                measured = "not measured: CommandHandler has no grace"
            add(f"A running job stops within one heartbeat interval plus the grace ({kind}), on {label}",
                measured, None if worst is None else r["within_bound"] == r["runs"])
    r = _control(results, "moto", "requests")
    s3, sqs = get(r, "s3_per_job_without_lists"), get(r, "sqs_per_job")
    allowed = None if s3 is None else BEFORE_CANCEL["S3"] + 1 / r["jobs"]  # + one manifest per batch
    add(f"Requests per job for jobs nobody cancels do not grow (moto, `submit_many`): S3 without the log's "
        f"LISTs ≤ {BEFORE_CANCEL['S3']:.2f} + the batch's one manifest PUT, SQS ≤ {BEFORE_CANCEL['SQS']:.2f}",
        "-" if s3 is None or allowed is None else
        f"S3 {s3:.3f} (allowed {allowed:.3f}; {r['s3_per_job']:.3f} with LISTs), SQS {sqs:.3f}",
        None if s3 is None or allowed is None else
        s3 <= allowed + 1e-9 and round(sqs, 2) <= BEFORE_CANCEL["SQS"])
    lists = [(label, x) for label, x in (("default check", r), ("1 s check", _control(results, "moto",
                                                                                         "requests_check_1s")))
             if get(x, "lists") is not None]
    add("The cancellation log costs a few LISTs per worker run, not per job (moto)",
        "; ".join(f"{label}: {x['lists']} in a {x['run_s']:.0f} s run of {x['jobs']} jobs (allowed "
                  f"{x['lists_allowed']})" for label, x in lists) or "-",
        None if not lists else all(x["lists"] <= x["lists_allowed"] for _, x in lists))


def _ours_al(results: Mapping[str, Any], mode: str) -> Any:
    return get(results, "aws_latency", "ours", mode)


def _peer_al(results: Mapping[str, Any], name: str) -> Any:
    peers = get(results, "aws_latency", "peers")
    return peers.get(name) if isinstance(peers, Mapping) and "error" not in peers else peers


def _services(per_job: Any) -> tuple[Any, Any]:
    """SQS and S3 requests per job from ours' (``total`` phase) or a peer's ``requests_per_job``."""
    if not isinstance(per_job, Mapping):
        return None, None
    if isinstance(per_job.get("total"), Mapping):
        return per_job["total"].get("SQS"), per_job["total"].get("S3")
    return tuple(sum(v for op, v in per_job.items() if op.startswith(service + "."))
                 for service in ("SQS", "S3"))


def section_aws_latency(results: Mapping[str, Any]) -> str:
    """The AWS-latency profile: its distributions and sources, throughput, ratios, latency."""
    doc = results.get("aws_latency")
    if doc is None:
        return ""
    profile = doc.get("profile") or {}
    proxy = doc.get("proxy") or {}
    injected = get(proxy, "by_kind") or {}
    from bench.aws_latency import KIND_LABELS

    dist_rows = []
    for kind, label in KIND_LABELS.items():
        op = get(profile, "operations", kind) or {}
        seen = injected.get(kind) or {}
        dist_rows.append([label, str(op.get("text", "?")), num(op.get("mean_ms")), num(op.get("p95_ms")),
                          num(op.get("p99_ms")), num(seen.get("count")), num(seen.get("p50_ms")),
                          num(seen.get("p95_ms")), num(seen.get("max_ms"))])
    sources = [f"- [{src['title']}]({src['url']}): {src['says']}." for src in profile.get("sources", [])]
    out = [
        "## AWS-latency profile", "",
        "moto answers in well under a millisecond on loopback; AWS does not. Here moto (S3 and SQS) sits "
        "behind one proxy (`tests/proxy.py`'s `Proxy`, run in its own process by `bench/aws_latency.py` so "
        "its CPU is charged to nobody measured) that delays every request by a latency drawn from the "
        "distribution of its operation: the SQS action (`X-Amz-Target`), else S3 by method. One draw per "
        "request, half slept before it is forwarded and half after moto answered (the two legs of a round "
        "trip): a ReceiveMessage long poll that returns empty gets one draw on top of its wait, no more. "
        f"The draws come from one `random.Random({profile.get('seed', '?')})`, the same sequence every run "
        "(which request gets which draw depends on thread timing).", "",
        table(["operations", "distribution", "mean ms", "p95 ms", "p99 ms", "injected: requests",
               "p50 ms", "p95 ms", "max ms"], dist_rows),
        "", "Where the figures come from:", "", *sources, "", str(profile.get("rationale", "")),
    ]
    why = failure(doc)
    if why:
        return "\n".join([*out, "", f"not run: {why}"])
    plan = results.get("plan", {})
    rows = []
    for mode, mode_label in MODES.items():
        run_doc = _ours_al(results, mode)
        if run_doc is None:
            continue
        fail = failure(run_doc)
        median = get(run_doc, "median_run") or {}
        sqs, s3 = _services(get(median, "requests_per_job"))
        rows.append([f"remotejob, {mode_label}, status tracking on, every status read",
                     num(median.get("jobs")),
                     f"failed: {fail}" if fail else f"**{num(run_doc.get('jobs_per_s'))}**",
                     num(get(run_doc, "drain_jobs_per_s")), num(median.get("submit_s"), 2), num(sqs, 2),
                     num(s3, 2), "first submit → last status read"])
    peer_labels = (
        ("celery_sqs", "Celery 5, SQS broker, no results (threads ×8, one submitting thread)"),
        ("celery_sqs_s3", "Celery 5, SQS broker, S3 result backend"),
        ("boto3_floor", "raw boto3 floor (SendMessageBatch, ReceiveMessage, DeleteMessageBatch)"),
    )
    for name, label in peer_labels:
        peer = _peer_al(results, name)
        if peer is None:
            continue
        fail = failure(peer)
        sqs, s3 = _services(get(peer, "requests_per_job"))
        rows.append([label, num(get(peer, "jobs")),
                     f"failed: {fail}" if fail else f"**{num(get(peer, 'jobs_per_s'))}**", "-",
                     num(get(peer, "submit_seconds"), 2), num(sqs, 2), num(s3, 2),
                     str(get(peer, "completion") or "")])
    out += ["", f"Throughput through the proxy, {plan.get('aws_latency_runs', '?')} run(s) each (median); "
            "small no-op jobs, one worker process of concurrency 8 for every system:", "",
            table(["system", "jobs", "jobs/s", "drain jobs/s", "submit s", "SQS/job", "S3/job",
                   "completion measured as"], rows)]
    ratio_rows = []
    for peer, peer_label in (("celery_sqs", "Celery SQS, no results"),
                             ("celery_sqs_s3", "Celery SQS + S3 results"),
                             ("boto3_floor", "raw boto3 floor")):
        peer_rate = get(_peer_al(results, peer), "jobs_per_s")
        if peer_rate is None:
            continue
        for mode, mode_label in MODES.items():
            ours_rate = get(_ours_al(results, mode), "jobs_per_s")
            r = ratio(ours_rate, peer_rate)
            ratio_rows.append([f"ours, {mode_label}", peer_label, num(ours_rate), num(peer_rate),
                               f"**{r:.2f}×**" if r is not None else "-"])
    if ratio_rows:
        out += ["", "Ours as a ratio to each peer through the proxy:", "",
                table(["ours", "peer", "ours jobs/s", "peer jobs/s", "ratio"], ratio_rows)]
    lat_rows = []
    for label, lat in (("remotejob", get(doc, "latency")),
                       ("Celery 5, SQS", _peer_al(results, "celery_latency"))):
        if lat is None:
            continue
        fail = failure(lat)
        lat_rows.append([label, num(get(lat, "n")), *([f"failed: {fail}", "", ""] if fail else [
            f"**{num(lat.get('p50_ms'))}**", num(lat.get("p95_ms")), num(lat.get("submit_call_p50_ms"))])])
    if lat_rows:
        out += ["", "Latency through the proxy, submit → handler start on an idle worker, one job at a time "
                "(as in the Latency section):", "",
                table(["system", "n", "p50 ms", "p95 ms", "`submit()` call, p50 ms"], lat_rows)]
    operations = get(proxy, "operations")
    if isinstance(operations, Mapping) and operations:
        out += ["", "Requests the proxy delayed in this part, setup included: "
                + ", ".join(f"`{op}` {n:,}" for op, n in operations.items())
                + f"; proxy errors: {proxy.get('error_count', 0)}."]
    elif failure(proxy):
        out += ["", f"The proxy's account: {failure(proxy)}"]
    return "\n".join(out)


def _cpu_cell(per_job: Any, phase: str) -> str:
    return num(get(per_job, phase), 3)


def section_cpu(results: Mapping[str, Any]) -> str:
    """User + system CPU per job of the worker and of the submitting process."""
    rows = []

    def add(system: str, where: str, doc: Any) -> None:
        if doc is None:
            return
        fail = failure(doc)
        if fail:
            rows.append([system, where, f"failed: {fail}", "", ""])
            return
        per_job = doc.get("cpu_ms_per_job")
        if per_job is None:
            per_job = get(doc, "median_run", "cpu_ms_per_job")
        rows.append([system, where, _cpu_cell(per_job, "worker"), _cpu_cell(per_job, "submit"),
                     _cpu_cell(per_job, "reads")])

    for setting, label in SETTINGS.items():
        for mode, mode_label in MODES.items():
            add(f"remotejob, {mode_label}", label, _ours(results, setting, mode))
    for mode, mode_label in MODES.items():
        add(f"remotejob, {mode_label}", "AWS-latency profile", _ours_al(results, mode))
    add("huey SqliteHuey (8 threads, results stored and read)", "local SQLite", _peer(results, "huey"))
    add("Celery 5, SQS, no results", "moto", _peer(results, "celery_sqs"))
    add("Celery 5, SQS + S3 results", "moto", _peer(results, "celery_sqs_s3"))
    add("Celery 5, SQS, no results", "AWS-latency profile", _peer_al(results, "celery_sqs"))
    add("Celery 5, SQS + S3 results", "AWS-latency profile", _peer_al(results, "celery_sqs_s3"))
    if not rows:
        return ""
    return "\n".join([
        "## CPU per job", "",
        "User + system CPU milliseconds per job (`getrusage(RUSAGE_SELF)`, every thread of the process, "
        "differences of snapshots taken in the process that did the work), median over the runs. "
        "**worker**: remotejob's worker process from its ready file to its `run()` returning (top-ups "
        "included); Celery's worker process from the mark task after warm-up to its last task's body "
        "(the acks of the last tasks still in flight are not in it); huey's consumer process from the "
        "warm-up task to its last task's body. **submit**: the submitting (benchmark) process around "
        "its submit loop or `submit_many`. **reads**: the submitting process reading every status "
        "(remotejob, 8 threads) or every result (huey; Celery with S3 results, `.get()` in turn). "
        "Servers (moto, SeaweedFS, the latency proxy) are separate processes and are not in any "
        "figure. The worker's CPU per job is what decides how many workers a machine holds.", "",
        table(["system", "setting", "worker ms/job", "submit ms/job", "reads ms/job"], rows)])


# -- targets ----------------------------------------------------------------------------------


def _target_rows(results: Mapping[str, Any]) -> list[list[str]]:
    """One row per target of issue 12 (and the older ones it keeps): measured, met or not."""
    rows: list[list[str]] = []

    def add(target: str, measured: str, met: bool | None) -> None:
        rows.append([target, measured, "n/a" if met is None else ("yes" if met else "**no**")])

    def rates(batch_doc: Any, single_doc: Any, peer: Any) -> tuple[float | None, float | None]:
        peer_rate = get(peer, "jobs_per_s")
        return ratio(get(batch_doc, "jobs_per_s"), peer_rate), ratio(get(single_doc, "jobs_per_s"), peer_rate)

    def vs(target: str, need: float, ratios: tuple[float | None, float | None],
           goal: float | None = None) -> None:
        batch, single = ratios
        measured = "-" if batch is None else f"{batch:.2f}× batch" + (
            f" ({single:.2f}× one by one)" if single is not None else "")
        if goal is not None and batch is not None:
            measured += f"; goal {goal:g}×: " + ("met" if batch >= goal else "not met")
        add(target, measured, None if batch is None else batch >= need)

    # The AWS-latency profile.
    al_batch, al_single = _ours_al(results, "batch"), _ours_al(results, "one_by_one")
    vs("AWS-latency: ≥ 3× Celery/SQS (no results) jobs/s, end to end, status tracking on", 3.0,
       rates(al_batch, al_single, _peer_al(results, "celery_sqs")))
    vs("AWS-latency: ≥ 10× Celery with its S3 results", 10.0,
       rates(al_batch, al_single, _peer_al(results, "celery_sqs_s3")))
    vs("AWS-latency: ≥ 70% of the raw boto3 floor", 0.7,
       rates(al_batch, al_single, _peer_al(results, "boto3_floor")))
    ours_p50 = get(results, "aws_latency", "latency", "p50_ms")
    celery_p50 = get(_peer_al(results, "celery_latency"), "p50_ms")
    add("AWS-latency: latency p50 submit → handler start no worse than Celery's",
        f"{num(ours_p50)} ms vs {num(celery_p50)} ms",
        None if ours_p50 is None or celery_p50 is None else ours_p50 <= celery_p50)

    # moto direct.
    moto_batch, moto_single = _ours(results, "moto", "batch"), _ours(results, "moto", "one_by_one")
    vs("moto direct: ≥ 1× Celery/SQS (no results) jobs/s, with status tracking", 1.0,
       rates(moto_batch, moto_single, _peer(results, "celery_sqs")))
    b, o = get(moto_batch, "jobs_per_s"), get(moto_single, "jobs_per_s")
    add("moto direct: batch submit never slower than one by one", f"{num(b)} vs {num(o)} jobs/s",
        None if b is None or o is None else b >= o)
    pairs = {label: (get(_ours(results, setting, "batch"), "jobs_per_s"),
                     get(_ours(results, setting, "one_by_one"), "jobs_per_s"))
             for setting, label in SETTINGS.items()}
    pairs["AWS-latency profile"] = (get(al_batch, "jobs_per_s"), get(al_single, "jobs_per_s"))
    compared = {label: pair for label, pair in pairs.items() if None not in pair}
    slower = [f"{label} ({num(b)} vs {num(o)})" for label, (b, o) in compared.items() if b < o]
    measured = ("slower on " + "; ".join(slower)) if slower else f"not slower on any of {len(compared)}"
    add("Every setting: batch submit never slower than one by one", measured if compared else "-",
        None if not compared else not slower)

    # CPU per job.
    for where, ours_doc, celery_doc in (
        ("moto direct", moto_batch, _peer(results, "celery_sqs")),
        ("AWS-latency", al_batch, _peer_al(results, "celery_sqs")),
    ):
        mine, theirs = get(ours_doc, "cpu_ms_per_job", "worker"), get(celery_doc, "cpu_ms_per_job", "worker")
        add(f"Worker CPU per job ≤ Celery's worker CPU per task ({where}; ours batch, Celery no results)",
            f"{num(mine, 3)} vs {num(theirs, 3)} ms",
            None if mine is None or theirs is None else mine <= theirs)

    # Embedded vs huey.
    vs("Embedded: ≥ 1× huey SqliteHuey with its result store on, same end-to-end definition", 1.0,
       rates(_ours(results, "embedded", "batch"), _ours(results, "embedded", "one_by_one"),
             _peer(results, "huey")), goal=2.0)

    # Large bodies.
    large = results.get("large") if isinstance(results.get("large"), Mapping) else {}
    for direction in ("download", "upload"):
        r = ratio(get(large, "ours-s3", f"{direction}_mb_s"), get(large, "boto3", f"{direction}_mb_s"))
        add(f"Large bodies: {direction} ≥ 90% of boto3 (SeaweedFS)", "-" if r is None else f"{r:.0%}",
            None if r is None else r >= 0.9)
    size_gib = (get(large, "size_bytes") or 0) / 1024**3
    for label, where in (("ours-s3", "S3"), ("ours-embedded", "embedded")):
        rss = get(large, label, "peak_rss_mib")
        add(f"Large bodies: peak RSS ≤ 100 MiB per GiB body ({where}; this body {size_gib:.2f} GiB, "
            "so at least 100 MiB allowed)", f"{num(rss)} MiB",
            None if rss is None else rss <= 100 * max(size_gib, 1.0))

    # Requests per job: no higher than before issue 12 (0.41 SQS, 2.00 S3, batch submit, moto).
    per_job = get(_ours(results, "moto", "batch"), "median_run", "requests_per_job", "total")
    for service, before in (("SQS", 0.41), ("S3", 2.00)):
        value = get(per_job, service)
        add(f"Requests per job, whole life, batch submit (moto): {service} no higher than {before:.2f}",
            num(value, 3), None if value is None else round(value, 2) <= before)

    # Kept from earlier issues.
    emb = get(results, "latency", "embedded", "p50_ms")
    add("Latency p50 ≤ 20 ms on embedded", f"{num(emb)} ms", None if emb is None else emb <= 20)
    idle, receives = results.get("idle"), get(results, "idle", "receives")
    if receives is None or not isinstance(idle, Mapping):
        add("Idle worker: ≤ 1 ReceiveMessage per 20 s per status queue", "-", None)
    else:
        add("Idle worker: ≤ 1 ReceiveMessage per 20 s per status queue",
            f"{receives} in {idle['seconds']:.0f} s (allowed {idle['allowed']})", bool(idle["meets_target"]))

    # Issue 13: cancel and time limits.
    _control_target_rows(results, add)
    return rows


def section_targets(results: Mapping[str, Any]) -> str:
    """Every target of the issue: measured, met or not (not asserted anywhere)."""
    return "\n".join([
        "## Targets", "",
        "The targets of issue 12 (and the earlier ones it keeps). Ratios within this one run. "
        "Throughput targets compare ours with `submit_many` (the one-by-one ratio in brackets), status "
        "tracking on and every status read, against the peer as the AWS-latency profile and Throughput "
        "sections describe it. Requests per job count to two decimals. n/a: not measured in this run.", "",
        table(["target", "measured", "met"], _target_rows(results))])


def section_errors(results: Mapping[str, Any]) -> str:
    """The measurements that failed, with their reasons."""
    errors = results.get("errors") or []
    if not errors:
        return ""
    items = [f"- **{e['measurement']}**: {e['error'].splitlines()[0][:400]}" for e in errors]
    return "## Failed measurements\n\nDetails in `bench/results/latest.json`.\n\n" + "\n".join(items)


def section_ui(results: Mapping[str, Any]) -> str:
    """The dashboard's index at scale (``python -m bench.ui``, merged into the saved results)."""
    doc = results.get("ui")
    if not doc:
        return ""
    pages = doc.get("pages_ms", {})
    rows = [[name, num(ms, 1)] for name, ms in pages.items()]
    sync = doc.get("initial_sync_requests", {})
    idle = doc.get("idle_refresh_store_requests", {})
    return "\n".join([
        "## Dashboard index", "",
        f"`python -m bench.ui --jobs {doc.get('jobs')}` (measured {doc.get('measured', '?')}; run on its own, "
        "not by `./dev bench`): the status records of that many jobs (a week of a mix of states, two "
        "status queues, two metadata keys) written into a fresh embedded store, then the ui's index "
        "synced from the store as `remotejob ui` does, and each page requested through Flask's test "
        "client (server time, median of 5).", "",
        f"- Initial sync: {num(doc.get('initial_sync_s'), 1)} s, "
        f"{sync.get('list', 0)} listings (on S3 one `ListObjectsV2` per 1,000 keys, about "
        f"{max(1, round(2 * doc.get('jobs', 0) / 1000))} for this many jobs) and {sync.get('get', 0):,} GETs "
        "(one record per job). A restart on the kept index: "
        f"{num(doc.get('restart_sync_s'), 1)} s, listing only "
        f"({', '.join(f'{v} {k.upper()}' for k, v in doc.get('restart_sync_requests', {}).items())}).",
        f"- An idle refresh: {', '.join(f'{v} {k.upper()}' for k, v in idle.items()) or 'nothing'} on the "
        f"store and {doc.get('idle_refresh_queue_requests')} `GetQueueAttributes` (one per queue).", "",
        table(["page", "ms"], rows), "",
        f"Target (issue 15): the first page and any filter under 1 s after the initial sync: "
        f"{'met' if pages and max(pages.values()) < 1000 else 'NOT met'} (slowest page "
        f"{num(max(pages.values()) if pages else None, 0)} ms).",
    ])


def section_scheduling(results: Mapping[str, Any]) -> str:
    """Delays, periodic ticks, priorities and dedup keys (``python -m bench.scheduling``)."""
    doc = results.get("scheduling")
    if not doc:
        return ""
    lines = [
        "## Scheduling", "",
        f"`python -m bench.scheduling` (measured {doc.get('measured', '?')}; run on its own, not by "
        "`./dev bench`): an idle worker (concurrency 8) and jobs due over the next "
        f"{num(doc.get('spread_s'), 0)} s, once held by the queue itself (`delay` within its limit) "
        f"and once parked in the store (the queue's limit lowered to {doc.get('parked_limit_s')} s and "
        f"the clock's check to {num(doc.get('check_s'), 0)} s, so the 15-minute path runs in "
        "seconds). Lateness = the handler's start - the job's due time.", "",
    ]
    rows, met = [], True
    for setting in ("embedded", "moto"):
        part = doc.get(setting)
        if not part:
            continue
        for kind in ("in_queue", "parked"):
            late = part.get(f"lateness_{kind}", {})
            ok = late.get("early") == 0 and late.get("runs_max") == 1 and (late.get("p99_s") or 99) <= 2
            met = met and ok
            rows.append([setting, kind.replace("_", " "), str(late.get("jobs")), num(late.get("p50_s"), 3),
                         num(late.get("p99_s"), 3), num(late.get("max_s"), 3), str(late.get("early")),
                         str(late.get("runs_max"))])
    header = ["setting", "delay", "jobs", "p50 s", "p99 s", "max s", "early", "runs per job"]
    lines += [table(header, rows), "",
              f"Target (issue 14): never early, p99 at most 2 s late with idle workers, one run per job: "
              f"{'met' if met and rows else 'NOT met'}.", ""]
    req_rows = []
    for setting in ("embedded", "moto"):
        for kind, r in (doc.get(setting) or {}).get("requests", {}).items():
            req_rows.append([setting, kind, num(r.get("s3_per_job"), 2), num(r.get("sqs_per_job"), 2),
                             ", ".join(f"{k} {v}" for k, v in r.get("by_op", {}).items())])
    if req_rows:
        lines += ["Requests per job over its whole life (submit, dispatch, run, outcome, one status read), "
                  "counted by wrapping the store and the queues; the workers' fixed LISTs and receives "
                  "(which do not grow with the jobs) are left out. Single submits (one manifest each); "
                  "the journal's PUTs (about one a second per writing process) are in the S3 column.", "",
                  table(["setting", "job", "S3 per job", "SQS per job", "by operation"], req_rows), ""]
    prio_rows = []
    for setting in ("embedded", "moto"):
        for level, p in (doc.get(setting) or {}).get("priorities", {}).items():
            prio_rows.append([setting, level, num(p.get("mean_position"), 3), num(p.get("first"), 3),
                              num(p.get("last"), 3)])
    if prio_rows:
        lines += ["Priorities under saturation: the same number of high, normal and low jobs waiting "
                  "before one worker (concurrency 1, no prefetch) starts; positions in the run order as "
                  "fractions of it (0 = first, 1 = last).", "",
                  table(["setting", "level", "mean position", "first", "last"], prio_rows), ""]
    return "\n".join(lines).rstrip()


AIO_SETTINGS = {"embedded": SETTINGS["embedded"], "aws": SETTINGS["moto"],
                "aws-real-s3": SETTINGS["seaweedfs"]}


def _span(values: list[Any], digits: int = 1) -> str:
    """``a`` or ``a-b``: the range of the numbers among ``values``."""
    found = [v for v in values if isinstance(v, int | float)]
    if not found:
        return "-"
    low, high = num(min(found), digits), num(max(found), digits)
    return low if low == high else f"{low}-{high}"


def section_aio(results: Mapping[str, Any]) -> str:
    """Async handlers against threaded ones in one process (``python -m bench.aio``)."""
    doc = results.get("aio")
    if not doc:
        return ""
    lines = [
        "## Asyncio", "",
        "`python -m bench.aio` (run on its own, not by `./dev bench`; each setting's table says when and "
        "at what size it was measured). On each setting, on a fresh job system each time: the jobs "
        f"submitted with `await aq.submit_many(...)` (chunks of {doc.get('chunk')}, "
        f"{doc.get('chunks_at_once')} in flight), then one `Worker` in the same process whose handlers each "
        "sleep: `async def` (`await asyncio.sleep`, on the process's event loop, `await worker.run_async()`) "
        "or `def` (`time.sleep`, `worker.run()` on a thread), in burst mode, with a visibility timeout "
        "short enough that the heartbeat (every third of it) must extend every job. "
        "jobs/s = completed jobs / (last completion record - first handler start); the ceiling is "
        "handlers / sleep. CPU = this process's user + system seconds over the worker's run, every thread "
        "(the servers' not included). Threads = the process's peak thread count (idle: before the worker "
        "started). Loop stall = the longest single callback of the event loop while the async worker ran "
        "(every `asyncio.Handle._run` timed; in brackets the CPU time of the callback that used most, and "
        "the longest garbage collection in the process meanwhile: a stall as long as it is the collector). "
        "Send requests = `SendMessageBatch` requests per submitted job as botocore counted them "
        "(embedded: `send_batch` calls on the SQLite queue). Extensions = the heartbeat's visibility "
        "extensions per job (entries of its batch requests). Redelivered = messages received again "
        "because their visibility ran out before the heartbeat extended it. Once = every job's handler "
        "ran once, the job ended `completed`, and its attempt was its first delivery's.", "",
    ]
    header = ["handler", "concurrency", "jobs", "jobs/s", "CPU ms/job", "peak in flight", "threads",
              "worst loop stall ms (its CPU)", "send requests per job", "extensions per job",
              "redelivered", "once"]
    runs: dict[str, list[Mapping[str, Any]]] = {"async": [], "threaded": []}
    on_loop, messages_per_send = 0, []
    for setting, label in AIO_SETTINGS.items():
        part = doc.get(setting)
        if not part:
            continue
        rows = []
        for kind in ("async", "threaded"):
            run = part.get(kind)
            why = failure(run)
            if why or not isinstance(run, Mapping):
                rows.append([kind, f"FAILED: {why}"] + [""] * (len(header) - 2))
                continue
            runs[kind].append(run)
            loop = run.get("loop") or {}
            on_loop += sum((run.get("backend_calls_on_loop") or {}).values())
            messages_per_send.append(get(run, "submit", "messages_per_send"))
            rows.append([
                kind, num(run.get("concurrency")), num(run.get("jobs")), num(run.get("jobs_per_s"), 0),
                num(run.get("cpu_ms_per_job"), 2), num(run.get("peak_in_flight")),
                f"{run.get('threads_peak')} (idle {run.get('threads_before')})",
                (f"{num(loop['worst_s'] * 1000, 1)} ({num(loop.get('worst_cpu_s', 0) * 1000, 1)}"
                 + (f"; GC {num(loop['worst_gc_s'] * 1000, 1)}" if loop.get("worst_gc_s") else "") + ")"
                 if "worst_s" in loop else "n/a"),
                num(get(run, "submit", "send_requests_per_job"), 2),
                num(run.get("extensions_per_job", run.get("heartbeat_calls_per_job")), 2),
                num(run.get("received_again")),
                "yes" if run.get("exactly_once") else
                f"NO ({', '.join(f'{k} {v}' for k, v in (run.get('states') or {}).items())}; "
                f"runs max {run.get('runs_max')}"
                + (f"; stopped after {num(run['timed_out_after_s'], 0)} s)" if run.get("timed_out_after_s")
                   else ")"),
            ])
        plan = part.get("plan") or doc
        conc, sleep_s = plan.get("concurrency"), plan.get("sleep_s")
        quick = " (a `--quick` run: fewer than the issue's thousand)" if plan.get("quick") else ""
        lines += [f"### {label}", "",
                  f"{num(plan.get('jobs'))} jobs, {num(conc)} handlers sleeping {num(sleep_s, 0)} s "
                  f"(ceiling {num(ratio(conc, sleep_s), 0)} jobs/s), visibility timeout "
                  f"{plan.get('visibility_timeout')} s; `{plan.get('command', 'python -m bench.aio')}`, "
                  f"measured {plan.get('measured', '?')}, {num(part.get('bench_s'), 0)} s{quick}.", "",
                  table(header, rows), ""]
        seen = [f"{kind}: {text} (x{n})" for kind in ("async", "threaded")
                for text, n in (get(part, kind, "warnings") or {}).items()]
        if seen:
            lines += ["Logged by remotejob during the runs: " + "; ".join(seen) + ".", ""]
    a, t = runs["async"], runs["threaded"]
    if a and t:
        def span(kind: list[Mapping[str, Any]], key: str, digits: int = 1) -> str:
            return _span([r.get(key) for r in kind], digits)

        stalls = [get(r, "loop", "worst_s") for r in a]
        worst = max((s for s in stalls if isinstance(s, int | float)), default=None)
        once = "every job" if all(r.get("exactly_once") for r in a + t) else "NOT every job"
        worst_ms = num(worst * 1000 if worst is not None else None, 1)
        again = sum(r.get("received_again") or 0 for r in a + t)
        late = f" ({again} messages came back: a heartbeat was late)" if again else ""
        lines += [
            f"With up to {span(a, 'peak_in_flight', 0)} handlers in flight the async worker's process had "
            f"{span(a, 'threads_peak', 0)} threads against {span(t, 'threads_peak', 0)} for the threaded "
            f"one, and ran {span(a, 'jobs_per_s', 0)} jobs/s at {span(a, 'cpu_ms_per_job', 2)} CPU ms per "
            f"job against {span(t, 'jobs_per_s', 0)} jobs/s at {span(t, 'cpu_ms_per_job', 2)} ms. "
            f"`submit_many` sent {_span(messages_per_send, 1)} jobs per send request; the event loop's "
            f"longest callback took {worst_ms} ms, {on_loop} backend calls ran on the loop's thread, and "
            f"{once} completed exactly once with the heartbeat extending them{late}.",
        ]
    return "\n".join(lines).rstrip()


def lead_section(old: str) -> str:
    """The lead's section of an earlier report, verbatim, or a placeholder under its heading."""
    match = re.search(rf"^{re.escape(LEAD_SECTION)}[ \t]*\n(.*?)(?=^## |\Z)", old, re.S | re.M)
    body = match.group(1).strip("\n") if match else LEAD_PLACEHOLDER
    return f"{LEAD_SECTION}\n\n{body}"


def render(results: Mapping[str, Any], old: str = "") -> str:
    """The whole report; ``old`` is the previous report, whose lead section is kept."""
    meta = results.get("meta", {})
    intro = [
        "# Benchmarks", "",
        f"Generated by `./dev bench` (`{meta.get('command', 'python -m bench.run')}`) on "
        f"{meta.get('date', '?')}; the run took {num(meta.get('wall_s'), 0)} s. Nothing here runs in CI; "
        "no target is asserted. Raw results: `bench/results/latest.json` (not committed).",
    ]
    if meta.get("quick"):
        intro += ["", "**A `--quick` smoke run: tiny counts, the numbers mean little.**"]
    if control_measured_line(results):
        intro += ["", control_measured_line(results)]
    sections: list[Callable[[Mapping[str, Any]], str]] = [
        section_targets, section_aws_latency, section_throughput, section_cpu, section_requests,
        section_latency, section_idle, section_large, section_control, section_ui, section_scheduling,
        section_aio, section_errors,
        section_counts,
    ]
    parts = ["\n".join(intro), *(s(results) for s in sections), section_machine(meta), lead_section(old)]
    return "\n\n".join(part for part in parts if part) + "\n"


def merge(part: str, result: Mapping[str, Any]) -> bool:
    """Put a stand-alone benchmark's ``result`` into the saved results as ``part`` and render
    BENCHMARKS.md again; False (nothing done) when no full run saved results yet."""
    import json

    latest = REPO / "bench" / "results" / "latest.json"
    if not latest.exists():
        return False
    saved = json.loads(latest.read_text())
    saved[part] = result
    latest.write_text(json.dumps(saved, indent=2) + "\n")
    main([])
    return True


def main(argv: list[str] | None = None) -> int:
    """Render the report again from saved results."""
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "latest.json")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    old = args.out.read_text() if args.out.exists() else ""
    args.out.write_text(render(results, old))
    return 0


if __name__ == "__main__":
    sys.exit(main())
