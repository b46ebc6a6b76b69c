"""`raylauncher cluster-token JOB`: print a running cluster's Ray token, and what `dashboard`
says about it. Every cluster runs with Ray token authentication (raylauncher/cluster_tokens.py):
its dashboard asks for the token once (the browser keeps a cookie), HTTP clients send
`Authorization: Bearer <token>`.

The token is an SSM SecureString only the bastion's and the nodes' roles may read (not the
operator role): against a stack this command works where such a role is at hand, i.e. on the
bastion, where it runs with no target (the environment's credentials and region). No terminal UI
here: the bastion does not install rich. The token goes to stdout alone and nowhere else (no log).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from raylauncher.cli import exits
from raylauncher.cli.http import ApiClient
from raylauncher.cli.targets import Target, TargetError, aws_session, resolve_target, session_region
from raylauncher.config import BASTION_LAUNCHER
from raylauncher.model import JobStatus

#: Statuses in which the current attempt has a token: it is issued right before its cluster
#: starts (PROVISIONING) and deleted once the cluster is verified gone — kept after a failed
#: teardown (TEARDOWN_FAILED: the cluster may still be up, and whoever looks into it needs it).
TOKEN_STATUSES = tuple(s.value for s in (JobStatus.PROVISIONING, JobStatus.SUBMITTED, JobStatus.RUNNING,
                                         JobStatus.TEARING_DOWN, JobStatus.TEARDOWN_FAILED))  # fmt: skip
NOT_STARTED = (JobStatus.QUEUED.value, JobStatus.LAUNCHING.value)
DENIED_CODES = {"AccessDeniedException", "AccessDenied"}
#: botocore's exceptions when SSM did not answer (TokenUnavailable.code is their class name).
UNREACHABLE_CODES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"}
#: On the bastion: the launcher reads the deployment's environment (root-only), hence sudo.
BASTION_TOKEN_COMMAND = f"sudo {BASTION_LAUNCHER} cluster-token"
RAY_CLI_HINT = "RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<token> ray job list --address {url}"


# ---------------------------------------------------------------- what `dashboard` says


def local_token_command(job_id: str) -> str:
    return f"raylauncher cluster-token {job_id} --target local"


def bastion_token_command(job_id: str) -> str:
    """What prints the token on the bastion (in a shell opened with `bastion_shell_command`)."""
    return f"{BASTION_TOKEN_COMMAND} {job_id}"


def bastion_shell_command(target: Target) -> list[str]:
    return ["aws", "ssm", "start-session", "--region", target.region, "--target", str(target.bastion_id)]


def token_command(target: Target, job_id: str) -> str:
    return local_token_command(job_id) if target.kind == "local" else bastion_token_command(job_id)


def token_hint(target: Target, job_id: str, url: str) -> str:
    """The lines `dashboard` prints on stderr: the cluster wants its token, and how to get it."""
    lines = ["This cluster requires its Ray token: the dashboard's page asks for it (paste it once; the browser "
             "keeps a cookie)."]  # fmt: skip
    if target.kind == "local":
        lines.append(f"Get it with:  {local_token_command(job_id)}")
    else:
        lines += [
            "Only the bastion and the cluster's nodes may read it (not the operator role, by design). With a role",
            "allowed a shell on the bastion, open one and run the second command there:",
            f"  $ {shlex.join(bastion_shell_command(target))}",
            f"  $ {bastion_token_command(job_id)}",
        ]  # fmt: skip
    lines.append(f"From scripts: send `Authorization: Bearer <token>`, or {RAY_CLI_HINT.format(url=url)}")
    return "\n".join(lines)


# ---------------------------------------------------------------- cluster-token


#: Kept cluster records (raylauncher/warm.py) whose cluster is up.
KEPT_LIVE = frozenset({"ACTIVE", "WARM", "ASSIGNED", "HELD"})


def cmd_cluster_token(args: argparse.Namespace, ssm_client: Any = None) -> int:
    """Through the target's API when there is one (the job's current attempt, and whether its
    cluster is up), else straight from SSM with the environment's credentials (the bastion)."""
    from raylauncher.cluster_tokens import SsmClusterTokens, TokenNotFound, TokenUnavailable
    from raylauncher.model import Job, run_id

    job_id = args.job_id
    try:
        target: Target | None = resolve_target(args.target, args.stack, args.region)
    except TargetError:
        if args.stack or args.target:
            raise
        target = None
    attempt = args.attempt
    if target is not None:
        job = ApiClient(target).job(job_id)
        kept = job.get("kept_cluster") or {}
        if attempt is None and kept.get("status") in KEPT_LIVE:  # a warm/held cluster: its first run's token
            job_id, attempt = kept["origin_job_id"], int(kept.get("origin_attempt") or 1)
        elif attempt is None:
            attempt = int(job.get("attempt") or 1)
            if job["status"] not in TOKEN_STATUSES:
                return _no_token(f"{job_id} is {job['status']}: " + (
                    "its cluster is not started yet (a token exists from PROVISIONING until the cluster is torn "
                    "down); try again in a moment" if job["status"] in NOT_STARTED else
                    "it has no cluster up, so no Ray token (tokens are deleted when their cluster is torn down)"))  # fmt: skip
    tokens = SsmClusterTokens(ssm_client if ssm_client is not None else _ssm_client(target, args.region))
    try:
        if attempt is None:
            run, token = tokens.read_latest(job_id)
        else:
            run = run_id(job_id, attempt)
            token = tokens.read(Job.model_construct(job_id=job_id, attempt=attempt))
    except TokenNotFound:
        which = f"attempt {attempt} ({run_id(job_id, attempt)})" if attempt is not None else "any attempt"
        return _no_token(f"no Ray token for {which} of {job_id}: no cluster of it is up (a token exists only while "
                         "its cluster is up; it is deleted at teardown)"
                         + ("" if target is not None else ", or the job is not of this account and region"))  # fmt: skip
    except TokenUnavailable as err:
        return _unavailable(err.code, job_id, target)
    if args.output == "json":
        sys.stdout.write(json.dumps({"job_id": job_id, "run_id": run, "token": token}) + "\n")
    else:
        sys.stdout.write(token + "\n")
    sys.stdout.flush()
    return exits.OK


def _ssm_client(target: Target | None, region: str | None) -> Any:
    """SSM where the target's tokens are: the local system's moto (signing as the local bastion
    role, as serve.env does), the stack's region with your credentials, or (no target) the
    environment's credentials and region."""
    if target is None:
        session = aws_session(region)
        return session.create_client("ssm", region_name=session_region(session))
    if target.kind == "stack":
        return aws_session(target.region).create_client("ssm", region_name=target.region)
    if not target.endpoint_url:
        raise TargetError("the running `raylauncher serve` did not record its AWS endpoint (it was started by an "
                          "older version): restart it")  # fmt: skip
    from raylauncher.aws import local_credentials

    keys = local_credentials("bastion")  # = raylauncher.local.stack.FAKE_CREDENTIALS (without importing moto)
    return aws_session(target.region).create_client(
        "ssm", region_name=target.region, endpoint_url=target.endpoint_url,
        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"], aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
    )  # fmt: skip


def _no_token(message: str) -> int:
    print(f"raylauncher: {message}", file=sys.stderr)
    return exits.NOT_FOUND


def _unavailable(code: str, job_id: str, target: Target | None) -> int:
    if code in DENIED_CODES:
        shell = (shlex.join(bastion_shell_command(target)) if target is not None and target.bastion_id
                 else "aws ssm start-session --target <the stack's BastionInstanceId>")  # fmt: skip
        print(f"raylauncher: not allowed to read the Ray token of {job_id} ({code}): only the bastion and the "
              "cluster's nodes may read Ray tokens (the operator role may not, by design). Run it on the bastion: "
              f"open a shell there (`{shell}`, with a role allowed one) and run `{bastion_token_command(job_id)}`",
              file=sys.stderr)  # fmt: skip
        return exits.ERROR
    if code in UNREACHABLE_CODES:
        print(f"raylauncher: SSM did not answer ({code}): cannot read the Ray token of {job_id}", file=sys.stderr)
        return exits.UNREACHABLE
    if code in ("NoCredentialsError", "PartialCredentialsError"):
        print("raylauncher: no AWS credentials found to read the Ray token (environment, profile, SSO or instance "
              "role)", file=sys.stderr)  # fmt: skip
        return exits.USAGE
    print(f"raylauncher: cannot read the Ray token of {job_id}: {code}", file=sys.stderr)
    return exits.ERROR
