"""The reaper: the last line of "no orphaned cluster". Every node of a job's cluster carries
`raylauncher:expires-at` (provisioning deadline + run deadline + a margin: by then its driver
has torn it down, or failed to). Clusters of ours still alive past that time are orphans — a
teardown that failed, a driver that died with the bastion — and all their instances are
terminated.

Decided per cluster (tag `ray-cluster-name`), never per instance: a cluster's expiry is the
latest readable expires-at over its alive instances, and only once that has passed are its
instances terminated. Tags differ within a live cluster: a warm cluster's holder moves the tag
of the instances it sees forward (CreateTags at keep and at reuse), while the workers Ray's
autoscaler starts later carry the first `ray up`'s expires-at, baked into the node config; one
in-time instance therefore keeps its whole cluster. An instance without a readable expires-at is
left alone (and logged: never guess), and it does not count towards its cluster's expiry: the
cluster's other instances are reaped once the latest of their readable tags has passed (a
cluster with no readable tag at all is left alone entirely).

A port with an EC2 adapter; local mode has no EC2 (its clusters are processes, stopped by the
local backend and checked by `raylauncher.local.leftovers`), so it runs without a reaper.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from raylauncher.aws import error_code
from raylauncher.errors import RayLauncherError
from raylauncher.model import parse_iso
from raylauncher.tags import CLUSTER_NAME_PREFIX, EXPIRES_AT_TAG, RAY_CLUSTER_TAG
from raylauncher.teardown import ALIVE_STATES, TERMINATE_BATCH

log = logging.getLogger(__name__)



class ReaperError(RayLauncherError):
    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Reaped:
    cluster: str
    instance_id: str
    expired_at: str


class ClusterReaper(ABC):
    @abstractmethod
    def reap(self, now: datetime) -> list[Reaped]:
        """Terminate every node of our clusters whose cluster expiry (the latest expires-at tag
        of its nodes) is before `now`."""


def _parse(value: str) -> datetime | None:
    try:
        parsed = parse_iso(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


def expired(instances: Iterable[dict[str, Any]], now: datetime) -> list[Reaped]:
    """The instances of our clusters (ray-cluster-name rl-*) whose cluster has expired: the
    latest readable expires-at over the cluster's instances is before `now`. Each `Reaped`
    carries that cluster expiry. An instance without a readable expires-at is left alone (and
    logged): never guess; it neither extends nor shortens its cluster's expiry."""
    readable: dict[str, list[tuple[str, datetime, str]]] = {}
    for instance in instances:
        tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
        cluster = tags.get(RAY_CLUSTER_TAG, "")
        if not cluster.startswith(CLUSTER_NAME_PREFIX):
            continue
        expires = _parse(tags.get(EXPIRES_AT_TAG, ""))
        if expires is None:
            log.warning("instance %s of %s has no readable %s tag: left alone", instance["InstanceId"], cluster,
                        EXPIRES_AT_TAG)  # fmt: skip
            continue
        readable.setdefault(cluster, []).append((instance["InstanceId"], expires, tags[EXPIRES_AT_TAG]))
    found = []
    for cluster, nodes in readable.items():
        _, latest, latest_text = max(nodes, key=lambda node: node[1])
        if latest < now:
            found.extend(Reaped(cluster, instance_id, latest_text) for instance_id, _, _ in nodes)
    return found


class Ec2Reaper(ClusterReaper):
    def __init__(self, ec2_client: Any) -> None:
        self._ec2 = ec2_client

    def reap(self, now: datetime) -> list[Reaped]:
        try:
            pages = self._ec2.get_paginator("describe_instances").paginate(Filters=[
                {"Name": f"tag:{RAY_CLUSTER_TAG}", "Values": [f"{CLUSTER_NAME_PREFIX}*"]},
                {"Name": "tag-key", "Values": [EXPIRES_AT_TAG]},
                {"Name": "instance-state-name", "Values": ALIVE_STATES},
            ])  # fmt: skip
            instances = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
            doomed = expired(instances, now)
            ids = [r.instance_id for r in doomed]
            for start in range(0, len(ids), TERMINATE_BATCH):
                self._ec2.terminate_instances(InstanceIds=ids[start : start + TERMINATE_BATCH])
        except (ClientError, BotoCoreError) as err:
            raise ReaperError(f"reaping expired clusters failed ({error_code(err)})", error_code(err)) from err
        for r in doomed:
            log.warning("terminated %s of cluster %s: expired at %s", r.instance_id, r.cluster, r.expired_at)
        return doomed
