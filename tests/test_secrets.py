"""Secrets stay secret: with canary credentials, a session token, a signing key and metadata in
play, a whole run through the command line (debug logs on, a failing job, an unreachable
endpoint) leaves no trace of them in logs, errors, stored records or queue messages."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import remotejob
from remotejob import keys
from tests.conftest import BackendSetup, unique

SECRET = "CanarySecretAccessKey0000000000000000000"
TOKEN = "CanarySessionToken1111111111111111111111"
SIGNING = "CanarySigningSecret222222222222222222"
META = "CanaryMetadata3333"
REPO = Path(__file__).resolve().parent.parent


def test_no_secret_reaches_logs_errors_records_or_messages(
    backend: BackendSetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend.kind == "aws-real-s3":
        pytest.skip("SeaweedFS checks the secret key; the moto setting covers the AWS path")
    canaries = {"AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN,
                "REMOTEJOB_SIGNING_KEY": f"k1:{SIGNING}"}
    for name, value in canaries.items():
        monkeypatch.setenv(name, value)
    env = {**os.environ, **backend.env, **canaries, "PYTHONPATH": str(REPO),
           "REMOTEJOB_NAME": unique("sec"), "REMOTEJOB_STORE": backend.store_url() or "",
           "REMOTEJOB_QUEUES": backend.queues_url() or ""}
    (tmp_path / "in.txt").write_text("some input")
    (tmp_path / "bad.txt").write_text("fail")
    script = tmp_path / "tool.sh"
    # {outdir}/env.txt becomes an output of the job that succeeds: the command's environment,
    # stored, is scanned for the canaries below (a failed job publishes no outputs)
    script.write_text('env > "$2/env.txt"\n'
                      'if grep -q fail "$1"; then echo "failing on purpose" >&2; exit 3; fi\n')

    def run(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "remotejob", "--debug", *args], cwd=tmp_path,
                              env={**env, **(extra or {})}, capture_output=True, text=True, timeout=120)

    def cli(*args: str, extra: dict[str, str] | None = None) -> str:
        done = run(*args, extra=extra)
        return done.stdout + done.stderr

    submitted = [run("submit", name, "--meta", f"note={META}") for name in ("in.txt", "bad.txt")]
    said = [done.stdout + done.stderr for done in submitted]
    ok_id, job_id = (done.stdout.split()[-1] for done in submitted)  # stdout: the job id
    command = f"sh {script} {{input}} {{outdir}}"
    said.append(cli("worker", "--exec", command, "--burst", "--max-attempts", "1"))
    for args in (["status", job_id, "--json"], ["wait", job_id, "--timeout", "10"], ["ls"], ["stats"],
                 ["dead", "list"]):
        said.append(cli(*args))
    said.append(cli("status", job_id, extra={"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",
                                             "AWS_ENDPOINT_URL_SQS": "http://127.0.0.1:9"}))
    logs = "\n".join(said)
    assert "failing on purpose" in logs or "exit" in logs  # the run did what it should

    q = remotejob.connect(env["REMOTEJOB_NAME"], store=env["REMOTEJOB_STORE"] or None,
                          queues=env["REMOTEJOB_QUEUES"] or None)
    dumped = q.output(ok_id, "env.txt").read().decode()  # what the command saw, published
    assert "REMOTEJOB_JOB_ID=" in dumped and "REMOTEJOB_META_NOTE=" in dumped
    assert "REMOTEJOB_SIGNING_KEY" not in dumped and SIGNING not in dumped
    # the rest is remotejob's own writing (the command may see AWS credentials; that is its own)
    stored = [q.object_store.get(info.key).read().decode("utf-8", "replace")
              for info in q.object_store.list("") if not info.key.endswith("/env.txt")]
    messages = [m.body for status in (*q.statuses, keys.DEAD)
                for m in q.message_queue.receive(keys.queue_name(q.name, status), 10, 0, visibility_s=0)]
    for canary in (SECRET, TOKEN, SIGNING):
        for place, texts in (("logs and errors", [logs]), ("stored records", stored), ("messages", messages)):
            assert not any(canary in text for text in texts), f"{canary} found in {place}"
    assert META not in logs  # metadata is data: stored and sent, never logged
    assert '"sig":"' not in logs and "Signature=" not in logs.replace("Signature=***", "")
