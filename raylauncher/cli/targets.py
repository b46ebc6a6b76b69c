"""Which system the operator commands talk to: the local one `raylauncher serve` runs, or a
deployed stack found by its CloudFormation outputs. Either way the answer is an API base URL
(plus, for a stack, how to sign requests and where the bastion is)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from raylauncher.local.serve_state import read_state, state_file

#: The CloudFormation outputs the CLI reads (cdk/stack.py writes them).
STACK_OUTPUTS = ("ApiUrl", "DataBucket", "JobTable", "BastionInstanceId", "OperatorRoleArn")
REQUIRED_OUTPUTS = ("ApiUrl", "DataBucket", "JobTable", "BastionInstanceId")
#: A default stack for every command (instead of --stack on each).
STACK_ENV = "RAYLAUNCHER_STACK"


class TargetError(Exception):
    """No system to talk to, or the stack lacks what the CLI needs. The message says what to do."""


@dataclass(frozen=True)
class Target:
    kind: Literal["local", "stack"]
    api_url: str
    region: str
    bucket: str | None = None
    table: str | None = None
    bastion_id: str | None = None
    stack_name: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    #: botocore credentials that sign requests (SigV4, service execute-api). A stack needs them;
    #: the local API resolves them to the caller (allowed_principals) and accepts none too.
    credentials: Any = None
    #: The local system's AWS endpoint (moto server); None for a stack (AWS itself).
    endpoint_url: str | None = None

    @property
    def describe(self) -> str:
        return f"stack {self.stack_name} ({self.region})" if self.kind == "stack" else f"local system at {self.api_url}"


def aws_session(region: str | None = None) -> Any:
    """A botocore session: credentials from the standard chain, region from the usual places
    (--region, AWS_REGION/AWS_DEFAULT_REGION, the profile's config)."""
    import botocore.session

    session = botocore.session.get_session()
    if region:
        session.set_config_variable("region", region)
    return session


def session_region(session: Any) -> str:
    region = session.get_config_variable("region") or os.environ.get("AWS_REGION")
    if not region:
        raise TargetError("no AWS region: pass --region, set AWS_REGION, or set a region in your AWS profile")
    return str(region)


def stack_outputs(session: Any, region: str, stack_name: str) -> dict[str, str]:
    """The stack's outputs by key. Raises TargetError naming what is wrong."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    client = session.create_client("cloudformation", region_name=region)
    try:
        stacks = client.describe_stacks(StackName=stack_name)["Stacks"]
    except NoCredentialsError:
        raise TargetError("no AWS credentials found (environment, profile, SSO or instance role): "
                          "run `aws configure` or `aws sso login`") from None  # fmt: skip
    except ClientError as err:
        raise TargetError(f"cannot read stack {stack_name!r} in {region}: {err.response['Error'].get('Message', err)}") from None
    except BotoCoreError as err:
        raise TargetError(f"cannot reach CloudFormation in {region}: {err}") from None
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def stack_target(stack_name: str, region: str | None = None, session: Any = None) -> Target:
    session = session or aws_session(region)
    region = session_region(session)
    outputs = stack_outputs(session, region, stack_name)
    missing = [k for k in REQUIRED_OUTPUTS if k not in outputs]
    if missing:
        raise TargetError(f"stack {stack_name!r} has no output(s) {', '.join(missing)}: is it a raylauncher stack? "
                          "(redeploy it with this version: `cdk deploy`)")  # fmt: skip
    credentials = session.get_credentials()
    if credentials is None:
        raise TargetError("no AWS credentials found to sign API requests: run `aws configure` or `aws sso login`")
    return Target(
        kind="stack", api_url=outputs["ApiUrl"].rstrip("/"), region=region, bucket=outputs["DataBucket"],
        table=outputs["JobTable"], bastion_id=outputs["BastionInstanceId"], stack_name=stack_name,
        outputs=outputs, credentials=credentials,
    )  # fmt: skip


def local_target(env: Mapping[str, str] = os.environ) -> Target:
    path = state_file(dict(env))
    state = read_state(path)
    if state is None:
        raise TargetError(f"no local system is running ({path} missing or stale): start one with `raylauncher serve` "
                          "in another shell, or pass --stack NAME for a deployed stack")  # fmt: skip
    return Target(kind="local", api_url=state.api_url.rstrip("/"), region=state.region, bucket=state.bucket,
                  table=state.table, credentials=local_credentials(aws_session(state.region)),
                  endpoint_url=state.endpoint_url)  # fmt: skip


def local_credentials(session: Any) -> Any:
    """The process's own AWS credentials (environment, profile), frozen, to sign requests to the
    local API the way they would be signed for a stack: the local API names the caller by them
    (a pipeline's allowed_principals). None when there are none (or they cannot be loaded, e.g.
    an expired SSO session): the requests go unsigned, as a caller without an identity. Instance
    and container roles are not asked (nothing to wait for on a laptop)."""
    from botocore.exceptions import BotoCoreError

    resolver = session.get_component("credential_provider")
    for provider in ("container-role", "iam-role"):
        resolver.remove(provider)
    try:
        credentials = session.get_credentials()
        return credentials.get_frozen_credentials() if credentials is not None else None
    except BotoCoreError:
        return None


def chosen_stack(target: str | None, stack: str | None, env: Mapping[str, str] = os.environ) -> str | None:
    """The stack to talk to, or None for the local system: --stack wins; then --target local;
    then a running `raylauncher serve`; then $RAYLAUNCHER_STACK."""
    if stack:
        return stack
    if target == "local" or read_state(state_file(dict(env))) is not None:
        return None
    return env.get(STACK_ENV) or None


def resolve_target(target: str | None, stack: str | None, region: str | None,
                   env: Mapping[str, str] = os.environ) -> Target:  # fmt: skip
    """The target the options and the environment name (see `chosen_stack`)."""
    name = chosen_stack(target, stack, env)
    if name:
        return stack_target(name, region)
    if target == "local" or read_state(state_file(dict(env))) is not None:
        return local_target(env)
    raise TargetError("no target: run `raylauncher serve` for the local system, or pass --stack NAME "
                      f"(or set {STACK_ENV}) for a deployed stack")  # fmt: skip
