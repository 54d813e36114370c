"""The AWS-latency profile: moto behind a proxy that adds AWS-like request latency.

moto answers in well under a millisecond on loopback; AWS does not. This module runs
``tests/proxy.py``'s :class:`~tests.proxy.Proxy` in front of moto (S3 and SQS through the one
proxy) in a separate process, so that its CPU is charged neither to the submitting process nor to
its GIL, and delays each request by a time drawn from the :data:`PROFILE`:

- every request draws one latency from its operation's distribution (a lognormal: right-skewed
  with a long tail, as service latencies are, clipped to a floor and a ceiling), from one
  ``random.Random(seed)`` so that runs draw the same sequence;
- half of it is slept before the request is forwarded and the other half after moto answered
  (the two legs of a round trip), so a ReceiveMessage long poll that returns empty gets exactly
  one draw on top of its wait, and a message that arrives during a long poll reaches the
  consumer half a draw after moto handed it out;
- the operation is the SQS action (``tests.proxy.sqs_action``: the JSON protocol's
  ``X-Amz-Target``; a query-protocol ``Action=`` body counts as SQS too), else S3 by method:
  GET/HEAD are reads, PUT/POST/DELETE writes.

``python -m bench.aws_latency --upstream URL --ready FILE --stats FILE [--seed N]`` serves until
SIGTERM/SIGINT and then writes the injected delays' statistics to ``--stats``;
:class:`LatencyProxy` runs it from the benchmark.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.proxy import Proxy, Request, sqs_action  # noqa: E402 - needs the repo on sys.path

READY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Lognormal:
    """``median_ms · exp(sigma · N(0, 1))``, clipped to ``[min_ms, max_ms]``."""

    median_ms: float
    sigma: float
    min_ms: float
    max_ms: float

    def sample(self, rng: random.Random) -> float:
        """One draw, in seconds."""
        ms = self.median_ms * math.exp(self.sigma * rng.gauss(0.0, 1.0))
        return min(max(ms, self.min_ms), self.max_ms) / 1000.0

    def quantile_ms(self, p: float) -> float:
        """The distribution's ``p`` quantile (0 < p < 1), clipping included."""
        ms = self.median_ms * math.exp(self.sigma * statistics.NormalDist().inv_cdf(p))
        return min(max(ms, self.min_ms), self.max_ms)

    def describe(self) -> str:
        """E.g. ``lognormal, median 20 ms, σ 0.5, clipped to [5, 250] ms``."""
        return (f"lognormal, median {self.median_ms:g} ms, σ {self.sigma:g}, clipped to "
                f"[{self.min_ms:g}, {self.max_ms:g}] ms")


@dataclass(frozen=True)
class Source:
    """Where a figure comes from."""

    title: str
    url: str
    says: str


@dataclass(frozen=True)
class Profile:
    """Per-operation latency distributions, their seed and their sources."""

    sqs: Lognormal
    s3_read: Lognormal
    s3_write: Lognormal
    seed: int = 12
    sources: tuple[Source, ...] = field(default_factory=tuple)
    rationale: str = ""

    def kind(self, request: Request) -> str:
        """``sqs``, ``s3_read`` or ``s3_write``."""
        if sqs_action(request.headers) or _query_action(request) is not None:
            return "sqs"
        return "s3_read" if request.method in ("GET", "HEAD") else "s3_write"

    def distribution(self, kind: str) -> Lognormal:
        dist: Lognormal = getattr(self, kind)
        return dist

    def describe(self) -> dict[str, Any]:
        """The profile as plain data, for the results file and the report."""
        return {
            "seed": self.seed,
            "split": "half before forwarding, half after the upstream answered",
            "operations": {
                kind: {**asdict(self.distribution(kind)), "text": self.distribution(kind).describe(),
                       "p95_ms": self.distribution(kind).quantile_ms(0.95),
                       "p99_ms": self.distribution(kind).quantile_ms(0.99),
                       "mean_ms": _clipped_mean_ms(self.distribution(kind))}
                for kind in KINDS
            },
            "sources": [asdict(source) for source in self.sources],
            "rationale": self.rationale,
        }


KINDS = ("sqs", "s3_read", "s3_write")
KIND_LABELS = {
    "sqs": "SQS, every action (SendMessage[Batch], ReceiveMessage, DeleteMessage[Batch], ...)",
    "s3_read": "S3 GET, HEAD",
    "s3_write": "S3 PUT, POST, DELETE",
}

PROFILE = Profile(
    sqs=Lognormal(median_ms=20.0, sigma=0.5, min_ms=5.0, max_ms=250.0),
    s3_read=Lognormal(median_ms=20.0, sigma=0.5, min_ms=5.0, max_ms=500.0),
    s3_write=Lognormal(median_ms=30.0, sigma=0.5, min_ms=5.0, max_ms=500.0),
    seed=12,
    sources=(
        Source(
            "Amazon SQS Developer Guide: Increasing throughput using horizontal scaling and action "
            "batching",
            "https://docs.aws.amazon.com/AWSSimpleQueueService/latest/SQSDeveloperGuide/"
            "sqs-throughput-horizontal-scaling-and-batching.html",
            "its worked example: request latency from an EC2 client to SQS in the same Region "
            "averaging 20 ms, so one thread on one connection tops out near 50 requests/s",
        ),
        Source(
            "Amazon SQS FAQs (as quoted in issue 12)",
            "https://aws.amazon.com/sqs/faqs/",
            "typical latencies of SendMessage, ReceiveMessage and DeleteMessage in the tens to low "
            "hundreds of milliseconds (not found in the searchable copy of the docs used here; the "
            "ceiling of 250 ms keeps the tail within that range)",
        ),
        Source(
            "Best Practices Design Patterns: Optimizing Amazon S3 Performance (whitepaper): "
            "Timeouts and Retries for Latency-Sensitive Applications",
            "https://docs.aws.amazon.com/whitepapers/latest/s3-optimizing-performance-best-practices/"
            "timeouts-and-retries-for-latency-sensitive-applications.html",
            "small requests (under 512 KB) have median latencies often in the tens of milliseconds; "
            "retry a GET or PUT that has not answered after 2 s",
        ),
    ),
    rationale=(
        "Medians at the low end of the documented ranges (SQS 20 ms: the guide's same-Region "
        "average; S3 reads 20 ms and writes 30 ms: 'tens of milliseconds', writes a little slower "
        "as S3 stores them durably before answering), so the profile is what a worker in the same "
        "Region as its queue and bucket sees on a good day and the run stays short. σ 0.5 gives a "
        "p95 of 2.3× the median and a p99 of 3.2×; the ceilings cut the rare tail (a real client "
        "would retry there)."
    ),
)


def _clipped_mean_ms(dist: Lognormal) -> float:
    """The mean of the clipped distribution, by numerical integration over the normal's quantiles."""
    steps = 2000
    return statistics.fmean(dist.quantile_ms((i + 0.5) / steps) for i in range(steps))


def _query_action(request: Request) -> str | None:
    """The ``Action=`` of an SQS query-protocol request (form-encoded POST), None otherwise."""
    content_type = request.headers.get("Content-Type") or ""
    if request.method != "POST" or "x-www-form-urlencoded" not in content_type:
        return None
    for pair in request.body.split(b"&"):
        if pair.startswith(b"Action="):
            return pair[len(b"Action="):].decode("ascii", "replace")
    return None


# -- the proxy process ------------------------------------------------------------------------


class Injector:
    """The proxy's two delay hooks: one draw per request, split over its two legs; and its stats."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._rng = random.Random(profile.seed)  # noqa: S311 - simulated latency, not secrecy
        self._lock = threading.Lock()
        self._pending: dict[int, float] = {}
        self.samples: dict[str, list[float]] = {kind: [] for kind in KINDS}
        self.operations: Counter[str] = Counter()

    def before(self, request: Request) -> float:
        """The first leg: draw the request's latency, sleep half now, keep the other half."""
        kind = self.profile.kind(request)
        operation = (f"SQS.{sqs_action(request.headers) or _query_action(request)}" if kind == "sqs"
                     else f"S3.{request.method}")
        with self._lock:
            seconds = self.profile.distribution(kind).sample(self._rng)
            self.samples[kind].append(seconds * 1000.0)
            self.operations[operation] += 1
            self._pending[id(request)] = seconds / 2
        return seconds / 2

    def after(self, request: Request, status: int) -> float:
        """The return leg: the other half of the request's draw."""
        with self._lock:
            return self._pending.pop(id(request), 0.0)

    def stats(self) -> dict[str, Any]:
        """What was injected: per kind, the count and the draws' p50/p95/max/mean (ms)."""
        with self._lock:
            by_kind: dict[str, dict[str, float]] = {}
            for kind, values in self.samples.items():
                if not values:
                    by_kind[kind] = {"count": 0}
                    continue
                ordered = sorted(values)
                by_kind[kind] = {
                    "count": len(values), "p50_ms": statistics.median(ordered),
                    "p95_ms": ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)],
                    "max_ms": ordered[-1], "mean_ms": statistics.fmean(ordered),
                }
            return {"by_kind": by_kind, "operations": dict(sorted(self.operations.items()))}


def serve(upstream: str, ready: Path, stats_file: Path, seed: int) -> int:
    """Run the proxy until SIGTERM/SIGINT; write its URL to ``ready`` and its stats at the end."""
    injector = Injector(replace(PROFILE, seed=seed))
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    with Proxy(upstream, delay=injector.before, reply_delay=injector.after) as proxy:
        _write_json(ready, {"url": proxy.url, "pid": os.getpid()})
        while not stop.wait(0.5):
            pass
        errors = list(proxy.errors)
        actions = dict(proxy.actions)
    _write_json(stats_file, {**injector.stats(), "errors": errors[:20], "error_count": len(errors),
                             "actions": actions, "seed": seed})
    return 0


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


# -- from the benchmark -----------------------------------------------------------------------


class LatencyProxy:
    """The proxy process as a context manager: ``url`` while it runs, ``stats`` after it stopped."""

    def __init__(self, upstream: str, workdir: Path, seed: int = PROFILE.seed) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.ready, self.stats_file, self.log = (workdir / n for n in ("ready.json", "stats.json", "log"))
        self.argv = [sys.executable, "-m", "bench.aws_latency", "--upstream", upstream, "--ready",
                     str(self.ready), "--stats", str(self.stats_file), "--seed", str(seed)]
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.stats: dict[str, Any] = {}

    def __enter__(self) -> LatencyProxy:
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our interpreter and module, argv built here
                self.argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self._kill()
                raise RuntimeError(f"the latency proxy did not start:\n{self._log_tail()}")
            time.sleep(0.02)
        self.url = json.loads(self.ready.read_text())["url"]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self._kill()
        if self.stats_file.exists():
            self.stats = json.loads(self.stats_file.read_text())
        else:
            self.stats = {"error": f"the latency proxy wrote no stats:\n{self._log_tail()}"}

    def _kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.aws_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", required=True, help="moto's endpoint (http://host:port)")
    parser.add_argument("--ready", type=Path, required=True, help="written with its URL once it listens")
    parser.add_argument("--stats", type=Path, required=True, help="the injected delays, written at exit")
    parser.add_argument("--seed", type=int, default=PROFILE.seed)
    args = parser.parse_args(argv)
    return serve(args.upstream, args.ready, args.stats, args.seed)


if __name__ == "__main__":
    sys.exit(main())
