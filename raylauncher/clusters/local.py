"""Local backend: one single-node Ray cluster per job, on this machine, and nothing else touched.

`ray start --head --block` runs in a new session (its pid is the session id) with its own
temp dir and free ports. Ray's workers leave the process group but stay in the session, so
teardown signals every process of that session: SIGTERM, a short wait, SIGKILL, then checks
that none is left. Never `ray stop`: it stops every Ray on the machine.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import psutil

from raylauncher.clusters.base import ClusterBackend, ClusterHandle
from raylauncher.config import Pipeline
from raylauncher.errors import ProvisioningFailed, TeardownFailed
from raylauncher.model import Job

log = logging.getLogger(__name__)

#: Ray turns 127.0.0.1 into the machine's interface address unless told it is a one-machine
#: "cluster"; this keeps every Ray process (and its clients) on loopback.
LOOPBACK_ONLY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

#: Set in the environment of every process of a local cluster (value: the job id).
CLUSTER_MARKER_ENV = "RAYLAUNCHER_LOCAL_CLUSTER"

#: Prefix of every local cluster's temp dir: a test or a person can find our clusters by it.
TEMP_DIR_PREFIX = "rl-"


@dataclass
class _LocalCluster:
    process: subprocess.Popen[bytes]
    session_id: int
    temp_dir: Path


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _marker_of(proc: psutil.Process) -> str | None:
    try:
        return proc.environ().get(CLUSTER_MARKER_ENV)
    except psutil.Error:
        return None


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def cluster_processes(session_id: int, job_id: str) -> list[psutil.Process]:
    """Live processes of one local cluster: its session, plus any process that carries the
    cluster's marker but left the session (Ray runs a job's entrypoint under setsid)."""
    found = []
    for proc in psutil.process_iter():
        try:
            in_session = os.getsid(proc.pid) == session_id
        except OSError:
            continue
        if (in_session or _marker_of(proc) == job_id) and _live(proc):
            found.append(proc)
    return found


def leftover_processes() -> list[psutil.Process]:
    """Live processes of any local cluster of ours, by the marker every Ray process inherits
    from `ray start` (workers' command lines name nothing of ours)."""
    return [p for p in psutil.process_iter() if _marker_of(p) is not None and _live(p)]


def stop_cluster_processes(session_id: int, job_id: str, grace_s: float) -> list[psutil.Process]:
    """SIGTERM every process of the cluster, wait up to `grace_s`, SIGKILL the rest.
    Returns the processes still alive afterwards (empty when the cluster is gone)."""
    for sig in (signal.SIGTERM, signal.SIGKILL, signal.SIGKILL):  # the last sweep catches late forks
        procs = cluster_processes(session_id, job_id)
        if not procs:
            return []
        for proc in procs:
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(procs, timeout=grace_s)
    return cluster_processes(session_id, job_id)


class LocalRayBackend(ClusterBackend):
    def __init__(
        self,
        log_dir: Path,
        base_env: Mapping[str, str],
        job_env: Mapping[str, str],
        ray_bin: str | None = None,
        stop_grace_s: float = 5.0,
    ) -> None:
        self._log_dir = log_dir
        self._env = {
            **base_env,
            **LOOPBACK_ONLY_ENV,
            # Token auth must never depend on files in a home directory (see shared NOTES).
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        self._job_env = dict(job_env)
        self._ray_bin = ray_bin or str(Path(sys.executable).with_name("ray"))
        self._stop_grace_s = stop_grace_s
        self._clusters: dict[str, _LocalCluster] = {}

    def up(self, job: Job, pipeline: Pipeline, timeout_s: float) -> ClusterHandle:
        temp_dir = Path(tempfile.mkdtemp(prefix=TEMP_DIR_PREFIX, dir="/tmp"))  # short: Ray's sockets live here
        gcs_port, dashboard_port = free_port(), free_port()
        cmd = [
            self._ray_bin, "start", "--head", "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs_port}",
            f"--dashboard-port={dashboard_port}",
            "--dashboard-host=127.0.0.1",
            f"--ray-client-server-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
            f"--temp-dir={temp_dir}",
            f"--num-cpus={pipeline.cluster.local_num_cpus}",
            "--include-dashboard=true",
            "--disable-usage-stats",
        ]  # fmt: skip
        self._log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self._log_dir / f"{job.job_id}.ray-start.log"
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                cmd, env={**self._env, CLUSTER_MARKER_ENV: job.job_id}, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self._clusters[job.job_id] = _LocalCluster(proc, proc.pid, temp_dir)
        dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        log.info("job %s: local ray head starting (session %d, %s)", job.job_id, proc.pid, dashboard_url)
        deadline = time.monotonic() + timeout_s
        while not _answers(f"{dashboard_url}/api/jobs/"):
            if proc.poll() is not None:
                raise ProvisioningFailed(f"ray start exited {proc.returncode}: {_tail(log_path)}")
            if time.monotonic() > deadline:
                raise ProvisioningFailed(f"local Ray head not ready after {timeout_s:.0f}s: {_tail(log_path)}")
            time.sleep(0.25)
        return ClusterHandle(
            name=f"local-{job.job_id}",
            dashboard_url=dashboard_url,
            python=sys.executable,  # the cluster's PATH may not have Ray's interpreter first
            job_env=self._job_env,
            details={"backend": "local", "session_id": proc.pid, "temp_dir": str(temp_dir)},
        )

    def down(self, job: Job) -> None:
        cluster = self._clusters.pop(job.job_id, None)
        if cluster is not None:
            session_id, temp_dir = cluster.session_id, cluster.temp_dir
        elif job.cluster and job.cluster.get("backend") == "local":  # a driver restarted after a crash
            session_id, temp_dir = int(job.cluster["session_id"]), Path(job.cluster["temp_dir"])
        else:
            return  # nothing was started for this job
        survivors = stop_cluster_processes(session_id, job.job_id, self._stop_grace_s)
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
        shutil.rmtree(temp_dir, ignore_errors=True)
        log.info("job %s: local ray cluster (session %d) stopped", job.job_id, session_id)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback only
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, limit: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-limit:].strip()
    except OSError:
        return "(no launcher output)"
