"""The EC2 backend through the driver, with a fake `ray` first on PATH (a real process boundary
that records its argv and plays scripted outcomes) while the Jobs API is a real local Ray head.

In every scenario the recorded calls prove that no code path leaves the cluster up.
"""

from __future__ import annotations

import json
import os
import sys
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
from raylauncher.clusters.base import ClusterHandle
from raylauncher.clusters.ec2 import Ec2ClusterInstances, Ec2RayBackend
from raylauncher.clusters.ec2_config import cluster_name
from raylauncher.clusters.local import LocalRayBackend
from raylauncher.config import PipelinesConfig, Settings, load_ec2_deployment, parse_pipelines
from raylauncher.control import request_cancel
from raylauncher.driver import Driver
from raylauncher.model import Job, JobStatus, ReasonCode
from raylauncher.objects import S3ObjectStore
from raylauncher.store import JOB_TABLE, DynamoJobStore

PROJECT_DIR = Path(__file__).resolve().parents[2]
FAKES = Path(__file__).with_name("fakes")
QUICK = "print('probe: done', flush=True)\n"
SLOW = "import time\nprint('probe: sleeping', flush=True)\ntime.sleep(600)\n"
HANG = {"sleep": 600}


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterHandle]:
    """One real local Ray head whose Jobs API stands in for the EC2 head's."""
    config = parse_pipelines(
        {"pipelines": [{"name": "head", "trigger": {"prefix": "in/"}, "entrypoint": {"script": "jobs/x.py"},
                        "cluster": {"local_num_cpus": 2}, "output_prefix": "out/"}]}
    )  # fmt: skip
    backend = LocalRayBackend(tmp_path_factory.mktemp("head"), os.environ, job_env={})
    holder = Job.new("head", "s3")
    handle = backend.up(holder, config.pipelines[0], 90, lambda: False)
    yield handle
    backend.down(holder)


@dataclass
class Launch:
    """One scenario: a fake `ray`, the EC2 backend using it, a driver, and the job store."""

    settings: Settings
    store: DynamoJobStore
    ray_log: Path
    backend: Ec2RayBackend
    driver: Driver
    head: ClusterHandle

    def calls(self) -> list[list[str]]:
        if not self.ray_log.exists():
            return []
        return [json.loads(line)["argv"] for line in self.ray_log.read_text().splitlines()]

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


def assert_cluster_left_down(launch: Launch, job: Job) -> None:
    """The cluster cannot be up: every `ray up` is followed by a `ray down` of the same file,
    and no fake launcher process is still running."""
    calls = launch.calls()
    config_file = str(launch.backend.config_path(job.job_id))
    ups = [i for i, argv in enumerate(calls) if argv[0] == "up"]
    downs = [i for i, argv in enumerate(calls) if argv[0] == "down"]
    assert ups, calls
    assert downs and downs[-1] > ups[-1], f"no `ray down` after the last `ray up`: {calls}"
    assert all(calls[i] == ["down", "-y", config_file] for i in downs)
    assert calls[ups[0]] == ["up", "-y", "--no-config-cache", config_file]
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in launch.pids("up")), "a `ray up` process is still running"  # fmt: skip


@pytest.fixture
def launch_factory(
    settings: Settings, ray_head: ClusterHandle, tmp_path: Path
) -> Callable[..., Launch]:
    ddb = aws.client("dynamodb", settings)
    ddb.create_table(**JOB_TABLE.create_table_kwargs(settings.table))
    s3 = aws.client("s3", settings)
    s3.create_bucket(Bucket=settings.bucket)
    store = DynamoJobStore(ddb, settings.table)
    deployment = load_ec2_deployment(PROJECT_DIR / "examples" / "ec2-deployment.json")

    def make(
        script: dict[str, Any], entrypoint: str = QUICK, run_timeout_s: int = 600,
        provisioning_timeout_s: float = 60, check_instances: bool = False, instances_class: type = Ec2ClusterInstances,
    ) -> Launch:  # fmt: skip
        (tmp_path / "jobs" / "probe").mkdir(parents=True, exist_ok=True)
        (tmp_path / "jobs" / "probe" / "main.py").write_text(entrypoint)
        pipelines: PipelinesConfig = parse_pipelines(
            {"pipelines": [{"name": "probe", "trigger": {"prefix": "incoming/probe/"},
                            "entrypoint": {"script": "jobs/probe/main.py"}, "run_timeout_s": run_timeout_s,
                            # the stand-in head is one node: no workers to wait for
                            "cluster": {"min_workers": 0, "max_workers": 0}, "output_prefix": "outputs/probe/"}]}
        )  # fmt: skip
        script_file, ray_log = tmp_path / "ray-script.json", tmp_path / "ray-calls.jsonl"
        script_file.write_text(json.dumps(script))
        env = {
            **os.environ,
            "PATH": f"{FAKES}:{os.environ['PATH']}",  # the fake `ray` comes first
            "FAKE_RAY_SCRIPT": str(script_file),
            "FAKE_RAY_LOG": str(ray_log),
        }
        backend = Ec2RayBackend(
            deployment, tmp_path / "clusters", env,
            ray_bin="ray",
            dashboard_port=int(ray_head.dashboard_url.rsplit(":", 1)[1]),
            head_python=sys.executable,
            teardown_timeout_s=30, down_attempts=3, down_retry_delay_s=0.2,
            instances=instances_class(aws.client("ec2", settings)) if check_instances else None,
        )  # fmt: skip
        driver = Driver(
            store=store, objects=S3ObjectStore(s3, settings.bucket), backend=backend, pipelines=pipelines,
            jobs_client=JobSubmissionClient, project_dir=tmp_path,
            provisioning_timeout_s=provisioning_timeout_s, poll_interval_s=0.3,
        )  # fmt: skip
        return Launch(settings, store, ray_log, backend, driver, ray_head)

    return make


def test_up_succeeds_job_runs_down_once(launch_factory: Callable[..., Launch]) -> None:
    # Given `ray up` succeeds
    launch = launch_factory({"up": [{"stdout": "Ray cluster is up"}]})
    job = launch.new_job()
    # When the driver runs the job
    done = launch.driver.run(job.job_id)
    # Then the job SUCCEEDED on the head's Jobs API, with one teardown
    assert done.status == JobStatus.SUCCEEDED, (done.reason_code, done.reason_message)
    assert launch.commands() == ["up", "get-head-ip", "down"]
    assert done.teardown_attempts == 1
    assert done.cluster and done.cluster["cluster_name"] == cluster_name(job.job_id)
    assert "probe: done" in JobSubmissionClient(launch.head.dashboard_url).get_job_logs(job.job_id)
    # and the rendered config that `ray up` got is this job's
    assert f"cluster_name: {cluster_name(job.job_id)}" in launch.backend.config_path(job.job_id).read_text()
    assert_cluster_left_down(launch, job)


def test_up_fails_down_still_runs_and_reason_has_stderr_tail(launch_factory: Callable[..., Launch]) -> None:
    # Given `ray up` fails half-way
    launch = launch_factory({"up": [{"rc": 1, "stderr": "boto3 error\nFailed to setup head node.\n"}]})
    job = launch.new_job()
    # When the driver runs the job
    done = launch.driver.run(job.job_id)
    # Then it FAILED(PROVISIONING_FAILED) with the launcher's last words, and `ray down` ran
    assert (done.status, done.reason_code) == (JobStatus.FAILED, ReasonCode.PROVISIONING_FAILED)
    assert "Failed to setup head node." in (done.reason_message or "")
    assert launch.commands() == ["up", "down"]
    assert_cluster_left_down(launch, job)


def test_up_hangs_past_the_provisioning_deadline(launch_factory: Callable[..., Launch]) -> None:
    # Given `ray up` hangs and a 3 s provisioning deadline
    launch = launch_factory({"up": [HANG]}, provisioning_timeout_s=3)
    job = launch.new_job()
    # When the driver runs the job
    done = launch.driver.run(job.job_id)
    # Then `ray up` was killed, `ray down` ran, and the job TIMED_OUT in provisioning
    assert (done.status, done.reason_code) == (JobStatus.TIMED_OUT, ReasonCode.PROVISIONING_TIMEOUT)
    assert launch.commands() == ["up", "down"]
    assert_cluster_left_down(launch, job)


def test_job_past_the_run_deadline_is_stopped_and_torn_down(launch_factory: Callable[..., Launch]) -> None:
    # Given a job that would sleep ten minutes under a 10 s run deadline
    launch = launch_factory({}, entrypoint=SLOW, run_timeout_s=10)
    job = launch.new_job()
    # When the driver runs it
    done = launch.driver.run(job.job_id)
    # Then it is TIMED_OUT(RUN_TIMEOUT), Ray stopped the job, and the cluster went down
    assert (done.status, done.reason_code) == (JobStatus.TIMED_OUT, ReasonCode.RUN_TIMEOUT)
    assert str(JobSubmissionClient(launch.head.dashboard_url).get_job_status(job.job_id)) in {"STOPPED", "JobStatus.STOPPED"}
    assert launch.commands() == ["up", "get-head-ip", "down"]
    assert_cluster_left_down(launch, job)


def test_down_fails_twice_then_succeeds(launch_factory: Callable[..., Launch]) -> None:
    # Given `ray down` fails twice before it works
    launch = launch_factory({"down": [{"rc": 1, "stderr": "throttled"}, {"rc": 1, "stderr": "throttled"}, {"rc": 0}]})
    job = launch.new_job()
    # When the job runs
    done = launch.driver.run(job.job_id)
    # Then it SUCCEEDED, with the three attempts recorded
    assert done.status == JobStatus.SUCCEEDED, (done.reason_code, done.reason_message)
    assert done.teardown_attempts == 3
    assert launch.commands() == ["up", "get-head-ip", "down", "down", "down"]
    assert_cluster_left_down(launch, job)


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


def test_cancel_while_provisioning(launch_factory: Callable[..., Launch]) -> None:
    # Given `ray up` is hanging
    launch = launch_factory({"up": [HANG]})
    job = launch.new_job()
    thread = launch.run_in_thread(job)
    launch.wait_for(lambda: "up" in launch.commands())
    # When the job is cancelled
    request_cancel(launch.store, job.job_id)
    thread.join(timeout=60)
    # Then `ray up` is stopped, `ray down` runs and the job is CANCELLED
    done = launch.store.get(job.job_id)
    assert (done.status, done.reason_code) == (JobStatus.CANCELLED, ReasonCode.CANCEL_REQUESTED)
    assert launch.commands() == ["up", "down"]
    assert_cluster_left_down(launch, job)


def test_cancel_while_running(launch_factory: Callable[..., Launch]) -> None:
    # Given a running job
    launch = launch_factory({}, entrypoint=SLOW)
    job = launch.new_job()
    thread = launch.run_in_thread(job)
    launch.wait_for(lambda: launch.store.get(job.job_id).status == JobStatus.RUNNING)
    # When it is cancelled
    request_cancel(launch.store, job.job_id)
    thread.join(timeout=90)
    # Then Ray stopped the job, the cluster went down, and the job is CANCELLED
    done = launch.store.get(job.job_id)
    assert (done.status, done.reason_code) == (JobStatus.CANCELLED, ReasonCode.CANCEL_REQUESTED)
    assert str(JobSubmissionClient(launch.head.dashboard_url).get_job_status(job.job_id)) in {"STOPPED", "JobStatus.STOPPED"}
    assert launch.commands() == ["up", "get-head-ip", "down"]
    assert_cluster_left_down(launch, job)


def test_cancelling_a_queued_job_ends_it_without_launching(launch_factory: Callable[..., Launch]) -> None:
    # Given a job still QUEUED
    launch = launch_factory({})
    job = launch.store.create(Job.new("probe", "api"))
    # When it is cancelled, Then it is CANCELLED at once
    assert request_cancel(launch.store, job.job_id).status == JobStatus.CANCELLED
    # and a driver that starts for it anyway leaves it alone: no `ray` call at all
    assert launch.driver.run(job.job_id).status == JobStatus.CANCELLED
    assert launch.calls() == []
