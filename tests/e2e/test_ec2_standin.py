"""The EC2 path for real: Ray's own `ray up` / `ray down` of the rendered cluster.yaml against
moto's EC2, each instance a network namespace with sshd (the EC2 stand-in), driven by the
same intake, driver and EC2 backend as on AWS. One stand-in for the module; every test works
on clusters of its own and checks that they end with every instance terminated and no node
(namespace, process) left.

Skipped, with the reason, only where the stand-in cannot run (not Linux, not root, no sshd).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from raylauncher.aws import LOCAL_ACCESS_KEY_IDS
from raylauncher.clusters.ec2_config import cluster_name
from raylauncher.clusters.processes import leftover_processes
from raylauncher.config import Settings
from raylauncher.control import request_cancel
from raylauncher.local.demo import upload_sample_files, verify_job_output
from raylauncher.local.ec2_standin import unavailable
from raylauncher.local.ec2_standin.cleanup import leftovers
from raylauncher.local.ec2_standin.forwarder import NODES_SOURCE
from raylauncher.local.ec2_standin.network import NetworkError, namespace_pids, our_namespaces
from raylauncher.local.ec2_standin.seed import KEY_NAME, PROFILE_NAME
from raylauncher.local.ec2_standin.standin import OBSERVER_KEY_ID
from raylauncher.local.runtime import LocalSystem, local_system, wait_for_jobs
from raylauncher.model import TERMINAL, Job, JobStatus, ReasonCode, iso, parse_iso, run_id, utc_now
from raylauncher.tags import CLUSTER_NAME_PREFIX, EXPIRES_AT_TAG, RAY_CLUSTER_TAG
from raylauncher.wiring import build_driver, build_watchdog
from tests.e2e.test_cluster_auth_local import status_of as http_status
from tests.faults import FaultRow
from tests.iam_contract import (
    as_list,
    contract_roles,
    contract_violations,
    granted_ec2_actions,
    request_violations,
    stack_documents,
    used_by_role,
)
from tests.iam_eval import ALLOWED, evaluate

PROJECT_DIR = Path(__file__).resolve().parents[2]
REGION = "eu-west-3"  # a region of its own on the process's moto (SendCommand, reaper tests)
JOB_TIMEOUT_S = 400
# pytest-xdist: the module's scenarios take many minutes in all, so four workers share them,
# each with a stand-in of its own (bridge, subnet, namespaces, moto): `system` is per worker.
# The role contract reads the calls of the e2e run, so it stays with it.
STANDIN_E2E = pytest.mark.xdist_group("standin-e2e")
STANDIN_AUTH_DEADLINES = pytest.mark.xdist_group("standin-auth-deadlines")
STANDIN_FAULTS = pytest.mark.xdist_group("standin-faults")
STANDIN_WARM = pytest.mark.xdist_group("standin-warm")

if reason := unavailable():
    pytest.skip(f"EC2 stand-in cannot run here: {reason}", allow_module_level=True)

PROBE = """import time
print("probe: started", flush=True)
time.sleep(600)
"""


def _project(root: Path) -> tuple[Path, Path]:
    """The real sales job plus a probe job that sleeps (for deadlines and cancels)."""
    project = root / "project"
    shutil.copytree(PROJECT_DIR / "jobs" / "sales_summary", project / "jobs" / "sales_summary",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    (project / "jobs" / "probe").mkdir(parents=True)
    (project / "jobs" / "probe" / "main.py").write_text(PROBE)
    (project / "jobs" / "quick").mkdir(parents=True)
    (project / "jobs" / "quick" / "main.py").write_text('print("quick: done", flush=True)\n')
    (project / "jobs" / "slowish").mkdir(parents=True)  # runs long enough to be seen RUNNING
    (project / "jobs" / "slowish" / "main.py").write_text('import time\ntime.sleep(3)\nprint("slowish: done")\n')
    (project / "jobs" / "failing").mkdir(parents=True)
    (project / "jobs" / "failing" / "main.py").write_text('import sys\nprint("failing: on purpose")\nsys.exit(1)\n')
    pipelines = project / "pipelines.yaml"
    pipelines.write_text((PROJECT_DIR / "pipelines.yaml").read_text() + """
  - name: probe
    trigger: {prefix: incoming/probe/}
    entrypoint: {script: jobs/probe/main.py}
    cluster: {min_workers: 0, max_workers: 0}
    run_timeout_s: 600
    retry: {max_attempts: 1}
    output_prefix: outputs/probe/
  - name: probe-short
    trigger: {prefix: incoming/probe-short/}
    entrypoint: {script: jobs/probe/main.py}
    cluster: {min_workers: 0, max_workers: 0}
    run_timeout_s: 15
    retry: {max_attempts: 1}
    output_prefix: outputs/probe-short/
  - name: probe-workers
    trigger: {prefix: incoming/probe-workers/}
    entrypoint: {script: jobs/probe/main.py}
    cluster: {min_workers: 2, max_workers: 2}
    run_timeout_s: 600
    retry: {max_attempts: 1}
    output_prefix: outputs/probe-workers/
  - name: warm
    trigger: {prefix: incoming/warm/}
    entrypoint: {script: jobs/slowish/main.py}
    cluster: {min_workers: 0, max_workers: 0}
    retry: {max_attempts: 1}
    keep_warm_seconds: 10
    output_prefix: outputs/warm/
  - name: held
    trigger: {prefix: incoming/held/}
    entrypoint: {script: jobs/failing/main.py}
    cluster: {min_workers: 0, max_workers: 0}
    retry: {max_attempts: 1}
    keep_failed_cluster_seconds: 600
    output_prefix: outputs/held/
  - name: held-short
    trigger: {prefix: incoming/held-short/}
    entrypoint: {script: jobs/failing/main.py}
    cluster: {min_workers: 0, max_workers: 0}
    retry: {max_attempts: 1}
    keep_failed_cluster_seconds: 15
    output_prefix: outputs/held-short/
  - name: quick
    trigger: {prefix: incoming/quick/}
    entrypoint: {script: jobs/quick/main.py}
    cluster: {min_workers: 0, max_workers: 0}
    retry: {max_attempts: 2, backoff_s: 1}
    output_prefix: outputs/quick/
""")
    return project, pipelines


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSystem]:
    root = tmp_path_factory.mktemp("standin")
    project, pipelines = _project(root)
    with local_system(root / "state", pipelines, project, backend="ec2", region=REGION) as system:
        assert system.moto is not None
        system.moto.record_requests()  # every S3 and SSM call, for IAM's verdict on each (the role contract)
        yield system
    assert system.standin is not None
    assert leftovers(system.standin.id) == [], "the stand-in left something behind"


# -- helpers ----------------------------------------------------------------------------------------


def instances_of(system: LocalSystem, job: Job, attempt: int = 1) -> list[dict[str, Any]]:
    name = cluster_name(run_id(job.job_id, attempt))
    return [i for i in system.standin.instances()
            if {t["Key"]: t["Value"] for t in i.get("Tags", [])}.get(RAY_CLUSTER_TAG) == name]  # fmt: skip


def assert_cluster_gone(system: LocalSystem, job: Job, launched: bool = True, attempt: int = 1) -> None:
    """Every instance of the job's cluster is terminated and its node (namespace, processes) gone."""
    instances = instances_of(system, job, attempt)
    if launched:
        assert instances, f"no instance of {job.job_id} was ever launched"
    assert [i["State"]["Name"] for i in instances] == ["terminated"] * len(instances)
    deadline = time.monotonic() + 10  # the materializer reacts within a poll or two
    ids = {i["InstanceId"] for i in instances}
    while time.monotonic() < deadline and (ids & set(system.standin.materializer.nodes)):
        time.sleep(0.2)
    assert not ids & set(system.standin.materializer.nodes)
    assert not [ns for ns in our_namespaces() if any(ns.endswith(i) for i in ids)]


def standin_row(system: LocalSystem, scenario: str, job: Job, since: datetime | None = None) -> FaultRow:
    """A fault row for a job that ran on the stand-in (API-triggered: no input objects). Cluster
    seconds after the fault: from `since` (or the attempt's start) to the end of the teardown."""
    end = parse_iso(job.phase_times[job.status.value])
    start = since or parse_iso(job.phase_times.get("PROVISIONING", job.created_at))
    left = [i for i in instances_of(system, job, job.attempt) if i["State"]["Name"] != "terminated"]
    return FaultRow(scenario, "ec2 stand-in", job.status.value, job.reason_code.value if job.reason_code else "none",
                    job.attempt, round((end - start).total_seconds(), 1), len(left), 0, 0)  # fmt: skip


def cmdline_of(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:  # gone meanwhile
        return ""


def new_job(system: LocalSystem, pipeline: str) -> Job:
    job = system.store.create(Job.new(pipeline, "api"))
    return system.store.transition(job, JobStatus.LAUNCHING)


def driver_settings(system: LocalSystem, **changes: Any) -> Settings:
    return system.settings.model_copy(update=changes)


def run_driver_in_thread(settings: Settings, job: Job) -> tuple[threading.Thread, dict[str, Job]]:
    result: dict[str, Job] = {}
    driver = build_driver(settings)
    thread = threading.Thread(target=lambda: result.setdefault("job", driver.run(job.job_id)), daemon=True)
    thread.start()
    return thread, result


def wait_until(condition: Callable[[], bool], timeout_s: float = JOB_TIMEOUT_S, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def finished(thread: threading.Thread, result: dict[str, Job]) -> Job:
    thread.join(JOB_TIMEOUT_S)
    assert not thread.is_alive(), "the driver did not finish"
    return result["job"]


class ConnectionSampler:
    """Samples the sockets of this process and its children (moto, forwarder, drivers, `ray up`)
    in the machine's own network namespace while a test runs."""

    def __init__(self) -> None:
        self.listening: set[str] = set()
        self.remote: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            ours = {me.pid, *(c.pid for c in me.children(recursive=True))}
            for conn in psutil.net_connections("inet"):
                if conn.pid not in ours:
                    continue
                if conn.status == psutil.CONN_LISTEN:
                    self.listening.add(conn.laddr.ip)
                elif conn.raddr:
                    self.remote.add(conn.raddr.ip)
            self._stop.wait(0.5)

    def __enter__(self) -> ConnectionSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- the e2e ------------------------------------------------------------------------------------------


@STANDIN_E2E
def test_a_file_in_s3_runs_on_a_real_ray_up_of_head_and_two_workers_and_everything_is_terminated(
    system: LocalSystem,
) -> None:
    # Given the stand-in (moto EC2, namespaces as instances) behind the EC2 backend
    bridge = system.standin.bridge
    with ConnectionSampler() as sockets:
        # When sales CSVs land under the pipeline's prefix
        keys = upload_sample_files(system, files=4, rows_per_file=5_000)
        jobs = wait_for_jobs(system.store, lambda js: any(j.pipeline == "sales-summary" and j.is_terminal for j in js),
                             JOB_TIMEOUT_S)  # fmt: skip
    job = next(j for j in jobs if j.pipeline == "sales-summary")

    # Then the job SUCCEEDED through every phase, on a head plus 2 workers the head's autoscaler launched
    assert job.status == JobStatus.SUCCEEDED, (job.reason_code, job.reason_message)
    assert list(job.phase_times) == ["QUEUED", "LAUNCHING", "PROVISIONING", "SUBMITTED", "RUNNING", "TEARING_DOWN",
                                     "SUCCEEDED"]  # fmt: skip
    assert job.cluster and job.cluster["backend"] == "ec2" and job.cluster["nodes"] == 3
    instances = instances_of(system, job)
    kinds = sorted({t["Key"]: t["Value"] for t in i["Tags"]}["ray-node-type"] for i in instances)
    assert kinds == ["head", "worker", "worker"]
    assert all(ipaddress.ip_address(i["PrivateIpAddress"]) in bridge.subnet for i in instances)
    # And the Ray Data job ran across all 3 nodes and its output equals pandas over the same input
    assert sorted(job.summary["nodes_used"]) == sorted(i["PrivateIpAddress"] for i in instances)  # type: ignore[index]
    assert verify_job_output(system, job) == []
    assert {o["key"] for o in system.objects.get_json(job.manifest_key or "")["objects"]} == set(keys)
    # And Ray's logs were kept in S3
    assert "SUCCEEDED" in system.objects.get_bytes(job.logs_key or "").decode() or job.logs_key
    # And every instance is terminated, no node is left
    assert_cluster_gone(system, job)
    # And nothing of ours listened beyond loopback and the bridge, or talked to anything else
    allowed = {ipaddress.ip_network("127.0.0.0/8"), bridge.subnet}
    assert sockets.listening and all(any(ipaddress.ip_address(a) in n for n in allowed) for a in sockets.listening), \
        sockets.listening
    assert all(any(ipaddress.ip_address(a) in n for n in allowed) for a in sockets.remote), sockets.remote


@STANDIN_E2E
def test_traffic_is_refused_unless_it_routes_via_the_stand_ins_bridge(system: LocalSystem) -> None:
    bridge = system.standin.bridge
    # Given the stand-in's bridge: an address of its subnet routes via it
    system.standin.check_route(str(bridge.subnet.network_address + 9))
    # Then an address outside the subnet, or the subnet of a bridge that does not exist, is refused
    with pytest.raises(NetworkError, match="outside"):
        system.standin.check_route("10.0.0.1")
    from raylauncher.local.ec2_standin.network import Bridge

    ghost = Bridge("fffff", ipaddress.ip_network("10.254.250.0/24"))
    with pytest.raises(NetworkError, match="not the stand-in's bridge"):
        ghost.require_route("10.254.250.4")
    # And moto's default VPC (172.31.0.0/16, which would route out of the machine) is gone
    vpcs = system.standin.client("ec2").describe_vpcs()["Vpcs"]
    assert [v["CidrBlock"] for v in vpcs] == [str(bridge.subnet)]


def try_to_join(system: LocalSystem, node: dict[str, Any], head_ip: str, headers: dict[str, str],
                env: dict[str, str], wait_s: float) -> tuple[int, str]:  # fmt: skip
    """A second `ray start --address` on worker `node` (in its network namespace, from its
    address), given `wait_s` to join, then stopped (its session and marker). Returns the most
    ALIVE nodes the head reported meanwhile (asked with the cluster's token) and what became of
    it: "still trying" when it was running at the end, else its exit code and output."""
    from raylauncher.clusters.processes import marker_env, stop_processes

    marker = f"join-probe-{uuid.uuid4().hex[:6]}"
    netns = system.standin.bridge.netns_name(node["InstanceId"])
    tmp = Path(tempfile.mkdtemp(prefix="rl-", dir="/tmp"))  # short: Ray's socket paths live under it
    out = tmp / "ray-start.out"
    with open(out, "wb") as sink:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, str(Path(sys.executable).with_name("ray")), "start", "--block",
             f"--address={head_ip}:6379", f"--node-ip-address={node['PrivateIpAddress']}", "--num-cpus=1",
             "--disable-usage-stats", f"--temp-dir={tmp}", "--node-manager-port=0", "--object-manager-port=0"],
            env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_USAGE_STATS_ENABLED": "0", **env,
                 **marker_env(marker)},
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    most = 0
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and most < 4:
            most = max(most, len(alive_addresses(head_ip, headers, unique=False)))
            time.sleep(1)
        fate = "still trying" if proc.poll() is None else f"exited {proc.returncode}: "
    finally:
        assert stop_processes(proc.pid, marker, 3) == []
        proc.wait(10)
    output = out.read_text(errors="replace")
    shutil.rmtree(tmp, ignore_errors=True)
    return most, fate if fate == "still trying" else fate + output[-1500:]


def alive_addresses(head_ip: str, headers: dict[str, str], unique: bool = True) -> Any:
    """The ALIVE nodes' addresses (a set; a list with `unique=False`: two nodes may share one)."""
    request = urllib.request.Request(f"http://{head_ip}:8265/api/v0/nodes?limit=100", headers=headers)
    with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
        nodes = json.load(resp)["data"]["result"]["result"]
    alive = [n["node_ip"] for n in nodes if n["state"] == "ALIVE"]
    return set(alive) if unique else alive


@STANDIN_AUTH_DEADLINES
def test_every_node_refuses_callers_without_the_clusters_token_and_a_worker_without_it_cannot_join(
    system: LocalSystem, tmp_path: Path
) -> None:
    from raylauncher import aws
    from raylauncher.cluster_tokens import SsmClusterTokens, auth_headers, new_token

    # Given a job running on a head and two workers the head's autoscaler launched
    job = new_job(system, "probe-workers")
    thread, result = run_driver_in_thread(driver_settings(system), job)
    wait_until(lambda: system.store.get(job.job_id).status == JobStatus.RUNNING, what="RUNNING")
    job = system.store.get(job.job_id)
    nodes = [i["PrivateIpAddress"] for i in instances_of(system, job) if i["State"]["Name"] == "running"]
    head_ip = job.cluster["head_ip"]  # type: ignore[index]
    assert len(nodes) == 3 and head_ip in nodes
    for ip in nodes:
        system.standin.check_route(ip)
    token = SsmClusterTokens(aws.client("ssm", system.settings)).read(job)
    good, wrong = auth_headers(token), auth_headers(new_token())
    try:
        # When the head's dashboard / Jobs API and every node's agent are called without the
        # token, with another one, and with the cluster's (the driver's) token
        head = {path: tuple(http_status(f"http://{head_ip}:8265{path}", h) for h in ({}, wrong, good))
                for path in ("/api/jobs/", "/api/version", "/api/v0/nodes")}  # fmt: skip
        agents = {ip: tuple(http_status(f"http://{ip}:52365/api/job_agent/jobs/{job.run_id}/logs", h)
                            for h in ({}, wrong, good)) for ip in nodes}  # fmt: skip
        # Then every one answers 401 without it, 403 with another, and accepts the cluster's
        assert head == dict.fromkeys(head, (401, 403, 200))
        assert all(no == 401 and bad == 403 and ok not in (401, 403) for no, bad, ok in agents.values()), agents
        assert agents[head_ip][2] == 200  # the job's driver runs on the head: its agent has the logs
        assert alive_addresses(head_ip, good) == set(nodes)
        # And a Ray node started on a worker with a wrong token, or with token auth off, does not
        # join in 20 s ...
        worker = next(i for i in instances_of(system, job) if i["PrivateIpAddress"] != head_ip)
        for label, env in (("wrong token", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": new_token()}),
                           ("no token", {"RAY_AUTH_MODE": "disabled"})):  # fmt: skip
            most, fate = try_to_join(system, worker, head_ip, good, env, 20)
            assert most == 3, f"a node with {label} joined the cluster"
            # (refused by the head, not failed for a reason of its own)
            assert fate == "still trying" or "authenticat" in fate.lower(), fate
        # ... while the same start with the cluster's token does (the check can tell)
        most, fate = try_to_join(system, worker, head_ip, good, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}, 60)
        assert most == 4, fate
    finally:
        request_cancel(system.store, job.job_id)
        done = finished(thread, result)
    # And the cluster is gone with its token
    assert done.status == JobStatus.CANCELLED, (done.reason_code, done.reason_message)
    assert_cluster_gone(system, done)
    from raylauncher.cluster_tokens import TokenNotFound

    with pytest.raises(TokenNotFound):
        SsmClusterTokens(aws.client("ssm", system.settings)).read(done)


# -- the fault scenarios ------------------------------------------------------------------------------


@STANDIN_AUTH_DEADLINES
def test_head_sshd_refusing_fails_provisioning_and_terminates_the_instances(
    system: LocalSystem, monkeypatch: pytest.MonkeyPatch, fault_row: Callable[[FaultRow], FaultRow]
) -> None:
    # Given heads that boot without sshd, and Ray's launcher waiting 20 s for SSH (900 by default)
    system.standin.refuse_ssh(lambda tags: tags.get("ray-node-type") == "head")
    monkeypatch.setenv("AUTOSCALER_NODE_START_WAIT_S", "20")
    try:
        job = new_job(system, "probe")
        # When the driver runs it
        thread, result = run_driver_in_thread(driver_settings(system), job)
        job = finished(thread, result)
    finally:
        system.standin.refuse_ssh(lambda tags: False)
    # Then the job FAILED in provisioning with what `ray up` said, and the head is terminated
    assert (job.status, job.reason_code) == (JobStatus.FAILED, ReasonCode.PROVISIONING_FAILED)
    assert "ray up" in (job.reason_message or "")
    assert_cluster_gone(system, job)
    fault_row(standin_row(system, "`ray up` failing (head without sshd), 1 attempt allowed", job))


@STANDIN_AUTH_DEADLINES
def test_provisioning_deadline_during_ray_up_stops_it_and_terminates(
    system: LocalSystem, monkeypatch: pytest.MonkeyPatch, fault_row: Callable[[FaultRow], FaultRow]
) -> None:
    # Given a head that boots without sshd, so `ray up` waits on it (up to 900 s) once it launched
    # it, and a provisioning deadline well past the launch but far shorter than that wait: the
    # deadline passes while `ray up` runs however slow the machine is (a short deadline alone
    # could pass before the launch on a busy machine)
    system.standin.refuse_ssh(lambda tags: tags.get("ray-node-type") == "head")
    monkeypatch.setenv("AUTOSCALER_NODE_START_WAIT_S", "600")
    try:
        job = new_job(system, "probe")
        thread, result = run_driver_in_thread(driver_settings(system, provisioning_timeout_s=25), job)
        # When the deadline passes while `ray up` runs
        job = finished(thread, result)
    finally:
        system.standin.refuse_ssh(lambda tags: False)
    # Then the job TIMED_OUT in provisioning, `ray up` was stopped and every instance terminated
    assert (job.status, job.reason_code) == (JobStatus.TIMED_OUT, ReasonCode.PROVISIONING_TIMEOUT)
    assert not [p for p in leftover_processes() if job.job_id in str(p.environ())]
    assert_cluster_gone(system, job)
    fault_row(standin_row(system, "provisioning deadline passed during `ray up`", job))


@STANDIN_AUTH_DEADLINES
def test_run_deadline_stops_the_job_and_terminates(system: LocalSystem, fault_row: Callable[[FaultRow], FaultRow]) -> None:
    # Given a pipeline whose run deadline (15 s) is shorter than its job
    job = new_job(system, "probe-short")
    thread, result = run_driver_in_thread(driver_settings(system), job)
    job = finished(thread, result)
    # Then it TIMED_OUT for the run deadline, and the cluster is gone
    assert (job.status, job.reason_code) == (JobStatus.TIMED_OUT, ReasonCode.RUN_TIMEOUT), job.reason_message
    assert "probe: started" in system.objects.get_bytes(job.logs_key or "").decode()
    assert_cluster_gone(system, job)
    fault_row(standin_row(system, "run deadline passed", job))


@STANDIN_FAULTS
@pytest.mark.parametrize("when", ["during ray up", "while running"])
def test_cancel_tears_the_cluster_down(system: LocalSystem, when: str, fault_row: Callable[[FaultRow], FaultRow]) -> None:
    # Given a job whose driver is bringing its cluster up
    job = new_job(system, "probe")
    thread, result = run_driver_in_thread(driver_settings(system), job)
    if when == "during ray up":
        wait_until(lambda: bool(instances_of(system, job)), 120, "the head's RunInstances")
    else:
        wait_until(lambda: system.store.get(job.job_id).status == JobStatus.RUNNING, JOB_TIMEOUT_S, "RUNNING")
    # When the user cancels it
    request_cancel(system.store, job.job_id)
    cancelled_at = utc_now()
    job = finished(thread, result)
    # Then it ends CANCELLED and every instance is terminated
    assert (job.status, job.reason_code) == (JobStatus.CANCELLED, ReasonCode.CANCEL_REQUESTED)
    assert_cluster_gone(system, job)
    fault_row(standin_row(system, f"cancel {when}", job, since=cancelled_at))


@STANDIN_FAULTS
def test_teardown_when_ray_down_cannot_reach_the_head_still_terminates_by_tag(
    system: LocalSystem, fault_row: Callable[[FaultRow], FaultRow]
) -> None:
    # Given a running job
    job = new_job(system, "probe")
    thread, result = run_driver_in_thread(driver_settings(system), job)
    wait_until(lambda: system.store.get(job.job_id).status == JobStatus.RUNNING, JOB_TIMEOUT_S, "RUNNING")
    # When the head's sshd dies (`ray down` cannot run `ray stop` there) and the job is cancelled
    head = next(i for i in instances_of(system, job) if any(t["Value"] == "head" for t in i["Tags"]))
    node = system.standin.materializer.nodes[head["InstanceId"]]
    sshd = [p for p in namespace_pids(node.netns) if "sshd" in cmdline_of(p)]
    assert sshd
    for pid in sshd:  # the listener and the launcher's open sessions (pids as this machine sees them)
        with contextlib.suppress(ProcessLookupError):  # a session that ended meanwhile
            os.kill(pid, signal.SIGKILL)
    request_cancel(system.store, job.job_id)
    job = finished(thread, result)
    # Then the instances are still terminated, through the EC2 API by tag, and verified
    assert job.status == JobStatus.CANCELLED, (job.reason_code, job.reason_message)
    assert_cluster_gone(system, job)
    fault_row(standin_row(system, "head unreachable by `ray down` (its sshd killed), then cancelled", job))


@STANDIN_FAULTS
@pytest.mark.parametrize("when", ["during ray up", "while running"])
def test_a_killed_driver_is_taken_over_and_its_nodes_terminated_within_the_lease(
    system: LocalSystem, when: str, fault_row: Callable[[FaultRow], FaultRow]
) -> None:
    # Given a driver process (as the bastion runs it) bringing up a job's cluster, or running it
    job = new_job(system, "probe")
    driver = subprocess.Popen([sys.executable, "-m", "raylauncher", "driver", "run", job.job_id],
                              env={**os.environ, **system.settings.to_env()}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        if when == "during ray up":
            wait_until(lambda: bool(instances_of(system, job)), 120, "the head's RunInstances")
        else:
            wait_until(lambda: system.store.get(job.job_id).status == JobStatus.RUNNING, JOB_TIMEOUT_S, "RUNNING")
        # When the driver is SIGKILLed (no teardown of its own can run)
        driver.kill()
        driver.wait(10)
        killed = time.monotonic()
        instances = instances_of(system, job)
        assert instances and all(i["State"]["Name"] in ("pending", "running") for i in instances)
        # Then the watchdog (a sweep every second here) takes the job over once its lease lapsed,
        # terminates its nodes by tag and ends it FAILED(DRIVER_LOST) (the pipeline allows 1 attempt)
        watchdog = build_watchdog(system.settings)
        wait_until(lambda: bool(watchdog.sweep()) and system.store.get(job.job_id).is_terminal, 120, "the takeover")
        wait_until(lambda: all(i["State"]["Name"] == "terminated" for i in instances_of(system, job)), 60,
                   "terminated instances")  # fmt: skip
        outlived = time.monotonic() - killed
        done = system.store.get(job.job_id)
        assert (done.status, done.reason_code, done.slot_held) == (JobStatus.FAILED, ReasonCode.DRIVER_LOST, False)
        assert "no heartbeat since" in (done.reason_message or "")
        assert_cluster_gone(system, job)
        print(f"\n[{when}] a SIGKILLed driver's nodes were terminated {outlived:.1f} s after the kill "
              f"(lease {system.settings.driver_lease_s:.0f} s)")
        fault_row(FaultRow(f"driver SIGKILLed {when}", "ec2 stand-in", done.status.value, done.reason_code.value,
                           done.attempt, round(outlived, 1), 0, 0, 0))  # fmt: skip
    finally:
        driver.kill()
        # a `ray up` the dead driver had started runs on in its own session (on the bastion,
        # systemd stops what is left of the driver's unit when its main process dies): stop it
        for proc in leftover_processes():
            if job.job_id in str(proc.environ()):
                proc.kill()


@STANDIN_FAULTS
def test_a_failed_ray_up_is_retried_on_a_new_cluster_that_succeeds(
    system: LocalSystem, monkeypatch: pytest.MonkeyPatch, fault_row: Callable[[FaultRow], FaultRow]
) -> None:
    # Given a job whose first cluster's head boots without sshd (Ray's launcher waits 20 s for SSH)
    job = new_job(system, "quick")
    first = cluster_name(job.run_id)
    system.standin.refuse_ssh(lambda tags: tags.get(RAY_CLUSTER_TAG) == first)
    monkeypatch.setenv("AUTOSCALER_NODE_START_WAIT_S", "20")
    try:
        # When the driver runs it (its retry is launched through the local bastion after 1 s)
        thread, result = run_driver_in_thread(driver_settings(system), job)
        queued = finished(thread, result)
        assert (queued.status, queued.attempt) in {(JobStatus.QUEUED, 2), (JobStatus.LAUNCHING, 2)}
        assert_cluster_gone(system, job)
        wait_until(lambda: system.store.get(job.job_id).is_terminal, JOB_TIMEOUT_S, "the second attempt")
    finally:
        system.standin.refuse_ssh(lambda tags: False)
    # Then the second attempt ran on a cluster of its own and SUCCEEDED; the first is on the record
    done = system.store.get(job.job_id)
    assert (done.status, done.attempt) == (JobStatus.SUCCEEDED, 2), (done.reason_code, done.reason_message)
    (attempt,) = done.attempts
    assert attempt["reason_code"] == ReasonCode.PROVISIONING_FAILED and "ray up" in attempt["reason_message"]
    assert done.cluster and done.cluster["cluster_name"] == f"{first}-a2"
    assert_cluster_gone(system, job, attempt=2)
    fault_row(FaultRow("`ray up` failing (head without sshd); retried on a new cluster", "ec2 stand-in",
                       done.status.value, f"{attempt['reason_code']} → none", done.attempt,
                       attempt["cluster_seconds"], 0, 0, 0))  # fmt: skip  (the failed attempt's cluster time)


def launch_expired_orphan(system: LocalSystem) -> tuple[str, str]:
    """An instance of a cluster nobody tears down any more, past its expires-at (what a driver that
    died with the bastion leaves behind), launched by the stand-in itself: (cluster, instance id)."""
    deployment = system.standin.deployment
    cluster = f"{CLUSTER_NAME_PREFIX}orphan-{uuid.uuid4().hex[:8]}"
    expired_at = iso(utc_now() - timedelta(minutes=1))
    tags = [{"Key": RAY_CLUSTER_TAG, "Value": cluster}, {"Key": EXPIRES_AT_TAG, "Value": expired_at}]
    (instance,) = system.standin.client("ec2").run_instances(
        ImageId=deployment.ami_id, InstanceType="t3.micro", MinCount=1, MaxCount=1, KeyName=KEY_NAME,
        SubnetId=deployment.subnet_ids[0], SecurityGroupIds=list(deployment.security_group_ids),
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )["Instances"]  # fmt: skip
    return cluster, instance["InstanceId"]


def standin_to_template(system: LocalSystem, stack: Any, node_role: str) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The stand-in's resources renamed to the synthesized template's (as tests.infrastructure's
    render shows them: region eu-west-1), for judging the stand-in's requests by the template's
    policies. Each rename is a delta of deltas.py: the seeded ids (subnets, security group, image,
    instance profile) and the stand-in's imported key pair (a deployment lets Ray make its own)."""
    from cdk.cluster_access import RAY_KEY_PAIR_PREFIX
    from cdk.stack import CANONICAL_OWNER
    from tests.infrastructure.conftest import render

    deployment = system.standin.deployment
    granted = [render(r) for d in stack_documents(stack.template_json, node_role) for st in as_list(d["Statement"])
               if st.get("Sid") == "RunInOurNetwork" for r in as_list(st["Resource"])]  # fmt: skip
    subnets = [r for r in granted if ":subnet/" in r]
    [group] = [r for r in granted if ":security-group/" in r]
    here = f"arn:aws:ec2:{REGION}:123456789012:"
    renames = {
        **{f"{here}subnet/{sid}": subnets[i % len(subnets)] for i, sid in enumerate(deployment.subnet_ids)},
        **{f"{here}security-group/{gid}": group for gid in deployment.security_group_ids},
        f"{here}key-pair/{KEY_NAME}": f"arn:aws:ec2:eu-west-1:123456789012:key-pair/{RAY_KEY_PAIR_PREFIX}_standin",
        f"arn:aws:iam::123456789012:role/{PROFILE_NAME}": render(stack.resolve(stack.stack.nodes.role.role_arn)),
        here: "arn:aws:ec2:eu-west-1:123456789012:",
        f"arn:aws:ec2:{REGION}::image/": "arn:aws:ec2:eu-west-1::image/",
        f"arn:aws:s3:::{system.settings.bucket}": render(stack.resolve(stack.stack.storage.bucket_arn)),
        f"arn:aws:ssm:{REGION}:": "arn:aws:ssm:eu-west-1:",
    }
    image_owner = system.standin.client("ec2").describe_images(ImageIds=[deployment.ami_id])["Images"][0]["OwnerId"]
    # the stand-in's image plays the stack's default node image (Canonical's Ubuntu)
    return renames, {"ec2:Owner": {image_owner: CANONICAL_OWNER}}


@STANDIN_E2E
def test_each_role_is_granted_exactly_the_ec2_calls_it_makes_or_a_written_reason(
    system: LocalSystem, tmp_path: Path
) -> None:
    # Given what each role asked of moto's EC2 in this module so far, told apart by its access key
    # id: the bastion (driver, `ray up`/`ray down`), the nodes (the head's autoscaler), the watchdog
    # (takeovers when the killed-driver tests ran before)
    def e2e_ran() -> bool:
        return any(j.pipeline == "sales-summary" and j.status == JobStatus.SUCCEEDED for j in system.store.list_jobs())

    if not e2e_ran():  # run alone, or on a stand-in that did not run the e2e test: its job first
        print(f"\nno sales-summary job on this stand-in yet ({len(system.store.list_jobs())} jobs): running one")
        upload_sample_files(system, files=2, rows_per_file=2_000)
        wait_for_jobs(system.store, lambda js: any(j.pipeline == "sales-summary" and j.is_terminal for j in js),
                      JOB_TIMEOUT_S)  # fmt: skip
        assert e2e_ran(), [(j.pipeline, j.status, j.reason_code) for j in system.store.list_jobs()]
    # And an orphan past its expires-at, terminated by a watchdog sweep (the reaper)
    cluster, orphan = launch_expired_orphan(system)
    report = build_watchdog(system.settings).sweep()
    assert f"{cluster}/{orphan}" in report.reaped, report
    wait_until(lambda: orphan not in system.standin.materializer.nodes, 30, "the orphan's node to go")
    calls = system.moto.ec2_calls  # type: ignore[union-attr]
    used = used_by_role(calls, LOCAL_ACCESS_KEY_IDS)
    # (each role's key came from where that role runs; no EC2 call was signed by anyone else)
    sources = {role: {src for (src, key, _) in calls if key == key_id}
               for role, key_id in LOCAL_ACCESS_KEY_IDS.items()}  # fmt: skip
    assert sources == {"bastion": {"127.0.0.1"}, "nodes": {NODES_SOURCE}, "watchdog": {"127.0.0.1"}}, sources
    assert {key for (_, key, _) in calls} <= {*LOCAL_ACCESS_KEY_IDS.values(), OBSERVER_KEY_ID}
    assert {"ec2:RunInstances", "ec2:DescribeInstances", "ec2:TerminateInstances"} <= used["bastion"]
    assert "ec2:RunInstances" in used["nodes"], "the head's autoscaler launched no worker"
    assert {"ec2:DescribeInstances", "ec2:TerminateInstances"} <= used["watchdog"]
    # When the CDK app is synthesized
    from cdk.cluster_access import EC2_GRANTED_UNSEEN
    from tests.infrastructure.conftest import render, synthesize

    stack = synthesize(tmp_path / "cdk")
    # Then each role is granted every EC2 action it called, and every EC2 action it is granted
    # it called, or has a written reason beside the grant (cdk.cluster_access.EC2_GRANTED_UNSEEN)
    problems = []
    for role, logical_id in contract_roles(stack).items():
        granted = granted_ec2_actions(stack.template_json, logical_id, used[role])
        explained = EC2_GRANTED_UNSEEN[role]
        print(f"\n{role}: used {sorted(used[role])}\n  granted {sorted(granted)}\n  explained {sorted(explained)}")
        problems += contract_violations(role, used[role], granted, explained)
    assert not problems, "\n".join(problems)
    # And every request the roles made, with its resources and request context, is one IAM
    # allows that role (EC2 one authorization per resource of a call, S3 and SSM by ARN; the
    # bastion's S3/SSM key is shared locally with the Lambdas, so only its EC2 and PassRole);
    # every GET/HEAD that found no key got the 404 S3 gives that role (not 403); and what a
    # node must never do is denied
    requests = system.moto.record_requests()  # type: ignore[union-attr]
    logical = contract_roles(stack)
    renames, context_renames = standin_to_template(system, stack, logical["nodes"])
    seen = {role: [r for r in requests if r.key_id == LOCAL_ACCESS_KEY_IDS[role]
                   and (role != "bastion" or r.action.startswith(("ec2:", "iam:")))]
            for role in ("bastion", "nodes", "watchdog")}  # fmt: skip
    assert {r.action for r in seen["nodes"]} >= {"s3:GetObject", "s3:PutObject", "ssm:GetParameter", "ec2:RunInstances",
                                                 "iam:PassRole"}, seen["nodes"]  # fmt: skip
    assert any(r.status == 404 for r in seen["nodes"]), "no node looked at a key before writing it?"
    for role, calls in seen.items():
        print(f"\n{role}: requests {sorted({(r.action, r.status) for r in calls})}")
    verdicts = []
    for role, calls in seen.items():
        documents = stack_documents(stack.template_json, logical[role])
        verdicts += request_violations(role, documents, calls, renames, render, context_renames)
    assert not verdicts, "\n".join(verdicts)
    nodes = stack_documents(stack.template_json, logical["nodes"])
    bucket = renames[f"arn:aws:s3:::{system.settings.bucket}"]
    assert all(r.status < 400 or r.status == 404 for r in seen["nodes"]), [r for r in seen["nodes"] if r.status >= 400]
    must_deny = [
        ("s3:PutObject", f"{bucket}/incoming/sales/forged.csv", {}),  # a node writes no input
        ("s3:DeleteObject", f"{bucket}/outputs/sales-summary/part-0.parquet", {}),
        ("s3:GetObject", "arn:aws:s3:::another-bucket/secret.csv", {}),
        ("s3:ListBucket", bucket, {"s3:prefix": "elsewhere/"}),
        ("ssm:PutParameter", "arn:aws:ssm:eu-west-1:123456789012:parameter/raylauncher/ray-auth/j/j", {}),
        ("ssm:GetParameter", "arn:aws:ssm:eu-west-1:123456789012:parameter/raylauncher/bastion/env", {}),
        ("ec2:TerminateInstances", "arn:aws:ec2:eu-west-1:123456789012:instance/i-0123456789abcdef0", {}),
    ]
    allowed = [(a, r) for a, r, c in must_deny if evaluate(nodes, a, r, c, render) == ALLOWED]
    assert allowed == [], allowed


@STANDIN_FAULTS
def test_nothing_of_a_node_outlives_its_instance(system: LocalSystem) -> None:
    # Given every scenario of this module has run
    # Then no instance is left running and no node is left
    running = [i["InstanceId"] for i in system.standin.instances() if i["State"]["Name"] in ("pending", "running")]
    assert not running
    wait_until(lambda: not system.standin.materializer.nodes, 10, "the materializer")
    assert all(not namespace_pids(ns) for ns in our_namespaces(system.standin.id))


# -- warm clusters and debug holds (raylauncher/warm.py) --------------------------------------------


def launched(system: LocalSystem, pipeline: str) -> Job:
    """A job launched as intake launches it: admission (a warm cluster, or a slot + a driver)."""
    from raylauncher.wiring import build_launcher

    return build_launcher(system.settings, system.store).try_launch(system.store.create(Job.new(pipeline, "api")))


def ended(system: LocalSystem, job: Job) -> Job:
    wait_until(lambda: system.store.get(job.job_id).is_terminal, JOB_TIMEOUT_S, f"{job.job_id} to end")
    return system.store.get(job.job_id)


def to_running_s(job: Job) -> float:
    return (parse_iso(job.phase_times["RUNNING"]) - parse_iso(job.created_at)).total_seconds()


def cluster_status(system: LocalSystem, job: Job) -> str:
    from raylauncher.warm import cluster_key

    try:
        return system.store.clusters.get(cluster_key(job.run_id)).status.value
    except Exception:  # noqa: BLE001 - no record (yet)
        return "-"


def expiry_of(system: LocalSystem, job: Job) -> str:
    (head,) = instances_of(system, job)
    return {t["Key"]: t["Value"] for t in head["Tags"]}[EXPIRES_AT_TAG]


def holder_of(job: Job) -> psutil.Process:
    for proc in psutil.process_iter(["cmdline"]):
        if (proc.info["cmdline"] or [])[-3:] == ["driver", "run", job.job_id]:
            return proc
    raise AssertionError(f"no driver process for {job.job_id}")


def record_warm_pair(cold: Job, warm: Job) -> None:
    """Object created -> RUNNING of a cold and a warm job, as a bench row (with the machine) that
    bench/report.py renders next to bench/warm_clusters.py's."""
    from bench.record import write_result

    pair = {"cold_created_to_running_s": round(to_running_s(cold), 2),
            "warm_created_to_running_s": round(to_running_s(warm), 2)}  # fmt: skip
    print(f"\nstand-in: job created -> RUNNING cold {pair['cold_created_to_running_s']} s, "
          f"warm {pair['warm_created_to_running_s']} s")  # fmt: skip
    write_result("warm_clusters_standin_test", {"figures": pair, "pairs": [pair], "params": {
        "backend": "ec2", "keep_warm_seconds": 10, "pairs": 1,
        "test": "tests/e2e/test_ec2_standin.py::test_warm_clusters_two_jobs_share_one_ray_up_then_idle_teardown_and_a_killed_holder",
    }})  # fmt: skip


@STANDIN_WARM
def test_warm_clusters_two_jobs_share_one_ray_up_then_idle_teardown_and_a_killed_holder(
    system: LocalSystem, fault_row: Callable[[FaultRow], FaultRow]
) -> None:
    # Given a pipeline keeping its clusters warm for 10 s, and its first job (a real `ray up`)
    first = launched(system, "warm")
    first = ended(system, first)
    assert (first.status, first.kept) == (JobStatus.SUCCEEDED, "warm"), (first.reason_code, first.reason_message)
    # (right after the keep, the reaper's expiry bounds the warm time: keep 10 s + lease + margin,
    # not the run deadline; it is moved once the keep has committed)
    succeeded = parse_iso(first.phase_times["SUCCEEDED"])
    wait_until(lambda: parse_iso(expiry_of(system, first)) - succeeded < timedelta(seconds=10 + 10 + 900 + 60), 10,
               "the expiry moved at the keep")  # fmt: skip
    kept_until = parse_iso(expiry_of(system, first))
    # When a second job arrives within the window
    second = launched(system, "warm")
    wait_until(lambda: system.store.get(second.job_id).status in (JobStatus.RUNNING, *TERMINAL), JOB_TIMEOUT_S, "RUNNING")
    reused_until = parse_iso(expiry_of(system, first))  # while it runs: the run deadline's bound again
    second = ended(system, second)
    # Then it ran on the same cluster: one `ray up` (instances of the first job's cluster only)
    assert (second.status, second.warm) == (JobStatus.SUCCEEDED, True), (second.reason_code, second.reason_message)
    assert instances_of(system, second) == [] and len(instances_of(system, first)) == 1
    # (the times are recorded for bench/README.md, not asserted)
    record_warm_pair(first, second)
    # And the reaper's expiry was moved forward when it was reused
    assert reused_until > parse_iso(second.phase_times["RUNNING"]) + timedelta(hours=1) > kept_until
    assert parse_iso(expiry_of(system, first)) < reused_until  # kept warm again after it: the keep bound
    # And once idle for 10 s it is torn down once: every instance terminated
    wait_until(lambda: cluster_status(system, first) == "TORN_DOWN", 180, "the idle teardown")
    assert_cluster_gone(system, first)
    # And a job after the window gets a new cluster
    third = ended(system, launched(system, "warm"))
    assert (third.status, third.warm) == (JobStatus.SUCCEEDED, False) and instances_of(system, third)
    wait_until(lambda: cluster_status(system, third) == "WARM", 30, "warm")
    # When its holder is SIGKILLed while the cluster is warm
    holder_of(third).kill()
    killed = time.monotonic()
    # Then the watchdog tears the cluster down within the lease + one sweep
    watchdog = build_watchdog(system.settings)
    wait_until(lambda: bool(watchdog.sweep().clusters_torn_down) or cluster_status(system, third) == "TORN_DOWN",
               120, "the watchdog's teardown")  # fmt: skip
    wait_until(lambda: all(i["State"]["Name"] == "terminated" for i in instances_of(system, third)), 60, "terminated")
    outlived = time.monotonic() - killed
    assert outlived <= system.settings.driver_lease_s + 60, outlived
    assert_cluster_gone(system, third)
    fault_row(FaultRow("holder SIGKILLed while warm", "ec2 stand-in", "TORN_DOWN", "none", 1, round(outlived, 1),
                       0, 0, 0))  # fmt: skip
    # And the next job still runs
    fourth = ended(system, launched(system, "warm"))
    assert (fourth.status, fourth.warm) == (JobStatus.SUCCEEDED, False)
    holder_of(fourth).send_signal(signal.SIGTERM)  # a signal ends the hold at once
    wait_until(lambda: cluster_status(system, fourth) == "TORN_DOWN", 180, "teardown after SIGTERM")
    assert_cluster_gone(system, fourth)


@STANDIN_WARM
def test_a_failed_jobs_cluster_is_held_for_debugging_then_released_by_command_or_by_time(
    system: LocalSystem, fault_row: Callable[[FaultRow], FaultRow]
) -> None:
    from raylauncher.authz import Caller
    from raylauncher.warm import cluster_key
    from raylauncher.watchdog import WATCHDOG_OWNER
    from raylauncher.wiring import build_api_services

    # Given two pipelines holding the cluster of a job that failed for its own reason, one for
    # 600 s and one for 15 s (both clusters brought up together)
    job, short = launched(system, "held"), launched(system, "held-short")
    short = ended(system, short)
    assert (short.status, short.kept) == (JobStatus.FAILED, "held"), (short.reason_code, short.reason_message)
    wait_until(lambda: cluster_status(system, short) == "HELD", 30, "held")
    assert all(i["State"]["Name"] == "running" for i in instances_of(system, short))
    job = ended(system, job)
    assert (job.status, job.reason_code, job.kept) == (JobStatus.FAILED, ReasonCode.RAY_JOB_FAILED, "held")
    wait_until(lambda: cluster_status(system, job) == "HELD", 30, "held")
    instances = instances_of(system, job)
    assert instances and all(i["State"]["Name"] == "running" for i in instances)
    # When a person releases the first
    released = time.monotonic()
    build_api_services(system.settings).release(job.job_id, Caller(arn=None))
    # Then it is torn down: every instance terminated
    wait_until(lambda: cluster_status(system, job) == "TORN_DOWN", 180, "the release")
    assert_cluster_gone(system, job)
    fault_row(FaultRow("held cluster released by command", "ec2 stand-in", "TORN_DOWN", "none", 1,
                       round(time.monotonic() - released, 1), 0, 0, 0))  # fmt: skip
    # And nobody releases the second: its holder tears it down once its 15 s have run out: the
    # record's held time is the hold (not before its time), and short of the hold + a lease
    # (after which the watchdog would have taken it over)
    wait_until(lambda: cluster_status(system, short) == "TORN_DOWN", 180, "the hold's end")
    assert_cluster_gone(system, short)
    gone = system.store.clusters.get(cluster_key(short.run_id))
    assert 15 - 1 <= gone.held_seconds < 15 + system.settings.driver_lease_s, gone.held_seconds
    assert gone.owner != WATCHDOG_OWNER  # its holder, not a takeover
