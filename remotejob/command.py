"""Run a command per job: the handler behind ``remotejob worker --exec``.

The command line is a template split with :mod:`shlex` (no shell unless asked) in which
``{input}`` becomes the path of the downloaded input, ``{outdir}`` an empty folder and
``{job_id}`` the job id. Job metadata is never pasted into the command: it reaches the command
only through its environment, as ``REMOTEJOB_META_<KEY>``. Every file the command leaves in
``{outdir}`` becomes an output asset named by its path inside the folder, and the command's
stdout and stderr become the assets ``stdout`` and ``stderr``.

Stopping: while the command runs the handler watches ``job.cancelled`` (the job was cancelled, or
ran past its time limit). Once it is set, the command's process group gets SIGTERM, then SIGKILL
if anything in the group is still alive ``grace`` seconds later; the handler returns only once
every process of the group is gone, and then raises :class:`~remotejob.Cancelled` or
:class:`~remotejob.TimeLimitExceeded` (``job.check()``), so the job is never completed after a
stop. A process that leaves the group (``setsid``, ``setpgid``) escapes this.

Progress: ``$REMOTEJOB_PROGRESS`` names a file (outside ``{outdir}``, so never an output) to
which the command may append lines, one report per line::

    DONE[/TOTAL][ MESSAGE]

e.g. ``40/100 resizing``, ``3 files copied``, ``0.5/1``. DONE and TOTAL are numbers >= 0 written
with digits and an optional decimal point (no sign, exponent, ``inf`` or ``nan``); MESSAGE is
the rest of the line after the whitespace that follows the numbers. While the command runs the
handler reads the new complete lines every fraction of a second and reports the last valid one
with ``job.progress(done, total, message)``; once the command has exited it reads what is left,
including a last line without its newline, so the final report lands before the outcome. Lines
that do not parse, are not UTF-8, or are longer than 4096 bytes are ignored: progress never
fails a job. Nothing parses the command's stdout. From a shell::

    echo "$done/$total copying $name" >> "$REMOTEJOB_PROGRESS"
"""

from __future__ import annotations

import logging
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .errors import RemoteJobError
from .job import Job

logger = logging.getLogger(__name__)

PLACEHOLDERS = ("{input}", "{outdir}", "{job_id}")
STREAMS = ("stdout", "stderr")
TAIL_LINES, TAIL_CHARS = 20, 2000
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
POLL_S = 0.2
"""How often the handler looks at a running command: its exit, its job's stop, its progress."""
PROGRESS_ENV = "REMOTEJOB_PROGRESS"
MAX_PROGRESS_LINE = 4096
"""Bytes in a progress line, newline included, beyond which the line is ignored."""
READ_BUDGET = 1 << 20
"""Bytes of progress read per look while the command runs (the rest waits for the next look)."""
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_PROGRESS_LINE = re.compile(rf"({_NUMBER})(?:/({_NUMBER}))?(?:\s+(.*?))?\s*", re.DOTALL)


class CommandFailed(RuntimeError):
    """The command exited non-zero or timed out; the message carries the tail of its stderr."""


def meta_env(metadata: dict[str, str]) -> dict[str, str]:
    """``REMOTEJOB_META_<KEY>`` variables for the metadata (KEY upper-cased, other chars ``_``)."""
    env = {}
    for name, value in metadata.items():
        env["REMOTEJOB_META_" + re.sub(r"[^A-Z0-9]", "_", name.upper())] = value
    return env


class CommandHandler:
    """A worker handler that runs ``template`` for each job and completes it with the files.

    Args:
        template: e.g. ``"convert {input} {outdir}/thumb.png"``.
        shell: run the line through ``/bin/sh`` (placeholders are shell-quoted; metadata still
            only in the environment).
        timeout: seconds before the command is killed and the attempt fails.
        grace: seconds a command asked to stop (its job was cancelled or ran past its time
            limit) gets between SIGTERM and SIGKILL. Keep it below the worker's
            ``cancel_grace``, or the worker gives up on the handler before the command is killed.

    Raises:
        ValueError: an empty or unparsable template, or a negative grace.
    """

    def __init__(
        self, template: str, shell: bool = False, timeout: float | None = None, grace: float = 10.0
    ) -> None:
        if not grace >= 0:
            raise ValueError(f"the grace before SIGKILL must be >= 0 seconds, got {grace!r}")
        if not template.strip():
            raise ValueError("--exec needs a command, e.g. 'gzip -k {input}'")
        try:
            self.argv = shlex.split(template)
        except ValueError as exc:
            raise ValueError(f"cannot split the command {template!r}: {exc}") from exc
        self.template = template
        self.shell = shell
        self.timeout = timeout
        self.grace = grace
        self._running: set[subprocess.Popen[bytes]] = set()
        self._lock = threading.Lock()

    def kill_all(self) -> None:
        """Kill every command still running (each in its own process group), e.g. on a hard stop."""
        with self._lock:
            running = list(self._running)
        for proc in running:
            _kill(proc)

    def __call__(self, job: Job) -> None:
        with tempfile.TemporaryDirectory(prefix="remotejob-job-") as tmp:
            root = Path(tmp)
            (root / "in").mkdir()
            outdir = root / "out"
            outdir.mkdir()
            name = _SAFE_NAME.sub("_", os.path.basename(job.metadata.get("filename", ""))).strip(".")
            source = job.download(root / "in" / (name or "input"))
            values = {"{input}": str(source), "{outdir}": str(outdir), "{job_id}": job.id}
            streams = {s: root / s for s in STREAMS}
            progress = root / "progress"
            progress.touch()
            code = self._run(values, streams, progress, job)
            if code is not None:
                raise CommandFailed(f"{code}: {_tail(streams['stderr'])}")
            assets: list[dict[str, Any]] = [
                {"key": s, "body": streams[s], "content_type": "text/plain; charset=utf-8"} for s in STREAMS
            ]
            for path in sorted(outdir.rglob("*")):
                if path.is_symlink() or not path.is_file():
                    continue
                key = path.relative_to(outdir).as_posix()
                if key in STREAMS:
                    raise CommandFailed(f"the command wrote {key!r} in {{outdir}}: that name is its {key}")
                assets.append({"key": key, "filename": path.name, "body": path})
            job.complete(assets=assets)

    def _run(self, values: dict[str, str], streams: dict[str, Path], progress: Path, job: Job) -> str | None:
        """Run the command; None if it succeeded, else why not.

        Raises:
            Cancelled: the job was cancelled (the command is gone by then).
            TimeLimitExceeded: the job ran past its time limit (likewise).
        """
        # The command never gets the signing key: what it runs must not be able to forge jobs.
        inherited = {k: v for k, v in os.environ.items() if k != "REMOTEJOB_SIGNING_KEY"}
        env = {**inherited, "REMOTEJOB_JOB_ID": job.id, **meta_env(job.metadata), PROGRESS_ENV: str(progress)}
        if self.shell:
            command: str | list[str] = _fill(self.template, {k: shlex.quote(v) for k, v in values.items()})
        else:
            command = [_fill(arg, values) for arg in self.argv]
        job.check()  # cancelled while its input came down: never start the command
        reader = ProgressReader(progress)
        with open(streams["stdout"], "wb") as out, open(streams["stderr"], "wb") as err:
            try:
                proc = subprocess.Popen(  # noqa: S603 - the operator's own command, metadata only in env
                    command, shell=self.shell, env=env, stdin=subprocess.DEVNULL,  # noqa: S602
                    stdout=out, stderr=err, start_new_session=True,
                )
            except OSError as exc:
                return f"the command could not start ({exc.strerror}: {exc.filename or command!r})"
            with self._lock:
                self._running.add(proc)
            try:
                code = self._wait(proc, reader, job)
            except BaseException:
                _kill(proc)
                raise
            finally:
                with self._lock:
                    self._running.discard(proc)
        _report(job, reader.read(final=True))
        if job.cancelled:  # it exited (or was stopped) after its job was told to stop
            self._stop(proc, job)  # what it left running in its group goes too
            job.check()
            raise CommandFailed("the command was stopped")  # a cancel that was undone: never complete
        if code is None:
            return f"the command timed out after {self.timeout or 0:g} s"
        return None if code == 0 else f"the command failed with exit status {code}"

    def _wait(self, proc: subprocess.Popen[bytes], reader: ProgressReader, job: Job) -> int | None:
        """Wait for the command in short slices, reporting its progress; its exit status, or
        None once it ran past ``timeout`` (then killed). A stopped job's command is stopped."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            left = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
            try:
                return proc.wait(max(0.0, left))
            except subprocess.TimeoutExpired:
                pass
            _report(job, reader.read())
            if job.cancelled:
                self._stop(proc, job)
                return proc.returncode
            if deadline is not None and time.monotonic() >= deadline:
                _kill(proc)
                return None

    def _stop(self, proc: subprocess.Popen[bytes], job: Job) -> None:
        """SIGTERM to the command's process group, SIGKILL once ``grace`` has passed; return
        when every process of the group is gone."""
        proc.poll()
        if proc.returncode is not None and not _group_alive(proc.pid):
            return  # it ended, children and all, just before it was told to
        logger.info("job %s: %s; stopping its command (process group %d)", job.id, job.stop_reason, proc.pid)
        _signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            proc.poll()
            if not _group_alive(proc.pid):
                break
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        else:
            logger.warning("job %s: its command outlived %g s after SIGTERM; sending SIGKILL",
                           job.id, self.grace)
        _kill(proc)


class ProgressReader:
    """Reads the progress file a command appends to, from where it left off."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._partial = b""
        self._skipping = False
        """The current line is already too long: drop bytes until its end."""

    def read(self, final: bool = False) -> tuple[float, float | None, str | None] | None:
        """The last valid report among the complete lines written since the last read (with
        ``final``, a last line without its newline counts too); None if there is none."""
        last = None
        try:
            with open(self.path, "rb") as stream:
                if os.fstat(stream.fileno()).st_size < self.offset:  # truncated: start over
                    self.offset, self._partial, self._skipping = 0, b"", False
                stream.seek(self.offset)
                budget = math.inf if final else READ_BUDGET
                while budget > 0 and (chunk := stream.read(65536)):
                    self.offset += len(chunk)
                    budget -= len(chunk)
                    last = self._take(chunk) or last
        except OSError:
            pass  # removed, or unreadable: the command's progress is its own affair
        if final and self._partial and not self._skipping:
            last = parse_progress(self._partial) or last
            self._partial = b""
        return last

    def _take(self, chunk: bytes) -> tuple[float, float | None, str | None] | None:
        last = None
        *lines, rest = chunk.split(b"\n")
        for line in lines:
            if self._skipping:
                self._skipping = False
            else:
                line, self._partial = self._partial + line, b""
                last = parse_progress(line) or last
        if self._skipping:
            return last
        self._partial += rest
        if len(self._partial) >= MAX_PROGRESS_LINE:
            self._partial, self._skipping = b"", True
        return last


def parse_progress(line: bytes) -> tuple[float, float | None, str | None] | None:
    """``(done, total, message)`` from a progress line (``40/100 resizing``), or None if it
    does not parse."""
    if len(line) >= MAX_PROGRESS_LINE:
        return None
    try:
        text = line.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    match = _PROGRESS_LINE.fullmatch(text)
    if match is None:
        return None
    done = float(match[1])
    total = None if match[2] is None else float(match[2])
    if not math.isfinite(done) or (total is not None and not math.isfinite(total)):
        return None
    return done, total, match[3] or None


def _report(job: Job, progress: tuple[float, float | None, str | None] | None) -> None:
    if progress is None:
        return
    try:
        job.progress(*progress)
    except RemoteJobError as exc:  # the worker's watch writes it later: the command goes on
        logger.warning("job %s: could not record its progress: %s", job.id, exc)


def _fill(text: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's process group; return once the group is gone (bounded: a
    process stuck in the kernel may take a while to die)."""
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        _signal_group(proc.pid, signal.SIGKILL)  # a child forked while the first one landed
        time.sleep(0.02)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Some process of the group is alive (zombies, dead but not reaped by their new parent,
    do not count)."""
    if sys.platform != "linux":
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stream:
                stat = stream.read()
        except OSError:
            continue  # it ended meanwhile
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _tail(path: Path) -> str:
    with open(path, "rb") as stream:
        stream.seek(max(0, path.stat().st_size - 8 * TAIL_CHARS))
        text = stream.read().decode("utf-8", errors="replace")
    lines = text.rstrip("\n").splitlines()[-TAIL_LINES:]
    tail = "\n".join(lines)[-TAIL_CHARS:]
    return f"stderr ends with:\n{tail}" if tail else "(stderr was empty)"
