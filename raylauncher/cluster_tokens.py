"""Ray token authentication: one fresh random token per cluster, kept only where it must be.

Every cluster the product launches runs with `RAY_AUTH_MODE=token` (Ray 2.60): its Jobs API,
dashboard, GCS and agents refuse a caller without the token (401) or with another (403), and a
node without it cannot join. The token is made by the driver right before the cluster starts
and lives in an SSM SecureString parameter named after the job attempt:

    /raylauncher/ray-auth/<job id>/<run id>

readable only by the bastion's role (the driver) and the nodes' role (each node reads it when
it starts Ray); deleted when the cluster is torn down, by the driver or by the watchdog that
took a lost driver's cluster over. It never appears in the rendered cluster.yaml, the SSM
command, a job record, an event or a log: nodes fetch it inside their start command
(`fetch_token_shell`), and the driver hands it to Ray's Jobs SDK as an HTTP header.

One port, one adapter: SSM (locally: moto's SSM, the same code).
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from raylauncher.aws import error_code
from raylauncher.errors import ProvisioningFailed, RayLauncherError
from raylauncher.model import JOB_ID_PATTERN, Job, attempt_of

log = logging.getLogger(__name__)

#: Every token parameter lives under this path (the IAM policies name it).
TOKEN_PATH = "/raylauncher/ray-auth/"
#: 256 random bits, hex: no character a shell, a URL or a YAML file would treat specially.
TOKEN_BYTES = 32
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")


class TokenUnavailable(RayLauncherError):
    """The cluster's token could not be stored, read or deleted (`code`: the AWS error code)."""

    def __init__(self, run_id: str, action: str, code: str) -> None:
        super().__init__(f"the Ray token of {run_id} could not be {action}: {code}")
        self.run_id = run_id
        self.code = code


class TokenNotFound(TokenUnavailable):
    """No token exists for this attempt (never made, or already deleted at teardown)."""


def token_parameter(job_id: str, run_id: str) -> str:
    """The parameter of one attempt's token (both ids checked: they become a path)."""
    if not (JOB_ID_PATTERN.fullmatch(job_id) and attempt_of(job_id, run_id) is not None):
        raise ValueError(f"not a job id and one of its run ids: {job_id!r}, {run_id!r}")
    return f"{TOKEN_PATH}{job_id}/{run_id}"


def new_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


def token_env(token: str) -> dict[str, str]:
    """What every Ray process of a cluster starts with: token mode set explicitly (never left to
    a token file in a home directory) and the cluster's token."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}


def auth_headers(token: str) -> dict[str, str]:
    """What every HTTP call to the cluster's dashboard / Jobs API carries."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def fetch_token_shell(job: Job, region: str) -> str:
    """A shell expression that prints the attempt's token on a node: boto3 (installed on every
    node) with the node's instance-profile credentials. Only the parameter's name and the
    region are in it, both checked, and quoted anyway."""
    if not _REGION.fullmatch(region):
        raise ValueError(f"region {region!r} is not an AWS region name")
    script = (
        "import sys, boto3; print(boto3.client('ssm', region_name=sys.argv[2]).get_parameter("
        "Name=sys.argv[1], WithDecryption=True)['Parameter']['Value'])"
    )
    return f"python -c {shlex.quote(script)} {shlex.quote(token_parameter(job.job_id, job.run_id))} {shlex.quote(region)}"


@dataclass(frozen=True)
class StoredToken:
    """A token parameter as listed (its name and age only, never its value)."""

    job_id: str
    run_id: str
    stored_at: datetime


class ClusterTokens(ABC):
    @abstractmethod
    def issue(self, job: Job) -> str:
        """A fresh token for the attempt's cluster, stored (replacing any older one); returns it."""

    @abstractmethod
    def read(self, job: Job) -> str:
        """The attempt's token; TokenNotFound if there is none."""

    @abstractmethod
    def revoke(self, job: Job) -> None:
        """Delete the attempt's token (nothing to do if there is none)."""

    @abstractmethod
    def stored(self) -> list[StoredToken]:
        """Every token parameter that exists (metadata only), for the watchdog's sweep."""

    @abstractmethod
    def delete(self, token: StoredToken) -> None:
        """Delete a listed token parameter (nothing to do if it is gone)."""


class SsmClusterTokens(ClusterTokens):
    """SecureString parameters (the account's `aws/ssm` KMS key)."""

    def __init__(self, ssm_client: Any) -> None:
        self._ssm = ssm_client

    def issue(self, job: Job) -> str:
        token = new_token()
        try:
            self._ssm.put_parameter(
                Name=token_parameter(job.job_id, job.run_id), Value=token, Type="SecureString", Overwrite=True, Tier="Standard",
                Description="Ray auth token of one raylauncher cluster; deleted at its teardown",
            )  # fmt: skip
        except (ClientError, BotoCoreError) as err:
            raise TokenUnavailable(job.run_id, "stored", error_code(err)) from None
        return token

    def read(self, job: Job) -> str:
        try:
            answer = self._ssm.get_parameter(Name=token_parameter(job.job_id, job.run_id), WithDecryption=True)
        except (ClientError, BotoCoreError) as err:
            code = error_code(err)
            if code == "ParameterNotFound":
                raise TokenNotFound(job.run_id, "read", code) from None
            raise TokenUnavailable(job.run_id, "read", code) from None
        return str(answer["Parameter"]["Value"])

    def read_latest(self, job_id: str) -> tuple[str, str]:
        """(run id, token) of the job's highest attempt that has a token, found by listing the
        job's path (GetParametersByPath): for a reader that does not know the current attempt
        (`raylauncher cluster-token` on the bastion). TokenNotFound if the job has none."""
        token_parameter(job_id, job_id)  # the job id becomes a path: checked
        prefix = f"{TOKEN_PATH}{job_id}/"
        found: dict[int, tuple[str, str]] = {}
        kwargs: dict[str, Any] = {"Path": prefix.rstrip("/"), "Recursive": False, "WithDecryption": True}
        try:
            while True:
                answer = self._ssm.get_parameters_by_path(**kwargs)
                for parameter in answer.get("Parameters", []):
                    run = str(parameter["Name"]).removeprefix(prefix)
                    attempt = attempt_of(job_id, run) if str(parameter["Name"]).startswith(prefix) else None
                    if attempt is not None:
                        found[attempt] = (run, str(parameter["Value"]))
                if not answer.get("NextToken"):
                    break
                kwargs["NextToken"] = answer["NextToken"]
        except (ClientError, BotoCoreError) as err:
            raise TokenUnavailable(job_id, "read", error_code(err)) from None
        if not found:
            raise TokenNotFound(job_id, "read", "ParameterNotFound")
        return found[max(found)]

    def revoke(self, job: Job) -> None:
        self._delete(job.job_id, job.run_id)

    def delete(self, token: StoredToken) -> None:
        self._delete(token.job_id, token.run_id)

    def _delete(self, job_id: str, run_id: str) -> None:
        try:
            self._ssm.delete_parameter(Name=token_parameter(job_id, run_id))
        except (ClientError, BotoCoreError) as err:
            code = error_code(err)
            if code == "ParameterNotFound":
                return
            raise TokenUnavailable(run_id, "deleted", code) from None
        log.info("%s: Ray token deleted", run_id)

    def stored(self) -> list[StoredToken]:
        """DescribeParameters under TOKEN_PATH: names and dates, no values (no decryption)."""
        listed: list[StoredToken] = []
        filters = [{"Key": "Path", "Option": "Recursive", "Values": [TOKEN_PATH.rstrip("/")]}]
        try:
            for page in self._ssm.get_paginator("describe_parameters").paginate(ParameterFilters=filters):
                for meta in page.get("Parameters", []):
                    job_id, _, run_id = str(meta["Name"]).removeprefix(TOKEN_PATH).partition("/")
                    try:
                        token_parameter(job_id, run_id)
                    except ValueError:
                        continue  # not one of ours
                    listed.append(StoredToken(job_id, run_id, meta["LastModifiedDate"]))
        except (ClientError, BotoCoreError) as err:
            raise TokenUnavailable("(all)", "listed", error_code(err)) from None
        return listed


def issue_token(tokens: ClusterTokens, job: Job) -> str:
    """The cluster's fresh token; ProvisioningFailed (with the AWS error code) if it cannot be stored."""
    try:
        return tokens.issue(job)
    except TokenUnavailable as err:
        raise ProvisioningFailed(str(err)) from None


def revoke_token(tokens: ClusterTokens, job: Job) -> None:
    """Delete the cluster's token. A failure is logged, never raised: the token is worthless
    once its cluster is gone (the watchdog deletes it later), and the teardown's own outcome
    must stand."""
    try:
        tokens.revoke(job)
    except TokenUnavailable as err:
        log.warning("job %s: %s", job.job_id, err)


T = TypeVar("T")


def down_then_revoke(tokens: ClusterTokens, job: Job, teardown: Callable[[], T]) -> T:
    """Run `teardown`; only when it returns (the cluster verified gone) delete the token. A
    teardown that raised (TeardownFailed: the cluster may still be up) keeps it: whoever looks
    into the cluster, and a worker its autoscaler still starts, need it."""
    result = teardown()
    revoke_token(tokens, job)
    return result
