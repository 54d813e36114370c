"""Large bodies: one big body submitted and downloaded, its throughput and the process's peak RSS.

The measurement (from the benchmark issue): a 1 GiB body submitted and downloaded through
SeaweedFS and through the embedded store, in MB/s, with the peak RSS of the process. Targets:
at least 90% of boto3's own ``upload_fileobj``/``download_fileobj`` throughput on the same
server, and a peak RSS of at most 100 MiB for a 1 GiB body on both backends.

Every measurement runs in a **fresh subprocess** (``python -m bench.large _child SPEC``), so its
peak RSS is that process's own and nothing an earlier run allocated counts. The peak is
``VmHWM`` from ``/proc/self/status``, not ``ru_maxrss``: on Linux a child's ``ru_maxrss`` starts at
its parent's peak (the kernel carries it over ``exec`` from the forked address space), so it
would report the orchestrator's size; it is still given as ``ru_maxrss_mib``. The
child first connects (and records the RSS of a process that has only done that: the baseline),
then writes the body file in 1 MiB chunks of random bytes (outside the timings), then times the
upload and the download, checks the download's SHA-256 against the source, and cleans up.

Functions the orchestrator calls:

- :func:`ours_large`: remotejob, configured only by the environment it is given (SeaweedFS + moto,
  or ``REMOTEJOB_HOME`` for the embedded store): ``q.submit({"body": Path})`` timed as the upload,
  ``q.next()`` then ``job.download(path)`` timed as the download, then ``job.complete()``.
- :func:`boto3_large`: the same file through plain boto3 ``upload_fileobj``/``download_fileobj``
  with boto3's default ``TransferConfig`` (the baseline of the 90% target); ``transfer="remotejob"``
  uses remotejob's own ``TransferConfig`` instead, to tell the configuration from the code path.
- :func:`disk_large`: the embedded store's floor: a plain chunked copy of the file with an fsync
  (what its upload must at least do) and a plain copy back (its download).

Every function returns a flat dict (see :func:`_result`): ``label``, ``size_bytes``,
``upload_s``, ``download_s``, ``upload_mb_s``, ``download_mb_s`` (MB = 10^6 bytes),
``upload_cpu_s``/``download_cpu_s`` (the child's user+system CPU in each phase),
``peak_rss_mib`` (the child's ``VmHWM`` at its end), ``baseline_rss_mib`` (after importing
and connecting, before any body), ``body_rss_mib`` (peak minus baseline: what the body cost),
``rss_after_upload_mib`` (the peak as it stood after the upload), ``sha256_ok`` and ``python``.
For remotejob the baseline is taken after ``q.init()`` (its S3 and SQS clients exist by then, as
in any process that has used the queue), and ``connect_rss_mib`` is the peak after only
``import remotejob`` and ``connect()`` (which creates no client).

Command line (starts SeaweedFS and moto from ``tests/servers.py``, prints JSON)::

    python -m bench.large --size 256MiB
    python -m bench.large --only ours-s3,boto3 --repeat 3 --profile /tmp/prof

Sizes take ``K``/``M``/``G`` (binary, as ``KiB``/``MiB``/``GiB``) or ``KB``/``MB``/``GB`` (decimal).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
"""The repository root: the children run there so ``bench``, ``remotejob`` and ``tests`` import."""

CHUNK = 1024 * 1024
"""Bytes generated, hashed and compared at a time (never a whole body in memory)."""

DEFAULT_SIZE = 1024**3
TARGET_THROUGHPUT_RATIO = 0.90
TARGET_PEAK_RSS_MIB = 100.0
NEXT_TIMEOUT_S = 60.0
"""How long the child's ``q.next()`` waits for the job it has just submitted."""

_SCRUBBED_PREFIXES = ("REMOTEJOB_", "AWS_")
"""Inherited variables a child must not see: its configuration is exactly the ``env`` given."""

_UNITS = {
    "": 1, "B": 1,
    "K": 1024, "KIB": 1024, "KB": 1000,
    "M": 1024**2, "MIB": 1024**2, "MB": 1000**2,
    "G": 1024**3, "GIB": 1024**3, "GB": 1000**3,
    "T": 1024**4, "TIB": 1024**4, "TB": 1000**4,
}


def parse_size(text: str) -> int:
    """Parse a size such as ``1GiB``, ``256MiB``, ``64M``, ``1.5GB`` or ``1048576`` into bytes.

    ``K``/``M``/``G``/``T`` alone and ``KiB``... are binary; ``KB``/``MB``/``GB``... are decimal.

    Raises:
        ValueError: not a size, or not positive.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else ""
    if not match or unit not in _UNITS:
        raise ValueError(f"not a size: {text!r} (use e.g. 1GiB, 256MiB, 64M, 500MB or a byte count)")
    size = int(float(match.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return size


def default_timeout(size: int) -> float:
    """A generous bound for one child: 5 minutes plus 2 MB/s for each direction."""
    return 300.0 + 2 * size / 2e6


# -- the parent side: spawn a child, bounded, and read its JSON --------------------------------


def _child_env(env: Mapping[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
    base.update(env)
    base["PYTHONUNBUFFERED"] = "1"
    return base


def _run_child(spec: dict[str, Any], env: Mapping[str, str], timeout: float) -> dict[str, Any]:
    """Run ``python -m bench.large _child SPEC`` and return the JSON it prints last.

    Raises:
        RuntimeError: the child failed, printed no result or ran past ``timeout`` (it is killed).
    """
    argv = [sys.executable, "-m", "bench.large", "_child", json.dumps(spec)]
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter and module, argv built here
            argv, cwd=REPO, env=_child_env(env), capture_output=True, text=True, timeout=timeout,
            check=False, stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:  # run() has killed and reaped the child
        tail = (exc.stderr or b"")[-2000:]
        raise RuntimeError(f"bench child {spec['kind']} ran past {timeout:g} s: {tail!r}") from None
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"bench child {spec['kind']} failed (exit {done.returncode}; a result with sha256_ok "
            f"false means the download differed):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


@contextmanager
def _scratch(workdir: Path, label: str) -> Iterator[Path]:
    """A fresh folder under ``workdir`` for one child's files, removed afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"large-{label}-", dir=workdir))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def ours_large(
    env: dict[str, str],
    size: int,
    workdir: Path,
    *,
    timeout: float | None = None,
    profile: Path | None = None,
) -> dict[str, Any]:
    """Submit and download one ``size``-byte body through remotejob, in a fresh subprocess.

    The child sees only ``env`` among ``REMOTEJOB_*``/``AWS_*`` variables, so ``env`` picks the
    backend: for S3/SQS ``REMOTEJOB_STORE=s3://bucket/prefix``, ``REMOTEJOB_QUEUES=sqs://``,
    ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL_SQS``, credentials and region; for the embedded
    store ``REMOTEJOB_HOME=<folder>`` only. It connects to a job system of a unique name, runs
    ``q.init()`` (the baseline RSS is taken after it), writes the body file, times
    ``q.submit({"body": Path(file)})`` (upload), takes the job with ``q.next()`` (untimed),
    times ``job.download(dest)`` (download), checks the SHA-256, completes the job and removes
    its input.

    Args:
        env: the environment that configures remotejob in the child.
        size: body size in bytes.
        workdir: a folder for the body and its download (a subfolder is made and removed).
        timeout: seconds before the child is killed (default :func:`default_timeout`).
        profile: if set, the timed phases run under pyinstrument and text reports are written
            to ``<profile>/<label>-upload.txt`` and ``-download.txt`` (the RSS then includes
            the profiler's own).

    Returns:
        The result dict described in the module docstring, ``label`` ``ours-s3`` or
        ``ours-embedded``, plus ``next_s`` (the untimed ``q.next()``) and ``name``.

    Raises:
        RuntimeError: the child failed, the SHA-256 differed, or it ran past ``timeout``.
    """
    store = env.get("REMOTEJOB_STORE", "")
    label = "ours-s3" if store.startswith("s3://") else "ours-embedded"
    with _scratch(workdir, label) as folder:
        spec = {
            "kind": "ours", "label": label, "size": size, "dir": str(folder),
            "name": f"bench-large-{uuid.uuid4().hex[:10]}",
            "profile": str(profile) if profile else None,
        }
        return _run_child(spec, env, timeout or default_timeout(size))


def boto3_large(
    s3_endpoint: str,
    bucket: str,
    size: int,
    workdir: Path,
    *,
    transfer: str = "default",
    timeout: float | None = None,
    profile: Path | None = None,
) -> dict[str, Any]:
    """The same body through plain boto3 ``upload_fileobj``/``download_fileobj``, in a fresh
    subprocess: the baseline remotejob's S3 throughput is held to.

    The client is ``boto3.client("s3", endpoint_url=s3_endpoint)`` with the test servers'
    credentials and region (from ``tests/servers.py``, passed in the child's environment) and
    otherwise boto3's defaults; the baseline RSS is taken after it has made one request
    (``head_bucket``). The file object passed to ``upload_fileobj`` is the open file itself.

    Args:
        s3_endpoint: the S3 endpoint URL (SeaweedFS).
        bucket: an existing bucket; the object ``bench-large/<uuid>`` is written and deleted.
        size: body size in bytes.
        workdir: a folder for the body and its download (a subfolder is made and removed).
        transfer: ``"default"`` for ``TransferConfig()``, ``"remotejob"`` for remotejob's own
            ``TransferConfig`` (a diagnostic: same code path as the default, other settings).
        timeout: seconds before the child is killed (default :func:`default_timeout`).
        profile: as for :func:`ours_large`.

    Returns:
        The result dict described in the module docstring, ``label`` ``boto3-s3`` (or
        ``boto3-s3-remotejob-config``), plus ``transfer_config``.

    Raises:
        RuntimeError: the child failed, the SHA-256 differed, or it ran past ``timeout``.
    """
    from tests import servers  # boto3 and the test identity, only where this runs

    if transfer not in ("default", "remotejob"):
        raise ValueError(f"transfer must be 'default' or 'remotejob', not {transfer!r}")
    label = "boto3-s3" if transfer == "default" else "boto3-s3-remotejob-config"
    env = {
        "AWS_ACCESS_KEY_ID": servers.ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": servers.SECRET_KEY,
        "AWS_DEFAULT_REGION": servers.REGION,
    }
    with _scratch(workdir, label) as folder:
        spec = {
            "kind": "boto3", "label": label, "size": size, "dir": str(folder),
            "endpoint": s3_endpoint, "bucket": bucket, "transfer": transfer,
            "profile": str(profile) if profile else None,
        }
        return _run_child(spec, env, timeout or default_timeout(size))


def disk_large(
    size: int, workdir: Path, *, timeout: float | None = None
) -> dict[str, Any]:
    """The embedded store's floor, in a fresh subprocess: copy the file in 1 MiB chunks into
    another file and fsync it (the upload), then copy that back in 1 MiB chunks (the download).

    Returns:
        The result dict described in the module docstring, ``label`` ``disk-copy``.

    Raises:
        RuntimeError: the child failed or ran past ``timeout``.
    """
    with _scratch(workdir, "disk") as folder:
        spec = {"kind": "disk", "label": "disk-copy", "size": size, "dir": str(folder), "profile": None}
        return _run_child(spec, {}, timeout or default_timeout(size))


# -- the child side ---------------------------------------------------------------------------


def _ru_maxrss_mib() -> float:
    """``getrusage(RUSAGE_SELF).ru_maxrss`` in MiB (KiB on Linux, bytes on macOS).

    On Linux it is not this program's own: the kernel keeps it across ``exec`` from the address
    space the child was forked (or vforked) from, so a child of a 300 MiB parent reports at
    least 300 MiB. Reported for reference only; :func:`_maxrss_mib` is the measure.
    """
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024, 1)


def _maxrss_mib() -> float:
    """This process's peak resident set so far, in MiB: ``VmHWM`` of ``/proc/self/status``
    (the high-water mark of this program's own address space, fresh at ``exec``), else
    ``ru_maxrss`` where there is no ``/proc``."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return _ru_maxrss_mib()


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _write_body(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path`` in 1 MiB chunks, fsynced; return their SHA-256."""
    digest = hashlib.sha256()
    left = size
    with open(path, "wb") as out:
        while left > 0:
            chunk = os.urandom(min(CHUNK, left))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def _sha256_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


class _Phases:
    """Times phases of the child (wall and CPU), optionally under pyinstrument."""

    def __init__(self, label: str, profile: str | None) -> None:
        self.label = label
        self.profile = Path(profile) if profile else None
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        profiler: Any = None
        if self.profile is not None:
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.005)
            profiler.start()
        cpu, start = _cpu_s(), time.perf_counter()
        try:
            yield
        finally:
            self.wall[name] = time.perf_counter() - start
            self.cpu[name] = _cpu_s() - cpu
            if profiler is not None and self.profile is not None:
                profiler.stop()
                self.profile.mkdir(parents=True, exist_ok=True)
                report = profiler.output_text(unicode=False, color=False, show_all=False)
                (self.profile / f"{self.label}-{name}.txt").write_text(report)


def _result(
    label: str, size: int, phases: _Phases, baseline: float, after_upload: float, ok: bool,
    **extra: Any,
) -> dict[str, Any]:
    peak = _maxrss_mib()
    up, down = phases.wall["upload"], phases.wall["download"]
    return {
        "label": label,
        "size_bytes": size,
        "upload_s": round(up, 3),
        "download_s": round(down, 3),
        "upload_mb_s": round(size / 1e6 / up, 1),
        "download_mb_s": round(size / 1e6 / down, 1),
        "upload_cpu_s": round(phases.cpu["upload"], 2),
        "download_cpu_s": round(phases.cpu["download"], 2),
        "peak_rss_mib": peak,
        "ru_maxrss_mib": _ru_maxrss_mib(),
        "baseline_rss_mib": baseline,
        "body_rss_mib": round(peak - baseline, 1),
        "rss_after_upload_mib": after_upload,
        "sha256_ok": ok,
        "python": sys.version.split()[0],
        **extra,
    }


def _child_ours(spec: dict[str, Any]) -> dict[str, Any]:
    import remotejob

    size, folder = int(spec["size"]), Path(spec["dir"])
    q = remotejob.connect(spec["name"])
    connect_rss = _maxrss_mib()
    q.init()  # creates the clients (S3 and SQS) or the SQLite files: part of any real process
    baseline = _maxrss_mib()
    source, dest = folder / "source.bin", folder / "download.bin"
    expected = _write_body(source, size)
    phases = _Phases(spec["label"], spec.get("profile"))
    with phases.phase("upload"):
        job_id = q.submit({"body": source})
    try:
        after_upload = _maxrss_mib()
        source.unlink()
        start = time.perf_counter()
        job = q.next("pending", timeout=NEXT_TIMEOUT_S)
        next_s = time.perf_counter() - start
        if job is None or job.id != job_id:
            raise RuntimeError(f"q.next() returned {job!r}, expected the job {job_id}")
        with phases.phase("download"):
            job.download(dest)
        ok = _sha256_file(dest) == (expected, size)
        dest.unlink()
        job.complete(error=None if ok else "SHA-256 mismatch")
    finally:
        q.remove("in", job_id)  # the body's gigabyte goes whatever happened
    return _result(
        spec["label"], size, phases, baseline, after_upload, ok,
        connect_rss_mib=connect_rss, next_s=round(next_s, 3), name=spec["name"],
    )


def _child_boto3(spec: dict[str, Any]) -> dict[str, Any]:
    import boto3
    from boto3.s3.transfer import TransferConfig

    size, folder = int(spec["size"]), Path(spec["dir"])
    s3 = boto3.client("s3", endpoint_url=spec["endpoint"])
    if spec["transfer"] == "remotejob":
        from remotejob.backends._aws import TRANSFER

        config = TRANSFER
    else:
        config = TransferConfig()
    s3.head_bucket(Bucket=spec["bucket"])
    baseline = _maxrss_mib()
    key = f"bench-large/{uuid.uuid4().hex}"
    source, dest = folder / "source.bin", folder / "download.bin"
    expected = _write_body(source, size)
    phases = _Phases(spec["label"], spec.get("profile"))
    try:
        with phases.phase("upload"), open(source, "rb") as handle:
            s3.upload_fileobj(handle, spec["bucket"], key, Config=config)
        after_upload = _maxrss_mib()
        source.unlink()
        with phases.phase("download"), open(dest, "wb") as out:
            s3.download_fileobj(spec["bucket"], key, out, Config=config)
    finally:
        s3.delete_object(Bucket=spec["bucket"], Key=key)
    ok = _sha256_file(dest) == (expected, size)
    dest.unlink()
    settings = {name: getattr(config, name) for name in (
        "multipart_threshold", "multipart_chunksize", "max_concurrency", "max_in_memory_upload_chunks",
        "max_io_queue", "io_chunksize", "preferred_transfer_client",
    )}
    return _result(spec["label"], size, phases, baseline, after_upload, ok, transfer_config=settings)


def _copy(source: Path, dest: Path, fsync: bool) -> None:
    with open(source, "rb") as src, open(dest, "wb") as out:
        while chunk := src.read(CHUNK):
            out.write(chunk)
        if fsync:
            out.flush()
            os.fsync(out.fileno())


def _child_disk(spec: dict[str, Any]) -> dict[str, Any]:
    size, folder = int(spec["size"]), Path(spec["dir"])
    baseline = _maxrss_mib()
    source, stored, dest = folder / "source.bin", folder / "stored.bin", folder / "download.bin"
    expected = _write_body(source, size)
    phases = _Phases(spec["label"], None)
    with phases.phase("upload"):
        _copy(source, stored, fsync=True)
    after_upload = _maxrss_mib()
    source.unlink()
    with phases.phase("download"):
        _copy(stored, dest, fsync=False)
    ok = _sha256_file(dest) == (expected, size)
    return _result(spec["label"], size, phases, baseline, after_upload, ok)


_CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "ours": _child_ours, "boto3": _child_boto3, "disk": _child_disk,
}


def _child_main(raw: str) -> int:
    spec = json.loads(raw)
    result = _CHILDREN[spec["kind"]](spec)
    print(json.dumps(result), flush=True)
    return 0 if result["sha256_ok"] else 1


# -- the command line ---------------------------------------------------------------------------

RUNS = ("ours-embedded", "ours-s3", "boto3", "boto3-remotejob-config", "disk")
DEFAULT_RUNS = ("ours-s3", "ours-embedded", "boto3")


def _summary(results: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The targets: remotejob-on-S3 vs boto3 throughput ratios, and peak RSS per backend."""
    out: dict[str, Any] = {
        "target_throughput_ratio": TARGET_THROUGHPUT_RATIO, "target_peak_rss_mib": TARGET_PEAK_RSS_MIB,
    }
    ours, base = results.get("ours-s3"), results.get("boto3")
    if ours and base:
        for direction in ("upload", "download"):
            ratio = ours[f"{direction}_mb_s"] / base[f"{direction}_mb_s"]
            out[f"s3_{direction}_ratio_vs_boto3"] = round(ratio, 3)
            out[f"s3_{direction}_meets_target"] = ratio >= TARGET_THROUGHPUT_RATIO
    for label in ("ours-s3", "ours-embedded"):
        if label in results:
            out[f"{label}_peak_rss_meets_target"] = results[label]["peak_rss_mib"] <= TARGET_PEAK_RSS_MIB
    return out


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several results of one kind as one: the first run's fields, with the median of the
    times and throughputs, the largest RSS figures and every run under ``runs``."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    for field in ("upload_s", "download_s", "upload_mb_s", "download_mb_s", "upload_cpu_s", "download_cpu_s"):
        out[field] = statistics.median(run[field] for run in runs)
    for field in ("peak_rss_mib", "baseline_rss_mib", "body_rss_mib", "rss_after_upload_mib"):
        out[field] = max(run[field] for run in runs)
    out["sha256_ok"] = all(run["sha256_ok"] for run in runs)
    out["runs"] = runs
    return out


def _remove_weed_sockets(argv: Any) -> None:
    """Remove the Unix sockets a stopped ``weed server`` leaves in the temp folder.

    SeaweedFS makes ``seaweedfs-<service>-<port>.sock`` files there for its HTTP and gRPC ports
    (gRPC = HTTP + 10000) and does not remove all of them when stopped (``Server.stop()`` only
    removes its own folder). Only this server's names are touched, and only sockets.
    """
    ports = dict(re.findall(r"^-(master|volume|filer|s3)\.port=(\d+)$", "\n".join(map(str, argv)), re.M))
    names = []
    for service, port in ports.items():
        names += [f"seaweedfs-{service}-{port}.sock", f"seaweedfs-{service}-grpc-{int(port) + 10000}.sock"]
    for name in names:
        path = Path(tempfile.gettempdir()) / name
        try:
            if path.is_socket():
                path.unlink()
        except OSError:
            pass


def run_all(
    size: int, workdir: Path, runs: tuple[str, ...] = DEFAULT_RUNS, profile: Path | None = None,
    timeout: float | None = None, repeat: int = 1,
) -> dict[str, Any]:
    """Start SeaweedFS (S3) and moto (SQS) if an S3 run is asked for, create a bucket, run
    ``runs`` one after the other (``repeat`` rounds, interleaved, combined by :func:`aggregate`)
    and return ``{"size_bytes", "repeat", "results": {run: dict}, "summary"}``. The servers are
    stopped and every file removed, also on errors."""
    from tests import servers

    collected: dict[str, list[dict[str, Any]]] = {run: [] for run in runs}
    weed = moto = None
    try:
        needs_s3 = any(run != "ours-embedded" and run != "disk" for run in runs)
        bucket = "bench-large"
        if needs_s3:
            weed = servers.start_seaweedfs()
            if "ours-s3" in runs:
                moto = servers.start_moto()
            client: Any = servers._client("s3", weed.endpoint)
            client.create_bucket(Bucket=bucket)
            # A bucket's first write makes SeaweedFS grow its volumes (seconds); not a run's cost.
            client.put_object(Bucket=bucket, Key="warm-up", Body=os.urandom(32 * CHUNK))
            client.delete_object(Bucket=bucket, Key="warm-up")
        for round_, run in ((r, run) for r in range(repeat) for run in runs):
            print(f"bench.large: {run}, {size} bytes, round {round_ + 1}/{repeat} ...",
                  file=sys.stderr, flush=True)
            results = collected[run]
            if run == "ours-s3":
                if weed is None or moto is None:
                    raise RuntimeError("the S3 servers did not start")
                env = {
                    "REMOTEJOB_STORE": f"s3://{bucket}/remotejob",
                    "REMOTEJOB_QUEUES": "sqs://",
                    "AWS_ENDPOINT_URL_S3": weed.endpoint,
                    "AWS_ENDPOINT_URL_SQS": moto.endpoint,
                    "AWS_ACCESS_KEY_ID": servers.ACCESS_KEY,
                    "AWS_SECRET_ACCESS_KEY": servers.SECRET_KEY,
                    "AWS_REGION": servers.REGION,
                    "AWS_DEFAULT_REGION": servers.REGION,
                }
                results.append(ours_large(env, size, workdir, timeout=timeout, profile=profile))
            elif run == "ours-embedded":
                home = Path(tempfile.mkdtemp(prefix="large-home-", dir=workdir))
                try:
                    results.append(ours_large(
                        {"REMOTEJOB_HOME": str(home)}, size, workdir, timeout=timeout, profile=profile
                    ))
                finally:
                    shutil.rmtree(home, ignore_errors=True)
            elif run in ("boto3", "boto3-remotejob-config"):
                if weed is None:
                    raise RuntimeError("SeaweedFS did not start")
                transfer = "default" if run == "boto3" else "remotejob"
                results.append(boto3_large(
                    weed.endpoint, bucket, size, workdir, transfer=transfer, timeout=timeout,
                    profile=profile,
                ))
            elif run == "disk":
                results.append(disk_large(size, workdir, timeout=timeout))
            else:
                raise ValueError(f"unknown run {run!r}: choose from {', '.join(RUNS)}")
    finally:
        for server in (weed, moto):
            if server is not None:
                server.stop()
        if weed is not None:
            _remove_weed_sockets(weed.process.args)
    combined = {run: aggregate(found) for run, found in collected.items() if found}
    return {"size_bytes": size, "repeat": repeat, "results": combined, "summary": _summary(combined)}


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.large [--size 1GiB] [--only a,b] [--workdir DIR] [--profile DIR]``."""
    args_in = sys.argv[1:] if argv is None else argv
    if args_in[:1] == ["_child"]:
        return _child_main(args_in[1])
    parser = argparse.ArgumentParser(prog="python -m bench.large", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=DEFAULT_SIZE, help="body size (default 1GiB)")
    parser.add_argument(
        "--only", default=",".join(DEFAULT_RUNS),
        help=f"comma-separated runs among {', '.join(RUNS)} (default: {','.join(DEFAULT_RUNS)})",
    )
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one, removed)")
    parser.add_argument("--profile", type=Path, help="write pyinstrument reports of each phase here")
    parser.add_argument("--timeout", type=float, help="seconds per child (default: by size)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of every run (default 1)")
    args = parser.parse_args(args_in)
    runs = tuple(run.strip() for run in args.only.split(",") if run.strip())
    unknown = [run for run in runs if run not in RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}: choose from {', '.join(RUNS)}")
    workdir = Path(tempfile.mkdtemp(prefix="remotejob-bench-large-", dir=args.workdir))
    try:
        report = run_all(args.size, workdir, runs, args.profile, args.timeout, max(1, args.repeat))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
