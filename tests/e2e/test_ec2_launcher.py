"""The EC2 backend through the driver, with a fake `ray` first on PATH (a real process boundary
that records its argv and plays scripted outcomes) while the Jobs API is a real local Ray head.

In every scenario the recorded calls prove that no code path leaves the cluster up. The driver
is wired as on the bastion: admission control's `requeue` queues a retried attempt, and its
`finished` relaunches it through a bastion that runs the driver in a thread. Where a scenario
is a row of the fault table, the fake `ray` keeps its cluster as EC2 instances in moto, so the
clusters left are counted by tag there.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from ray.job_submission import JobSubmissionClient

from raylauncher import aws
from raylauncher.admission import TOTAL_SLOTS_ID, Launcher
from raylauncher.bastion import Bastion
from raylauncher.clusters.base import ClusterHandle
from raylauncher.clusters.ec2 import Ec2ClusterInstances, Ec2RayBackend
from raylauncher.clusters.ec2_config import cluster_name
from raylauncher.clusters.local import LocalRayBackend
from raylauncher.config import PipelinesConfig, Settings, load_ec2_deployment, parse_pipelines
from raylauncher.control import request_cancel
from raylauncher.driver import Driver
from raylauncher.model import Job, JobStatus, ReasonCode, parse_iso, run_id
from raylauncher.objects import S3ObjectStore
from raylauncher.store import IDEMPOTENCY_TABLE, JOB_TABLE, DynamoJobStore
from raylauncher.teardown import Ec2ClusterInstances as AliveByTag
from tests.doubles import MemoryClusterTokens
from tests.faults import FaultRow

# pytest-xdist: one worker runs these tests (they share one moto EC2 world for the module).
pytestmark = pytest.mark.xdist_group("ec2-launcher")

BACKEND = "ec2 (fake ray)"

PROJECT_DIR = Path(__file__).resolve().parents[2]
FAKES = Path(__file__).with_name("fakes")
QUICK = "import os\nprint('probe: done in', os.environ.get('AWS_REGION'), flush=True)\n"
SLOW = "import time\nprint('probe: sleeping', flush=True)\ntime.sleep(600)\n"
HANG = {"sleep": 600}


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    """One real local Ray head whose Jobs API stands in for the EC2 head's."""
    config = parse_pipelines(
        {"pipelines": [{"name": "head", "trigger": {"prefix": "in/"}, "entrypoint": {"script": "jobs/x.py"},
                        "cluster": {"local_num_cpus": 2}, "output_prefix": "out/"}]}
    )  # fmt: skip
    backend = LocalRayBackend(tmp_path_factory.mktemp("head"), os.environ, job_env={}, tokens=MemoryClusterTokens())
    holder = Job.new("head", "s3")
    handle = backend.up(holder, config.pipelines[0], 90, lambda: False)
    yield handle
    backend.down(holder)


class ThreadBastion(Bastion):
    """The bastion's "run the driver for job J", as a thread of this process."""

    def __init__(self) -> None:
        self.driver: Driver | None = None
        self.threads: list[threading.Thread] = []

    def run_driver(self, job_id: str) -> str:
        assert self.driver is not None
        thread = threading.Thread(target=self.driver.run, args=(job_id,), name=f"driver-{job_id}", daemon=True)
        thread.start()
        self.threads.append(thread)
        return f"thread:{job_id}"


@dataclass
class Launch:
    """One scenario: a fake `ray`, the EC2 backend using it, a driver, and the job store."""

    settings: Settings
    store: DynamoJobStore
    ray_log: Path
    backend: Ec2RayBackend
    driver: Driver
    head: ClusterHandle
    launcher: Launcher
    bastion: ThreadBastion

    def records(self, suffix: str = "") -> list[dict[str, Any]]:
        path = Path(str(self.ray_log) + suffix)
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def calls(self) -> list[list[str]]:
        return [r["argv"] for r in self.records()]

    def exits(self, command: str) -> list[dict[str, Any]]:
        """The `ray <command>` calls that ran to their end (a killed one never does)."""
        return [r for r in self.records(".exits") if r["argv"][0] == command]

    def alive(self, job: Job) -> int:
        """Instances still alive in moto, by tag, of every cluster the job's attempts had."""
        by_tag = AliveByTag(aws.client("ec2", self.settings))
        return sum(len(by_tag(cluster_name(run_id(job.job_id, n)))) for n in range(1, job.attempt + 1))

    def launched(self, job: Job) -> int:
        """Instances the fake `ray up` launched in moto for the job's clusters, in any state."""
        ec2 = aws.client("ec2", self.settings)
        names = [cluster_name(run_id(job.job_id, n)) for n in range(1, job.attempt + 1)]
        pages = ec2.get_paginator("describe_instances").paginate(Filters=[{"Name": "tag:ray-cluster-name", "Values": names}])
        return sum(len(r["Instances"]) for page in pages for r in page["Reservations"])

    def launch(self, job: Job) -> Job:
        """Admission control launches the QUEUED job: a slot, LAUNCHING, the driver (a thread)."""
        return self.launcher.try_launch(job)

    def until_done(self, job: Job, timeout_s: float = 120) -> Job:
        """Wait until the job is terminal and every driver thread it started has returned."""
        self.wait_for(lambda: self.store.get(job.job_id).is_terminal, timeout_s)
        for thread in self.bastion.threads:
            thread.join(timeout=30)
            assert not thread.is_alive(), f"{thread.name} is still running"
        return self.store.get(job.job_id)

    def slots_used(self) -> int:
        item = aws.client("dynamodb", self.settings).get_item(
            TableName=self.settings.idempotency_table, Key={"id": {"S": TOTAL_SLOTS_ID}}).get("Item") or {}  # fmt: skip
        return int(item.get("used", {}).get("N", "0"))

    def commands(self) -> list[str]:
        return [argv[0] for argv in self.calls()]

    def pids(self, command: str) -> list[int]:
        return [json.loads(x)["pid"] for x in self.ray_log.read_text().splitlines() if json.loads(x)["argv"][0] == command]

    def new_job(self) -> Job:
        job = self.store.create(Job.new("probe", "api"))
        return self.store.transition(job, JobStatus.LAUNCHING)

    def run_in_thread(self, job: Job) -> threading.Thread:
        thread = threading.Thread(target=self.driver.run, args=(job.job_id,), daemon=True)
        thread.start()
        return thread

    def wait_for(self, condition: Callable[[], bool], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"timed out; ray calls so far: {self.calls()}"
            time.sleep(0.2)


def assert_cluster_left_down(launch: Launch, job: Job, attempt: int = 1) -> None:
    """The attempt's cluster cannot be up: every `ray up` of its config file is followed by a
    `ray down` of the same file, and no fake launcher process is still running."""
    calls = launch.calls()
    config_file = str(launch.backend.config_path(run_id(job.job_id, attempt)))
    ups = [i for i, argv in enumerate(calls) if argv[0] == "up" and argv[-1] == config_file]
    downs = [i for i, argv in enumerate(calls) if argv[0] == "down" and argv[-1] == config_file]
    assert ups, calls
    assert downs and downs[-1] > ups[-1], f"no `ray down` after the last `ray up`: {calls}"
    assert all(calls[i] == ["down", "-y", config_file] for i in downs)
    assert calls[ups[0]] == ["up", "-y", "--no-config-cache", config_file]
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in launch.pids("up")), "a `ray up` process is still running"  # fmt: skip


def seconds_to_teardown(launch: Launch, fault_at: float, attempt: int = 1, job: Job | None = None) -> float:
    """From the fault (epoch seconds) to the end of the last `ray down` of that attempt's
    cluster that exited 0 (the cluster's teardown)."""
    config_file = str(launch.backend.config_path(run_id(job.job_id, attempt))) if job else None
    ends = [r["t"] for r in launch.exits("down") if r["rc"] == 0 and (config_file is None or r["argv"][-1] == config_file)]
    assert ends, f"no `ray down` exited 0: {launch.records('.exits')}"
    return round(max(ends) - fault_at, 1)


def launcher_row(scenario: str, launch: Launch, done: Job, after_fault_s: float | None) -> FaultRow:
    """The fault-table row of a scenario on the fake launcher (API-triggered: no input objects)."""
    return FaultRow(scenario=scenario, backend=BACKEND, terminal_state=done.status.value,
                    reason=done.reason_code or "", attempts=done.attempt, cluster_seconds_after_fault=after_fault_s,
                    clusters_left=launch.alive(done), objects_lost=0, objects_processed_twice=0)  # fmt: skip


@pytest.fixture
def launch_factory(
    settings: Settings, ray_head: ClusterHandle, tmp_path: Path
) -> Callable[..., Launch]:
    ddb = aws.client("dynamodb", settings)
    ddb.create_table(**JOB_TABLE.create_table_kwargs(settings.table))
    ddb.create_table(**IDEMPOTENCY_TABLE.create_table_kwargs(settings.idempotency_table))  # cluster slots
    s3 = aws.client("s3", settings)
    s3.create_bucket(Bucket=settings.bucket)
    store = DynamoJobStore(ddb, settings.table)
    deployment = load_ec2_deployment(PROJECT_DIR / "examples" / "ec2-deployment.json")

    def make(
        script: dict[str, Any], entrypoint: str = QUICK, run_timeout_s: int = 600,
        provisioning_timeout_s: float = 60, check_instances: bool = False, instances_class: type = Ec2ClusterInstances,
        retry: dict[str, Any] | None = None, instances_in_moto: bool = False,
    ) -> Launch:  # fmt: skip
        """`retry`: the pipeline's retry policy (the default: 2 attempts, 30 s apart);
        `instances_in_moto`: the fake `ray up` launches the head as an EC2 instance in moto."""
        (tmp_path / "jobs" / "probe").mkdir(parents=True, exist_ok=True)
        (tmp_path / "jobs" / "probe" / "main.py").write_text(entrypoint)
        pipelines: PipelinesConfig = parse_pipelines(
            {"pipelines": [{"name": "probe", "trigger": {"prefix": "incoming/probe/"},
                            "entrypoint": {"script": "jobs/probe/main.py"}, "run_timeout_s": run_timeout_s,
                            # the stand-in head is one node: no workers to wait for
                            "cluster": {"min_workers": 0, "max_workers": 0}, "output_prefix": "outputs/probe/",
                            **({"retry": retry} if retry is not None else {})}]}
        )  # fmt: skip
        script_file, ray_log = tmp_path / "ray-script.json", tmp_path / "ray-calls.jsonl"
        script_file.write_text(json.dumps(script))
        env = {
            **os.environ,
            # the fake `ray` comes first; its python3 is this one (boto3, yaml)
            "PATH": f"{FAKES}:{Path(sys.executable).parent}:{os.environ['PATH']}",
            "FAKE_RAY_SCRIPT": str(script_file),
            "FAKE_RAY_LOG": str(ray_log),
            **({"FAKE_RAY_EC2_ENDPOINT": str(settings.endpoint_url)} if instances_in_moto else {}),
        }
        backend = Ec2RayBackend(
            deployment, tmp_path / "clusters", env,
            MemoryClusterTokens(fixed=ray_head.auth_token),  # every "cluster" is the one real head
            ray_bin="ray",
            dashboard_port=int(ray_head.dashboard_url.rsplit(":", 1)[1]),
            head_python=sys.executable,
            teardown_timeout_s=30, down_attempts=3, down_retry_delay_s=0.2,
            instances=instances_class(aws.client("ec2", settings)) if check_instances else None,
        )  # fmt: skip
        bastion = ThreadBastion()
        launcher = Launcher(store, bastion, pipelines, ddb, settings.idempotency_table, settings.max_clusters_total)
        driver = Driver(
            store=store, objects=S3ObjectStore(s3, settings.bucket), backend=backend, pipelines=pipelines,
            jobs_client=lambda url, headers: JobSubmissionClient(url, headers=headers), project_dir=tmp_path,
            provisioning_timeout_s=provisioning_timeout_s, poll_interval_s=0.3,
            requeue=launcher.requeue, on_finished=launcher.finished,  # as build_driver wires it
        )  # fmt: skip
        bastion.driver = driver
        return Launch(settings, store, ray_log, backend, driver, ray_head, launcher, bastion)

    return make


def test_up_succeeds_job_runs_down_once(launch_factory: Callable[..., Launch]) -> None:
    # Given `ray up` succeeds
    launch = launch_factory({"up": [{"stdout": "Ray cluster is up"}]})
    job = launch.new_job()
    # When the driver runs the job
    done = launch.driver.run(job.job_id)
    # Then the job SUCCEEDED on the head's Jobs API, with one teardown
    assert done.status == JobStatus.SUCCEEDED, (done.reason_code, done.reason_message)
    assert launch.commands() == ["up", "get-head-ip", "rsync-down", "down"]
    assert done.teardown_attempts == 1
    assert done.cluster and done.cluster["cluster_name"] == cluster_name(job.job_id)
    logs = JobSubmissionClient(launch.head.dashboard_url, headers=launch.head.auth_headers).get_job_logs(job.job_id)
    # in the deployment's region: a node started over SSH has no AWS_* variables of its own
    assert f"probe: done in {launch.backend.region}" in logs, logs
    # and the rendered config that `ray up` got is this job's
    assert f"cluster_name: {cluster_name(job.job_id)}" in launch.backend.config_path(job.job_id).read_text()
    assert_cluster_left_down(launch, job)


def test_up_fails_down_still_runs_and_reason_has_stderr_tail(launch_factory: Callable[..., Launch]) -> None:
    # Given `ray up` fails half-way, and a pipeline that allows one attempt only
    launch = launch_factory({"up": [{"rc": 1, "stderr": "boto3 error\nFailed to setup head node.\n"}]},
                            retry={"max_attempts": 1})  # fmt: skip
    job = launch.new_job()
    # When the driver runs the job
    done = launch.driver.run(job.job_id)
    # Then it FAILED(PROVISIONING_FAILED) with the launcher's last words, and `ray down` ran
    assert (done.status, done.reason_code) == (JobStatus.FAILED, ReasonCode.PROVISIONING_FAILED)
    assert "Failed to setup head node." in (done.reason_message or "")
    assert launch.commands() == ["up", "rsync-down", "down"]
    assert (done.attempt, done.attempts) == (1, [])
    assert_cluster_left_down(launch, job)


def test_up_fails_once_and_the_retry_succeeds_on_a_new_cluster(
    launch_factory: Callable[..., Launch], fault_row: Callable[[FaultRow], FaultRow]
) -> None:
    # Given `ray up` fails half-way on the first attempt only (its head instance already
    # launched), and the default retry policy (2 attempts) with a short backoff
    launch = launch_factory({"up": [{"rc": 1, "stderr": "boto3 error\nFailed to setup head node.\n"},
                                    {"stdout": "Ray cluster is up"}]},
                            retry={"backoff_s": 1}, check_instances=True, instances_in_moto=True)  # fmt: skip
    job = launch.store.create(Job.new("probe", "api"))
    # When admission control launches it (the bastion runs the driver)
    launch.launch(job)
    done = launch.until_done(job)
    # Then attempt 1 is on the record with its reason and the launcher's words
    assert (done.status, done.attempt) == (JobStatus.SUCCEEDED, 2), (done.reason_code, done.reason_message)
    (first,) = done.attempts
    assert (first["attempt"], first["run_id"], first["status"], first["reason_code"]) == (
        1, job.job_id, "FAILED", "PROVISIONING_FAILED")  # fmt: skip
    assert "Failed to setup head node." in first["reason_message"] and done.reason_code is None
    # and attempt 2 ran on a new cluster, rl-<job>-a2, after the backoff, as Ray job <job>-a2
    assert done.cluster and done.cluster["cluster_name"] == f"rl-{job.job_id}-a2"
    assert launch.commands() == ["up", "rsync-down", "down", "up", "get-head-ip", "rsync-down", "down"]
    ups = [r for r in launch.records() if r["argv"][0] == "up"]
    assert [Path(r["argv"][-1]).name for r in ups] == [f"{job.job_id}.yaml", f"{job.job_id}-a2.yaml"]
    assert ups[1]["t"] >= parse_iso(first["ended_at"]).timestamp() + 1 - 0.05
    assert "probe: done" in JobSubmissionClient(launch.head.dashboard_url, headers=launch.head.auth_headers).get_job_logs(f"{job.job_id}-a2")
    # and both clusters are gone (none of their instances alive in moto), the slot given back
    assert_cluster_left_down(launch, done, attempt=1)
    assert_cluster_left_down(launch, done, attempt=2)
    assert (launch.launched(done), launch.alive(done), launch.slots_used()) == (2, 0, 0)
    after = seconds_to_teardown(launch, launch.exits("up")[0]["t"], 1, done)
    fault_row(launcher_row("`ray up` fails on attempt 1 (retried on a new cluster)", launch, done, after))


def test_up_failing_on_every_attempt_fails_the_job_after_the_last(
    launch_factory: Callable[..., Launch], fault_row: Callable[[FaultRow], FaultRow]
) -> None:
    # Given `ray up` always fails half-way, and the default retry policy with a short backoff
    launch = launch_factory({"up": [{"rc": 1, "stderr": "InsufficientInstanceCapacity\n"}]},
                            retry={"backoff_s": 0.5}, check_instances=True, instances_in_moto=True)  # fmt: skip
    job = launch.store.create(Job.new("probe", "api"))
    # When admission control launches it
    launch.launch(job)
    done = launch.until_done(job)
    # Then each attempt's cluster came down, and after the second the job FAILED for good with
    # the last attempt's reason; the first attempt is on the record
    assert (done.status, done.reason_code, done.attempt) == (JobStatus.FAILED, ReasonCode.PROVISIONING_FAILED, 2)
    assert "InsufficientInstanceCapacity" in (done.reason_message or "")
    assert [(a["run_id"], a["reason_code"]) for a in done.attempts] == [(job.job_id, "PROVISIONING_FAILED")]
    assert launch.commands() == ["up", "rsync-down", "down", "up", "rsync-down", "down"]
    assert_cluster_left_down(launch, done, attempt=1)
    assert_cluster_left_down(launch, done, attempt=2)
    assert (launch.launched(done), launch.alive(done), launch.slots_used()) == (2, 0, 0)
    # the longest a failed attempt's cluster outlived its failure
    after = max(seconds_to_teardown(launch, up["t"], n, done) for n, up in enumerate(launch.exits("up"), start=1))
    fault_row(launcher_row("`ray up` fails on every attempt", launch, done, after))


def test_up_hangs_past_the_provisioning_deadline(
    launch_factory: Callable[..., Launch], fault_row: Callable[[FaultRow], FaultRow]
) -> None:
    # Given `ray up` hangs (its head instance launched), a 3 s provisioning deadline, and one
    # attempt allowed (a retry would only repeat the wait)
    launch = launch_factory({"up": [HANG]}, provisioning_timeout_s=3, retry={"max_attempts": 1},
                            check_instances=True, instances_in_moto=True)  # fmt: skip
    job = launch.new_job()
    # When the driver runs the job
    done = launch.driver.run(job.job_id)
    # Then `ray up` was killed, `ray down` ran, and the job TIMED_OUT in provisioning
    assert (done.status, done.reason_code) == (JobStatus.TIMED_OUT, ReasonCode.PROVISIONING_TIMEOUT)
    assert launch.commands() == ["up", "rsync-down", "down"]
    assert_cluster_left_down(launch, job)
    assert (launch.launched(done), launch.alive(done)) == (1, 0)
    deadline = parse_iso(done.phase_times[JobStatus.PROVISIONING.value]).timestamp() + 3
    after = seconds_to_teardown(launch, deadline, 1, done)
    fault_row(launcher_row("provisioning deadline passes (`ray up` hangs)", launch, done, after))


def test_job_past_the_run_deadline_is_stopped_and_torn_down(launch_factory: Callable[..., Launch]) -> None:
    # Given a job that would sleep ten minutes under a 10 s run deadline
    launch = launch_factory({}, entrypoint=SLOW, run_timeout_s=10)
    job = launch.new_job()
    # When the driver runs it
    done = launch.driver.run(job.job_id)
    # Then it is TIMED_OUT(RUN_TIMEOUT), Ray stopped the job, and the cluster went down
    assert (done.status, done.reason_code) == (JobStatus.TIMED_OUT, ReasonCode.RUN_TIMEOUT)
    assert str(JobSubmissionClient(launch.head.dashboard_url, headers=launch.head.auth_headers).get_job_status(job.job_id)) in {"STOPPED", "JobStatus.STOPPED"}
    assert launch.commands() == ["up", "get-head-ip", "rsync-down", "down"]
    assert_cluster_left_down(launch, job)


def test_down_fails_twice_then_succeeds(
    launch_factory: Callable[..., Launch], fault_row: Callable[[FaultRow], FaultRow]
) -> None:
    # Given `ray down` fails twice before it works (no EC2-API shortcut: only `ray down` can
    # remove the head instance the fake `ray up` launched in moto)
    launch = launch_factory({"down": [{"rc": 1, "stderr": "throttled"}, {"rc": 1, "stderr": "throttled"}, {"rc": 0}]},
                            instances_in_moto=True)  # fmt: skip
    job = launch.new_job()
    # When the job runs
    done = launch.driver.run(job.job_id)
    # Then it SUCCEEDED on its one attempt, with the three teardown attempts recorded
    assert done.status == JobStatus.SUCCEEDED, (done.reason_code, done.reason_message)
    assert (done.teardown_attempts, done.attempt, done.attempts) == (3, 1, [])
    assert launch.commands() == ["up", "get-head-ip", "rsync-down", "down", "down", "down"]
    assert [r["rc"] for r in launch.exits("down")] == [1, 1, 0]
    assert_cluster_left_down(launch, job)
    assert (launch.launched(done), launch.alive(done)) == (1, 0)
    after = seconds_to_teardown(launch, launch.exits("down")[0]["t"], 1, done)
    fault_row(launcher_row("`ray down` fails twice, then succeeds", launch, done, after))


def test_down_never_succeeds_is_teardown_failed(launch_factory: Callable[..., Launch]) -> None:
    # Given `ray down` always fails
    launch = launch_factory({"down": [{"rc": 2, "stderr": "UnauthorizedOperation: ec2:TerminateInstances"}]})
    job = launch.new_job()
    # When the job runs
    done = launch.driver.run(job.job_id)
    # Then the job is TEARDOWN_FAILED (for the reaper and the alarm), with every attempt made
    assert (done.status, done.reason_code) == (JobStatus.TEARDOWN_FAILED, ReasonCode.TEARDOWN_FAILED)
    assert done.teardown_attempts == 3 and launch.commands().count("down") == 3
    assert "UnauthorizedOperation" in (done.reason_message or "")
    assert "ended SUCCEEDED" in (done.reason_message or "")  # the job's own outcome is not lost


class TerminateRefused(Ec2ClusterInstances):
    """TerminateInstances by tag refused (as IAM or an API error would): `ray down` must do it."""

    def terminate(self, name: str) -> list[str]:
        raise RuntimeError("UnauthorizedOperation")


def test_down_exit_0_with_instances_left_is_not_trusted(launch_factory: Callable[..., Launch], settings: Settings) -> None:
    # Given an instance tagged as this job's cluster that neither the EC2 API terminate (refused)
    # nor `ray down` (exit 0) removed
    launch = launch_factory({}, check_instances=True, instances_class=TerminateRefused)
    job = launch.new_job()
    ec2 = aws.client("ec2", settings)
    ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance",
                            "Tags": [{"Key": "ray-cluster-name", "Value": cluster_name(job.job_id)}]}],
    )  # fmt: skip
    # When the job runs
    done = launch.driver.run(job.job_id)
    # Then teardown is verified by tag, retried, and reported as failed
    assert done.status == JobStatus.TEARDOWN_FAILED
    assert "instances are still up" in (done.reason_message or "")
    assert launch.commands().count("down") == 3


def test_teardown_terminates_by_tag_before_ray_down(launch_factory: Callable[..., Launch], settings: Settings) -> None:
    # Given an instance tagged as this job's cluster that `ray down` (exit 0) would not remove
    launch = launch_factory({}, check_instances=True)
    job = launch.new_job()
    ec2 = aws.client("ec2", settings)
    instance = ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance",
                            "Tags": [{"Key": "ray-cluster-name", "Value": cluster_name(job.job_id)}]}],
    )["Instances"][0]["InstanceId"]  # fmt: skip
    # When the job runs
    done = launch.driver.run(job.job_id)
    # Then the EC2 API terminated it by tag, `ray down` still ran once, and the check found nothing
    assert done.status == JobStatus.SUCCEEDED, done.reason_message
    state = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["State"]["Name"]
    assert state == "terminated"
    assert launch.commands().count("down") == 1


def test_cancel_while_provisioning(
    launch_factory: Callable[..., Launch], fault_row: Callable[[FaultRow], FaultRow]
) -> None:
    # Given `ray up` is hanging, its head instance launched
    launch = launch_factory({"up": [HANG]}, check_instances=True, instances_in_moto=True)
    job = launch.new_job()
    thread = launch.run_in_thread(job)
    launch.wait_for(lambda: "up" in launch.commands() and launch.launched(job) == 1)
    # When the job is cancelled
    cancelled_at = time.time()
    request_cancel(launch.store, job.job_id)
    thread.join(timeout=60)
    # Then `ray up` is stopped, `ray down` runs and the job is CANCELLED (never retried)
    done = launch.store.get(job.job_id)
    assert (done.status, done.reason_code) == (JobStatus.CANCELLED, ReasonCode.CANCEL_REQUESTED)
    assert (done.attempt, done.attempts) == (1, [])
    assert launch.commands() == ["up", "rsync-down", "down"]
    assert_cluster_left_down(launch, job)
    assert (launch.launched(done), launch.alive(done)) == (1, 0)
    after = seconds_to_teardown(launch, cancelled_at, 1, done)
    fault_row(launcher_row("cancel while provisioning", launch, done, after))


def test_cancel_while_running(launch_factory: Callable[..., Launch], fault_row: Callable[[FaultRow], FaultRow]) -> None:
    # Given a running job
    launch = launch_factory({}, entrypoint=SLOW, check_instances=True, instances_in_moto=True)
    job = launch.new_job()
    thread = launch.run_in_thread(job)
    launch.wait_for(lambda: launch.store.get(job.job_id).status == JobStatus.RUNNING)
    # When it is cancelled
    cancelled_at = time.time()
    request_cancel(launch.store, job.job_id)
    thread.join(timeout=90)
    # Then Ray stopped the job, the cluster went down, and the job is CANCELLED (never retried)
    done = launch.store.get(job.job_id)
    assert (done.status, done.reason_code) == (JobStatus.CANCELLED, ReasonCode.CANCEL_REQUESTED)
    assert (done.attempt, done.attempts) == (1, [])
    assert str(JobSubmissionClient(launch.head.dashboard_url, headers=launch.head.auth_headers).get_job_status(job.job_id)) in {"STOPPED", "JobStatus.STOPPED"}
    assert launch.commands() == ["up", "get-head-ip", "rsync-down", "down"]
    assert_cluster_left_down(launch, job)
    assert (launch.launched(done), launch.alive(done)) == (1, 0)
    fault_row(launcher_row("cancel while running", launch, done, seconds_to_teardown(launch, cancelled_at, 1, done)))


def test_cancelling_a_queued_job_ends_it_without_launching(launch_factory: Callable[..., Launch]) -> None:
    # Given a job still QUEUED
    launch = launch_factory({})
    job = launch.store.create(Job.new("probe", "api"))
    # When it is cancelled, Then it is CANCELLED at once
    assert request_cancel(launch.store, job.job_id).status == JobStatus.CANCELLED
    # and a driver that starts for it anyway leaves it alone: no `ray` call at all
    assert launch.driver.run(job.job_id).status == JobStatus.CANCELLED
    assert launch.calls() == []


def session_log_files(launch: Launch, key: str) -> dict[str, str]:
    body = aws.client("s3", launch.settings).get_object(Bucket=launch.settings.bucket, Key=key)["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_the_heads_session_logs_are_fetched_before_teardown(launch_factory: Callable[..., Launch]) -> None:
    # Given a head whose session logs `ray rsync-down` can fetch
    launch = launch_factory({})
    job = launch.new_job()
    # When the job runs
    done = launch.driver.run(job.job_id)
    # Then they were fetched from the head's session dir before `ray down`, with this job's config
    assert done.status == JobStatus.SUCCEEDED, (done.reason_code, done.reason_message)
    assert launch.commands() == ["up", "get-head-ip", "rsync-down", "down"]
    (rsync,) = [argv for argv in launch.calls() if argv[0] == "rsync-down"]
    assert rsync[1:3] == [str(launch.backend.config_path(job.job_id)), "/tmp/ray/session_latest/logs/"]
    # and kept in S3 as a tar.gz on the record, next to the job's own log
    assert done.session_logs_key == f"jobs/{job.job_id}/logs/ray-session.tar.gz"
    assert session_log_files(launch, done.session_logs_key) == {
        "ray-session-logs/raylet.out": "fake raylet log\n", "ray-session-logs/monitor.log": "fake autoscaler log\n"}  # fmt: skip
    assert done.logs_key == f"jobs/{job.job_id}/logs/ray-job.log"
    assert_cluster_left_down(launch, job)


@pytest.mark.parametrize("step", [HANG, {"rc": 1, "stderr": "Head node of cluster not found!"}], ids=["hangs", "fails"])
def test_a_session_log_fetch_that_hangs_or_fails_never_keeps_the_cluster_up(
    launch_factory: Callable[..., Launch], step: dict[str, Any]
) -> None:
    # Given `ray rsync-down` hangs (or fails: no head), and 2 s allowed for the session logs
    launch = launch_factory({"rsync-down": [step]})
    launch.driver._session_logs_timeout_s = 2  # noqa: SLF001 - a short deadline for the test
    job = launch.new_job()
    # When the job runs
    done = launch.driver.run(job.job_id)
    # Then the fetch was cut off (its process gone), the cluster still went down, the job SUCCEEDED
    assert (done.status, done.session_logs_key) == (JobStatus.SUCCEEDED, None)
    assert launch.commands() == ["up", "get-head-ip", "rsync-down", "down"]
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in launch.pids("rsync-down")), "a `ray rsync-down` process is still running"  # fmt: skip
    assert_cluster_left_down(launch, job)
