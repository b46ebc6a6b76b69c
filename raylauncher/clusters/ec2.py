"""EC2 backend: the Ray cluster launcher, as the original walkthrough runs it from the bastion.

up:   render cluster.yaml for this job → validate it with Ray's schema → `ray up -y
      --no-config-cache` under the provisioning deadline → `ray get-head-ip` → wait for the
      Jobs API at http://<head>:8265.
down: (when the EC2 API is given) terminate every instance tagged with the cluster's name at
      once — `ray down` spends most of its time in the head's `ray stop` grace period while
      the instances keep billing —, then `ray down -y` retried under the teardown deadline,
      then verify by tag that no instance of the cluster is left: `ray down` can exit 0
      without having stopped everything. If `up` failed or timed out, `down` still runs.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from raylauncher.cluster_tokens import ClusterTokens, auth_headers, down_then_revoke, issue_token
from raylauncher.clusters.base import Cancelled, ClusterBackend, ClusterHandle, wait_for_jobs_api, wait_for_nodes
from raylauncher.clusters.ec2_config import (
    cluster_name,
    pinned_ray_version,
    render_cluster_config,
    validate_with_ray,
    write_cluster_config,
)
from raylauncher.clusters.processes import run_cli
from raylauncher.config import Ec2Deployment, Pipeline
from raylauncher.errors import (
    ConfigError,
    ProvisioningCancelled,
    ProvisioningFailed,
    ProvisioningTimedOut,
    TeardownFailed,
)
from raylauncher.model import Job, utc_now
from raylauncher.teardown import Ec2ClusterInstances  # noqa: F401 - re-exported (it lived here)

log = logging.getLogger(__name__)

#: The head's Ray session logs (the launcher's default temp dir).
HEAD_SESSION_LOGS = "/tmp/ray/session_latest/logs"  # noqa: S108 - a path on the head node


class ClusterInstances(Protocol):
    """The EC2 API, by the cluster's tag (Ec2ClusterInstances)."""

    def __call__(self, name: str) -> list[str]:
        """Ids of the cluster's instances that are not terminated."""

    def terminate(self, name: str) -> list[str]:
        """Terminate every instance of the cluster that is not terminated; returns their ids."""

    def interrupted(self, name: str) -> list[str]:
        """Ids of the cluster's instances EC2 took away (spot interruption)."""

    def set_expiry(self, name: str, until: datetime) -> list[str]:
        """Tag every live instance of the cluster with `raylauncher:expires-at` = `until`."""


class Ec2RayBackend(ClusterBackend):
    def __init__(
        self,
        deployment: Ec2Deployment,
        config_dir: Path,
        env: Mapping[str, str],
        tokens: ClusterTokens,
        *,
        ray_bin: str = "ray",
        dashboard_port: int = 8265,
        head_python: str = "python",
        run_timeout_margin_s: float = 3600,
        teardown_timeout_s: float = 900,
        down_attempts: int = 5,
        down_retry_delay_s: float = 15,
        instances: ClusterInstances | None = None,
    ) -> None:
        self._deployment = deployment
        self._config_dir = config_dir
        # The launcher itself needs no token; its own auth mode is explicit all the same.
        self._env = {**{k: v for k, v in env.items() if not k.startswith("RAY_AUTH_")}, "RAY_AUTH_MODE": "disabled"}
        self._tokens = tokens
        self._ray_bin = ray_bin
        self._dashboard_port = dashboard_port
        self._head_python = head_python
        self._margin_s = run_timeout_margin_s
        self._teardown_timeout_s = teardown_timeout_s
        self._down_attempts = down_attempts
        self._down_retry_delay_s = down_retry_delay_s
        self._instances = instances

    def config_path(self, run_id: str) -> Path:
        return self._config_dir / f"{run_id}.yaml"

    def up(self, job: Job, pipeline: Pipeline, timeout_s: float, cancelled: Cancelled) -> ClusterHandle:
        deadline = time.monotonic() + timeout_s
        # Nodes carry an expiry tag: the reaper terminates anything still up after it.
        expires_at = utc_now() + timedelta(seconds=timeout_s + pipeline.run_timeout_s + self._margin_s)
        config = render_cluster_config(
            job, pipeline, self._deployment, ray_version=pinned_ray_version(), expires_at=expires_at
        )
        try:
            validate_with_ray(config)
        except ConfigError as err:
            raise ProvisioningFailed(f"the rendered cluster config is invalid: {err}") from None
        self._config_dir.mkdir(parents=True, exist_ok=True)
        path = write_cluster_config(config, self.config_path(job.run_id))
        token = issue_token(self._tokens, job)  # after the config file: `down` runs from there

        up_started = time.monotonic()
        result = run_cli(
            [self._ray_bin, "up", "-y", "--no-config-cache", str(path)],
            deadline - time.monotonic(), self._env, job.run_id, should_stop=cancelled,
        )  # fmt: skip
        if result.interrupted:
            raise ProvisioningCancelled("cancel requested while `ray up` ran; it was stopped")
        if result.timed_out:
            raise ProvisioningTimedOut(f"`ray up` was still running at the deadline and was stopped: {result.stderr_tail}")
        if not result.ok:
            raise ProvisioningFailed(f"`ray up` {result.describe()}")

        ray_up_s = time.monotonic() - up_started
        ip = self._head_ip(path, deadline, job.run_id)
        dashboard_url = f"http://{ip}:{self._dashboard_port}"
        headers = auth_headers(token)
        wait_for_jobs_api(dashboard_url, headers, deadline, cancelled, lambda: None)
        nodes = wait_for_nodes(dashboard_url, headers, 1 + pipeline.cluster.min_workers, deadline, cancelled)
        log.info("job %s: cluster %s is up, head %s, %d node(s)", job.job_id, config["cluster_name"], ip, nodes)
        return ClusterHandle(
            name=str(config["cluster_name"]),
            dashboard_url=dashboard_url,
            python=self._head_python,
            details={"backend": "ec2", "cluster_name": config["cluster_name"], "config_path": str(path), "head_ip": ip,
                     "nodes": nodes, "ray_up_s": round(ray_up_s, 1),
                     "nodes_joined_s": round(time.monotonic() - up_started, 1)},
            auth_token=token,
            # A node started over SSH has no AWS_* variables (AWS sets none): without these the
            # job's boto3 and pyarrow would guess a region (us-east-1) and miss the bucket.
            job_env={"AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region},
        )

    @property
    def region(self) -> str:
        """The deployment's region: where the job's clients must go."""
        return self._deployment.region

    def _head_ip(self, path: Path, deadline: float, job_id: str) -> str:
        result = run_cli(
            [self._ray_bin, "get-head-ip", str(path)], min(120.0, deadline - time.monotonic()), self._env, job_id
        )
        if result.timed_out:
            raise ProvisioningTimedOut(f"`ray get-head-ip` {result.describe()}")
        lines = [line.strip() for line in result.stdout.splitlines() if line.strip()]
        try:
            if not result.ok or not lines:
                raise ValueError
            return str(ipaddress.ip_address(lines[-1]))
        except ValueError:
            raise ProvisioningFailed(f"`ray get-head-ip` gave no head address: {result.describe()}") from None

    def collect_logs(self, job: Job, dest: Path, timeout_s: float) -> Path | None:
        """`ray rsync-down` of the head's /tmp/ray/session_latest/logs under `timeout_s`. Also
        tried after a failed `ray up`: a head that came up half-way has the logs that say why.
        Worker nodes' own logs are not fetched (the head's monitor logs say what became of them)."""
        path = self.config_path(job.run_id)
        if not path.exists():
            return None  # `ray up` never ran: there is no head
        dest.mkdir(parents=True, exist_ok=True)
        result = run_cli([self._ray_bin, "rsync-down", str(path), f"{HEAD_SESSION_LOGS}/", f"{dest}/"],
                         timeout_s, self._env, job.run_id)  # fmt: skip
        if not result.ok:
            log.warning("job %s: `ray rsync-down` of the session logs %s", job.job_id, result.describe())
        return dest if any(p.is_file() for p in dest.rglob("*")) else None  # a partial copy is kept too

    def extend_expiry(self, job: Job, until: datetime) -> None:
        """CreateTags on the cluster's live instances (the bastion's role may tag rl-* instances)."""
        if self._instances is None:
            raise TeardownFailed("no EC2 client to move the cluster's expiry with", 0)
        ids = self._instances.set_expiry(cluster_name(job.run_id), until)
        log.info("job %s: expiry of %s moved to %s (%d instance(s))", job.job_id, cluster_name(job.run_id), until, len(ids))

    def lost_nodes(self, job: Job) -> list[str]:
        if self._instances is None:
            return []
        try:
            return self._instances.interrupted(cluster_name(job.run_id))
        except Exception:  # noqa: BLE001 - cannot tell: the failure stays the job's own
            log.warning("job %s: could not ask EC2 about interrupted nodes", job.job_id, exc_info=True)
            return []

    def down(self, job: Job) -> int:
        return down_then_revoke(self._tokens, job, lambda: self._down(job))

    def _down(self, job: Job) -> int:
        path = self.config_path(job.run_id)
        if not path.exists():
            return 0  # `ray up` never ran for this job: nothing can exist
        name = cluster_name(job.run_id)
        deadline = time.monotonic() + self._teardown_timeout_s
        attempts, last_problem = 0, ""
        if self._instances is not None:
            try:
                ended = self._instances.terminate(name)
                log.info("job %s: terminated %d instance(s) of %s by tag", job.job_id, len(ended), name)
            except Exception as err:  # noqa: BLE001 - `ray down` and the check below still run
                log.warning("job %s: terminating %s by tag failed (%s); `ray down` follows", job.job_id, name, err)
        while attempts < self._down_attempts and time.monotonic() < deadline:
            attempts += 1
            result = run_cli([self._ray_bin, "down", "-y", str(path)], deadline - time.monotonic(), self._env, job.run_id)
            if not result.ok:
                last_problem = f"`ray down` {result.describe()}"
            else:
                left = self._instances(name) if self._instances else []
                if not left:
                    log.info("job %s: cluster %s is down (attempt %d)", job.job_id, name, attempts)
                    return attempts
                last_problem = f"`ray down` exited 0 but instances are still up: {', '.join(left)}"
            log.warning("job %s: teardown attempt %d failed: %s", job.job_id, attempts, last_problem)
            time.sleep(max(0.0, min(self._down_retry_delay_s, deadline - time.monotonic())))
        raise TeardownFailed(f"cluster {name} not verified down after {attempts} attempt(s): {last_problem}", attempts)
