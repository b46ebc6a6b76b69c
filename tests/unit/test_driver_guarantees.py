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
from raylauncher.teardown import Ec2ClusterInstances

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

    def lost_nodes(self, job: Job) -> list[str]:
        return []


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
    return Driver(store, MemoryObjects(), backend, PIPELINES, lambda url, headers=None: ray or SucceedingRay(),  # type: ignore[arg-type]
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


def test_a_head_that_dies_during_submission_is_an_infrastructure_failure_with_its_last_words(tmp_path: Path) -> None:
    # Given a fresh head that refuses the first submission, then stops answering: its node
    # failed its own start-up (seen with local `ray start` under load) and the backend knows why
    class DyingHead(SucceedingRay):
        def __init__(self) -> None:
            self.asked = 0

        def list_jobs(self) -> list[Any]:
            self.asked += 1
            if self.asked > 1:  # the head process has exited meanwhile: its backend knows why
                dead.append("ray start exited 1: The current node timed out during startup.")
                raise ConnectionError("[Errno 111] Connection refused")
            return []

        def submit_job(self, **kwargs: Any) -> str:
            raise RuntimeError("Request failed with status code 500: No available agent to submit job")

    dead: list[str] = []
    head = DyingHead()

    class DyingBackend(RecordingBackend):
        def up(self, job: Job, pipeline: Any, timeout_s: float, cancelled: Any) -> ClusterHandle:
            self.calls.append("up")
            gone = lambda: dead[0] if dead else None  # noqa: E731
            return ClusterHandle(name="c", dashboard_url="http://127.0.0.1:1", python=sys.executable, gone=gone)

    store, backend = MemoryStore(), DyingBackend()
    job = launching_job(store)
    driver = driver_for(store, backend, tmp_path, ray=head)
    driver._submit_timeout_s = 600  # noqa: SLF001 - it must not be waited out
    driver._requeue = lambda current, fields: store.transition(current, JobStatus.QUEUED, **fields)  # noqa: SLF001
    # When the driver runs the job
    done = driver.run(job.job_id)
    # Then the attempt failed SUBMIT_FAILED (the infrastructure's: queued for another attempt),
    # saying why the cluster went away, and the cluster was torn down
    (first,) = done.attempts
    assert (first["status"], first["reason_code"]) == ("FAILED", "SUBMIT_FAILED")
    assert "timed out during startup" in first["reason_message"] and head.asked == 2
    assert (done.status, done.attempt) == (JobStatus.QUEUED, 2)
    assert backend.calls == ["up", "down"]


def test_a_head_that_stops_answering_during_submission_is_asked_again_until_the_deadline(tmp_path: Path) -> None:
    # Given a head whose Jobs API stops answering for a while (the backend cannot tell why)
    class Flaky(SucceedingRay):
        def __init__(self) -> None:
            self.asked = 0

        def list_jobs(self) -> list[Any]:
            self.asked += 1
            if self.asked == 1:
                raise ConnectionError("[Errno 111] Connection refused")
            return []

    head = Flaky()
    store, backend = MemoryStore(), RecordingBackend()
    job = launching_job(store)
    # When the driver runs the job
    done = driver_for(store, backend, tmp_path, ray=head).run(job.job_id)
    # Then it asked again, submitted once and the job succeeded
    assert head.asked == 2 and done.status == JobStatus.SUCCEEDED


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


# -- the Ray job's log while it runs, the head's session logs before teardown ---------------

import io  # noqa: E402 - this section was appended
import tarfile  # noqa: E402

from raylauncher.driver.logs import JobLogShipper, pack_logs  # noqa: E402


class RecordingObjects(MemoryObjects):
    """Keeps every upload in order; `fail_puts` makes that many uploads fail first."""

    def __init__(self, fail_puts: int = 0) -> None:
        super().__init__()
        self.puts: list[tuple[str, bytes]] = []
        self.fail_puts = fail_puts

    def put_bytes(self, key: str, body: bytes, content_type: str) -> None:
        if self.fail_puts:
            self.fail_puts -= 1
            raise StorageError(f"cannot write {key}", "SlowDown")
        self.puts.append((key, body))
        super().put_bytes(key, body, content_type)

    def versions(self, key: str) -> list[bytes]:
        return [body for k, body in self.puts if k == key]


class ChattyRay(SucceedingRay):
    """A job that logs one line per poll (the last one unfinished) for `polls` polls, then
    succeeds; `failing_fetches` of get_job_logs fail first. Remembers the record as it was."""

    def __init__(self, store: MemoryStore, polls: int = 30, failing_fetches: int = 0) -> None:
        self.store, self.polls, self.limit, self.failing = store, 0, polls, failing_fetches
        self.seen: list[Job] = []

    def text(self) -> str:
        return "".join(f"line {i}\n" for i in range(self.polls)) + ("partial" if self.polls < self.limit else "end\n")

    def get_job_info(self, job_id: str) -> Any:
        self.polls += 1
        self.seen += list(self.store.jobs.values())
        time.sleep(0.01)
        return SimpleNamespace(status="RUNNING" if self.polls < self.limit else "SUCCEEDED", message="")

    def get_job_logs(self, job_id: str) -> str:
        if self.failing:
            self.failing -= 1
            raise TimeoutError("Ray Jobs API call get_job_logs did not answer")
        return self.text()


def logging_driver(store: MemoryStore, backend: Any, tmp_path: Path, ray: Any, objects: MemoryObjects,
                   **kwargs: Any) -> Driver:  # fmt: skip
    driver = driver_for(store, backend, tmp_path, ray)
    driver._objects = objects
    driver._log_flush_s = kwargs.get("flush_s", 0.05)
    driver._session_logs_timeout_s = kwargs.get("session_timeout_s", 2)
    return driver


def assert_grows(versions: list[bytes]) -> None:
    """Every version of the object extends the one before (a follower's offsets stay valid)."""
    for before, after in zip(versions, versions[1:], strict=False):
        assert len(after) > len(before) and after.startswith(before), (before[-40:], after[-40:])


def test_the_job_log_is_in_s3_while_the_job_runs_and_grows_to_the_whole_log(tmp_path: Path) -> None:
    # Given a Ray job that logs a line per poll for 30 polls, and a log flush every 0.05 s
    store, backend, objects = MemoryStore(), RecordingBackend(), RecordingObjects()
    job = launching_job(store)
    ray = ChattyRay(store)
    # When the driver follows it
    done = logging_driver(store, backend, tmp_path, ray, objects).run(job.job_id)
    # Then the log was uploaded several times while it ran, each upload whole lines only and
    # extending the one before, the last one the whole log
    assert done.status == JobStatus.SUCCEEDED, (done.reason_code, done.reason_message)
    key = f"jobs/{job.job_id}/logs/ray-job.log"
    versions = objects.versions(key)
    assert len(versions) >= 3, len(versions)
    assert all(v.endswith(b"\n") for v in versions) and b"partial" not in b"".join(versions), versions[:2]
    assert_grows(versions)
    assert versions[-1].decode() == ray.text() and versions[-1].endswith(b"end\n")
    # and the record pointed at it while the job was still RUNNING
    assert any(j.status == JobStatus.RUNNING and j.logs_key == key for j in ray.seen)
    assert (done.status, done.logs_key, backend.calls) == (JobStatus.SUCCEEDED, key, ["up", "down"])


def test_no_log_upload_before_the_first_whole_line() -> None:
    # Given a Ray job whose log holds only an unfinished line so far (a flush can come before
    # the first line: seen once under load, an empty upload)
    from raylauncher.driver.logs import JobLogShipper

    objects, text = RecordingObjects(), ["partial"]
    shipper = JobLogShipper(objects, launching_job(MemoryStore()), lambda: text[0], flush_interval_s=0)
    # When the driver flushes, Then nothing is uploaded: no empty object, no partial line
    assert shipper.flush() is False and not shipper.uploaded
    assert objects.versions(shipper.key) == []
    # And once a line is whole, it is
    text[0] = "line 0\npartial"
    assert shipper.flush() is True and objects.versions(shipper.key) == [b"line 0\n"]


def test_failed_log_fetches_and_uploads_never_fail_the_job(tmp_path: Path) -> None:
    # Given a head whose log fetches time out at first and a bucket refusing the first uploads
    store, backend, objects = MemoryStore(), RecordingBackend(), RecordingObjects(fail_puts=3)
    job = launching_job(store)
    ray = ChattyRay(store, failing_fetches=3)
    # When the driver follows the job
    done = logging_driver(store, backend, tmp_path, ray, objects).run(job.job_id)
    # Then the job SUCCEEDED, the cluster went down, and the log in S3 is whole in the end
    assert (done.status, done.reason_code, backend.calls) == (JobStatus.SUCCEEDED, None, ["up", "down"])
    assert objects.blobs[done.logs_key or ""].decode() == ray.text()


def test_a_log_that_cannot_be_fetched_at_the_end_keeps_what_was_uploaded_and_says_so(tmp_path: Path) -> None:
    # Given a log copied to S3 while the job ran, and a head that stops answering at the end
    objects = RecordingObjects()
    job = Job.new("probe", "api")
    answers = iter(["a\nb\n"])

    def fetch() -> str:
        return next(answers)  # StopIteration from the second call on: the fetch fails

    shipper = JobLogShipper(objects, job, fetch, flush_interval_s=0)
    assert shipper.flush()
    # When the driver keeps the log at the end, Then the key stays, with a notice appended
    assert shipper.finish() == shipper.key
    versions = objects.versions(shipper.key)
    assert_grows(versions)
    assert versions[-1].startswith(b"a\nb\n") and b"could not be fetched" in versions[-1]


def test_a_huge_log_keeps_its_head_while_running_and_head_plus_tail_at_the_end(tmp_path: Path) -> None:
    # Given caps of 100 bytes of head and 40 of tail, and a log that grows far beyond them
    objects = RecordingObjects()
    lines = [f"line {i:04d}\n" for i in range(200)]  # 10 bytes each
    shown = {"n": 5}
    fetches = {"n": 0}

    def fetch() -> str:
        fetches["n"] += 1
        return "".join(lines[: shown["n"]])

    shipper = JobLogShipper(objects, Job.new("probe", "api"), fetch, flush_interval_s=0, head_bytes=100, tail_bytes=40)
    # When it is flushed while it grows
    for n in (5, 9, 30, 60):
        shown["n"] = n
        if shipper.due():
            shipper.flush()
    # Then the object grew to the head (whole lines within the cap) and no further; once the head
    # was full, the log was not fetched again while running
    assert objects.versions(shipper.key)[-1] == "".join(lines[:10]).encode()
    assert fetches["n"] == 3 and not shipper.due()
    # When the job ends, Then head + a notice + the last whole lines within the tail cap
    shown["n"] = 200
    shipper.finish()
    final = objects.versions(shipper.key)[-1].decode()
    assert final.startswith("".join(lines[:10])) and final.endswith("".join(lines[-4:]))
    assert "2000 bytes; 1860 bytes left out here; its last 40 bytes follow" in final
    assert_grows(objects.versions(shipper.key))


class SessionLogsBackend(RecordingBackend):
    """collect_logs: 'files' writes a raylet and a GCS log; 'hang' sleeps; 'raise' fails."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def collect_logs(self, job: Job, dest: Path, timeout_s: float) -> Path | None:
        self.calls.append("collect")
        if self.mode == "hang":
            time.sleep(600)
        if self.mode == "raise":
            raise RuntimeError("ssh: connect to host 10.0.1.23 port 22: Connection timed out")
        (dest / "old").mkdir(parents=True)
        (dest / "raylet.out").write_text(f"raylet of {job.run_id}\n")
        (dest / "gcs_server.out").write_text("gcs\n")
        (dest / "old" / "monitor.log").write_text("monitor\n")
        return dest


def tar_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_session_logs_are_kept_before_teardown(tmp_path: Path) -> None:
    # Given a backend whose head has raylet, GCS and monitor logs
    store, backend, objects = MemoryStore(), SessionLogsBackend("files"), RecordingObjects()
    job = launching_job(store)
    # When the job ends
    done = logging_driver(store, backend, tmp_path, None, objects).run(job.job_id)
    # Then they were fetched before the cluster went down, and kept as a tar.gz on the record
    assert backend.calls == ["up", "collect", "down"]
    assert done.session_logs_key == f"jobs/{job.job_id}/logs/ray-session.tar.gz"
    members = tar_members(objects.blobs[done.session_logs_key])
    assert members == {"ray-session-logs/raylet.out": f"raylet of {job.job_id}\n".encode(),
                       "ray-session-logs/gcs_server.out": b"gcs\n", "ray-session-logs/old/monitor.log": b"monitor\n"}  # fmt: skip


@pytest.mark.parametrize("mode", ["hang", "raise"])
def test_a_session_log_fetch_that_hangs_or_fails_never_keeps_the_cluster_up(tmp_path: Path, mode: str) -> None:
    # Given a backend whose session-log fetch hangs (or fails), bounded to 1 s
    store, backend, objects = MemoryStore(), SessionLogsBackend(mode), RecordingObjects()
    job = launching_job(store)
    driver = logging_driver(store, backend, tmp_path, None, objects, session_timeout_s=1)
    # When the job ends
    started = time.monotonic()
    done = driver.run(job.job_id)
    # Then the cluster still went down, soon, and the job SUCCEEDED without session logs
    assert backend.calls == ["up", "collect", "down"]
    assert time.monotonic() - started < 15
    assert (done.status, done.session_logs_key) == (JobStatus.SUCCEEDED, None)
    assert done.logs_key is not None  # the job's own log is kept all the same


def test_a_retried_attempt_keeps_its_session_logs_on_its_attempt_record(tmp_path: Path) -> None:
    # Given a cluster that fails to come up half-way (a head whose logs say why)
    class HalfUp(SessionLogsBackend):
        def up(self, job: Job, pipeline: Any, timeout_s: float, cancelled: Any) -> ClusterHandle:
            self.calls.append("up")
            raise ProvisioningFailed("ray up exited 1: Failed to setup head node.")

    store, backend, objects = MemoryStore(), HalfUp("files"), RecordingObjects()
    job = launching_job(store)
    driver = logging_driver(store, backend, tmp_path, None, objects)
    driver._requeue = lambda current, fields: store.transition(current, JobStatus.QUEUED, **fields)
    # When attempt 1 fails and attempt 2 is queued, Then attempt 1's session logs are on its record
    done = driver.run(job.job_id)
    assert backend.calls == ["up", "collect", "down"]
    assert (done.status, done.attempt, done.session_logs_key) == (JobStatus.QUEUED, 2, None)
    assert done.attempts[0]["session_logs_key"] == f"jobs/{job.job_id}/logs/ray-session.tar.gz"
    # and attempt 2 keeps its own, next to them
    driver.run(store.transition(store.get(job.job_id), JobStatus.LAUNCHING).job_id)
    final = store.get(job.job_id)
    assert final.session_logs_key == f"jobs/{job.job_id}/logs/ray-session-a2.tar.gz"
    assert tar_members(objects.blobs[final.session_logs_key])["ray-session-logs/raylet.out"] == f"raylet of {job.job_id}-a2\n".encode()


def test_packed_session_logs_are_capped_and_say_what_was_cut(tmp_path: Path) -> None:
    # Given logs: two small files and a big one
    (tmp_path / "a.log").write_bytes(b"x" * 10)
    (tmp_path / "b.log").write_bytes(b"y" * 30)
    (tmp_path / "big.log").write_bytes(b"0123456789" * 10)
    # When packed with 50 bytes per file and 70 in all
    members = tar_members(pack_logs(tmp_path, "logs", file_tail_bytes=50, total_bytes=70))
    # Then files fit smallest first, the big one is left out, and the notice says so
    assert (members["logs/a.log"], members["logs/b.log"]) == (b"x" * 10, b"y" * 30)
    assert "logs/big.log" not in members
    assert b"big.log: left out (100 bytes" in members["logs/RAYLAUNCHER-NOTICE.txt"]
    # and with room for it, only its tail is kept
    members = tar_members(pack_logs(tmp_path, "logs", file_tail_bytes=50, total_bytes=1000))
    assert members["logs/big.log"] == (b"0123456789" * 5)
    assert b"big.log: only its last 50 of 100 bytes" in members["logs/RAYLAUNCHER-NOTICE.txt"]


# -- spot interruption ------------------------------------------------------------------------


def test_a_ray_job_failing_after_a_spot_interruption_is_the_infrastructures_and_retried(tmp_path: Path) -> None:
    # Given a Ray job that fails while EC2 reclaims one of its cluster's (spot) workers
    class Interrupted(RecordingBackend):
        def lost_nodes(self, job: Job) -> list[str]:
            return ["i-0spot"]

    class FailingRay(SucceedingRay):
        def get_job_info(self, job_id: str) -> Any:
            return SimpleNamespace(status="FAILED", message="ray.exceptions.NodeDiedError: node died")

    store, backend = MemoryStore(), Interrupted()
    job = launching_job(store)
    driver = driver_for(store, backend, tmp_path, FailingRay())
    driver._requeue = lambda current, fields: store.transition(current, JobStatus.QUEUED, **fields)
    # When the driver runs it
    done = driver.run(job.job_id)
    # Then the attempt failed for the infrastructure (NODE_LOST, saying which node and what Ray
    # said), its cluster went down, and the job is queued for another attempt
    (first,) = done.attempts
    assert first["reason_code"] == ReasonCode.NODE_LOST
    assert "i-0spot" in first["reason_message"] and "NodeDiedError" in first["reason_message"]
    assert (done.status, done.attempt, backend.calls) == (JobStatus.QUEUED, 2, ["up", "down"])


def test_ec2_tells_which_instances_it_reclaimed() -> None:
    # Given EC2's answer for a cluster: one worker reclaimed (spot), one terminated by us, the head
    instances = [
        {"InstanceId": "i-spot", "StateReason": {"Code": "Server.SpotInstanceTermination"}},
        {"InstanceId": "i-ours", "StateReason": {"Code": "Client.UserInitiatedShutdown"}},
        {"InstanceId": "i-head"},
    ]

    class Pages:
        def paginate(self, **_: Any) -> list[dict[str, Any]]:
            return [{"Reservations": [{"Instances": instances}]}]

    class Ec2:
        def get_paginator(self, name: str) -> Pages:
            assert name == "describe_instances"
            return Pages()

    # When asked which were interrupted, Then only the reclaimed one is named
    assert Ec2ClusterInstances(Ec2()).interrupted("rl-job") == ["i-spot"]
