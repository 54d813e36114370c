"""Run a command per job: the handler behind ``remotejob worker --exec``.

The command line is a template split with :mod:`shlex` (no shell unless asked) in which
``{input}`` becomes the path of the downloaded input, ``{outdir}`` an empty folder and
``{job_id}`` the job id. Job metadata is never pasted into the command: it reaches the command
only through its environment, as ``REMOTEJOB_META_<KEY>``. Every file the command leaves in
``{outdir}`` becomes an output asset named by its path inside the folder, and the command's
stdout and stderr become the assets ``stdout`` and ``stderr``.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

from .job import Job

PLACEHOLDERS = ("{input}", "{outdir}", "{job_id}")
STREAMS = ("stdout", "stderr")
TAIL_LINES, TAIL_CHARS = 20, 2000
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


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

    Raises:
        ValueError: an empty or unparsable template.
    """

    def __init__(self, template: str, shell: bool = False, timeout: float | None = None) -> None:
        if not template.strip():
            raise ValueError("--exec needs a command, e.g. 'gzip -k {input}'")
        try:
            self.argv = shlex.split(template)
        except ValueError as exc:
            raise ValueError(f"cannot split the command {template!r}: {exc}") from exc
        self.template = template
        self.shell = shell
        self.timeout = timeout
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
            code = self._run(values, streams, job)
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

    def _run(self, values: dict[str, str], streams: dict[str, Path], job: Job) -> str | None:
        """Run the command; None if it succeeded, else why not."""
        # The command never gets the signing key: what it runs must not be able to forge jobs.
        inherited = {k: v for k, v in os.environ.items() if k != "REMOTEJOB_SIGNING_KEY"}
        env = {**inherited, "REMOTEJOB_JOB_ID": job.id, **meta_env(job.metadata)}
        if self.shell:
            command: str | list[str] = _fill(self.template, {k: shlex.quote(v) for k, v in values.items()})
        else:
            command = [_fill(arg, values) for arg in self.argv]
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
                code = proc.wait(self.timeout)
            except subprocess.TimeoutExpired:
                _kill(proc)
                return f"the command timed out after {self.timeout:g} s"
            except BaseException:
                _kill(proc)
                raise
            finally:
                with self._lock:
                    self._running.discard(proc)
        return None if code == 0 else f"the command failed with exit status {code}"


def _fill(text: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


def _kill(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _tail(path: Path) -> str:
    with open(path, "rb") as stream:
        stream.seek(max(0, path.stat().st_size - 8 * TAIL_CHARS))
        text = stream.read().decode("utf-8", errors="replace")
    lines = text.rstrip("\n").splitlines()[-TAIL_LINES:]
    tail = "\n".join(lines)[-TAIL_CHARS:]
    return f"stderr ends with:\n{tail}" if tail else "(stderr was empty)"
