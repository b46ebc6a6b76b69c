"""The cluster-backend port. Local: `ray start --head --block`; EC2: `ray up` / `ray down`."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from raylauncher.cluster_tokens import auth_headers
from raylauncher.config import Pipeline
from raylauncher.errors import ProvisioningCancelled, ProvisioningFailed, ProvisioningTimedOut
from raylauncher.model import Job

Cancelled = Callable[[], bool]


@dataclass(frozen=True)
class ClusterHandle:
    """A cluster that is up: where its Jobs API is and how entrypoints must be run on it."""

    name: str
    dashboard_url: str  # the Ray Jobs API / dashboard, e.g. http://10.0.1.23:8265
    python: str  # the interpreter an entrypoint runs with on the head node
    job_env: dict[str, str] = field(default_factory=dict)  # env vars for the Ray job
    details: dict[str, Any] = field(default_factory=dict)  # stored on the job record, to find it again
    #: The cluster's Ray auth token (raylauncher.cluster_tokens): kept in memory only, never
    #: printed (repr) and never part of `details`.
    auth_token: str = field(default="", repr=False, compare=False)
    #: Why the cluster is gone (its head process exited), or None while it runs or when the
    #: backend cannot tell from here (EC2: the head is another machine).
    gone: Callable[[], str | None] = field(default=lambda: None, repr=False, compare=False)

    @property
    def auth_headers(self) -> dict[str, str]:
        return auth_headers(self.auth_token)


class ClusterBackend(ABC):
    @abstractmethod
    def up(self, job: Job, pipeline: Pipeline, timeout_s: float, cancelled: Cancelled) -> ClusterHandle:
        """Bring the job's cluster up and wait until its Jobs API answers.

        Raises ProvisioningFailed (with what the launcher said), ProvisioningTimedOut (not up
        within `timeout_s`) or ProvisioningCancelled (`cancelled()` turned true). Whatever
        happens, `down(job)` afterwards removes whatever was started.
        """

    def lost_nodes(self, job: Job) -> list[str]:
        """Nodes of the job's cluster taken away under it by the cloud (spot interruption),
        asked when the Ray job failed: then the failure is the infrastructure's. [] if none
        or the backend cannot tell (local clusters)."""
        return []

    @abstractmethod
    def down(self, job: Job) -> int:
        """Remove everything `up` started for this job and check it is gone; returns the number
        of teardown attempts (0 when nothing had been started).

        Safe to call when `up` failed half-way or never ran. Raises TeardownFailed if the
        cluster cannot be verified gone.
        """

    def extend_expiry(self, job: Job, until: datetime) -> None:
        """Move the reaper's expiry (`raylauncher:expires-at`) of the job's cluster to `until`:
        done when (and only when) a cluster is kept for another job or held. Nothing to do
        where there is no reaper (local clusters). May raise: then the cluster is not kept."""
        return None

    def collect_logs(self, job: Job, dest: Path, timeout_s: float) -> Path | None:
        """Copy the head's Ray session logs (`session_latest/logs`: raylet, GCS, dashboard,
        autoscaler monitor, worker output) into the directory `dest` (created here) before
        teardown; returns the directory, or None when there is no head to ask (nothing was
        started, or `up` failed before a head existed). Should return within `timeout_s`; the
        driver bounds it anyway. May raise: the driver logs it and tears down all the same."""
        return None


def _get(url: str, headers: dict[str, str]) -> Any:
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)  # noqa: S310


def jobs_api_answers(dashboard_url: str, headers: dict[str, str]) -> bool:
    """True once the Jobs API answers 200 to a caller with the cluster's token. A 401/403 is
    no "not up yet": the cluster runs with another token (or none), and waiting cannot help."""
    try:
        with _get(f"{dashboard_url}/api/jobs/", headers) as resp:
            return bool(resp.status == 200)
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise ProvisioningFailed(
                f"the cluster's Jobs API refused the driver's Ray token (HTTP {err.code}): it runs with another token"
            ) from None
        return False
    except (urllib.error.URLError, OSError):
        return False


def alive_nodes(dashboard_url: str, headers: dict[str, str]) -> int | None:
    """How many nodes the cluster's state API reports ALIVE (None: no answer)."""
    try:
        with _get(f"{dashboard_url}/api/v0/nodes?limit=1000", headers) as resp:
            nodes = json.load(resp)["data"]["result"]["result"]
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
        return None
    return sum(1 for node in nodes if isinstance(node, dict) and node.get("state") == "ALIVE")


def wait_for_nodes(dashboard_url: str, headers: dict[str, str], wanted: int, deadline: float, cancelled: Cancelled) -> int:
    """Wait until `wanted` nodes are ALIVE (the head plus the profile's min_workers, launched by
    the head's autoscaler). Raises ProvisioningTimedOut / ProvisioningCancelled."""
    while True:
        alive = alive_nodes(dashboard_url, headers) or 0
        if alive >= wanted:
            return alive
        if cancelled():
            raise ProvisioningCancelled("cancel requested while the workers were joining")
        if time.monotonic() > deadline:
            raise ProvisioningTimedOut(f"{alive} of {wanted} nodes (head + min_workers) had joined at the deadline")
        time.sleep(1)


def wait_for_jobs_api(
    dashboard_url: str, headers: dict[str, str], deadline: float, cancelled: Cancelled, gave_up: Callable[[], str | None]
) -> None:
    """Poll the Jobs API until it answers. `gave_up()` returns a reason when the launcher died.
    Raises ProvisioningTimedOut / ProvisioningCancelled, or ProvisioningFailed via `gave_up`."""
    while not jobs_api_answers(dashboard_url, headers):
        reason = gave_up()
        if reason:
            raise ProvisioningFailed(reason)
        if cancelled():
            raise ProvisioningCancelled("cancel requested while the cluster was coming up")
        if time.monotonic() > deadline:
            raise ProvisioningTimedOut(f"the Jobs API at {dashboard_url} did not answer before the provisioning deadline")
        time.sleep(0.5)
