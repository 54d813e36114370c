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
    script = tmp_path / "tool.sh"
    script.write_text('env > "$2/env.txt"; echo "failing on purpose" >&2; exit 3\n')

    def cli(*args: str, extra: dict[str, str] | None = None) -> str:
        done = subprocess.run([sys.executable, "-m", "remotejob", "--debug", *args], cwd=tmp_path,
                              env={**env, **(extra or {})}, capture_output=True, text=True, timeout=120)
        return done.stdout + done.stderr

    said = [cli("submit", "in.txt", "--meta", f"note={META}")]
    job_id = said[0].strip().splitlines()[-1]
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
    stored = [q.object_store.get(info.key).read().decode("utf-8", "replace")
              for info in q.object_store.list("")]
    messages = [m.body for status in (*q.statuses, keys.DEAD)
                for m in q.message_queue.receive(keys.queue_name(q.name, status), 10, 0, visibility_s=0)]
    for canary in (SECRET, TOKEN, SIGNING):
        for place, texts in (("logs and errors", [logs]), ("stored records", stored), ("messages", messages)):
            assert not any(canary in text for text in texts), f"{canary} found in {place}"
    assert META not in logs  # metadata is data: stored and sent, never logged
    assert '"sig":"' not in logs and "Signature=" not in logs.replace("Signature=***", "")
