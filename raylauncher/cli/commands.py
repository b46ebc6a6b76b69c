"""The operator's commands: submit, jobs list/show/logs/cancel, pipelines, dashboard. Each reads
its target, makes API calls through ApiClient and renders; none touches AWS resources directly
except `dashboard`, which starts an SSM session (what the operator role allows). `cluster-token`
is in tokens.py (it also runs on the bastion, which has no rich)."""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from raylauncher.cli import exits, render
from raylauncher.cli.arguments import POLL_INTERVAL_S, PORT_FORWARDING_DOCUMENT, RAY_DASHBOARD_PORT, since_time
from raylauncher.cli.errors import Refused
from raylauncher.cli.http import ApiClient
from raylauncher.cli.targets import Target, resolve_target
from raylauncher.cli.tokens import bastion_shell_command, token_command, token_hint

#: The statuses in which a job has a cluster that can answer.
CLUSTER_RUNNING = ("SUBMITTED", "RUNNING")
PLUGIN = "session-manager-plugin"
PLUGIN_INSTALL_HINT = ("install the Session Manager plugin: https://docs.aws.amazon.com/systems-manager/latest/"
                       "userguide/session-manager-working-with-install-plugin.html")  # fmt: skip

Runner = Callable[[list[str]], int]


def target_of(args: argparse.Namespace) -> Target:
    return resolve_target(args.target, args.stack, args.region)


def client_of(args: argparse.Namespace) -> ApiClient:
    return ApiClient(target_of(args))


def wants_json(args: argparse.Namespace) -> bool:
    return getattr(args, "output", "table") == "json"


# ---------------------------------------------------------------- submit


def cmd_submit(args: argparse.Namespace) -> int:
    client = client_of(args)
    response = client.submit(args.pipeline, dict(args.param or []), args.idempotency_key)
    job = response.body
    if response.status == 200:
        render.stderr().print(f"replayed: the job made earlier with Idempotency-Key {args.idempotency_key}")
    if not args.wait:
        if wants_json(args):
            render.print_json(job)
        else:
            print(job["job_id"], flush=True)
        return exits.OK
    render.stderr().print(f"{job['job_id']} submitted; following it (Ctrl-C stops following, not the job)")
    try:
        job = follow(client, job["job_id"], json_lines=wants_json(args))
    except KeyboardInterrupt:
        render.stderr().print(f"stopped following; the job goes on: raylauncher jobs cancel {job['job_id']}")
        return exits.INTERRUPTED
    if wants_json(args):
        render.print_json(job)
    else:
        print(job["job_id"], job["status"], flush=True)
    return exits.JOB_OUTCOMES.get(job["status"], exits.ERROR)


def follow(client: ApiClient, job_id: str, *, json_lines: bool = False, interval_s: float = POLL_INTERVAL_S,
           sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:  # fmt: skip
    """Poll the job until it is terminal. When stdout and stderr are terminals: a live view (phase,
    time per phase, Ray status, nodes) on stderr; otherwise one line per state change on stderr."""
    err = render.stderr()
    live = None
    if err.is_terminal and render.stdout().is_terminal and not json_lines:  # else a log file would fill with frames
        from rich.live import Live

        live = Live(console=err, refresh_per_second=2, transient=False)
        live.start()
    last = None
    try:
        while True:
            job = client.job(job_id)
            if live is not None:
                live.update(render.progress(job))
            else:
                seen = (job["status"], job.get("ray_status"), (job.get("cluster") or {}).get("nodes"))
                if seen != last:
                    last = seen
                    err.print(render.state_line(job), soft_wrap=True)
            if job["status"] in render.TERMINAL_STATUSES:
                return job
            sleep(interval_s)
    finally:
        if live is not None:
            live.stop()


# ---------------------------------------------------------------- jobs


def cmd_jobs_list(args: argparse.Namespace) -> int:
    client = client_of(args)
    jobs: list[dict[str, Any]] = []
    token = None
    while len(jobs) < args.limit:
        page = client.list_jobs(status=args.status, pipeline=args.pipeline, since=args.since,
                                limit=min(100, args.limit - len(jobs)), next_token=token)  # fmt: skip
        jobs += page["jobs"]
        token = page.get("next_token")
        if not token:
            break
    if args.since:  # the API filters by `since`; this keeps the promise against an API that does not yet
        cutoff = since_time(args.since)
        jobs = [j for j in jobs if (render.parse_time(j["created_at"]) or cutoff) >= cutoff]
    jobs = jobs[: args.limit]
    if wants_json(args):
        render.print_json({"jobs": jobs, "next_token": token if len(jobs) >= args.limit else None})
    elif jobs:
        render.stdout().print(render.jobs_table(jobs))
    else:
        render.stderr().print("no jobs match")
    return exits.OK


def cmd_jobs_show(args: argparse.Namespace) -> int:
    job = client_of(args).job(args.job_id)
    if wants_json(args):
        render.print_json(job)
    else:
        render.stdout().print(render.job_detail(job))
    return exits.OK


def cmd_jobs_logs(args: argparse.Namespace) -> int:
    """Print the Ray job's log from the API (chunks the driver keeps in S3), by offset."""
    client = client_of(args)
    offset, chunks = args.offset, []
    while True:
        chunk = client.logs(args.job_id, offset)
        content = chunk.get("content") or ""
        if content:
            if wants_json(args):
                chunks.append(chunk)
            else:
                sys.stdout.write(content)
                sys.stdout.flush()
        moved = chunk.get("next_offset", offset) != offset
        offset = chunk.get("next_offset", offset)
        if chunk.get("complete") or (not args.follow and not moved):
            break
        if not moved:
            time.sleep(args.interval)
    if wants_json(args):
        render.print_json({"job_id": args.job_id, "content": "".join(c["content"] for c in chunks),
                           "next_offset": offset, "complete": bool(chunk.get("complete")),
                           "log_location": chunk.get("log_location")})  # fmt: skip
    elif not chunk.get("complete") and not args.follow:
        render.stderr().print(f"(the job is still writing its log; --follow to keep reading, from offset {offset})")
    return exits.OK


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    response = client_of(args).cancel(args.job_id)
    job = response.body
    if wants_json(args):
        render.print_json(job)
    elif job["status"] in render.TERMINAL_STATUSES:
        print(f"{job['job_id']} {job['status']}")
    else:
        print(f"{job['job_id']} {job['status']} (cancel requested: the driver stops the Ray job and tears the cluster down)")
    return exits.OK


def cmd_jobs_release(args: argparse.Namespace) -> int:
    """`jobs release JOB`: end the debug hold of the cluster a failed job left up."""
    job = client_of(args).release(args.job_id).body
    if wants_json(args):
        render.print_json(job)
    else:
        print(f"{job['job_id']} {job['status']} (hold released: its cluster is torn down)")
    return exits.OK


def cmd_cancel_alias(args: argparse.Namespace) -> int:
    """`raylauncher cancel JOB`: through the API when there is a target, else straight on the job
    table the environment names (`source .local/state/serve.env`, or on the bastion)."""
    from raylauncher.cli.targets import TargetError

    try:
        target_of(args)
    except TargetError:
        if args.stack or args.target:
            raise
        from raylauncher.cli.system import cancel_direct

        return cancel_direct(args.job_id)
    return cmd_jobs_cancel(args)


# ---------------------------------------------------------------- pipelines


def cmd_pipelines_list(args: argparse.Namespace) -> int:
    body = client_of(args).pipelines()
    pipelines = body.get("pipelines", body) if isinstance(body, dict) else body
    if wants_json(args):
        render.print_json(body)
    else:
        render.stdout().print(render.pipelines_table(pipelines))
    return exits.OK


def cmd_pipelines_show(args: argparse.Namespace) -> int:
    body = client_of(args).pipeline(args.name)
    if wants_json(args):
        render.print_json(body)
    else:
        from rich.json import JSON

        render.stdout().print(JSON.from_data(body))
    return exits.OK


# ---------------------------------------------------------------- dashboard


def port_forwarding_command(target: Target, head_ip: str, local_port: int) -> list[str]:
    return [
        "aws", "ssm", "start-session", "--region", target.region, "--target", str(target.bastion_id),
        "--document-name", PORT_FORWARDING_DOCUMENT,
        "--parameters", f"host={head_ip},portNumber={RAY_DASHBOARD_PORT},localPortNumber={local_port}",
    ]  # fmt: skip


#: Statuses of a kept cluster record (raylauncher/warm.py) whose cluster is up.
KEPT_UP = frozenset({"HELD", "WARM", "ASSIGNED"})


def cmd_dashboard(args: argparse.Namespace, run: Runner = subprocess.call,
                  which: Callable[[str], str | None] = shutil.which) -> int:  # fmt: skip
    target = target_of(args)
    job = ApiClient(target).job(args.job_id)
    cluster = job.get("cluster") or {}
    kept_up = (job.get("kept_cluster") or {}).get("status") in KEPT_UP  # a warm or held cluster (debugging)
    if job["status"] not in CLUSTER_RUNNING and not kept_up:
        raise Refused(f"{job['job_id']} is {job['status']}: it has no running cluster (a dashboard exists only while "
                      f"the job is {' or '.join(CLUSTER_RUNNING)}); its log: raylauncher jobs logs {job['job_id']}")  # fmt: skip
    if target.kind == "local":
        url = cluster.get("dashboard_url")
        if not url:
            raise Refused(f"{job['job_id']}: the API reports no dashboard URL for its cluster yet; try again in a moment")
        if wants_json(args):
            render.print_json({"url": url, "token_command": token_command(target, job["job_id"])})
        else:
            print(url, flush=True)
        print(token_hint(target, job["job_id"], url), file=sys.stderr, flush=True)
        return exits.OK
    head_ip = cluster.get("head_ip")
    if not head_ip:
        raise Refused(f"{job['job_id']} is {job['status']} but its cluster's head IP is not known yet; try again in a moment")
    missing = [tool for tool in (PLUGIN, "aws") if which(tool) is None]
    if missing:
        hint = PLUGIN_INSTALL_HINT if PLUGIN in missing else "install the AWS CLI v2"
        raise Refused(f"{' and '.join(missing)} not found on PATH: {hint}")
    command = port_forwarding_command(target, head_ip, args.local_port)
    url = f"http://127.0.0.1:{args.local_port}"
    if wants_json(args):
        render.print_json({"url": url, "command": command, "token_command": token_command(target, job["job_id"]),
                           "token_shell": bastion_shell_command(target)})  # fmt: skip
    else:
        print(f"Ray dashboard of {job['job_id']}: {url}  (Ctrl-C closes the tunnel)")
        print("$ " + shlex.join(command), flush=True)
    print(token_hint(target, job["job_id"], url), file=sys.stderr, flush=True)
    try:
        return run(command)
    except KeyboardInterrupt:
        return exits.OK
