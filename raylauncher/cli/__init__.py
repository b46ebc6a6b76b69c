"""raylauncher: start, follow and cancel Ray jobs on ephemeral clusters — on the local system
(`raylauncher serve`) or a deployed stack (`--stack NAME`, requests SigV4-signed with your AWS
credentials). The operator commands speak only the HTTP API; the system commands (driver,
serve, demo, …) run the system itself."""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import sys
from collections.abc import Callable
from typing import Any

from raylauncher.cli import exits
from raylauncher.cli.errors import Refused
from raylauncher.cli.http import ApiError
from raylauncher.cli.system import _job_id, add_system_commands
from raylauncher.cli.targets import STACK_ENV, TargetError
from raylauncher.config import BASTION_LAUNCHER
from raylauncher.errors import ConfigError, JobNotFound

TARGET_HELP = f"""targets: --stack NAME (or ${STACK_ENV}) reads the stack's CloudFormation outputs (ApiUrl, DataBucket,
JobTable, BastionInstanceId) with your AWS credentials and region; --target local (the default while
`raylauncher serve` runs) uses the API that serve started on 127.0.0.1."""


def _add_target_options(parser: argparse.ArgumentParser, default: object) -> None:
    group = parser.add_argument_group("target")
    group.add_argument("--stack", metavar="NAME", default=default, help=f"a deployed stack (default: ${STACK_ENV})")
    group.add_argument("--target", choices=["local"], default=default,
                       help="the local system `raylauncher serve` runs")  # fmt: skip
    group.add_argument("--region", default=default, help="AWS region of the stack (default: AWS_REGION or your profile's)")


def _target_options() -> argparse.ArgumentParser:
    """Target options on each command as well as before it (`raylauncher --stack S jobs list`
    and `raylauncher jobs list --stack S`): on commands they default to "not given", so they
    never overwrite what was given before the command."""
    common = argparse.ArgumentParser(add_help=False)
    _add_target_options(common, argparse.SUPPRESS)
    return common


def _output_option(default: str = "table") -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-o", "--output", choices=["table", "json"], default=default,
                        help="table for people (default), json for scripts")  # fmt: skip
    return common


def _parser(sub: argparse._SubParsersAction, name: str, func: str, help: str, description: str,
            parents: list[argparse.ArgumentParser], epilog: str | None = None) -> argparse.ArgumentParser:  # fmt: skip
    p = sub.add_parser(name, help=help, description=description, parents=parents, epilog=epilog,
                       formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.set_defaults(func=func)  # "module:function" under raylauncher.cli, imported when the command runs
    return p


def add_operator_commands(sub: argparse._SubParsersAction) -> None:
    from raylauncher.cli import arguments as a

    target, output = _target_options(), _output_option()
    both = [target, output]

    submit = _parser(sub, "submit", "commands:cmd_submit", "start a run of a pipeline (prints the job id)",
                     "Start a run of PIPELINE over what is under its input prefix. Prints the job id;\n"
                     "with --wait, follows the job to its end (a live view on a terminal, one line per\n"
                     "state change otherwise, on stderr) and exits 0 only if it SUCCEEDED.",
                     both, epilog=exits.EPILOG + "\n\n" + TARGET_HELP)  # fmt: skip
    submit.add_argument("pipeline", metavar="PIPELINE", help="a pipeline's name (raylauncher pipelines list)")
    submit.add_argument("--param", "-p", action="append", type=a.param_value, metavar="KEY=VALUE",
                        help="a run parameter (repeat it); KEY:=JSON for numbers and booleans")  # fmt: skip
    submit.add_argument("--idempotency-key", metavar="KEY",
                        help="submitting again with the same key returns the same job (24 h)")  # fmt: skip
    submit.add_argument("--wait", action="store_true", help="follow the job to its end; the exit code says how it ended")

    jobs = sub.add_parser("jobs", help="list, show, read the logs of and cancel jobs",
                          description="Jobs: list, show, logs, cancel.")  # fmt: skip
    actions = jobs.add_subparsers(dest="action", required=True, metavar="{list,show,logs,cancel,release}")
    listing = _parser(actions, "list", "commands:cmd_jobs_list", "jobs, newest first",
                      "Jobs, newest first, read page by page from the API up to --limit.", both, epilog=TARGET_HELP)  # fmt: skip
    listing.add_argument("--status", type=str.upper, help="only jobs in this status (e.g. RUNNING, FAILED)")
    listing.add_argument("--pipeline", help="only this pipeline's jobs")
    listing.add_argument("--since", type=a.since_value, help="only jobs created since: 30m, 1h, 2d or an ISO time")
    listing.add_argument("--limit", type=a.positive, default=20, help="at most this many jobs (default %(default)s)")
    show = _parser(actions, "show", "commands:cmd_jobs_show", "one job: timeline, attempts, reason, inputs, outputs, cost",
                   "One job: its phase timeline (time per phase), attempts, reason, inputs, outputs,\n"
                   "log location, cluster and cost.", both, epilog=TARGET_HELP)  # fmt: skip
    show.add_argument("job_id", type=_job_id, metavar="JOB")
    logs = _parser(actions, "logs", "commands:cmd_jobs_logs", "the Ray job's log (--follow: until the job ends)",
                   "The Ray job's log as the driver keeps it in S3: it appends a chunk every few seconds\n"
                   "while the job runs (so the log lags the job by up to one interval) and the rest at the\n"
                   "end. Works after the cluster is gone; needs no route to the cluster.",
                   both, epilog=TARGET_HELP)  # fmt: skip
    logs.add_argument("job_id", type=_job_id, metavar="JOB")
    logs.add_argument("--follow", "-f", action="store_true", help="keep reading until the job's log is complete")
    logs.add_argument("--offset", type=int, default=0, help="start at this byte offset (default 0)")
    logs.add_argument("--interval", type=float, default=a.POLL_INTERVAL_S, help="seconds between polls with --follow")
    cancel = _parser(actions, "cancel", "commands:cmd_jobs_cancel", "cancel a job (its cluster is torn down)",
                     "Cancel a job: at once if no cluster was started yet, else its driver stops the Ray\n"
                     "job and tears the cluster down (the job ends CANCELLED).", both, epilog=TARGET_HELP)  # fmt: skip
    cancel.add_argument("job_id", type=_job_id, metavar="JOB")

    release = _parser(actions, "release", "commands:cmd_jobs_release", "end the debug hold of a failed job's cluster",
                      "A job that FAILED for its own reason in a pipeline with keep_failed_cluster_seconds\n"
                      "keeps its cluster up for debugging (`raylauncher dashboard JOB` works on it); this\n"
                      "ends the hold at once: the cluster is torn down.", both, epilog=TARGET_HELP)  # fmt: skip
    release.add_argument("job_id", type=_job_id, metavar="JOB")

    alias = _parser(sub, "cancel", "commands:cmd_cancel_alias", "cancel a job (alias of `jobs cancel`)",
                    "Alias of `jobs cancel`. With no target (no --stack, no running serve) it cancels\n"
                    "on the job table the environment names, as on the bastion.", both)  # fmt: skip
    alias.add_argument("job_id", type=_job_id, metavar="JOB")

    pipelines = sub.add_parser("pipelines", help="the pipelines the target knows",
                               description="The pipelines of the target's configuration.")  # fmt: skip
    pactions = pipelines.add_subparsers(dest="action", required=True, metavar="{list,show}")
    _parser(pactions, "list", "commands:cmd_pipelines_list", "every pipeline", "Every pipeline: trigger, schedules, output.", both)
    pshow = _parser(pactions, "show", "commands:cmd_pipelines_show", "one pipeline's configuration",
                    "One pipeline's configuration as the target runs it.", both)  # fmt: skip
    pshow.add_argument("name", metavar="NAME")

    dashboard = _parser(sub, "dashboard", "commands:cmd_dashboard", "open a running job's Ray dashboard",
                        "Open a running job's Ray dashboard on this machine.\n\n"
                        "Locally: prints the local cluster's dashboard URL. On a stack: forwards a local port\n"
                        "to the head's port 8265 through the bastion with SSM Session Manager\n"
                        f"({a.PORT_FORWARDING_DOCUMENT}; no SSH key, no open port), printing the\n"
                        "URL and the exact `aws ssm start-session` command it runs; Ctrl-C closes it.\n"
                        "Needs the AWS CLI and the session-manager-plugin, and a job in SUBMITTED or RUNNING.\n\n"
                        "The cluster asks for its Ray token (paste it once; the browser keeps a cookie): how to\n"
                        "get it is printed on stderr (and `token_command` with -o json); see cluster-token.",
                        both, epilog=TARGET_HELP)  # fmt: skip
    dashboard.add_argument("job_id", type=_job_id, metavar="JOB")
    dashboard.add_argument("--local-port", type=int, default=a.RAY_DASHBOARD_PORT,
                           help="local port of the tunnel (default %(default)s)")  # fmt: skip

    token_output = argparse.ArgumentParser(add_help=False)
    token_output.add_argument("-o", "--output", choices=["text", "json"], default="text",
                              help="text: the token alone (default); json: job_id, run_id and token")  # fmt: skip
    token = _parser(sub, "cluster-token", "tokens:cmd_cluster_token",
                    "print a running cluster's Ray token (its dashboard and Jobs API ask for it)",
                    "Print the Ray token of a job's running cluster, alone on stdout. Every cluster runs\n"
                    "with Ray token authentication: its dashboard's page asks for the token (paste it once;\n"
                    "the browser keeps a cookie); scripts send `Authorization: Bearer <token>`. A token\n"
                    "exists only while its cluster is up: it is deleted at teardown.\n\n"
                    "--target local: the job's current attempt from the API, its token from the local\n"
                    "system. --stack NAME: the same from the stack, but only the bastion and the cluster's\n"
                    "nodes may read tokens (not the operator role). No target (on the bastion, in a shell\n"
                    "opened with `aws ssm start-session --target <bastion id>`):\n"
                    f"  sudo {BASTION_LAUNCHER} cluster-token JOB\n"
                    "reads it with the environment's credentials and region (the highest attempt's token).",
                    [target, token_output],
                    epilog=f"exit codes: 0 printed; {exits.ERROR} not allowed to read it (or another AWS error); "
                           f"{exits.USAGE} bad arguments,\nno credentials or region; {exits.NOT_FOUND} no such job, or no "
                           f"cluster up (no token); {exits.UNREACHABLE} the API or SSM did not answer.\n\n"
                           + TARGET_HELP)  # fmt: skip
    token.add_argument("job_id", type=_job_id, metavar="JOB")
    token.add_argument("--attempt", type=a.attempt_number, metavar="N",
                       help="this attempt's token (default: the job's current attempt; no target: the highest)")  # fmt: skip

    doctor = _parser(sub, "doctor", "doctor:cmd_doctor", "check this machine can operate the target (one line per check)",
                     "Checks, one line each: AWS credentials and region, the stack and its outputs, the\n"
                     "API reachable, the bastion online in SSM, the session-manager-plugin, and that the\n"
                     "Ray pins of bastion and cluster template agree. Exit 1 if a check fails.",
                     both, epilog=TARGET_HELP)  # fmt: skip
    del doctor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raylauncher", description=__doc__, epilog=exits.EPILOG + "\n\n" + TARGET_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    _add_target_options(parser, None)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_operator_commands(sub)
    add_system_commands(sub)
    return parser


def _command(func: str | Callable[..., int]) -> Callable[..., int]:
    """Operator commands are named "module:function" so that parsing never imports them (nor rich)."""
    if callable(func):
        return func
    module, _, name = func.partition(":")
    return getattr(importlib.import_module(f"raylauncher.cli.{module}"), name)


def main(argv: list[str] | None = None, **injected: Any) -> int:
    """The console script. `injected` reaches the command functions that take it by name
    (tests: `run` for dashboard's subprocess, `which`, `ssm_client` for doctor)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("botocore.credentials").setLevel(logging.WARNING)  # one line per client otherwise
    args = build_parser().parse_args(argv)
    func = _command(args.func)
    try:
        wanted = inspect.signature(func).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in wanted.values())
        return int(func(args, **{k: v for k, v in injected.items() if takes_any or k in wanted}))
    except TargetError as err:
        print(f"raylauncher: {err}", file=sys.stderr)
        return exits.USAGE
    except ApiError as err:
        print(f"raylauncher: {err}", file=sys.stderr)
        if err.status == 0:
            return exits.UNREACHABLE
        return exits.NOT_FOUND if err.status == 404 else exits.ERROR
    except Refused as err:  # a command cannot do what was asked (e.g. dashboard of a finished job)
        print(f"raylauncher: {err}", file=sys.stderr)
        return exits.ERROR
    except ConfigError as err:
        print(f"configuration error: {err}", file=sys.stderr)
        return exits.USAGE
    except JobNotFound as err:
        print(str(err), file=sys.stderr)
        return exits.NOT_FOUND
    except BrokenPipeError:  # `raylauncher jobs logs J | head`
        return exits.OK


if __name__ == "__main__":
    sys.exit(main())
