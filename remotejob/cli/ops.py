"""Commands for deploying on AWS: doctor (check a deployment) and iam-policy (least privilege)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from .. import doctor as checks
from ..policy import ROLES, policy, scope
from .app import Context, emit_json, main, pass_context

_STATUS_HELP = ("A status queue of the job system (repeat for a pipeline; default: pending, inprogress, "
                "completed).")


def _options(statuses: tuple[str, ...]) -> dict[str, Any]:
    return {"statuses": statuses} if statuses else {}


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.option("--status", "statuses", multiple=True, metavar="S", help=_STATUS_HELP)
@pass_context
def doctor(ctx: Context, as_json: bool, statuses: tuple[str, ...]) -> None:
    """Check how the job system is deployed and print what to fix, one line per check.

    On AWS: the bucket's public access block and default encryption, the queues' encryption at
    rest, each status queue's redrive policy to NAME-dead, the dead-letter queue keeping
    messages longer than its sources, and https endpoints. Embedded: no world-writable folders.
    Reads only; changes nothing. Exit code 0 if nothing failed, 1 otherwise.

    \b
    Example:
      remotejob doctor
      remotejob doctor --json | jq '.checks[] | select(.level == "fail")'
    """
    with ctx.errors():
        q = ctx.connect(**_options(statuses))
        found = checks.run(q)
    if as_json:
        emit_json({"name": q.name, "store": q.object_store.location, "queues": q.message_queue.location,
                   "ok": not checks.failed(found), "checks": [c.doc() for c in found]})
    else:
        for check in found:
            click.echo(check.line())
        counts = {level: sum(c.level == level for c in found) for level in ("ok", "warn", "fail")}
        click.echo(f"{counts['ok']} ok, {counts['warn']} warn, {counts['fail']} FAIL")
    sys.exit(checks.exit_code(found))


@main.command(name="iam-policy")
@click.option("--role", type=click.Choice(ROLES), required=True,
              help="submitter: submit and read results; worker: run jobs; admin: init, doctor, stats, "
                   "dead, purge; dashboard: remotejob ui; scaler: remotejob metrics --cloudwatch.")
@click.option("--account", default=None, metavar="ID", help="AWS account id in queue ARNs (default: *).")
@click.option("--region", default=None,
              help="Region in queue ARNs (default: sqs://REGION, AWS_REGION or the profile's, else *).")
@click.option("--status", "statuses", multiple=True, metavar="S", help=_STATUS_HELP)
@click.option("--namespace", default="remotejob", show_default=True,
              help="scaler: the CloudWatch namespace it may put metrics in.")
@click.option("--ecs-service", default=None, metavar="CLUSTER/SERVICE",
              help="scaler: the one ECS service it may describe (default: any in the account).")
@click.option("--json", "as_json", is_flag=True, help="Print the document on one line.")
@pass_context
def iam_policy(
    ctx: Context, role: str, account: str | None, region: str | None, statuses: tuple[str, ...],
    namespace: str, ecs_service: str | None, as_json: bool,
) -> None:
    """Print a least-privilege IAM policy for one role of this job system.

    Scoped to its bucket prefix (in/, out/, jobs/, batches/) and its queues (NAME-STATUS,
    NAME-dead). A worker may take, extend and finish jobs and write under jobs/ and out/ only:
    it cannot purge or delete queues, change their attributes, or write inputs.

    \b
    Example:
      remotejob --store s3://my-bucket/photos --queues sqs:// iam-policy --role worker > worker.json
      aws iam put-role-policy --role-name photo-workers --policy-name remotejob \\
          --policy-document file://worker.json
    """
    with ctx.errors():
        q = ctx.connect(**_options(statuses))
        document = policy(role, scope(q, region=region, account=account), namespace=namespace,
                          ecs_service=ecs_service)
    if as_json:
        emit_json(document)
    else:
        click.echo(json.dumps(document, indent=2))
