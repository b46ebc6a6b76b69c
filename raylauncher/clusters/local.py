"""Local backend: one single-node Ray cluster per job, on this machine, and nothing else touched.

`ray start --head --block` runs in a new session (its pid is the session id) with its own
temp dir and free ports. Ray's workers leave the process group but stay in the session, so
teardown signals every process of that session: SIGTERM, a short wait, SIGKILL, then checks
that none is left. Never `ray stop`: it stops every Ray on the machine.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import ExitStack, closing
from dataclasses import dataclass
from pathlib import Path

from raylauncher.cluster_tokens import ClusterTokens, auth_headers, down_then_revoke, issue_token, token_env
from raylauncher.clusters.base import Cancelled, ClusterBackend, ClusterHandle, wait_for_jobs_api
from raylauncher.clusters.processes import marker_env, stop_processes
from raylauncher.clusters.temp_dirs import make_temp_dir, remove_temp_dirs
from raylauncher.config import Pipeline
from raylauncher.errors import TeardownFailed
from raylauncher.model import Job

log = logging.getLogger(__name__)

#: Ray turns 127.0.0.1 into the machine's interface address unless told it is a one-machine
#: "cluster"; this keeps every Ray process (and its clients) on loopback.
LOOPBACK_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
#: On SIGTERM, `ray start --block` (Ray 2.60) first marks its node as draining and waits up to
#: 30 s for it to drain before it stops its processes; a one-job cluster has nothing to drain
#: for, and our teardown's SIGKILL came first (every teardown took the whole grace). With 0 it
#: stops its processes at once: a teardown by SIGTERM alone, in about 3 s.
NO_DRAIN_ENV = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}


@dataclass
class _LocalCluster:
    process: subprocess.Popen[bytes]
    session_id: int
    temp_dir: Path


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports on 127.0.0.1. All are held until all are chosen: a port
    asked for and released one at a time can come back at once (the kernel reuses it), and
    two of Ray's components then get the same one (`ray start` fails: seen in parallel runs)."""
    with ExitStack() as held:
        ports = []
        for _ in range(count):
            s = held.enter_context(closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)))
            s.bind(("127.0.0.1", 0))
            ports.append(int(s.getsockname()[1]))
        return ports


def free_port() -> int:
    return free_ports(1)[0]


class LocalRayBackend(ClusterBackend):
    def __init__(
        self,
        log_dir: Path,
        base_env: Mapping[str, str],
        job_env: Mapping[str, str],
        tokens: ClusterTokens,
        ray_bin: str | None = None,
        stop_grace_s: float = 5.0,
    ) -> None:
        self._log_dir = log_dir
        self._env = {
            **{k: v for k, v in base_env.items() if not k.startswith("RAY_AUTH_")},
            **LOOPBACK_ONLY_ENV,
            **NO_DRAIN_ENV,
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self._tokens = tokens
        self._job_env = dict(job_env)
        self._ray_bin = ray_bin or str(Path(sys.executable).with_name("ray"))
        self._stop_grace_s = stop_grace_s
        self._clusters: dict[str, _LocalCluster] = {}

    def up(self, job: Job, pipeline: Pipeline, timeout_s: float, cancelled: Cancelled) -> ClusterHandle:
        deadline = time.monotonic() + timeout_s
        token = issue_token(self._tokens, job)
        temp_dir = make_temp_dir(job.run_id)
        gcs_port, dashboard_port, client_port, agent_port, metrics_port, runtime_env_port = free_ports(6)
        cmd = [
            self._ray_bin, "start", "--head", "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs_port}",
            f"--dashboard-port={dashboard_port}",
            "--dashboard-host=127.0.0.1",
            f"--ray-client-server-port={client_port}",
            f"--dashboard-agent-listen-port={agent_port}",
            f"--metrics-export-port={metrics_port}",
            f"--runtime-env-agent-port={runtime_env_port}",
            f"--temp-dir={temp_dir}",
            f"--num-cpus={pipeline.cluster.local_num_cpus}",
            "--include-dashboard=true",
            "--disable-usage-stats",
        ]  # fmt: skip
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._log_dir / f"{job.run_id}.ray-start.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                cmd, env={**self._env, **token_env(token), **marker_env(job.run_id)}, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self._clusters[job.run_id] = _LocalCluster(proc, proc.pid, temp_dir)
        dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        log.info("job %s: local ray head starting (session %d, %s)", job.job_id, proc.pid, dashboard_url)

        def died() -> str | None:
            return None if proc.poll() is None else f"ray start exited {proc.returncode}: {_tail(log_path)}"

        wait_for_jobs_api(dashboard_url, auth_headers(token), deadline, cancelled, died)
        return ClusterHandle(
            name=f"local-{job.job_id}",
            dashboard_url=dashboard_url,
            python=sys.executable,  # the cluster's PATH may not have Ray's interpreter first
            job_env=self._job_env,
            details={"backend": "local", "session_id": proc.pid, "temp_dir": str(temp_dir), "dashboard_url": dashboard_url},
            auth_token=token,
            gone=died,
        )

    def collect_logs(self, job: Job, dest: Path, timeout_s: float) -> Path | None:
        """A copy of the cluster temp dir's session_latest/logs."""
        temp_dir = self._temp_dir(job)
        source = temp_dir / "session_latest" / "logs" if temp_dir else None
        if source is None or not source.is_dir():
            return None
        shutil.copytree(source, dest, symlinks=True, ignore_dangling_symlinks=True, dirs_exist_ok=True)
        return dest

    def _temp_dir(self, job: Job) -> Path | None:
        cluster = self._clusters.get(job.run_id)
        if cluster is not None:
            return cluster.temp_dir
        if job.cluster and job.cluster.get("backend") == "local":  # a driver restarted after a crash
            return Path(job.cluster["temp_dir"])
        return None

    def down(self, job: Job) -> int:
        return down_then_revoke(self._tokens, job, lambda: self._down(job))

    def _down(self, job: Job) -> int:
        cluster = self._clusters.pop(job.run_id, None)
        if cluster is not None:
            session_id, temp_dir = cluster.session_id, cluster.temp_dir
        elif job.cluster and job.cluster.get("backend") == "local":  # a driver restarted after a crash
            session_id, temp_dir = int(job.cluster["session_id"]), Path(job.cluster["temp_dir"])
        else:
            return 0  # nothing was started for this job
        survivors = stop_processes(session_id, job.run_id, self._stop_grace_s)
        if cluster is not None:
            try:
                cluster.process.wait(timeout=self._stop_grace_s)  # reap our direct child
            except subprocess.TimeoutExpired:
                pass
        if survivors:
            raise TeardownFailed(
                f"{len(survivors)} process(es) of session {session_id} survived SIGKILL: "
                + ", ".join(str(p.pid) for p in survivors)
            )
        remove_temp_dirs(job.run_id)
        log.info("job %s: local ray cluster (session %d) stopped", job.job_id, session_id)
        return 1


def _tail(path: Path, limit: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return "(no launcher output)"
