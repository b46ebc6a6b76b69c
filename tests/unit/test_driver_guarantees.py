"""The driver's promises with every port faked in memory: teardown happens whatever fails."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from raylauncher.clusters.base import ClusterHandle
from raylauncher.clusters.processes import run_cli
from raylauncher.config import parse_pipelines
from raylauncher.driver import Driver, TimedJobsClient
from raylauncher.errors import JobNotFound, ProvisioningFailed, StorageError, TransitionConflict
from raylauncher.model import Job, JobStatus, ReasonCode, check_transition
from raylauncher.objects import ObjectStore
from raylauncher.store import JobStore

PIPELINES = parse_pipelines(
    {"pipelines": [{"name": "probe", "trigger": {"prefix": "in/"}, "entrypoint": {"script": "jobs/probe/main.py"},
                    "output_prefix": "out/", "retry": {"backoff_s": 0}}]}
)  # fmt: skip


class MemoryStore(JobStore):
    """Conditional writes like DynamoDB's; `fail_on` makes writes to those statuses fail."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.fail_on: set[JobStatus] = set()

    def create(self, job: Job) -> Job:
        self.jobs[job.job_id] = job
        return job

    def get(self, job_id: str) -> Job:
        if job_id not in self.jobs:
            raise JobNotFound(job_id)
        return self.jobs[job_id]

    def list_jobs(self) -> list[Job]:
        return list(self.jobs.values())

    def transition(self, job: Job, target: JobStatus, **fields: Any) -> Job:
        check_transition(job.status, target)
        if target in self.fail_on:
            raise StorageError("EndpointConnectionError", "EndpointConnectionError")
        current = self.jobs[job.job_id]
        if (current.status, current.version) != (job.status, job.version):
            raise TransitionConflict(job.job_id, job.status.value, current.status.value)
        moved = current.model_copy(update={"status": target, "version": job.version + 1, **fields})
        self.jobs[job.job_id] = moved
        return moved

    def mark(self, job: Job, **fields: Any) -> Job:
        current = self.jobs[job.job_id]
        if current.status != job.status:
            raise TransitionConflict(job.job_id, job.status.value, current.status.value)
        self.jobs[job.job_id] = current.model_copy(update=fields)
        return self.jobs[job.job_id]

    def renew_lease(self, job_id: str, owner: str) -> None:
        current = self.jobs[job_id]
        if current.owner != owner or current.is_terminal:
            raise TransitionConflict(job_id, "owned by " + owner, current.status.value)

    def take_over(self, job: Job, owner: str, **fields: Any) -> Job:
        current = self.jobs[job.job_id]
        if (current.status, current.version) != (job.status, job.version):
            raise TransitionConflict(job.job_id, job.status.value, current.status.value)
        self.jobs[job.job_id] = current.model_copy(update={"owner": owner, "version": job.version + 1, **fields})
        return self.jobs[job.job_id]


class MemoryObjects(ObjectStore):
    def __init__(self) -> None:
        self.bucket = "data"
        self.blobs: dict[str, bytes] = {}

    def put_bytes(self, key: str, body: bytes, content_type: str) -> None:
        self.blobs[key] = body

    def get_bytes(self, key: str) -> bytes:
        if key not in self.blobs:
            raise StorageError(f"no {key}", "NoSuchKey")
        return self.blobs[key]

    def list_objects(self, prefix: str, limit: int, suffix: str = "") -> list[dict[str, Any]]:
        keys = [k for k in self.blobs if k.startswith(prefix) and k.endswith(suffix) and not k.endswith("/")]
        return [{"key": k, "size": len(self.blobs[k]), "etag": None} for k in keys][:limit]


class RecordingBackend:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def up(self, job: Job, pipeline: Any, timeout_s: float, cancelled: Any) -> ClusterHandle:
        self.calls.append("up")
        return ClusterHandle(name="c", dashboard_url="http://127.0.0.1:1", python=sys.executable)

    def down(self, job: Job) -> int:
        self.calls.append("down")
        return 1


class SucceedingRay:
    def list_jobs(self) -> list[Any]:
        return []

    def submit_job(self, **kwargs: Any) -> str:
        return str(kwargs["submission_id"])

    def get_job_info(self, job_id: str) -> Any:
        return SimpleNamespace(status="SUCCEEDED", message="")

    def get_job_logs(self, job_id: str) -> str:
        return "log line\n"

    def stop_job(self, job_id: str) -> bool:
        return True


def driver_for(store: MemoryStore, backend: RecordingBackend, tmp_path: Path, ray: Any = None) -> Driver:
    (tmp_path / "jobs" / "probe").mkdir(parents=True)
    (tmp_path / "jobs" / "probe" / "main.py").write_text("print('ok')\n")
    return Driver(store, MemoryObjects(), backend, PIPELINES, lambda url: ray or SucceedingRay(),  # type: ignore[arg-type]
                  tmp_path, provisioning_timeout_s=5, poll_interval_s=0.01)  # fmt: skip


def launching_job(store: MemoryStore) -> Job:
    job = store.create(Job.new("probe", "api"))
    return store.transition(job, JobStatus.LAUNCHING)


def test_happy_path_ends_succeeded_with_one_teardown(tmp_path: Path) -> None:
    store, backend = MemoryStore(), RecordingBackend()
    job = launching_job(store)
    done = driver_for(store, backend, tmp_path).run(job.job_id)
    assert (done.status, done.teardown_attempts, backend.calls) == (JobStatus.SUCCEEDED, 1, ["up", "down"])


def test_store_unreachable_at_teardown_still_tears_down(tmp_path: Path) -> None:
    # Given the job store cannot be written once the job is over (a network blip)
    store, backend = MemoryStore(), RecordingBackend()
    job = launching_job(store)
    store.fail_on = {JobStatus.TEARING_DOWN, JobStatus.SUCCEEDED}
    # When the driver finishes, Then the cluster still goes down
    driver_for(store, backend, tmp_path).run(job.job_id)
    assert backend.calls == ["up", "down"]


def test_a_hanging_ray_api_is_cut_off(tmp_path: Path) -> None:
    # Given a head that accepts the call but never answers
    class Hanging(SucceedingRay):
        def get_job_info(self, job_id: str) -> Any:
            time.sleep(600)

    client = TimedJobsClient(Hanging(), timeout_s=0.5)
    # When the driver asks it, Then the call fails after the timeout instead of holding the cluster
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="get_job_info"):
        client.get_job_info("j")
    assert time.monotonic() - started < 5


def test_driver_with_a_hanging_head_fails_and_tears_down(tmp_path: Path) -> None:
    class Hanging(SucceedingRay):
        def get_job_info(self, job_id: str) -> Any:
            time.sleep(600)

    store, backend = MemoryStore(), RecordingBackend()
    job = launching_job(store)
    driver = driver_for(store, backend, tmp_path, ray=Hanging())
    driver._api_timeout_s = 0.5  # noqa: SLF001 - a short deadline for the test
    done = driver.run(job.job_id)
    assert (done.status, done.reason_code) == (JobStatus.FAILED, ReasonCode.DRIVER_ERROR)
    assert "did not answer" in (done.reason_message or "")
    assert backend.calls == ["up", "down"]


def test_run_cli_kills_the_launcher_when_interrupted_by_an_error(tmp_path: Path) -> None:
    # Given a launcher call that would run for ten minutes and a stop check that blows up
    marker = tmp_path / "pid"
    script = f"import os, time; open({str(marker)!r}, 'w').write(str(os.getpid())); time.sleep(600)"

    def broken_check() -> bool:
        if marker.exists():
            raise RuntimeError("store unreachable")
        return False

    # When the wait is interrupted, Then the error propagates and the launcher is gone
    with pytest.raises(RuntimeError):
        run_cli([sys.executable, "-c", script], 60, {"PATH": "/usr/bin:/bin"}, "test-job", should_stop=broken_check)
    pid = int(marker.read_text())
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_run_cli_reports_timeout_and_stderr(tmp_path: Path) -> None:
    result = run_cli([sys.executable, "-c", "import sys,time; sys.stderr.write('warming up'); sys.stderr.flush(); time.sleep(60)"],
                     1.5, {"PATH": "/usr/bin:/bin"}, "test-job")  # fmt: skip
    assert result.timed_out and not result.ok and result.returncode is None
    assert "warming up" in result.describe()
    done = run_cli([sys.executable, "-c", "import sys; sys.stderr.write('bad'); sys.exit(3)"], 30, {}, "test-job")
    assert (done.returncode, done.ok, done.stderr_tail) == (3, False, "bad")


def test_a_refused_submission_is_retried_and_never_doubled(tmp_path: Path) -> None:
    # Given a fresh head that refuses the first submission (its job agent is not registered yet),
    # and a second attempt whose answer is lost although Ray accepted it
    class FreshHead(SucceedingRay):
        def __init__(self) -> None:
            self.submits: list[str] = []
            self.known: list[Any] = []

        def list_jobs(self) -> list[Any]:
            return self.known

        def submit_job(self, **kwargs: Any) -> str:
            self.submits.append(kwargs["submission_id"])
            if len(self.submits) == 1:
                raise RuntimeError("Request failed with status code 500: No available agent to submit job")
            self.known.append(SimpleNamespace(submission_id=kwargs["submission_id"]))
            raise TimeoutError("the answer was lost")

    head = FreshHead()
    store, backend = MemoryStore(), RecordingBackend()
    job = launching_job(store)
    driver = driver_for(store, backend, tmp_path, ray=head)
    # When the driver runs the job
    done = driver.run(job.job_id)
    # Then it retried, saw Ray had the job, did not submit a third time, and the job succeeded
    assert head.submits == [job.job_id, job.job_id]
    assert done.status == JobStatus.SUCCEEDED
    assert backend.calls == ["up", "down"]


# -- lease, takeover and retries ------------------------------------------------------------


class RunningRay(SucceedingRay):
    """Reports RUNNING; on the `after`-th poll, `meanwhile()` runs (e.g. a watchdog's takeover)."""

    def __init__(self, meanwhile: Any, after: int = 2, message: str = "") -> None:
        self.polls, self.meanwhile, self.after, self.message = 0, meanwhile, after, message
        self.stopped: list[str] = []

    def get_job_info(self, job_id: str) -> Any:
        self.polls += 1
        if self.polls == self.after:
            self.meanwhile()
        return SimpleNamespace(status="STOPPED" if self.stopped else "RUNNING", message=self.message)

    def stop_job(self, job_id: str) -> bool:
        self.stopped.append(job_id)
        return True


def test_a_driver_whose_job_was_taken_over_leaves_it_and_its_cluster_alone(tmp_path: Path) -> None:
    # Given a running job whose driver is declared lost meanwhile: the watchdog takes it over
    store, backend = MemoryStore(), RecordingBackend()
    job = launching_job(store)

    def watchdog_takes_over() -> None:
        current = store.get(job.job_id)
        store.transition(current, JobStatus.TEARING_DOWN, owner="watchdog", reason_code=ReasonCode.DRIVER_LOST)

    # When the driver comes back to life and polls on (renewing its lease every 0.1 s)
    driver = driver_for(store, backend, tmp_path, RunningRay(watchdog_takes_over))
    driver._heartbeat_s = 0.1
    done = driver.run(job.job_id)
    # Then it neither tears the cluster down nor writes the job: both are the watchdog's
    assert backend.calls == ["up"]
    assert (done.status, done.owner, done.reason_code) == (JobStatus.TEARING_DOWN, "watchdog", ReasonCode.DRIVER_LOST)


def test_an_infrastructure_failure_is_queued_for_another_attempt_after_teardown(tmp_path: Path) -> None:
    # Given a cluster that fails to come up, and a pipeline allowing 2 attempts (the default)
    class FailingUp(RecordingBackend):
        def up(self, job: Job, pipeline: Any, timeout_s: float, cancelled: Any) -> ClusterHandle:
            self.calls.append(f"up {job.run_id}")
            raise ProvisioningFailed("ray up exited 1: no capacity")

    store, backend = MemoryStore(), FailingUp()
    job = launching_job(store)
    requeued: list[dict[str, Any]] = []

    def requeue(current: Job, fields: dict[str, Any]) -> Job:
        requeued.append(fields)
        return store.transition(current, JobStatus.QUEUED, **fields)

    driver = driver_for(store, backend, tmp_path)
    driver._requeue = requeue
    # When the driver runs the first attempt
    done = driver.run(job.job_id)
    # Then the cluster was torn down and the job is QUEUED for attempt 2, whose run id differs
    assert backend.calls == [f"up {job.job_id}", "down"]
    assert (done.status, done.attempt, done.run_id) == (JobStatus.QUEUED, 2, f"{job.job_id}-a2")
    (first,) = done.attempts
    assert (first["status"], first["reason_code"], first["run_id"]) == ("FAILED", "PROVISIONING_FAILED", job.job_id)
    assert "no capacity" in first["reason_message"] and done.reason_code is None
    # When the next attempt fails the same way (relaunched: LAUNCHING again)
    driver.run(store.transition(store.get(job.job_id), JobStatus.LAUNCHING).job_id)
    # Then no attempt is left: FAILED with the last attempt's reason, both attempts on the record
    final = store.get(job.job_id)
    assert (final.status, final.reason_code, final.attempt, len(final.attempts)) == (
        JobStatus.FAILED, ReasonCode.PROVISIONING_FAILED, 2, 1)  # fmt: skip
    assert backend.calls[2] == f"up {job.job_id}-a2" and len(requeued) == 1


def test_an_application_failure_is_not_retried_and_rays_message_loses_its_colour_codes(tmp_path: Path) -> None:
    # Given a Ray job that fails with a coloured error message
    class FailingRay(SucceedingRay):
        def get_job_info(self, job_id: str) -> Any:
            return SimpleNamespace(status="FAILED", message="\x1b[31mJob entrypoint failed\x1b[0m: exit code 1")

    store, backend = MemoryStore(), RecordingBackend()
    job = launching_job(store)
    driver = driver_for(store, backend, tmp_path, FailingRay())
    driver._requeue = lambda current, fields: pytest.fail("an application failure must not be retried")
    # When the driver runs it
    done = driver.run(job.job_id)
    # Then it FAILED for good with Ray's words, without escape codes
    assert (done.status, done.reason_code) == (JobStatus.FAILED, ReasonCode.RAY_JOB_FAILED)
    assert done.reason_message == "Job entrypoint failed: exit code 1"


def test_a_cancelled_job_ends_with_rays_last_status_on_the_record(tmp_path: Path) -> None:
    # Given a running job
    store, backend = MemoryStore(), RecordingBackend()
    job = launching_job(store)
    ray = RunningRay(lambda: store.mark(store.get(job.job_id), cancel_requested=True))
    # When it is cancelled while it runs
    done = driver_for(store, backend, tmp_path, ray).run(job.job_id)
    # Then Ray was asked to stop it, and the record says what Ray said last: STOPPED, not RUNNING
    assert (done.status, done.reason_code, ray.stopped) == (JobStatus.CANCELLED, ReasonCode.CANCEL_REQUESTED, [job.job_id])
    assert done.ray_status == "STOPPED" and backend.calls == ["up", "down"]


# -- the job store throttling (fault table) -------------------------------------------------

from tests.faults import FaultRow  # noqa: E402 - this section was appended

THROTTLED = "ProvisionedThroughputExceededException"


class ThrottledStore(MemoryStore):
    """Refuses the first `times` transitions to `throttle_on` as DynamoDB does once the SDK's own
    retries are spent: StorageError with code ProvisionedThroughputExceededException (throttling
    passes). Remembers when."""

    def __init__(self, throttle_on: set[JobStatus], times: int = 2) -> None:
        super().__init__()
        self.throttle_on = throttle_on
        self.times = times
        self.refused: list[tuple[JobStatus, float]] = []

    def transition(self, job: Job, target: JobStatus, **fields: Any) -> Job:
        if target in self.throttle_on and len(self.refused) < self.times:
            check_transition(job.status, target)
            self.refused.append((target, time.time()))
            raise StorageError(f"cannot update job {job.job_id}", THROTTLED)
        return super().transition(job, target, **fields)


class TimedBackend(RecordingBackend):
    """Records when the cluster was torn down."""

    def __init__(self) -> None:
        super().__init__()
        self.down_at: float | None = None

    def down(self, job: Job) -> int:
        self.down_at = time.time()
        return super().down(job)

    def left(self) -> int:
        return self.calls.count("up") - self.calls.count("down")


class RunsThenSucceeds(SucceedingRay):
    """Ray reports the job RUNNING on its first poll, SUCCEEDED after."""

    def __init__(self) -> None:
        self.polls = 0

    def get_job_info(self, job_id: str) -> Any:
        self.polls += 1
        return SimpleNamespace(status="RUNNING" if self.polls == 1 else "SUCCEEDED", message="")


@pytest.mark.parametrize("throttled", [JobStatus.RUNNING, JobStatus.TEARING_DOWN])
def test_a_throttled_job_store_delays_the_record_and_never_keeps_the_cluster_up(tmp_path: Path, throttled: JobStatus, fault_row: Any) -> None:
    # Given a job store that refuses one transition with ProvisionedThroughputExceededException
    store, backend = ThrottledStore({throttled}), TimedBackend()
    job = launching_job(store)
    # When the driver runs a job that Ray reports RUNNING, then SUCCEEDED
    driver_for(store, backend, tmp_path, RunsThenSucceeds()).run(job.job_id)
    # Then the transition was refused twice, retried, and the cluster went down exactly once
    assert [target for target, _ in store.refused] == [throttled, throttled]
    fault_at = store.refused[0][1]
    assert backend.calls == ["up", "down"] and backend.left() == 0
    assert backend.down_at is not None and backend.down_at >= fault_at
    # And the job SUCCEEDED as Ray said: throttling delays the record, it does not fail the job
    done = store.get(job.job_id)
    assert (done.status, done.reason_code) == (JobStatus.SUCCEEDED, None), done.reason_message
    fault_row(FaultRow(
        scenario=f"job store throttled ({THROTTLED}) at {throttled.value}", backend="in memory",
        terminal_state=done.status.value, reason=done.reason_code or "none", attempts=done.attempt,
        cluster_seconds_after_fault=round(backend.down_at - fault_at, 1), clusters_left=backend.left(),
        objects_lost=0, objects_processed_twice=0,
    ))  # fmt: skip
