"""End-to-end tests of the command line: real ``remotejob`` subprocesses over every backend.

Jobs run through ``remotejob worker --exec`` with a real command (a small Python script written
into the test's folder), so each test goes the whole way: submit, work, wait, status, fetch.
Commands that do not depend on each other run at once (``_cli_all``) to keep the suite quick.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BackendSetup, unique, wait_until
from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(sys.executable).with_name("remotejob")
"""The ``remotejob`` console script installed beside this Python: what users run."""
# The command line passes its options and environment to connect() and prints what the API
# returns; what the backends do differently is proven on all three settings by the API's suites.
# The CLI runs on the embedded default and on one AWS setting: aws-real-s3, whose SeaweedFS
# also checks the credentials the commands were given (moto's S3 accepts any; both use moto's SQS).
pytestmark = pytest.mark.backends("embedded", "aws-real-s3")
# ADMIN: the admin commands (dead list / redrive, purge, --json) format what the API returns; the
# API's suites prove those calls on every setting and the commands above the CLI's AWS path
# (credentials, endpoints), so these run on the embedded default only.
# PROCESS: what `worker --exec` does with its command (exit codes, timeouts, quoting) and with
# signals does not depend on the backend: the embedded default only.
CONNECTION_VARS = ("REMOTEJOB_NAME", "REMOTEJOB_STORE", "REMOTEJOB_QUEUES")

TOOL = r'''
"""A job command: TOOL INPUT OUTDIR JOB_ID [--fixed]. The input's first bytes pick the mode."""
import json
import os
import sys
import time
from pathlib import Path

src, out, job_id = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
outdir_was_empty = out.is_dir() and not any(out.iterdir())
data = src.read_bytes()
if data.startswith(b"FAIL") and "--fixed" not in sys.argv[4:]:
    print("about to fail", flush=True)
    print("boom-line", file=sys.stderr, flush=True)
    sys.exit(3)
if data.startswith(b"SLEEP"):
    (Path(__file__).parent / "sleeper.pid").write_text(str(os.getpid()))
    print("sleeping", file=sys.stderr, flush=True)
    time.sleep(600)  # longer than the test waits: if it ends, it was killed
(out / "upper.bin").write_bytes(data.upper()[::-1])
(out / "report").mkdir()
env = {k: v for k, v in os.environ.items() if k.startswith("REMOTEJOB_")}
info = {
    "size": len(data),
    "job_id_env": os.environ.get("REMOTEJOB_JOB_ID"),
    "job_id_arg": job_id,
    "argv": sys.argv[1:],
    "input_is_file": src.is_file(),
    "outdir_was_empty": outdir_was_empty,
    "meta": {k: v for k, v in env.items() if k.startswith("REMOTEJOB_META_")},
    "cwd_pwned": sorted(n for n in os.listdir(".") if n.startswith("PWNED")),
}
(out / "report" / "info.json").write_text(json.dumps(info))
print(json.dumps({"argv": sys.argv[1:], "env": env}))
print(f"stdout of {len(data)} bytes")
print(f"stderr of {len(data)} bytes", file=sys.stderr)
'''


# -- helpers ------------------------------------------------------------------------------------


def _env(backend: BackendSetup, **extra: str) -> dict[str, str]:
    """The environment of one job system for CLI subprocesses (a unique name and prefix)."""
    return {
        **os.environ,
        **backend.env,
        "PYTHONPATH": str(REPO),
        "REMOTEJOB_NAME": unique("e2e"),
        "REMOTEJOB_STORE": backend.store_url() or "",
        "REMOTEJOB_QUEUES": backend.queues_url() or "",
        **extra,
    }


def _argv(args: Sequence[str]) -> list[str]:
    assert SCRIPT.is_file(), f"no console script {SCRIPT}: install the package (./dev test does)"
    return [str(SCRIPT), *args]


def _cli(
    env: dict[str, str], cwd: Path, *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _argv(args), cwd=cwd, env=env, input=stdin if stdin is not None else "",
        capture_output=True, text=True, timeout=timeout,
    )


def _cli_all(
    env: dict[str, str], cwd: Path, *commands: Sequence[str], timeout: float = 120
) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands at once; return their results in order."""
    procs = [
        subprocess.Popen(
            _argv(args), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for args in commands
    ]
    results = []
    try:
        for args, proc in zip(commands, procs, strict=True):
            out, err = proc.communicate(timeout=timeout)
            results.append(subprocess.CompletedProcess(_argv(args), proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def _show(proc: subprocess.CompletedProcess[str]) -> str:
    return f"{proc.args[1:]} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"


def _ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, _show(proc)
    assert "Traceback" not in proc.stderr, _show(proc)
    return proc


def _one_error_line(proc: subprocess.CompletedProcess[str], code: int) -> str:
    """The command exited ``code`` with exactly one ``remotejob: error:`` line on stderr."""
    assert proc.returncode == code, _show(proc)
    assert "Traceback" not in proc.stderr, _show(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("remotejob: error:"), _show(proc)
    return lines[0]


def _json_lines(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """stdout as JSON lines: one object per line."""
    docs = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert all(isinstance(doc, dict) for doc in docs), _show(proc)
    return docs


def _json_list(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """stdout as a list of objects: a JSON array, or one object per line (either reading)."""
    text = proc.stdout.strip()
    if not text:
        return []
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return _json_lines(proc)
    docs = doc if isinstance(doc, list) else [doc]
    assert all(isinstance(d, dict) for d in docs), _show(proc)
    return docs


def _write_tool(tmp_path: Path) -> Path:
    script = tmp_path / "tool.py"
    script.write_text(TOOL)
    return script


def _exec(script: Path, *extra: str) -> str:
    """The --exec template running the tool on a job."""
    words = [shlex.quote(sys.executable), shlex.quote(str(script)), "{input}", "{outdir}", "{job_id}"]
    return " ".join([*words, *extra])


def _worker(env: dict[str, str], cwd: Path, jobs: int, template: str, *options: str,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """A burst worker that also stops after taking ``jobs`` jobs: no idle poll at the end."""
    return _cli(env, cwd, "worker", "--exec", template, "--burst", "--max-jobs", str(jobs), *options,
                timeout=timeout)


def _submit(env: dict[str, str], cwd: Path, *args: str, stdin: str | None = None) -> list[str]:
    done = _ok(_cli(env, cwd, "submit", *args, stdin=stdin))
    return done.stdout.split()


def _mentions(doc: dict[str, Any], job_id: str) -> bool:
    return any(doc.get(key) == job_id for key in ("job", "job_id", "id"))


def _expected(data: bytes) -> bytes:
    return data.upper()[::-1]


def _wait_for(predicate: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll ``predicate`` until it returns something truthy (return that) or ``timeout`` passes."""
    return wait_until(predicate, timeout, what)


def _pending_depth(stats: dict[str, Any], name: str) -> dict[str, Any]:
    [entry] = [q for q in stats["queues"] if q["queue"] in ("pending", f"{name}-pending")]
    return entry


# -- 1. the main flow ---------------------------------------------------------------------------


def test_submit_work_wait_fetch(backend: BackendSetup, tmp_path: Path) -> None:
    env = _env(backend)
    script = _write_tool(tmp_path)
    small = b"hello, remote world\n"
    medium = "".join(f"line {i}: the quick brown fox\n" for i in range(600))  # from stdin
    big = random.Random(7).randbytes(300 * 1024)  # noqa: S311 - test data, not secrets
    (tmp_path / "small.txt").write_bytes(small)
    (tmp_path / "big.bin").write_bytes(big)
    inputs = [small, medium.encode(), big]

    ids = _submit(env, tmp_path, "small.txt", "-", "big.bin", "--meta", "owner=alice",
                  "--meta", "trace-id=t 42", stdin=medium)
    assert len(ids) == 3 and len(set(ids)) == 3

    worker = _ok(_worker(env, tmp_path, 3, _exec(script), "--concurrency", "3", "--max-attempts", "1"))
    assert "processed 3 job(s)" in worker.stderr

    # these use the global options instead of the environment
    options = ["--name", env["REMOTEJOB_NAME"]]
    if env["REMOTEJOB_STORE"]:
        options += ["--store", env["REMOTEJOB_STORE"], "--queues", env["REMOTEJOB_QUEUES"]]
    plain = {k: v for k, v in env.items() if k not in CONNECTION_VARS}
    folders = [tmp_path / ids[0], tmp_path / "results" / ids[1], tmp_path / "results" / ids[2]]
    results = _cli_all(
        plain, tmp_path,
        [*options, "wait", *ids, "--timeout", "60", "--json"],
        [*options, "status", "--json", *ids],
        [*options, "ls", "--json"],
        [*options, "fetch", ids[0]],  # default folder: ./<job-id>
        [*options, "fetch", ids[1], "-o", str(folders[1])],
        [*options, "fetch", ids[2], "-o", str(folders[2])],
        [*options, "fetch", ids[2], "--asset", "upper.bin", "-o", "one"],
    )
    waited, status, listing, *fetches, only_one = (_ok(r) for r in results)
    assert [d["id"] for d in _json_lines(waited)] == ids
    assert all(d["state"] == "completed" for d in _json_lines(waited)), waited.stdout

    docs = {d["id"]: d for d in _json_lines(status)}
    listed = {d["id"]: d for d in _json_list(listing)}
    for job_id, data, folder, fetched in zip(ids, inputs, folders, fetches, strict=True):
        doc = docs[job_id]
        assert doc["state"] == "completed" and not doc["error"], doc
        assert {"upper.bin", "report/info.json", "stdout", "stderr"} <= set(doc["outputs"]), doc
        assert listed[job_id]["state"] == "completed" and listed[job_id]["attempts"] == 1, listed[job_id]

        written = {(tmp_path / line).resolve() for line in fetched.stdout.split()}
        assert written == {(folder / name).resolve() for name in doc["outputs"]}, fetched.stdout
        assert (folder / "upper.bin").read_bytes() == _expected(data)
        info = json.loads((folder / "report" / "info.json").read_text())
        assert info["size"] == len(data)
        assert info["job_id_env"] == job_id and info["job_id_arg"] == job_id
        assert info["meta"]["REMOTEJOB_META_OWNER"] == "alice"
        assert info["meta"]["REMOTEJOB_META_TRACE_ID"] == "t 42"
        assert info["input_is_file"] and info["outdir_was_empty"]
        assert f"stdout of {len(data)} bytes" in (folder / "stdout").read_text()
        assert f"stderr of {len(data)} bytes" in (folder / "stderr").read_text()

    assert only_one.stdout.split() and all(line.endswith("upper.bin") for line in only_one.stdout.split())
    assert [p.name for p in (tmp_path / "one").rglob("*")] == ["upper.bin"]
    assert (tmp_path / "one" / "upper.bin").read_bytes() == _expected(big)


# -- 2. a failing command -----------------------------------------------------------------------


@pytest.mark.backends("embedded")  # PROCESS
def test_failing_command(backend: BackendSetup, tmp_path: Path) -> None:
    env = _env(backend)
    script = _write_tool(tmp_path)
    (tmp_path / "bad.txt").write_text("FAIL please")
    [job_id] = _submit(env, tmp_path, "bad.txt")

    worker = _worker(env, tmp_path, 1, _exec(script), "--max-attempts", "1")
    assert worker.returncode in (0, 1) and "Traceback" not in worker.stderr, _show(worker)
    assert "processed 1 job(s)" in worker.stderr

    status, waited, listing = _cli_all(
        env, tmp_path, ["status", "--json", job_id], ["wait", job_id, "--timeout", "30"],
        ["ls", "--state", "failed", "--json"],
    )
    [doc] = _json_lines(_ok(status))
    assert doc["id"] == job_id and doc["state"] == "failed", doc
    assert re.search(r"\b3\b", doc["error"]) and "boom-line" in doc["error"], doc
    assert waited.returncode == 1 and "Traceback" not in waited.stderr, _show(waited)
    assert [d["id"] for d in _json_list(_ok(listing))] == [job_id]


def test_submit_wait_and_fetch(backend: BackendSetup, tmp_path: Path) -> None:
    """submit --fetch (implies --wait) writes DIR/<job-id>/<asset>; submit --wait exits 1 on a failure."""
    env = _env(backend)
    script = _write_tool(tmp_path)
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.txt").write_text("bravo!")
    (tmp_path / "bad.txt").write_text("FAIL now")
    # No `remotejob init` first: the worker and the submits open the fresh home at once.
    worker = subprocess.Popen(
        _argv(["worker", "--exec", _exec(script), "--max-jobs", "3", "--max-attempts", "1"]),
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        fetched = _cli(env, tmp_path, "submit", "a.txt", "b.txt", "--fetch", "got", "--timeout", "30")
        failed = _cli(env, tmp_path, "submit", "bad.txt", "--wait", "--timeout", "30")
        _, worker_err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker_err = worker.communicate()[1]
    assert "processed 3 job(s)" in worker_err, f"worker: {worker_err}\n{_show(fetched)}\n{_show(failed)}"
    _ok(fetched)
    ids = [line.strip() for line in fetched.stdout.splitlines() if (tmp_path / "got" / line.strip()).is_dir()]
    assert len(ids) == 2, fetched.stdout
    for job_id, text in zip(ids, ("alpha", "bravo!"), strict=True):
        assert (tmp_path / "got" / job_id / "upper.bin").read_bytes() == _expected(text.encode())
        assert (tmp_path / "got" / job_id / "report" / "info.json").is_file()
        assert (tmp_path / "got" / job_id / "stdout").is_file()
    assert failed.returncode == 1, _show(failed)
    assert "Traceback" not in failed.stderr
    assert failed.stdout.split()[:1] != [], _show(failed)  # its job id


# -- 3. metadata and file names are never run by a shell -----------------------------------------


@pytest.mark.backends("embedded")  # PROCESS
@pytest.mark.parametrize("shell", [False, True], ids=["argv", "shell"])
def test_metacharacters_never_execute(backend: BackendSetup, tmp_path: Path, shell: bool) -> None:
    target = tmp_path / "PWNED5"
    env = _env(backend, PWN_TARGET=str(target))
    script = _write_tool(tmp_path)
    relative = "$(touch PWNED); `touch PWNED2`; touch PWNED3"
    absolute = f"$(touch {tmp_path}/PWNED6); `touch {tmp_path}/PWNED7` | touch {tmp_path}/PWNED8 && 'x\" \\"
    file_name = "a;touch PWNED4 'q' \"d\" $(touch $PWN_TARGET) `touch $PWN_TARGET-b`.txt"
    data = b"innocent data; $(touch PWNED9)\n"
    (tmp_path / file_name).write_bytes(data)

    [job_id] = _submit(env, tmp_path, file_name, "--meta", f"name={relative}", "--meta", f"abs={absolute}")
    _ok(_worker(env, tmp_path, 1, _exec(script), "--max-attempts", "1", *(["--shell"] if shell else [])))
    status, fetched = _cli_all(env, tmp_path, ["status", "--json", job_id], ["fetch", job_id, "-o", "out"])

    [doc] = _json_lines(_ok(status))
    assert doc["state"] == "completed", doc
    _ok(fetched)
    info = json.loads((tmp_path / "out" / "report" / "info.json").read_text())
    assert info["meta"]["REMOTEJOB_META_NAME"] == relative
    assert info["meta"]["REMOTEJOB_META_ABS"] == absolute
    assert len(info["argv"]) == 3 and info["argv"][2] == job_id, info["argv"]
    assert info["input_is_file"] and info["cwd_pwned"] == []
    assert (tmp_path / "out" / "upper.bin").read_bytes() == _expected(data)
    pwned = [p for p in tmp_path.rglob("*") if p.name.startswith("PWNED")]
    pwned += [p for p in Path.cwd().iterdir() if p.name.startswith("PWNED")]
    assert pwned == []


# -- 4. --timeout ---------------------------------------------------------------------------------


@pytest.mark.backends("embedded")  # PROCESS
def test_command_timeout(backend: BackendSetup, tmp_path: Path) -> None:
    env = _env(backend)
    script = _write_tool(tmp_path)
    (tmp_path / "slow.txt").write_text("SLEEP for a long time")
    [job_id] = _submit(env, tmp_path, "slow.txt")
    pid_file = tmp_path / "sleeper.pid"
    try:
        # The command sleeps 600 s: the worker returns within this call's 60 s only if it kills it.
        worker = _worker(env, tmp_path, 1, _exec(script), "--timeout", "1", "--max-attempts", "1", timeout=60)
        assert worker.returncode in (0, 1) and "Traceback" not in worker.stderr, _show(worker)
        assert pid_file.exists(), "the command never ran"
        sleeper = int(pid_file.read_text())
        assert not _alive(sleeper), "the timed-out command is still running"
    finally:
        if pid_file.exists() and _alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    [doc] = _json_lines(_ok(_cli(env, tmp_path, "status", "--json", job_id)))
    assert doc["state"] == "failed" and "timed out" in doc["error"], doc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited: only its entry is left
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return False


# -- 5. --json output ---------------------------------------------------------------------------


@pytest.mark.backends("embedded")  # ADMIN
def test_json_outputs_parse(backend: BackendSetup, tmp_path: Path) -> None:
    env = _env(backend)
    name = env["REMOTEJOB_NAME"]
    script = _write_tool(tmp_path)
    (tmp_path / "a.txt").write_text("json me")
    [job_id] = _submit(env, tmp_path, "a.txt")
    _ok(_worker(env, tmp_path, 1, _exec(script), "--max-attempts", "1"))

    status, waited, listing, limited, stats, dead = (_ok(r) for r in _cli_all(
        env, tmp_path,
        ["status", job_id, "--json"],
        ["wait", job_id, "--json", "--timeout", "30"],
        ["ls", "--json"],
        ["ls", "--json", "--state", "completed", "--limit", "1"],
        ["stats", "--json"],
        ["dead", "list", "--json"],
    ))
    for proc in (status, waited):
        [doc] = _json_lines(proc)
        assert {"id", "state", "status", "error", "outputs"} <= set(doc), doc
        assert doc["id"] == job_id and doc["state"] == "completed" and doc["status"] == "pending", doc
        assert doc["error"] is None and "upper.bin" in doc["outputs"], doc
    for proc in (listing, limited):
        [doc] = _json_list(proc)
        assert {"id", "state", "attempts", "error"} <= set(doc), doc
        assert doc["id"] == job_id and doc["state"] == "completed", doc
    doc = json.loads(stats.stdout)
    assert isinstance(doc["dead_letters"], int) and doc["dead_letters"] == 0, doc
    for entry in doc["queues"]:
        assert {"queue", "waiting", "in_flight", "delayed"} <= set(entry), entry
        assert all(isinstance(entry[k], int) for k in ("waiting", "in_flight", "delayed")), entry
    assert _pending_depth(doc, name)["waiting"] == 0
    assert _json_list(dead) == []


# -- 6. exit codes ------------------------------------------------------------------------------


def test_exit_codes(backend: BackendSetup, tmp_path: Path) -> None:
    env = _env(backend)
    (tmp_path / "idle.txt").write_text("nobody works on me")
    [job_id] = _submit(env, tmp_path, "idle.txt")
    unknown = "0000000000ff" + unique("")[:10] + "abcdef"
    status, wait_unknown, fetch_unknown, timed_out, submit_timed_out, concurrency, missing = _cli_all(
        env, tmp_path,
        ["status", unknown],
        ["wait", unknown, "--timeout", "5"],
        ["fetch", unknown],
        ["wait", job_id, "--timeout", "0.5"],
        ["submit", "idle.txt", "--wait", "--timeout", "1"],  # no worker runs
        ["worker", "--exec", "true {input}", "--concurrency", "0", "--burst"],
        ["submit", "missing.txt"],
    )
    for proc in (status, wait_unknown, fetch_unknown):
        assert unknown in _one_error_line(proc, 2)
    assert job_id in _one_error_line(timed_out, 4)
    [submitted] = submit_timed_out.stdout.split()  # the id is printed before the wait
    assert submitted in _one_error_line(submit_timed_out, 4)
    for proc, mentions in ((concurrency, "--concurrency"), (missing, "missing.txt")):
        assert proc.returncode == 2, _show(proc)
        assert "Traceback" not in proc.stderr and mentions in proc.stderr, _show(proc)
    assert "Usage:" in concurrency.stderr, _show(concurrency)
    assert not (tmp_path / unknown).exists()


def test_unreachable_backend_exits_3(backend: BackendSetup, tmp_path: Path) -> None:
    if backend.kind == "embedded":
        pytest.skip("the embedded backend has no endpoint to miss")
    port = free_port()
    env = _env(backend, AWS_ENDPOINT_URL_SQS=f"http://127.0.0.1:{port}")
    (tmp_path / "x.txt").write_text("x")
    # _cli_all's timeout bounds how long they may keep retrying a closed port
    for proc in _cli_all(env, tmp_path, ["stats"], ["submit", "x.txt"], ["dead", "list"], timeout=60):
        assert f"127.0.0.1:{port}" in _one_error_line(proc, 3)


# -- 7. dead letters ----------------------------------------------------------------------------


@pytest.mark.backends("embedded")  # ADMIN: see below
def test_dead_list_and_redrive(backend: BackendSetup, tmp_path: Path) -> None:
    env = _env(backend)
    script = _write_tool(tmp_path)
    (tmp_path / "bad.txt").write_text("FAIL until fixed")
    [job_id] = _submit(env, tmp_path, "bad.txt")
    _worker(env, tmp_path, 1, _exec(script), "--max-attempts", "1")

    status, dead = (_ok(r) for r in _cli_all(
        env, tmp_path, ["status", "--json", job_id], ["dead", "list", "--json"]
    ))
    assert _json_lines(status)[0]["state"] == "failed"
    assert any(_mentions(doc, job_id) for doc in _json_list(dead)), dead.stdout

    _ok(_cli(env, tmp_path, "dead", "redrive"))
    fixed = _ok(_worker(env, tmp_path, 1, _exec(script, "--fixed"), "--max-attempts", "1"))
    assert "processed 1 job(s)" in fixed.stderr

    status, stats, fetched = (_ok(r) for r in _cli_all(
        env, tmp_path, ["status", "--json", job_id], ["stats", "--json"],
        ["fetch", job_id, "--asset", "upper.bin", "-o", "out"],
    ))
    [doc] = _json_lines(status)
    assert doc["state"] == "completed" and not doc["error"], doc
    assert json.loads(stats.stdout)["dead_letters"] == 0, stats.stdout
    assert (tmp_path / "out" / "upper.bin").read_bytes() == _expected(b"FAIL until fixed")


# -- 8. purge -----------------------------------------------------------------------------------


@pytest.mark.backends("embedded")  # ADMIN
def test_purge(backend: BackendSetup, tmp_path: Path) -> None:
    """Each queue is purged once: SQS allows one purge per queue per 60 s."""
    env = _env(backend)
    name = env["REMOTEJOB_NAME"]
    script = _write_tool(tmp_path)
    (tmp_path / "bad.txt").write_text("FAIL to the dead letters")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    _submit(env, tmp_path, "bad.txt")
    _worker(env, tmp_path, 1, _exec(script), "--max-attempts", "1")
    _submit(env, tmp_path, "a.txt", "b.txt")

    for command in (["purge", "pending"], ["dead", "purge"]):
        refused = _cli(env, tmp_path, *command, stdin="n\n")  # the user answers no
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, _show(refused)
        assert "Aborted" in refused.stderr, _show(refused)
    stats = json.loads(_ok(_cli(env, tmp_path, "stats", "--json")).stdout)
    assert _pending_depth(stats, name)["waiting"] == 2, stats
    assert stats["dead_letters"] == 1, stats

    for proc in _cli_all(env, tmp_path, ["purge", "pending", "--yes"], ["dead", "purge", "--yes"]):
        _ok(proc)
    stats = json.loads(_ok(_cli(env, tmp_path, "stats", "--json")).stdout)
    assert _pending_depth(stats, name)["waiting"] == 0, stats
    assert stats["dead_letters"] == 0, stats


# -- 9. help ------------------------------------------------------------------------------------

COMMANDS = [
    [], ["submit"], ["worker"], ["status"], ["wait"], ["fetch"], ["ls"], ["stats"], ["dead"],
    ["dead", "list"], ["dead", "redrive"], ["dead", "purge"], ["purge"], ["init"], ["demo"],
]


def test_every_command_has_help_with_an_example(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "REMOTEJOB_HOME": str(tmp_path / "home")}
    for proc in _cli_all(env, tmp_path, *([*command, "--help"] for command in COMMANDS)):
        _ok(proc)
        assert "Example" in proc.stdout, _show(proc)


def test_a_stopped_worker_kills_the_commands_it_leaves(backend: BackendSetup, tmp_path: Path) -> None:
    if backend.kind != "embedded":
        pytest.skip("process handling does not depend on the backend")
    env = _env(backend)
    (tmp_path / "in.txt").write_text("x")
    [job_id] = _submit(env, tmp_path, "in.txt")
    pidfile = tmp_path / "command.pid"
    script = tmp_path / "long.py"
    script.write_text(
        f"import os, time\nopen({str(pidfile)!r}, 'w').write(str(os.getpid()))\ntime.sleep(60)\n"
    )
    worker = subprocess.Popen(
        _argv(["worker", "--exec", f"{sys.executable} {script}", "--grace-period", "0.5"]),
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        pid = int(_wait_for(lambda: pidfile.exists() and pidfile.read_text(), "the command to start"))
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 130  # the grace period ran out with the job running
    finally:
        if worker.poll() is None:
            worker.kill()
    _wait_for(lambda: not _alive(pid), "the command the stopped worker left to end", timeout=10)
    status = json.loads(_ok(_cli(env, tmp_path, "status", "--json", job_id)).stdout)
    assert status["state"] == "pending"  # released for another worker, not failed


# -- 10. stopping a worker: exit codes --------------------------------------------------------

GATED = r'''
"""A job command: GATED INPUT OUTDIR. Writes its pid to "started", then finishes once "go" exists."""
import os
import sys
import time
from pathlib import Path

here = Path(__file__).parent
(here / "started").write_text(str(os.getpid()))
deadline = time.monotonic() + 120
while not (here / "go").exists():  # a condition the test sets, polled
    if time.monotonic() > deadline:
        sys.exit("never told to go")
    time.sleep(0.02)
(Path(sys.argv[2]) / "done.txt").write_text("finished")
'''


Running = subprocess.Popen[str]


def _start_worker(env: dict[str, str], cwd: Path, template: str, *options: str) -> tuple[Running, Path]:
    """A long-running ``remotejob --debug worker``; its stderr goes to a file read while it runs."""
    log = cwd / unique("worker-")
    with open(log, "w") as err:
        proc = subprocess.Popen(
            _argv(["--debug", "worker", "--exec", template, *options]), cwd=cwd, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, text=True,
        )
    return proc, log


def _stopped(proc: Running, log: Path, timeout: float = 60) -> tuple[int, str]:
    """Wait for the worker to exit; return its exit code and stderr (killing it if it hangs)."""
    try:
        code = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, log.read_text()


def test_sigterm_stops_an_idle_worker_with_0(backend: BackendSetup, tmp_path: Path) -> None:
    if backend.kind != "embedded":
        pytest.skip("an idle worker's signal handling does not depend on the backend")
    env = _env(backend)
    (tmp_path / "in.txt").write_text("x")
    [job_id] = _submit(env, tmp_path, "in.txt")
    worker, log = _start_worker(env, tmp_path, "true {input}")
    try:
        # Once its job is done the worker is up (handling signals) and idle, polling for more.
        _ok(_cli(env, tmp_path, "wait", job_id, "--timeout", "60"))
        worker.send_signal(signal.SIGTERM)
    finally:
        code, err = _stopped(worker, log)
    assert code == 0, err
    assert "processed 1 job(s)" in err and "Traceback" not in err, err


def _gated_job(backend: BackendSetup, tmp_path: Path) -> tuple[dict[str, str], str, Running, Path, int]:
    """A worker running a job that waits for the file "go": env, job id, worker, its log, command pid."""
    env = _env(backend)
    script = tmp_path / "gated.py"
    script.write_text(GATED)
    (tmp_path / "in.txt").write_text("x")
    [job_id] = _submit(env, tmp_path, "in.txt")
    template = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))} {{input}} {{outdir}}"
    worker, log = _start_worker(env, tmp_path, template, "--grace-period", "600", "--max-attempts", "1")
    started = tmp_path / "started"
    try:
        pid = int(_wait_for(lambda: started.exists() and started.read_text(), "the job to start"))
    except BaseException:
        worker.kill()
        worker.wait()
        raise
    return env, job_id, worker, log, pid


def _stopping(worker: Running, log: Path) -> None:
    """SIGTERM the worker and wait until it says it is stopping with the job still running."""
    worker.send_signal(signal.SIGTERM)
    _wait_for(lambda: "stopping: 1 job(s) running" in log.read_text() or worker.poll() is not None,
              "the worker to start its graceful stop")


@pytest.mark.backends("embedded")  # PROCESS
def test_sigterm_lets_the_running_job_finish_then_exits_0(backend: BackendSetup, tmp_path: Path) -> None:
    env, job_id, worker, log, _ = _gated_job(backend, tmp_path)
    try:
        _stopping(worker, log)
        assert worker.poll() is None, log.read_text()  # it waits for the job, within the grace period
        (tmp_path / "go").write_text("")
    finally:
        code, err = _stopped(worker, log)
    assert code == 0, err
    assert "processed 1 job(s)" in err and "Traceback" not in err, err
    [doc] = _json_lines(_ok(_cli(env, tmp_path, "status", "--json", job_id)))
    assert doc["state"] == "completed" and "done.txt" in doc["outputs"], doc


@pytest.mark.backends("embedded")  # PROCESS
def test_a_second_signal_in_the_grace_period_exits_130(backend: BackendSetup, tmp_path: Path) -> None:
    env, job_id, worker, log, pid = _gated_job(backend, tmp_path)
    try:
        _stopping(worker, log)
        worker.send_signal(signal.SIGINT)  # Ctrl-C after the SIGTERM: stop now
        code, err = _stopped(worker, log)  # well inside the 600 s grace period
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    assert code == 130, err
    assert "Traceback" not in err, err
    _wait_for(lambda: not _alive(pid), "the command the worker left to end", timeout=10)
    [doc] = _json_lines(_ok(_cli(env, tmp_path, "status", "--json", job_id)))
    assert doc["state"] == "pending", doc  # released for another worker, not failed
