"""The README's "Running workers at scale" recipes, checked: what a user pastes must parse and must
name what remotejob really provides.

Every ```json and ```yaml block of the section is parsed (JSON with duplicate keys refused, as
AWS would silently take the last); the fields each recipe relies on are checked against each
other (the scaling policy's metric against the publisher's job system and status, the KEDA
trigger's queue against the Deployment's job system, the Lambda mapping's queue against its
role) and against the code (the worker's grace period and long poll, the Lambda handler's
concurrency). Every ``remotejob ...`` command line shown, in code blocks, in inline code and as
the commands of the task definitions, job definition and pods, is checked option by option
against ``remotejob COMMAND --help``; the ``iam-policy`` lines and the ``stats`` example are run.
Two tests run the shown commands for real: ``metrics --cloudwatch`` against moto's CloudWatch
(the scaling policy must track a metric it puts, with exactly its dimensions) and ``stats
--json`` on the embedded backend (the example's entry has the real keys and arithmetic).
"""

from __future__ import annotations

import inspect
import json
import math
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from click.testing import CliRunner

import remotejob
import remotejob.aws_lambda
from remotejob.cli import main
from remotejob.cli.scale import NAMESPACE
from tests import servers
from tests.conftest import BackendSetup, unique

README = Path(__file__).resolve().parent.parent / "README.md"
HEADING = "## Running workers at scale"
GLOBAL_OPTIONS_WITH_VALUE = ("--name", "--store", "--queues")
"""The group's options that take a value (``--debug`` is a flag); they come before the command."""
FARGATE_MAX_STOP_TIMEOUT = 120
"""ECS caps a Fargate container's ``stopTimeout`` at 120 s."""
LAMBDA_MAX_TIMEOUT = 900
"""Lambda's hard limit on a function's timeout, in seconds."""


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.find(f"\n{HEADING}\n")
    assert start >= 0, f"README.md has no {HEADING!r} section"
    end = text.find("\n## ", start + len(HEADING) + 2)
    return text[start + 1 : end if end >= 0 else len(text)]


SECTION = _section()


@dataclass(frozen=True)
class Block:
    """A fenced code block of the section."""

    lang: str
    text: str
    line: int
    """Its first line's number in README.md."""


def _blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    offset = text[: text.find(SECTION)].count("\n")
    found, lines = [], SECTION.split("\n")
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if opening is None:
            i += 1
            continue
        indent, lang, body = opening.group(1), opening.group(2), []
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j])
            j += 1
        assert j < len(lines), f"README.md line {offset + i + 1}: a code block that never closes"
        found.append(Block(lang, "\n".join(body), offset + i + 1))
        i = j + 1
    return found


BLOCKS = _blocks()
DATA_BLOCKS = [b for b in BLOCKS if b.lang in ("json", "yaml")]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    duplicated = sorted({k for k in keys if keys.count(k) > 1})
    if duplicated:
        raise ValueError(f"duplicate keys {duplicated}")
    return dict(pairs)


def _parse(block: Block) -> list[Any]:
    """The documents of a json or yaml block."""
    if block.lang == "json":
        return [json.loads(block.text, object_pairs_hook=_no_duplicates)]
    return [doc for doc in yaml.safe_load_all(block.text) if doc is not None]


def _docs(lang: str) -> list[dict[str, Any]]:
    """The documents of the section's blocks in ``lang``; a block that does not parse is left out
    (``test_every_json_and_yaml_block_parses`` names it), so the other tests still run."""
    docs = []
    for block in DATA_BLOCKS:
        if block.lang == lang:
            try:
                docs += _parse(block)
            except (ValueError, yaml.YAMLError):
                continue
    return docs


def _json_docs() -> list[dict[str, Any]]:
    return _docs("json")


def _yaml_docs() -> list[dict[str, Any]]:
    return _docs("yaml")


def _one(docs: list[dict[str, Any]], what: str, match: Any) -> dict[str, Any]:
    found = [d for d in docs if isinstance(d, dict) and match(d)]
    assert len(found) == 1, f"expected one {what} in the section, found {len(found)}"
    return found[0]


def _shell_text() -> str:
    """Every sh block, continuation lines joined."""
    return "\n".join(b.text.replace("\\\n", " ") for b in BLOCKS if b.lang == "sh")


def _aws_command(*words: str) -> list[str]:
    """The tokens of the one shown ``aws WORD...`` command line."""
    found = []
    for line in _shell_text().split("\n"):
        tokens = shlex.split(line, comments=True)
        for i in range(len(tokens) - len(words)):
            if tokens[i] == "aws" and tuple(tokens[i + 1 : i + 1 + len(words)]) == words:
                found.append(tokens[i:])
    assert len(found) == 1, f"expected one `aws {' '.join(words)}` line in the section, found {len(found)}"
    return found[0]


def _option(tokens: list[str], name: str) -> str:
    """The value of ``--name V`` (or ``--name=V``) in a command's tokens."""
    for i, token in enumerate(tokens):
        if token == name and i + 1 < len(tokens):
            return tokens[i + 1]
        if token.startswith(f"{name}="):
            return token.split("=", 1)[1]
    raise AssertionError(f"{name} missing from {' '.join(tokens)}")


def _default(function: Any, parameter: str) -> Any:
    return inspect.signature(function).parameters[parameter].default


# -- every block parses -------------------------------------------------------------------------


def test_the_section_has_the_recipes_blocks() -> None:
    langs = [b.lang for b in DATA_BLOCKS]
    assert langs.count("json") >= 6, langs   # stats, Lambda's queue policy, ECS x2, policy, Batch
    assert langs.count("yaml") >= 1, langs   # KEDA: Deployment, TriggerAuthentication, ScaledObject


@pytest.mark.parametrize("block", DATA_BLOCKS, ids=[f"{b.lang}-line{b.line}" for b in DATA_BLOCKS])
def test_every_json_and_yaml_block_parses(block: Block) -> None:
    try:
        docs = _parse(block)
    except (ValueError, yaml.YAMLError) as exc:
        pytest.fail(f"README.md line {block.line}: the ```{block.lang} block does not parse: {exc}")
    assert docs and all(isinstance(d, dict) for d in docs), f"README.md line {block.line}: not an object"


# -- Lambda -------------------------------------------------------------------------------------


def test_the_lambda_example_module_builds_the_handler() -> None:
    app = next(b for b in BLOCKS if b.lang == "python" and "aws_lambda.handler(" in b.text)
    compile(app.text, "app.py", "exec")
    assert re.search(r"^lambda_handler = remotejob\.aws_lambda\.handler\(", app.text, re.M)
    assert len(app.text.strip().splitlines()) <= 6
    clock = next(b for b in BLOCKS if b.lang == "python" and "clock_handler(" in b.text)
    compile(clock.text, "app.py", "exec")


def test_the_event_source_mapping_reports_failures_and_fits_the_handler() -> None:
    mapping = _aws_command("lambda", "create-event-source-mapping")
    assert _option(mapping, "--function-response-types") == "ReportBatchItemFailures"
    batch = int(_option(mapping, "--batch-size"))
    concurrency = _default(remotejob.aws_lambda.handler, "concurrency")
    assert 1 <= batch <= concurrency, "every record of a batch should start at once"
    scaling = _option(mapping, "--scaling-config")
    assert re.fullmatch(r"MaximumConcurrency=\d+", scaling), scaling
    assert 2 <= int(scaling.split("=")[1]) <= 1000, "Lambda takes MaximumConcurrency 2-1,000"
    assert 0 <= int(_option(mapping, "--maximum-batching-window-in-seconds")) <= 300

    function = _aws_command("lambda", "create-function")
    assert _option(function, "--function-name") == _option(mapping, "--function-name")
    assert _option(function, "--handler") == "app.lambda_handler"
    timeout = int(_option(function, "--timeout"))
    assert timeout <= LAMBDA_MAX_TIMEOUT
    assert timeout > _default(remotejob.aws_lambda.handler, "reserve"), "no time left for a job"

    visibility = _aws_command("sqs", "set-queue-attributes")
    attributes = _option(visibility, "--attributes")
    assert int(attributes.split("VisibilityTimeout=")[1]) >= 6 * timeout, "AWS advises 6 x the timeout"
    queue = _option(mapping, "--event-source-arn").rsplit(":", 1)[1]
    assert _option(visibility, "--queue-url").endswith(f"/{queue}"), "the visibility is set on another queue"


def test_the_lambda_role_lets_lambda_poll_the_mapped_queue() -> None:
    statement = _one(_json_docs(), "policy granting sqs:GetQueueAttributes",
                     lambda d: "Statement" in d and "sqs:GetQueueAttributes" in json.dumps(d))["Statement"][0]
    assert statement["Effect"] == "Allow"
    assert {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"} <= set(statement["Action"])
    mapping = _aws_command("lambda", "create-event-source-mapping")
    assert statement["Resource"] == _option(mapping, "--event-source-arn")
    app = next(b for b in BLOCKS if b.lang == "python" and "aws_lambda.handler(" in b.text)
    name = re.search(r'name="([^"]+)"', app.text)
    assert name is not None and statement["Resource"].endswith(f":{name.group(1)}-pending")


def test_the_clock_schedule_runs_every_minute() -> None:
    schedule = _aws_command("scheduler", "create-schedule")
    assert _option(schedule, "--schedule-expression") == "rate(1 minute)"
    assert json.loads(_option(schedule, "--flexible-time-window")) == {"Mode": "OFF"}
    target = json.loads(_option(schedule, "--target"))
    assert target["Arn"].startswith("arn:aws:lambda:") and target["RoleArn"].startswith("arn:aws:iam::")
    rate = re.fullmatch(r"rate\((\d+) minutes?\)", _option(schedule, "--schedule-expression"))
    assert rate is not None
    assert int(rate.group(1)) * 60 == _default(remotejob.aws_lambda.clock_handler, "every")


# -- the scaling signal -------------------------------------------------------------------------


def _stats_example() -> tuple[list[str], dict[str, Any]]:
    line = next(c for c in _remotejob_lines() if c.path == ("stats",) and "--per-worker" in c.tokens)
    example = _one(_json_docs(), "stats --json example", lambda d: "backlog" in d)
    return line.tokens, example


def test_the_stats_example_adds_up() -> None:
    tokens, example = _stats_example()
    workers, target = int(_option(tokens, "--workers")), float(_option(tokens, "--per-worker"))
    assert example["backlog"], "the example shows no status"
    for entry in example["backlog"]:
        assert entry["backlog"] == entry["visible"] + entry["in_flight"]
        assert entry["per_worker"] == entry["backlog"] / workers
        assert entry["desired_workers"] == math.ceil(entry["backlog"] / target)
    # the per-worker target the recipes use is the one the section works out
    assert re.search(rf"T = 60 / 2 x 8 = {int(target)}`", SECTION)


def test_the_stats_example_has_the_keys_stats_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens, example = _stats_example()
    monkeypatch.setenv("REMOTEJOB_HOME", str(tmp_path))
    for name in ("REMOTEJOB_STORE", "REMOTEJOB_QUEUES", "REMOTEJOB_NAME"):
        monkeypatch.delenv(name, raising=False)
    name = unique("stats")
    with remotejob.connect(name) as q:
        q.submit_many([{"body": b"x"} for _ in range(5)])
    args = ["--name", name, *tokens[tokens.index("stats"):]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    printed = {entry["status"]: entry for entry in json.loads(result.output)["backlog"]}
    shown = example["backlog"][0]
    assert set(printed[shown["status"]]) == set(shown), "the example's keys differ from what stats prints"
    assert printed["pending"]["backlog"] == 5
    assert printed["pending"]["desired_workers"] == math.ceil(5 / float(_option(tokens, "--per-worker")))


# -- ECS on Fargate -----------------------------------------------------------------------------


def _task(family_part: str) -> dict[str, Any]:
    return _one(_json_docs(), f"task definition *{family_part}*",
                lambda d: "containerDefinitions" in d and family_part in d.get("family", ""))


def _environment(pairs: list[dict[str, str]]) -> dict[str, str]:
    return {pair["name"]: pair["value"] for pair in pairs}


def _stop_time_needed() -> float:
    """A worker's default grace period plus one SQS long poll (it cannot be cut short)."""
    grace = float(_default(remotejob.Worker.__init__, "grace_period"))
    return grace + float(_default(remotejob.connect, "wait_time"))


def test_the_ecs_worker_task_gives_the_worker_its_grace_period() -> None:
    task = _task("worker")
    assert task["requiresCompatibilities"] == ["FARGATE"] and task["networkMode"] == "awsvpc"
    assert task["taskRoleArn"].startswith("arn:aws:iam::") and ":role/" in task["taskRoleArn"]
    (container,) = task["containerDefinitions"]
    assert "entryPoint" not in container, "the image's entry point runs `remotejob worker`"
    assert re.fullmatch(r"[\w.]+:\w+", container["command"][0]), "the command starts with MODULE:FUNCTION"
    assert _stop_time_needed() <= container["stopTimeout"] <= FARGATE_MAX_STOP_TIMEOUT
    env = _environment(container["environment"])
    assert {"REMOTEJOB_NAME", "REMOTEJOB_STORE", "REMOTEJOB_QUEUES"} <= set(env)
    assert env["REMOTEJOB_STORE"].startswith("s3://") and env["REMOTEJOB_QUEUES"].startswith("sqs://")


def test_the_scaling_policy_tracks_what_the_publisher_puts() -> None:
    policy = _one(_json_docs(), "target tracking policy", lambda d: "CustomizedMetricSpecification" in d)
    metric = policy["CustomizedMetricSpecification"]
    assert metric["Namespace"] == NAMESPACE
    assert metric["MetricName"] == "BacklogPerWorker"
    assert metric["Statistic"] == "Average"
    assert policy["TargetValue"] > 0
    dimensions = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
    assert set(dimensions) == {"JobSystem", "Status"}

    scaler = _task("scaler")
    (container,) = scaler["containerDefinitions"]
    assert container["entryPoint"] == ["dumb-init", "--", "remotejob"]
    command = container["command"]
    assert command[:2] == ["metrics", "--cloudwatch"]
    assert _option(command, "--status") == dimensions["Status"]
    if "--namespace" in command:
        assert _option(command, "--namespace") == metric["Namespace"]
    assert int(_option(command, "--every")) <= 60, "target tracking reads one-minute data"
    assert _environment(container["environment"])["REMOTEJOB_NAME"] == dimensions["JobSystem"]
    # the publisher counts the very service the policy scales
    for words in (("register-scalable-target",), ("put-scaling-policy",)):
        tokens = _aws_command("application-autoscaling", *words)
        assert _option(tokens, "--resource-id") == f"service/{_option(command, '--ecs-service')}"
        assert _option(tokens, "--scalable-dimension") == "ecs:service:DesiredCount"
    put = _aws_command("application-autoscaling", "put-scaling-policy")
    assert _option(put, "--policy-type") == "TargetTrackingScaling"
    assert _environment(_task("worker")["containerDefinitions"][0]["environment"])["REMOTEJOB_NAME"] == \
        dimensions["JobSystem"]


@pytest.mark.backends("aws")  # CloudWatch exists on moto only; the metric's name is the same everywhere
def test_metrics_cloudwatch_puts_the_metric_the_policy_tracks(backend: BackendSetup) -> None:
    policy = _one(_json_docs(), "target tracking policy", lambda d: "CustomizedMetricSpecification" in d)
    metric = policy["CustomizedMetricSpecification"]
    status = {d["Name"]: d["Value"] for d in metric["Dimensions"]}["Status"]
    name, store = unique("scale"), backend.store_url()
    with backend.connect(name, store=store) as q:
        q.submit_many([{"body": b"x"} for _ in range(3)], status=status)
    moto = backend.sqs_endpoint or ""
    env = {"AWS_ENDPOINT_URL_CLOUDWATCH": moto, "AWS_ENDPOINT_URL_ECS": moto}
    args = ["--name", name, "--store", store or "", "--queues", "sqs://",
            "metrics", "--cloudwatch", "--status", status, "--workers", "2"]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output
    cloudwatch = boto3.client("cloudwatch", endpoint_url=moto, region_name=servers.REGION,
                              aws_access_key_id=servers.ACCESS_KEY, aws_secret_access_key=servers.SECRET_KEY)
    put = cloudwatch.list_metrics(Namespace=metric["Namespace"], MetricName=metric["MetricName"])["Metrics"]
    mine = [{d["Name"]: d["Value"] for d in m["Dimensions"]} for m in put
            if {"Name": "JobSystem", "Value": name} in m["Dimensions"]]
    expected = {d["Name"]: d["Value"] for d in metric["Dimensions"]} | {"JobSystem": name}
    assert mine == [expected], f"the policy tracks {expected}; metrics --cloudwatch put {mine}"


# -- KEDA ---------------------------------------------------------------------------------------


def _kind(kind: str) -> dict[str, Any]:
    return _one(_yaml_docs(), kind, lambda d: d.get("kind") == kind)


def test_the_scaled_object_scales_the_deployment_on_its_queue() -> None:
    deployment, auth, scaled = _kind("Deployment"), _kind("TriggerAuthentication"), _kind("ScaledObject")
    assert scaled["apiVersion"] == auth["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert spec["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    meta = trigger["metadata"]
    assert {"queueURL", "queueLength", "awsRegion", "scaleOnInFlight"} <= set(meta)
    assert all(isinstance(v, str) for v in meta.values()), "KEDA's trigger metadata is a map of strings"
    assert int(meta["queueLength"]) >= 1 and meta["scaleOnInFlight"] == "true"
    assert auth["spec"]["podIdentity"]["provider"] == "aws"

    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()
    assert pod["terminationGracePeriodSeconds"] >= _stop_time_needed()
    (container,) = pod["containers"]
    assert "command" not in container, "the image's entry point runs `remotejob worker`: use args"
    assert re.fullmatch(r"[\w.]+:\w+", container["args"][0])
    env = {e["name"]: e["value"] for e in container["env"]}
    url = re.fullmatch(r"https://sqs\.([a-z0-9-]+)\.amazonaws\.com/[^/]+/([\w-]+)", meta["queueURL"])
    assert url is not None, meta["queueURL"]
    assert url.group(1) == meta["awsRegion"]
    assert url.group(2) == f"{env['REMOTEJOB_NAME']}-pending", "the trigger watches another job system"


# -- AWS Batch ----------------------------------------------------------------------------------


def test_the_batch_job_definition_runs_burst_workers() -> None:
    job = _one(_json_docs(), "Batch job definition", lambda d: "jobDefinitionName" in d)
    assert job["type"] == "container"
    container = job["containerProperties"]
    assert container["command"][-1] == "--burst"
    assert re.fullmatch(r"[\w.]+:\w+", container["command"][0])
    assert container["jobRoleArn"].startswith("arn:aws:iam::") and ":role/" in container["jobRoleArn"]
    env = _environment(container["environment"])
    assert {"REMOTEJOB_NAME", "REMOTEJOB_STORE", "REMOTEJOB_QUEUES"} <= set(env)
    assert job["timeout"]["attemptDurationSeconds"] >= 60, "Batch's shortest timeout is 60 s"
    assert 1 <= job["retryStrategy"]["attempts"] <= 10
    submit = _aws_command("batch", "submit-job")
    assert _option(submit, "--job-definition") == job["jobDefinitionName"]
    assert _option(submit, "--array-properties").startswith("size=")


# -- command lines ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandLine:
    """A ``remotejob ...`` invocation shown in the section."""

    path: tuple[str, ...]
    """The command (and subcommand), e.g. ``("dead", "list")``."""
    tokens: list[str]
    """Its words from ``remotejob`` on, up to a pipe, redirection or the end of the line."""
    where: str


def _shell_commands(line: str) -> Iterator[list[str]]:
    """The simple commands of a shell line: split at pipes, lists and redirections, and a
    ``$(`` substitution starts one of its own."""
    current: list[str] = []
    for token in shlex.split(line, comments=True):
        if token in ("|", "||", "&&", ";", ">", ">>", "<"):
            yield current
            current = []
        elif "$(" in token:
            yield current
            current = [token.split("$(", 1)[1]]
        else:
            current.append(token)
    yield current


def _command_line(tokens: list[str], where: str) -> CommandLine:
    words, i = tokens[1:], 0
    while i < len(words) and words[i].startswith("--"):
        i += 2 if words[i] in GLOBAL_OPTIONS_WITH_VALUE else 1
    path = [words[i]] if i < len(words) else []
    group = main.commands.get(path[0]) if path else None
    if group is not None and hasattr(group, "commands") and i + 1 < len(words):
        path.append(words[i + 1])
    return CommandLine(tuple(path), tokens, where)


def _remotejob_lines() -> list[CommandLine]:
    found: list[CommandLine] = []
    for block in BLOCKS:
        if block.lang == "sh":
            for n, line in enumerate(block.text.replace("\\\n", " ").split("\n")):
                found += [_command_line(command, f"README.md line {block.line + n + 1}")
                          for command in _shell_commands(line) if command[:1] == ["remotejob"]]
    prose = re.sub(r"```.*?```", "", SECTION, flags=re.S)
    for span in re.findall(r"`(remotejob [^`]+)`", prose):
        found.append(_command_line(span.split(), f"inline `{span}`"))
    # the worker and publisher commands inside the recipes: arguments to the image's entry point
    for doc in _json_docs():
        for container in doc.get("containerDefinitions", []):
            prefix = [] if container.get("entryPoint") == ["dumb-init", "--", "remotejob"] else ["worker"]
            where = f"task {doc['family']}"
            found.append(_command_line(["remotejob", *prefix, *container["command"]], where))
        if "containerProperties" in doc:
            command = doc["containerProperties"]["command"]
            found.append(_command_line(["remotejob", "worker", *command], f"job {doc['jobDefinitionName']}"))
    for doc in _yaml_docs():
        if doc.get("kind") == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                found.append(_command_line(["remotejob", "worker", *container["args"]], "the Deployment"))
    for block in BLOCKS:
        if block.lang == "dockerfile":
            cmd = re.search(r"^CMD (\[.*\])$", block.text, re.M)
            if cmd is not None:
                arguments = json.loads(cmd.group(1))
                found.append(_command_line(["remotejob", "worker", *arguments], "the Dockerfile"))
    return found


COMMAND_LINES = _remotejob_lines()
COMMANDS = sorted({c.path for c in COMMAND_LINES})


def _help_options(path: tuple[str, ...]) -> set[str]:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, f"`remotejob {' '.join(path)} --help` fails: {result.output}"
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", result.output))


def test_the_section_shows_the_commands_the_recipes_need() -> None:
    assert {("worker",), ("stats",), ("metrics",), ("iam-policy",), ("dead", "list"),
            ("dead", "redrive"), ("init",)} <= set(COMMANDS), COMMANDS
    roles = {_option(c.tokens, "--role") for c in COMMAND_LINES if c.path == ("iam-policy",)}
    assert {"worker", "scaler"} <= roles


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(p) or "(none)" for p in COMMANDS])
def test_every_shown_command_line_uses_options_the_cli_has(path: tuple[str, ...]) -> None:
    assert path, "a `remotejob` line without a command"
    known, group = _help_options(path), _help_options(())
    for line in (c for c in COMMAND_LINES if c.path == path):
        command_at = line.tokens.index(path[-1])
        for i, token in enumerate(line.tokens[1:], 1):
            if not token.startswith("--") or token == "--":
                continue
            option = token.split("=", 1)[0].rstrip(")")
            allowed = group if i < command_at else known
            assert option in allowed, f"{line.where}: `remotejob {' '.join(path)}` has no option {option}"


IAM_LINES = [c for c in COMMAND_LINES if c.path == ("iam-policy",) and c.where.startswith("README.md line")]


@pytest.mark.parametrize("line", IAM_LINES, ids=[c.where for c in IAM_LINES])
def test_every_shown_iam_policy_command_prints_a_policy(
    line: CommandLine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shell lines, which name the store and queues (inline mentions do not)."""
    monkeypatch.setenv("AWS_REGION", servers.REGION)
    args = [word.replace("ACCOUNT", "123456789012") for word in line.tokens[1:]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, f"{line.where}: {result.output}"
    policy = json.loads(result.output)
    assert policy["Version"] == "2012-10-17" and policy["Statement"]
