"""Tearing a job's cluster down from what its record holds, without its driver: what the
watchdog does for a job whose driver was lost (DRIVER_LOST).

A port with two adapters: on EC2, the EC2 API by the cluster's tag (`ray-cluster-name`), then
verified by the same tag — no Ray and no SSH needed, so the watchdog Lambda can do it; locally,
the processes of the job attempt's cluster, by the marker every one of them carries and by
their sessions (never `ray stop`).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime
from abc import ABC, abstractmethod
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from raylauncher.aws import error_code
from raylauncher.cluster_tokens import ClusterTokens, down_then_revoke
from raylauncher.errors import TeardownFailed
from raylauncher.model import Job, iso
from raylauncher.tags import CLUSTER_NAME_PREFIX, EXPIRES_AT_TAG, RAY_CLUSTER_TAG

log = logging.getLogger(__name__)

#: Instance states that still cost (or may again): everything but shutting-down/terminated.
ALIVE_STATES = ["pending", "running", "stopping", "stopped"]
TERMINATE_BATCH = 500
#: StateReason codes of an instance EC2 reclaimed (AWS docs: "Server.SpotInstanceTermination",
#: and for a spot instance stopped or hibernated on interruption "Server.SpotInstanceShutdown").
SPOT_INTERRUPTION_CODES = frozenset({"Server.SpotInstanceTermination", "Server.SpotInstanceShutdown"})


class ClusterTeardown(ABC):
    def __init__(self, tokens: ClusterTokens) -> None:
        self._tokens = tokens

    def teardown(self, job: Job) -> None:
        """Remove the cluster of the job's current attempt, then delete its Ray token;
        TeardownFailed (token kept) if the cluster cannot be verified gone. Safe when nothing
        was ever started."""
        down_then_revoke(self._tokens, job, lambda: self._teardown(job))

    @abstractmethod
    def _teardown(self, job: Job) -> None: ...


class Ec2ClusterInstances:
    """The EC2 API by the launcher's tag: find, terminate, verify a cluster's instances."""

    def __init__(self, ec2_client: Any) -> None:
        self._ec2 = ec2_client

    def __call__(self, name: str) -> list[str]:
        """Ids of the cluster's instances that are not (being) terminated."""
        pages = self._ec2.get_paginator("describe_instances").paginate(
            Filters=[
                {"Name": f"tag:{RAY_CLUSTER_TAG}", "Values": [name]},
                {"Name": "instance-state-name", "Values": ALIVE_STATES},
            ]
        )
        return [i["InstanceId"] for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def interrupted(self, name: str) -> list[str]:
        """Ids of the cluster's instances that EC2 took away (spot interruption), not we."""
        pages = self._ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": f"tag:{RAY_CLUSTER_TAG}", "Values": [name]}]
        )
        return [
            i["InstanceId"] for page in pages for r in page["Reservations"] for i in r["Instances"]
            if (i.get("StateReason") or {}).get("Code") in SPOT_INTERRUPTION_CODES
        ]  # fmt: skip

    def set_expiry(self, name: str, until: datetime) -> list[str]:
        """Move the reaper's `raylauncher:expires-at` of the cluster's live instances to `until`
        (a warm cluster reused, or a cluster held): one CreateTags."""
        ids = self(name)
        if ids:
            self._ec2.create_tags(Resources=ids, Tags=[{"Key": EXPIRES_AT_TAG, "Value": iso(until)}])
        return ids

    def terminate(self, name: str) -> list[str]:
        """Terminate every instance of the cluster that is not terminated; returns their ids."""
        ids = self(name)
        for start in range(0, len(ids), TERMINATE_BATCH):
            self._ec2.terminate_instances(InstanceIds=ids[start : start + TERMINATE_BATCH])
        return ids


def cluster_name_of(job: Job) -> str:
    recorded = (job.cluster or {}).get("cluster_name")
    return str(recorded) if recorded else CLUSTER_NAME_PREFIX + job.run_id


class Ec2TagTeardown(ClusterTeardown):
    def __init__(self, ec2_client: Any, tokens: ClusterTokens, attempts: int = 3, retry_delay_s: float = 2.0) -> None:
        super().__init__(tokens)
        self._instances = Ec2ClusterInstances(ec2_client)
        self._attempts = attempts
        self._retry_delay_s = retry_delay_s

    def _teardown(self, job: Job) -> None:
        name = cluster_name_of(job)
        problem = ""
        for attempt in range(1, self._attempts + 1):
            try:
                ended = self._instances.terminate(name)
                left = self._instances(name)
            except (ClientError, BotoCoreError) as err:
                problem = f"EC2 API error {error_code(err)}"
            else:
                if not left:
                    log.info("job %s: cluster %s terminated by tag (%d instance(s))", job.job_id, name, len(ended))
                    return
                problem = f"still alive: {', '.join(left)}"
            log.warning("job %s: teardown of %s by tag, attempt %d: %s", job.job_id, name, attempt, problem)
            time.sleep(self._retry_delay_s)
        raise TeardownFailed(f"cluster {name} not verified down by tag: {problem}", self._attempts)


class LocalProcessTeardown(ClusterTeardown):
    """Local clusters: every process carrying the attempt's marker, and their sessions."""

    def __init__(self, tokens: ClusterTokens, grace_s: float = 5.0) -> None:
        super().__init__(tokens)
        self._grace_s = grace_s

    def _teardown(self, job: Job) -> None:
        from raylauncher.clusters.processes import stop_marked  # psutil: local mode only
        from raylauncher.clusters.temp_dirs import remove_temp_dirs

        session = (job.cluster or {}).get("session_id")
        survivors = stop_marked(job.run_id, self._grace_s, int(session) if session else None)
        if survivors:
            raise TeardownFailed(f"{len(survivors)} process(es) of {job.run_id} survived SIGKILL", 1)
        remove_temp_dirs(job.run_id)  # the driver that would have removed it is gone
