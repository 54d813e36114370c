"""Run every benchmark on this machine and write ``BENCHMARKS.md``.

``python -m bench.run [--quick] [--jobs N] [--aws-jobs N] [--runs 3] [--aws-latency-jobs N]
[--aws-latency-runs N] [--skip PART,...] [--only control] [--out BENCHMARKS.md]`` (or
``./dev bench ...``).

It starts a moto server (SQS and S3) and SeaweedFS (S3) once, creates a bucket on each, and
measures, in this order:

1. an idle worker on moto (in the background, while the embedded runs use no server);
2. remotejob's throughput on the three settings (embedded; moto S3 + SQS; SeaweedFS S3 + moto
   SQS), submitted in one batch and one by one, ``--runs`` times each (medians reported), with
   the requests per job by operation and phase on the S3/SQS settings;
3. huey (SqliteHuey) and the idle worker's result;
4. the peers on moto: Celery 5 on SQS without results and with the S3 result backend, and the
   raw boto3 floor;
5. latency (submit → handler start) on the embedded setting and on moto, and Celery's on moto;
6. the AWS-latency profile (``bench.aws_latency``): moto behind a proxy that adds AWS-like
   per-request latency; through it remotejob (batch and one by one), Celery on SQS without
   results and with the S3 result backend, the raw boto3 floor, and the latency of remotejob and
   Celery;
7. large bodies (``bench.large``): remotejob on SeaweedFS and embedded, and boto3 on SeaweedFS;
8. cancel and time limits (``bench.control``), on the embedded setting and on moto: cancel racing
   completion, cancels made before the take, how fast a running job stops, and the requests per
   job of jobs nobody cancels.

``--only control`` runs part 8 alone (moto only, no SeaweedFS) and merges it into the saved raw
results (``bench/results/latest.json``, which must exist): ``results["control"]`` and its failed
measurements are replaced, everything else is kept, and the report is rendered again from the
merged results (a line under its title says when the control part was measured).

Every throughput run also records CPU seconds per job: of the worker (remotejob's worker
process, Celery's worker, huey's consumer) and of the submitting process.

A measurement that fails is recorded with its reason (a row of the report says why) and the run
goes on. Raw results go to ``bench/results/latest.json``; the report is rendered by
:mod:`bench.report`. The servers and every process started are stopped at the end, also on an
error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import ours, report  # noqa: E402 - needs the repo on sys.path

RESULTS = REPO / "bench" / "results" / "latest.json"
BUCKET = "remotejob-bench"
PARTS = ("ours", "latency", "idle", "peers", "aws-latency", "large", "control")
ONLY = ("control",)
"""Parts ``--only`` can run alone, merged into the saved results."""


@dataclass(frozen=True)
class Plan:
    """How much each measurement runs; chosen to fit about ten minutes on two cores."""

    jobs: int = 2000
    """Jobs per throughput run on the embedded setting, and for huey."""
    aws_jobs: int = 500
    """Jobs per throughput run on moto and SeaweedFS, and for Celery and the boto3 floor: moto's
    SendMessageBatch and ReceiveMessage slow down in proportion to the queue's depth, so 2,000
    jobs submitted at once take about two minutes per run there, measuring moto rather than us."""
    celery_s3_jobs: int = 100
    """Jobs for Celery with the S3 result backend: the submitter ``.get()``s each result in turn,
    polling every 0.5 s."""
    runs: int = 3
    """Runs of each of remotejob's throughput settings and modes (the median is reported)."""
    latency_n: int = 50
    idle_s: float = 50.0
    """How long the idle worker runs: 50 s allows 3 receives (at 0, 20 and 40 s)."""
    large_bytes: int = 1024**3
    large_runs: int = 3
    """Rounds of the large-body runs, interleaved (medians of the throughputs, the largest RSS)."""
    aws_latency_jobs: int = 300
    """Jobs per throughput run through the AWS-latency proxy (ours, Celery, the boto3 floor)."""
    aws_latency_celery_s3_jobs: int = 100
    """Jobs for Celery with the S3 result backend through the AWS-latency proxy."""
    aws_latency_runs: int = 1
    """Runs of each throughput measurement through the AWS-latency proxy (the median is reported).
    One: through the proxy the rates are bound by the injected latency, and two runs differed by
    under 3% on the machine this was written on, while each run of ours one by one takes ~35 s
    (the whole part takes ~2.5 min with one run, ~4.5 min with two)."""
    control_rounds: int = 100
    """Rounds of cancel against completion, per setting."""
    control_jobs: int = 50
    """Jobs cancelled before a worker takes them, per setting."""
    control_stop_runs: int = 5
    """Running jobs cancelled per setting and kind (Python handler, ``--exec`` command)."""
    control_request_jobs: int = 200
    """Jobs nobody cancels whose requests are counted (moto)."""

    @classmethod
    def quick(cls) -> Plan:
        """Tiny counts for a smoke run of every part (under two minutes)."""
        return cls(jobs=100, aws_jobs=50, celery_s3_jobs=10, runs=1, latency_n=10, idle_s=25.0,
                   large_bytes=32 * 1024**2, large_runs=1, aws_latency_jobs=30,
                   aws_latency_celery_s3_jobs=10, aws_latency_runs=1, control_rounds=10, control_jobs=10,
                   control_stop_runs=2, control_request_jobs=50)


def log(message: str) -> None:
    """Progress on stderr (the run's only output besides the files it writes)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


class Recorder:
    """Runs measurements, logs them, and records a failure as ``{"error": ...}`` instead of raising."""

    def __init__(self) -> None:
        self.errors: list[dict[str, str]] = []

    def __call__(self, label: str, fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any
                 ) -> dict[str, Any]:
        """Call ``fn(*args, **kwargs)``; on an exception return ``{"error": reason}``."""
        log(f"{label} ...")
        started = time.monotonic()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - one failed measurement must not end the run
            reason = f"{type(exc).__name__}: {exc}".strip()
            self.errors.append({"measurement": label, "error": reason,
                                "traceback": traceback.format_exc(limit=6)})
            log(f"{label} FAILED after {time.monotonic() - started:.1f} s: {reason.splitlines()[0]}")
            return {"error": reason}
        log(f"{label}: {report.one_line(result)} ({time.monotonic() - started:.1f} s)")
        return result


# -- servers and settings ---------------------------------------------------------------------


@dataclass
class Servers:
    """The servers of one benchmark run and the three settings' environments."""

    moto: Any
    weed: Any
    """SeaweedFS, or None when it was not started (``--only control``)."""
    workdir: Path

    def aws_env(self, s3_endpoint: str, prefix: str, sqs_endpoint: str | None = None) -> dict[str, str]:
        """The environment of an S3/SQS setting: ``s3_endpoint`` for S3, ``sqs_endpoint`` (moto by
        default) for SQS."""
        from tests import servers

        return {
            "REMOTEJOB_STORE": f"s3://{BUCKET}/{prefix}",
            "REMOTEJOB_QUEUES": "sqs://",
            "AWS_ENDPOINT_URL_S3": s3_endpoint,
            "AWS_ENDPOINT_URL_SQS": sqs_endpoint or self.moto.endpoint,
            "AWS_ACCESS_KEY_ID": servers.ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": servers.SECRET_KEY,
            "AWS_REGION": servers.REGION,
            "AWS_DEFAULT_REGION": servers.REGION,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def settings(self) -> dict[str, dict[str, str]]:
        """``embedded``, ``moto`` and ``seaweedfs`` (if started): each setting's environment."""
        home = self.workdir / "embedded-home"
        home.mkdir(parents=True, exist_ok=True)
        out = {
            "embedded": {"REMOTEJOB_HOME": str(home)},
            "moto": self.aws_env(self.moto.endpoint, "ours"),
        }
        if self.weed is not None:
            out["seaweedfs"] = self.aws_env(self.weed.endpoint, "ours")
        return out


@contextmanager
def running_servers(workdir: Path, seaweedfs: bool = True) -> Iterator[Servers]:
    """Start moto and (unless told not to) SeaweedFS, create the bucket on each; stop them afterwards."""
    from tests import servers

    started: list[Any] = []
    try:
        log("starting moto and SeaweedFS ..." if seaweedfs else "starting moto ...")
        started.append(servers.start_moto())
        if seaweedfs:
            started.append(servers.start_seaweedfs())
        for server in started:
            servers._client("s3", server.endpoint).create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        yield Servers(started[0], started[1] if seaweedfs else None, workdir)
    finally:
        for server in started:
            server.stop()
        log("servers stopped")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# -- the measurements -------------------------------------------------------------------------


def median_cpu(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    """Per phase, the median over ``runs`` of their ``cpu_ms_per_job`` (None if none has it)."""
    docs = [r["cpu_ms_per_job"] for r in runs if isinstance(r.get("cpu_ms_per_job"), dict)]
    if not docs:
        return None
    phases = sorted({phase for doc in docs for phase in doc})
    return {phase: statistics.median(doc[phase] for doc in docs if phase in doc) for phase in phases}


def summarize_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of several throughput runs, and the median run itself (its request counts)."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0]["error"] if runs else "no runs", "runs": runs}
    ranked = sorted(ok, key=lambda r: r["jobs_per_s"])
    return {
        "jobs_per_s": statistics.median(r["jobs_per_s"] for r in ok),
        "drain_jobs_per_s": statistics.median(r["drain_jobs_per_s"] for r in ok),
        "cpu_ms_per_job": median_cpu(ok),
        "min_jobs_per_s": ranked[0]["jobs_per_s"],
        "max_jobs_per_s": ranked[-1]["jobs_per_s"],
        "ok_runs": len(ok),
        "median_run": ranked[(len(ranked) - 1) // 2],
        "runs": runs,
    }


def repeat(record: Recorder, label: str, runs: int, fn: Callable[..., dict[str, Any]], *args: Any,
           **kwargs: Any) -> dict[str, Any]:
    """A peer measured ``runs`` times: its median run, with the median ``jobs_per_s`` of all (and
    the median CPU per job of each phase).

    Each run gets its own folder (``<workdir>/run<i>``; the workdir is the first of ``args``
    that is a Path).
    """
    results = []
    for i in range(runs):
        run_args = [a / f"run{i + 1}" if isinstance(a, Path) else a for a in args]
        results.append(record(f"{label} run {i + 1}/{runs}", fn, *run_args, **kwargs))
    ok = sorted((r for r in results if "error" not in r), key=lambda r: r["jobs_per_s"])
    if not ok:
        return results[0]
    return {**ok[(len(ok) - 1) // 2], "jobs_per_s": statistics.median(r["jobs_per_s"] for r in ok),
            "runs_jobs_per_s": [r.get("jobs_per_s") for r in results], "ok_runs": len(ok),
            "cpu_ms_per_job": median_cpu(ok)}


def measure_ours(record: Recorder, settings: dict[str, dict[str, str]], names: tuple[str, ...],
                 plan: Plan, workdir: Path) -> dict[str, Any]:
    """Throughput of every setting in ``names`` × (batch, one by one) × ``plan.runs``."""
    out: dict[str, Any] = {}
    for setting in names:
        jobs = plan.jobs if setting == "embedded" else plan.aws_jobs
        out[setting] = {}
        for mode, batch in (("batch", True), ("one_by_one", False)):
            runs = [
                record(f"ours {setting} {mode} run {i + 1}/{plan.runs} ({jobs} jobs)", ours.throughput,
                       settings[setting], jobs, batch, workdir / "ours")
                for i in range(plan.runs)
            ]
            out[setting][mode] = summarize_runs(runs)
    return out


def measure_peers(record: Recorder, srv: Servers, plan: Plan, workdir: Path, latency: bool
                  ) -> dict[str, Any]:
    """Celery (no results, S3 results), the boto3 floor and Celery's latency, all on moto."""
    try:
        from bench import peers
    except Exception as exc:  # noqa: BLE001 - a missing peer is a row of the report, not a crash
        reason = f"bench.peers could not be imported: {type(exc).__name__}: {exc}"
        log(reason)
        return {"error": reason}
    moto, n = srv.moto.endpoint, plan.runs
    out = {
        "celery_sqs": repeat(record, f"celery sqs ({plan.aws_jobs} jobs)", n, peers.celery_sqs, moto,
                             plan.aws_jobs, workdir / "celery"),
        "celery_sqs_s3": repeat(record, f"celery sqs + s3 results ({plan.celery_s3_jobs} jobs)", n,
                                peers.celery_sqs, moto, plan.celery_s3_jobs, workdir / "celery-s3",
                                s3_endpoint=moto),
        "boto3_floor": repeat(record, f"boto3 floor ({plan.aws_jobs} jobs)", n, peers.boto3_floor, moto,
                              plan.aws_jobs, workdir / "floor"),
    }
    if latency:
        out["celery_latency"] = record(f"celery latency (n={plan.latency_n})", peers.celery_latency, moto,
                                       plan.latency_n, workdir / "celery-latency")
    return out


def measure_huey(record: Recorder, plan: Plan, workdir: Path) -> dict[str, Any]:
    """huey's SqliteHuey (results stored, every one read back) with its 8-thread consumer."""
    try:
        from bench import peers
    except Exception as exc:  # noqa: BLE001 - reported as a row
        return {"error": f"bench.peers could not be imported: {type(exc).__name__}: {exc}"}
    return repeat(record, f"huey sqlite ({plan.jobs} jobs)", plan.runs, peers.huey_sqlite, plan.jobs,
                  workdir / "huey")


def measure_large(record: Recorder, srv: Servers, plan: Plan, workdir: Path) -> dict[str, Any]:
    """``bench.large``: one big body through remotejob (SeaweedFS; embedded) and through boto3."""
    try:
        from bench import large
    except Exception as exc:  # noqa: BLE001 - reported as a row
        reason = f"bench.large could not be imported: {type(exc).__name__}: {exc}"
        log(reason)
        return {"error": reason}
    size, folder, mib = plan.large_bytes, workdir / "large", plan.large_bytes >> 20
    embedded, seaweed = srv.settings()["embedded"], srv.aws_env(srv.weed.endpoint, "large")
    kinds: dict[str, tuple[str, Callable[..., dict[str, Any]], tuple[Any, ...]]] = {
        "ours-s3": ("ours seaweedfs", large.ours_large, (seaweed, size, folder)),
        "boto3": ("boto3 seaweedfs", large.boto3_large, (srv.weed.endpoint, BUCKET, size, folder)),
        "ours-embedded": ("ours embedded", large.ours_large, (embedded, size, folder)),
    }
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in kinds}
    for i in range(plan.large_runs):  # interleaved, so a slow spell of the machine hits every kind
        for label, (title, fn, args) in kinds.items():
            runs[label].append(record(f"large {title} ({mib} MiB) run {i + 1}/{plan.large_runs}", fn, *args))
    out: dict[str, Any] = {"size_bytes": size}
    for label, results in runs.items():
        ok = [r for r in results if "error" not in r]
        try:
            out[label] = large.aggregate(ok) if ok else results[0]
        except Exception as exc:  # noqa: BLE001 - reported as a row
            out[label] = {"error": f"bench.large.aggregate failed: {type(exc).__name__}: {exc}"}
    return out


def measure_aws_latency(record: Recorder, srv: Servers, plan: Plan, workdir: Path) -> dict[str, Any]:
    """Everything through one AWS-latency proxy in front of moto (S3 and SQS), in one run.

    Ours (batch and one by one, ``plan.aws_latency_runs`` runs each, medians), Celery on SQS
    without results and with the S3 result backend, the raw boto3 floor, then the latency of
    ours and of Celery; finally the proxy's account of the delays it injected.
    """
    from bench import aws_latency

    folder = workdir / "aws-latency"
    jobs, s3_jobs, runs, n = (plan.aws_latency_jobs, plan.aws_latency_celery_s3_jobs, plan.aws_latency_runs,
                              plan.latency_n)
    out: dict[str, Any] = {"profile": aws_latency.PROFILE.describe()}
    proxy = aws_latency.LatencyProxy(srv.moto.endpoint, folder / "proxy")
    try:
        proxy.__enter__()
    except Exception as exc:  # noqa: BLE001 - reported as a row
        reason = f"the latency proxy did not start: {type(exc).__name__}: {exc}"
        log(reason)
        return {**out, "error": reason}
    try:
        url = proxy.url
        env = srv.aws_env(url, "aws-latency", sqs_endpoint=url)
        log(f"AWS-latency proxy at {url} in front of moto at {srv.moto.endpoint}")
        out["ours"] = {}
        for mode, batch in (("batch", True), ("one_by_one", False)):
            out["ours"][mode] = summarize_runs([
                record(f"aws-latency ours {mode} run {i + 1}/{runs} ({jobs} jobs)", ours.throughput, env,
                       jobs, batch, folder / "ours")
                for i in range(runs)
            ])
        try:
            from bench import peers
        except Exception as exc:  # noqa: BLE001 - a missing peer is a row of the report, not a crash
            reason = f"bench.peers could not be imported: {type(exc).__name__}: {exc}"
            log(reason)
            out["peers"] = {"error": reason}
        else:
            out["peers"] = {
                "celery_sqs": repeat(record, f"aws-latency celery sqs ({jobs} jobs)", runs,
                                     peers.celery_sqs, url, jobs, folder / "celery"),
                "celery_sqs_s3": repeat(record, f"aws-latency celery sqs + s3 results ({s3_jobs} jobs)",
                                        runs, peers.celery_sqs, url, s3_jobs, folder / "celery-s3",
                                        s3_endpoint=url),
                "boto3_floor": repeat(record, f"aws-latency boto3 floor ({jobs} jobs)", runs,
                                      peers.boto3_floor, url, jobs, folder / "floor"),
            }
        out["latency"] = record(f"aws-latency ours latency (n={n})", ours.latency, env, n, folder / "latency")
        if "error" not in out["peers"]:
            out["peers"]["celery_latency"] = record(f"aws-latency celery latency (n={n})",
                                                    peers.celery_latency, url, n, folder / "celery-latency")
    finally:
        proxy.__exit__(None, None, None)
        out["proxy"] = proxy.stats
    return out


def measure_control(record: Recorder, settings: dict[str, dict[str, str]], plan: Plan, workdir: Path,
                    command: str, separate: bool) -> dict[str, Any]:
    """``bench.control`` on the embedded setting and on moto, with when and how it was measured."""
    started = time.time()
    meta = report.environment()
    try:
        from bench import control
    except Exception as exc:  # noqa: BLE001 - reported as a row
        reason = f"bench.control could not be imported: {type(exc).__name__}: {exc}"
        log(reason)
        return {"error": reason}
    counts = {"rounds": plan.control_rounds, "jobs": plan.control_jobs, "stop_runs": plan.control_stop_runs,
              "request_jobs": plan.control_request_jobs}
    out: dict[str, Any] = {
        "plan": {**counts, "concurrency": control.CONCURRENCY, "cancel_check_s": control.CANCEL_CHECK_S,
                 "cancel_grace_s": control.CANCEL_GRACE_S, "visibility_s": control.VISIBILITY_S},
    }
    for setting in ("embedded", "moto"):
        out[setting] = control.measure_setting(record, setting, settings[setting], counts,
                                               workdir / "control")
    meta["load_after"] = os.getloadavg()
    out["meta"] = {**meta, "started": started, "wall_s": time.time() - started, "command": command,
                   "separate": separate, "quick": plan.control_rounds < Plan.control_rounds}
    return out


def run_all(plan: Plan, skip: set[str], workdir: Path, command: str = "python -m bench.run"
            ) -> dict[str, Any]:
    """Every measurement of ``plan`` not in ``skip``; returns the raw results."""
    record = Recorder()
    results: dict[str, Any] = {"plan": asdict(plan), "skipped": sorted(skip)}
    with running_servers(workdir) as srv:
        settings = srv.settings()
        idle_worker = None
        try:
            if "idle" not in skip:
                log(f"idle worker on moto for {plan.idle_s:.0f} s (in the background)")
                idle_worker = ours.start_idle(settings["moto"], plan.idle_s, workdir / "idle")
            if "ours" not in skip:
                results["throughput"] = measure_ours(record, settings, ("embedded",), plan, workdir)
            if "peers" not in skip:
                results["huey"] = measure_huey(record, plan, workdir)
            if idle_worker is not None:
                results["idle"] = record("idle worker result", ours.finish_idle, idle_worker, plan.idle_s)
                idle_worker = None
            if "ours" not in skip:
                results["throughput"].update(
                    measure_ours(record, settings, ("moto", "seaweedfs"), plan, workdir))
            if "peers" not in skip:
                results["peers"] = measure_peers(record, srv, plan, workdir, "latency" not in skip)
            if "latency" not in skip:
                results["latency"] = {
                    setting: record(f"latency {setting} (n={plan.latency_n})", ours.latency,
                                    settings[setting], plan.latency_n, workdir / "latency")
                    for setting in ("embedded", "moto")
                }
            if "aws-latency" not in skip:
                results["aws_latency"] = measure_aws_latency(record, srv, plan, workdir)
            if "large" not in skip:
                results["large"] = measure_large(record, srv, plan, workdir)
            if "control" not in skip:
                results["control"] = measure_control(record, settings, plan, workdir, command, separate=False)
        finally:
            if idle_worker is not None:
                idle_worker.kill()
    results["errors"] = record.errors
    return results


def run_only(plan: Plan, part: str, workdir: Path, saved: dict[str, Any], command: str) -> dict[str, Any]:
    """Run ``part`` alone and merge it into ``saved`` (the raw results of an earlier run).

    Only ``control`` can: ``saved["control"]`` and the failures recorded under it are replaced;
    everything else, the run's own ``meta`` and ``plan`` included, is kept.
    """
    assert part == "control", part  # noqa: S101 - parse_args allows only ONLY
    record = Recorder()
    with running_servers(workdir, seaweedfs=False) as srv:
        control = measure_control(record, srv.settings(), plan, workdir, command, separate=True)
    errors = [e for e in saved.get("errors") or []
              if not str(e.get("measurement", "")).startswith("control ")]
    return {**saved, "control": control, "errors": errors + record.errors}


# -- the command line -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke run of every part")
    parser.add_argument("--jobs", type=int, help=f"jobs per embedded/huey run (default {Plan.jobs})")
    parser.add_argument("--aws-jobs", type=int,
                        help=f"jobs per moto/SeaweedFS/Celery/floor run (default {Plan.aws_jobs})")
    parser.add_argument("--runs", type=int,
                        help=f"runs per throughput setting and mode (default {Plan.runs})")
    parser.add_argument("--aws-latency-jobs", type=int,
                        help=f"jobs per run through the AWS-latency proxy (default {Plan.aws_latency_jobs})")
    parser.add_argument("--aws-latency-runs", type=int,
                        help=f"runs per measurement through the proxy (default {Plan.aws_latency_runs})")
    parser.add_argument("--skip", default="", help=f"comma-separated parts to leave out: {', '.join(PARTS)}")
    parser.add_argument("--only", choices=ONLY,
                        help="run this part alone and merge it into the saved results (--results), then "
                             "render the report from them")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="the report to write")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the raw JSON goes")
    args = parser.parse_args(argv)
    args.skip_parts = {part.strip() for part in args.skip.split(",") if part.strip()}
    unknown = args.skip_parts - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}: choose from {', '.join(PARTS)}")
    if args.only and args.skip_parts:
        parser.error("--only and --skip do not mix")
    if args.only and not args.results.exists():
        parser.error(f"--only merges into saved results, but {args.results} does not exist: "
                     "run everything first")
    for name in ("jobs", "aws_jobs", "runs", "aws_latency_jobs", "aws_latency_runs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def make_plan(args: argparse.Namespace) -> Plan:
    """The plan the arguments ask for."""
    plan = Plan.quick() if args.quick else Plan()
    names = ("jobs", "aws_jobs", "runs", "aws_latency_jobs", "aws_latency_runs")
    changes = {name: getattr(args, name) for name in names if getattr(args, name)}
    return Plan(**{**asdict(plan), **changes})


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, save the raw results and write the report."""
    args = parse_args(argv)
    plan = make_plan(args)
    previous = {signum: signal.signal(signum, _raise_interrupt) for signum in (signal.SIGINT, signal.SIGTERM)}
    workdir = Path(tempfile.mkdtemp(prefix="remotejob-bench-"))
    started = time.time()
    environment = report.environment()
    command = " ".join(["python -m bench.run", *(sys.argv[1:] if argv is None else argv)])
    try:
        if args.only:
            results = run_only(plan, args.only, workdir, json.loads(args.results.read_text()), command)
        else:
            results = run_all(plan, args.skip_parts, workdir, command)
    except KeyboardInterrupt:
        log("interrupted: servers and workers stopped, nothing written")
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        shutil.rmtree(workdir, ignore_errors=True)
    if not args.only:
        environment["load_after"] = os.getloadavg()
        results["meta"] = {
            **environment, "started": started, "wall_s": time.time() - started, "quick": args.quick,
            "command": command,
        }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(results, indent=1, default=str))
    old = args.out.read_text() if args.out.exists() else ""
    args.out.write_text(report.render(results, old))
    failed = [e for e in results["errors"]
              if not args.only or str(e.get("measurement")).startswith("control ")]
    log(f"wrote {args.out} and {args.results} in {time.time() - started:.0f} s ({len(failed)} measurement(s)"
        " failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
