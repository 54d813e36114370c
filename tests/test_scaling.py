"""The scaling signal: ``remotejob stats`` reports each status's backlog (waiting + in flight,
over its priority levels' queues), per worker and the workers it wants; ``remotejob metrics
--cloudwatch`` publishes it to CloudWatch (read back from moto's), the worker count given or read
from an ECS service (moto's)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner, Result

from remotejob.cli import main
from tests import servers
from tests.conftest import BackendSetup, unique

REPO = Path(__file__).resolve().parent.parent


def _where(store: str | None) -> list[str]:
    return ["--store", store, "--queues", "sqs://"] if store else []


def _invoke(name: str, store: str | None, *args: str) -> Result:
    return CliRunner().invoke(main, ["--name", name, *_where(store), *args])


def _json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def _backlog(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["status"]: entry for entry in doc["backlog"]}


def _fill(backend: BackendSetup) -> tuple[str, str | None]:
    """A job system with, in pending: 3 normal jobs (one taken: in flight), 2 high-priority
    jobs and 1 delayed by a minute; nothing in inprogress."""
    store = backend.store_url()
    q = backend.connect(store=store, visibility_timeout=60, wait_time=1)
    q.init()
    q.submit_many([{"body": b"n"}] * 3)
    q.submit_many([{"body": b"h"}] * 2, priority="high")
    q.submit({"body": b"later"}, delay=60)
    taken = q.next(timeout=10)
    assert taken is not None
    return str(q.name), store


def test_stats_reports_backlog_per_status_per_worker_and_workers_wanted(backend: BackendSetup) -> None:
    name, store = _fill(backend)

    plain = _json(_invoke(name, store, "stats", "--json"))
    # the keys users already rely on are all still there
    assert {"name", "store", "queues", "dead_letters", "requests"} <= set(plain)
    rows = {row["queue"]: row for row in plain["queues"]}
    assert (rows[f"{name}-pending"]["waiting"], rows[f"{name}-pending"]["in_flight"]) == (2, 1)
    assert rows[f"{name}-pending-high"]["waiting"] == 2
    backlog = _backlog(plain)
    assert backlog["pending"] == {"status": "pending", "visible": 4, "in_flight": 1, "delayed": 1,
                                  "backlog": 5}
    assert backlog["inprogress"]["backlog"] == 0 and list(backlog) == ["pending", "inprogress", "completed"]

    scaled = _backlog(_json(_invoke(name, store, "stats", "--json", "--workers", "2", "--per-worker", "2")))
    assert (scaled["pending"]["per_worker"], scaled["pending"]["desired_workers"]) == (2.5, 3)
    assert (scaled["inprogress"]["per_worker"], scaled["inprogress"]["desired_workers"]) == (0, 0)

    bounded = _backlog(_json(_invoke(name, store, "stats", "--json", "--workers", "0", "--per-worker", "2",
                                     "--min-workers", "1", "--max-workers", "2")))
    assert bounded["pending"]["per_worker"] == 5  # no worker running: the whole backlog
    assert bounded["pending"]["desired_workers"] == 2 and bounded["inprogress"]["desired_workers"] == 1
    assert "per_worker" not in plain["backlog"][0] and "desired_workers" not in plain["backlog"][0]

    table = _invoke(name, store, "stats", "--workers", "2", "--per-worker", "2")
    assert table.exit_code == 0, table.output
    [row] = [[cell.strip() for cell in line.split("│")] for line in table.stdout.splitlines()
             if line.split()[:1] == ["pending"]]
    # status, backlog, waiting, in flight, delayed, per worker, workers wanted
    assert row == ["pending", "5", "4", "1", "1", "2.5", "3"]


@pytest.mark.parametrize(("args", "says"), [
    (["--per-worker", "0"], "x>0"),
    (["--per-worker", "2", "--min-workers", "3", "--max-workers", "2"], "more than --max-workers"),
    (["--max-workers", "2"], "give --per-worker"),
    (["--workers", "-1"], "--workers"),
])
def test_stats_refuses_inconsistent_scaling_options(args: list[str], says: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["stats", "--json", *args], env={"REMOTEJOB_HOME": str(tmp_path)})
    assert result.exit_code == 2 and says in result.output, result.output
    assert not (tmp_path / "queues.db").exists()  # refused before connecting


# -- metrics --cloudwatch -----------------------------------------------------------------------
# CloudWatch and ECS exist only on AWS (here: moto's server); the queues' backend plays no part
# in what is published beyond the counts the stats test proves on every setting.


@pytest.fixture
def aws_metrics(backend: BackendSetup, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """boto3's standard endpoint variables for CloudWatch and ECS: the moto server's."""
    assert backend.sqs_endpoint is not None
    env = {"AWS_ENDPOINT_URL_CLOUDWATCH": backend.sqs_endpoint, "AWS_ENDPOINT_URL_ECS": backend.sqs_endpoint}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name=servers.REGION,  # type: ignore[call-overload]
                        aws_access_key_id=servers.ACCESS_KEY, aws_secret_access_key=servers.SECRET_KEY)


def _published(endpoint: str, name: str, metric: str, status: str = "pending",
               namespace: str = "remotejob") -> tuple[int, float | None, float | None]:
    """How many values of ``metric`` CloudWatch (moto) holds for a job system's status, and the
    least and the greatest (None if there is none)."""
    now = datetime.now(UTC)
    reply = _client("cloudwatch", endpoint).get_metric_statistics(
        Namespace=namespace, MetricName=metric, StartTime=now - timedelta(minutes=10),
        EndTime=now + timedelta(minutes=10), Period=60, Statistics=["Minimum", "Maximum", "SampleCount"],
        Dimensions=[{"Name": "JobSystem", "Value": name}, {"Name": "Status", "Value": status}])
    points = reply["Datapoints"]
    assert all(p["Unit"] == "Count" for p in points), points
    if not points:
        return 0, None, None
    return (int(sum(p["SampleCount"] for p in points)), min(p["Minimum"] for p in points),
            max(p["Maximum"] for p in points))


@pytest.mark.backends("aws")
def test_metrics_puts_backlog_and_backlog_per_worker_in_cloudwatch(
    backend: BackendSetup, aws_metrics: dict[str, str]
) -> None:
    name, store = _fill(backend)
    endpoint = aws_metrics["AWS_ENDPOINT_URL_CLOUDWATCH"]

    once = _json(_invoke(name, store, "metrics", "--cloudwatch", "--workers", "2", "--json"))
    assert once["namespace"] == "remotejob" and once["workers"] == 2
    assert once["backlog"] == [{"status": "pending", "visible": 4, "in_flight": 1, "delayed": 1,
                                "backlog": 5, "per_worker": 2.5}]
    assert _published(endpoint, name, "Backlog") == (1, 5, 5)
    assert _published(endpoint, name, "BacklogPerWorker") == (1, 2.5, 2.5)
    assert _published(endpoint, name, "Workers") == (1, 2, 2)
    listed = _client("cloudwatch", endpoint).list_metrics(
        Namespace="remotejob", Dimensions=[{"Name": "JobSystem", "Value": name}])["Metrics"]
    assert sorted((m["MetricName"], tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])))
                  for m in listed) == [
        (metric, (("JobSystem", name), ("Status", "pending"))) for metric in
        ("Backlog", "BacklogPerWorker", "Workers")]

    # several statuses, another namespace, no worker count: the backlog alone
    other = _invoke(name, store, "metrics", "--cloudwatch", "--status", "pending", "--status", "inprogress",
                    "--namespace", "team/jobs")
    assert other.exit_code == 0, other.output
    assert "pending" in other.stdout and "inprogress" in other.stdout
    assert _published(endpoint, name, "Backlog", "inprogress", "team/jobs") == (1, 0, 0)
    assert _published(endpoint, name, "Backlog", "pending", "team/jobs") == (1, 5, 5)
    assert _published(endpoint, name, "BacklogPerWorker", "pending", "team/jobs") == (0, None, None)


@pytest.mark.backends("aws")
def test_metrics_reads_the_worker_count_from_an_ecs_service(
    backend: BackendSetup, aws_metrics: dict[str, str]
) -> None:
    name, store = _fill(backend)
    endpoint = aws_metrics["AWS_ENDPOINT_URL_ECS"]
    ecs = _client("ecs", endpoint)
    cluster, service = unique("cluster"), unique("workers")
    ecs.create_cluster(clusterName=cluster)
    task = ecs.register_task_definition(family=unique("task"), containerDefinitions=[
        {"name": "worker", "image": "remotejob:latest", "memory": 512}])["taskDefinition"]
    ecs.create_service(cluster=cluster, serviceName=service, taskDefinition=task["taskDefinitionArn"],
                       desiredCount=0)

    # scaled to zero: per worker is the whole backlog, so target tracking scales out
    zero = _json(_invoke(name, store, "metrics", "--cloudwatch", "--ecs-service", f"{cluster}/{service}",
                         "--json"))
    assert (zero["workers"], zero["backlog"][0]["per_worker"]) == (0, 5)
    # moto reports a service's runningCount as its desiredCount once updated
    ecs.update_service(cluster=cluster, service=service, desiredCount=4)
    four = _json(_invoke(name, store, "metrics", "--cloudwatch", "--ecs-service", f"{cluster}/{service}",
                         "--json"))
    assert (four["workers"], four["backlog"][0]["per_worker"]) == (4, 1.25)
    assert _published(endpoint, name, "BacklogPerWorker") == (2, 1.25, 5)
    assert _published(endpoint, name, "Workers") == (2, 0, 4)

    missing = _invoke(name, store, "metrics", "--cloudwatch", "--ecs-service", f"{cluster}/nothing")
    assert missing.exit_code == 2 and "ECS has no service 'nothing'" in missing.output, missing.output
    assert isinstance(missing.exception, SystemExit)


@pytest.mark.backends("aws")
def test_metrics_every_publishes_until_sigterm(backend: BackendSetup, aws_metrics: dict[str, str]) -> None:
    name, store = _fill(backend)
    args = ["--name", name, *_where(store), "metrics", "--cloudwatch", "--workers", "1", "--every", "1",
            "--json"]
    proc = subprocess.Popen([sys.executable, "-m", "remotejob", *args], cwd=REPO, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killer = threading.Timer(60, proc.kill)  # a hung loop fails the test instead of hanging it
    killer.start()
    try:
        assert proc.stdout is not None
        rounds = [json.loads(proc.stdout.readline()) for _ in range(2)]
        proc.send_signal(signal.SIGTERM)
        rest, stderr = proc.communicate(timeout=30)
    finally:
        killer.cancel()
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert [r["backlog"][0]["backlog"] for r in rounds] == [5, 5]
    assert rounds[0]["at"] < rounds[1]["at"]
    count, least, most = _published(aws_metrics["AWS_ENDPOINT_URL_CLOUDWATCH"], name, "Backlog")
    assert count >= 2 and least == most == 5
    assert all(json.loads(line)["name"] == name for line in rest.splitlines())


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "says"), [
    ([], "pass --cloudwatch"),
    (["--cloudwatch", "--workers", "2", "--ecs-service", "c/s"], "--workers N or --ecs-service"),
    (["--cloudwatch", "--ecs-service", "no-cluster"], "CLUSTER/SERVICE"),
    (["--cloudwatch", "--every", "0"], "--every"),
])
def test_metrics_refuses_bad_options(args: list[str], says: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["metrics", *args], env={"REMOTEJOB_HOME": str(tmp_path)})
    assert result.exit_code == 2 and says in result.output, result.output
    assert isinstance(result.exception, SystemExit)


# The queues are read first (from the embedded backend here); what fails is CloudWatch.
@pytest.mark.backends("embedded")
def test_metrics_says_in_one_line_when_cloudwatch_cannot_be_reached(
    backend: BackendSetup, monkeypatch: pytest.MonkeyPatch
) -> None:
    closed = f"http://127.0.0.1:{servers.free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL_CLOUDWATCH", closed)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    q = backend.connect()
    q.init()
    result = _invoke(q.name, None, "metrics", "--cloudwatch", "--workers", "1")
    assert result.exit_code == 3, result.output
    assert isinstance(result.exception, SystemExit)
    [line] = result.stderr.splitlines()
    assert line.startswith("remotejob: error: cannot reach CLOUDWATCH at " + closed), line
    assert "AWS_ENDPOINT_URL_CLOUDWATCH" in line and backend.env["AWS_SECRET_ACCESS_KEY"] not in line
