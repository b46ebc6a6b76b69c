"""The bastion port: "run the driver for job J".

The command is the same script on AWS (sent through SSM Run Command) and locally (run as a
subprocess). It only *starts* the driver, detached, so a job can outlive SSM's execution
timeout. The validated job id is its only argument; nothing a user typed reaches the shell.
"""

from __future__ import annotations

import shlex
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from raylauncher.aws import error_code
from raylauncher.errors import BastionUnavailable
from raylauncher.model import job_prefix, require_job_id

SSM_DOCUMENT = "AWS-RunShellScript"
#: Starting the driver takes seconds; the driver itself runs detached, outside this limit.
COMMAND_EXECUTION_TIMEOUT_S = 300


def driver_command(launcher_bin: str, job_id: str) -> list[str]:
    """The shell lines the bastion runs. `launcher_bin` is deployment config, the job id is
    checked against a strict pattern; both are quoted anyway."""
    return [
        "set -eu",
        f"exec {shlex.quote(launcher_bin)} driver start {shlex.quote(require_job_id(job_id))}",
    ]


@dataclass(frozen=True)
class LaunchFailure:
    """The bastion's command for a launch ended without starting a driver."""

    status: str  # e.g. the SSM invocation's Failed / TimedOut / Cancelled
    output_tail: str


class Bastion(ABC):
    @abstractmethod
    def run_driver(self, job_id: str) -> str:
        """Start the driver for `job_id`; returns a handle (SSM command id, or a local marker).
        Raises BastionUnavailable when the bastion could not be asked."""

    def launch_failure(self, ref: str) -> LaunchFailure | None:
        """If the launch `ref` (from run_driver) has ended in failure, how; None while it runs,
        after it succeeded, or when it cannot be told (the launch grace then applies)."""
        return None


#: Final states of an SSM command invocation in which no driver was started.
SSM_FAILED_STATUSES = frozenset({"Failed", "Cancelled", "TimedOut", "Cancelling"})
OUTPUT_TAIL_CHARS = 1500


class SsmBastion(Bastion):
    """AWS adapter: SSM Run Command on the bastion instance, output kept under the job's prefix."""

    def __init__(
        self, ssm_client: Any, instance_id: str, launcher_bin: str, output_bucket: str, log_group: str | None = None
    ) -> None:
        self._ssm = ssm_client
        self._instance_id = instance_id
        self._launcher_bin = launcher_bin
        self._output_bucket = output_bucket
        self._log_group = log_group

    def run_driver(self, job_id: str) -> str:
        logs = {"CloudWatchOutputConfig": {"CloudWatchLogGroupName": self._log_group, "CloudWatchOutputEnabled": True}}
        try:
            resp = self._ssm.send_command(
                InstanceIds=[self._instance_id],
                DocumentName=SSM_DOCUMENT,
                Comment=f"raylauncher driver {job_id}"[:100],
                Parameters={
                    "commands": driver_command(self._launcher_bin, job_id),
                    "executionTimeout": [str(COMMAND_EXECUTION_TIMEOUT_S)],
                },
                OutputS3BucketName=self._output_bucket,
                OutputS3KeyPrefix=job_prefix(job_id) + "ssm",
                **(logs if self._log_group else {}),
            )
        except (ClientError, BotoCoreError) as err:
            code = error_code(err)
            raise BastionUnavailable(f"SSM SendCommand failed ({code})", code) from err
        return str(resp["Command"]["CommandId"])


    def launch_failure(self, ref: str) -> LaunchFailure | None:
        try:
            inv = self._ssm.get_command_invocation(CommandId=ref, InstanceId=self._instance_id)
        except (ClientError, BotoCoreError):  # InvocationDoesNotExist (not visible yet), throttling: not known
            return None
        status = str(inv.get("Status", ""))
        if status not in SSM_FAILED_STATUSES:
            return None
        tail = (inv.get("StandardErrorContent") or inv.get("StandardOutputContent") or "").strip()[-OUTPUT_TAIL_CHARS:]
        return LaunchFailure(f"{status}: {inv.get('StatusDetails', status)}", tail or "(no output)")


class LocalBastion(Bastion):
    """Local adapter: runs the very same command script as a subprocess of this machine."""

    def __init__(self, launcher_bin: str, env: Mapping[str, str], timeout_s: float = 60) -> None:
        self._launcher_bin = launcher_bin
        self._env = dict(env)
        self._timeout_s = timeout_s

    def run_driver(self, job_id: str) -> str:
        script = "\n".join(driver_command(self._launcher_bin, job_id))
        try:
            done = subprocess.run(
                ["bash", "-c", script],
                env=self._env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self._timeout_s,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise BastionUnavailable(f"local bastion could not run the command: {err}") from err
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip()[-2000:]
            raise BastionUnavailable(f"driver start exited {done.returncode}: {tail}")
        return f"local:{job_id}"
