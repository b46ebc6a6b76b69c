"""The watchdog sweep against moto server: lost launches fail with a reason, their slots come
back and queued jobs launch; jobs that need a person are reported, not touched."""

import importlib
import json
import os
import subprocess
from datetime import timedelta

import pytest

from tests.doubles import MemoryClusterTokens
from raylauncher.admission import pipeline_slots_id
from raylauncher.config import Settings, load_pipelines
from raylauncher.local.stack import bootstrap
from raylauncher.bastion import Bastion, LaunchFailure
from raylauncher.clusters.processes import marker_env
from raylauncher.errors import TransitionConflict
from raylauncher.model import Job, JobStatus, ReasonCode, iso, utc_now
from raylauncher.teardown import LocalProcessTeardown
from raylauncher.watchdog import Watchdog
from raylauncher.wiring import build_launcher, build_store
from tests.conftest import launcher_calls
from tests.faults import FaultRow
from tests.integration.test_admission import slots_used


@pytest.fixture
def system(settings: Settings):
    bootstrap(settings, load_pipelines(settings.pipelines_file), queue_name=f"{settings.table}-intake")
    store = build_store(settings)
    return store, build_launcher(settings, store)


def test_unclaimed_launch_is_retried_or_fails_with_reason_and_its_slot_launches_the_next_job(
    settings: Settings, system
) -> None:
    store, launcher = system
    # Given the pipeline's 2 slots held by two LAUNCHING jobs whose driver never showed up — one
    # on its first attempt, one already on its last (the pipeline allows 2) — and a third job
    # QUEUED behind them
    first_try, last_try = [launcher.try_launch(store.create(Job.new("sales-summary", "api"))) for _ in range(2)]
    last_try = store.mark(last_try, attempt=2)
    queued = launcher.try_launch(store.create(Job.new("sales-summary", "api")))
    assert {first_try.status, last_try.status} == {JobStatus.LAUNCHING} and queued.status == JobStatus.QUEUED
    assert slots_used(settings, pipeline_slots_id("sales-summary")) == 2
    calls_before = len(launcher_calls(settings))
    # When the watchdog sweeps 11 minutes later (grace: 10 minutes)
    later = utc_now() + timedelta(minutes=11)
    report = Watchdog(store, launcher, launch_grace_s=600, clock=lambda: later).sweep()
    # Then the first is QUEUED again for attempt 2 (DRIVER_NOT_STARTED is an infrastructure
    # failure), its first attempt kept with the reason, waiting for its backoff
    retried = store.get(first_try.job_id)
    assert (retried.status, retried.attempt, retried.slot_held) == (JobStatus.QUEUED, 2, False)
    assert retried.attempts[0]["reason_code"] == ReasonCode.DRIVER_NOT_STARTED
    assert "no driver claimed" in retried.attempts[0]["reason_message"]
    assert report.retried == [first_try.job_id]
    # And the one without attempts left FAILED with DRIVER_NOT_STARTED and a message
    failed = store.get(last_try.job_id)
    assert (failed.status, failed.reason_code, failed.slot_held) == (JobStatus.FAILED, ReasonCode.DRIVER_NOT_STARTED, False)
    assert "no driver claimed" in (failed.reason_message or "")
    assert sorted(report.failed_unclaimed) == sorted([first_try.job_id, last_try.job_id])
    # And the queued job was launched into a freed slot (its driver asked for once); the retry
    # waits for its backoff
    assert report.launched == [queued.job_id]
    assert store.get(queued.job_id).status == JobStatus.LAUNCHING
    assert slots_used(settings, pipeline_slots_id("sales-summary")) == 1
    assert launcher_calls(settings)[calls_before:] == [f"driver start {queued.job_id}"]


def test_recent_launches_and_running_jobs_are_left_alone(settings: Settings, system) -> None:
    store, launcher = system
    # Given a job launched a minute ago and one whose driver claimed it and heartbeats
    fresh = launcher.try_launch(store.create(Job.new("sales-summary", "api")))
    running = store.transition(launcher.try_launch(store.create(Job.new("sales-summary", "api"))), JobStatus.PROVISIONING)
    running = store.heartbeat(running)
    # When the watchdog sweeps now
    report = Watchdog(store, launcher, launch_grace_s=600).sweep()
    # Then nothing changed
    assert store.get(fresh.job_id).status == JobStatus.LAUNCHING
    assert store.get(running.job_id).status == JobStatus.PROVISIONING
    assert report.failed_unclaimed == [] and report.silent_drivers == []


def test_silent_drivers_and_failed_teardowns_are_reported_not_touched(settings: Settings, system) -> None:
    store, launcher = system
    # Given a provisioning job whose last heartbeat is old, and a job whose teardown failed
    silent = store.transition(launcher.try_launch(store.create(Job.new("sales-summary", "api"))), JobStatus.PROVISIONING)
    stuck = store.transition(launcher.try_launch(store.create(Job.new("sales-summary", "api"))), JobStatus.PROVISIONING)
    stuck = store.transition(store.transition(stuck, JobStatus.TEARING_DOWN), JobStatus.TEARDOWN_FAILED)
    # When the watchdog sweeps 20 minutes later (heartbeat grace: 15 minutes)
    later = utc_now() + timedelta(minutes=20)
    report = Watchdog(store, launcher, heartbeat_grace_s=900, clock=lambda: later).sweep()
    # Then both are reported for a person, and neither job changed
    assert report.silent_drivers == [silent.job_id]
    assert report.teardown_failed == [stuck.job_id]
    assert store.get(silent.job_id).status == JobStatus.PROVISIONING
    assert store.get(stuck.job_id).status == JobStatus.TEARDOWN_FAILED
    # And a failed teardown stops paging after a day (the alarm clears; the job stays as it is)
    next_day = utc_now() + timedelta(hours=25)
    assert Watchdog(store, launcher, clock=lambda: next_day).sweep().teardown_failed == []


def test_watchdog_lambda_sweeps_with_the_stack_settings(settings: Settings, system, monkeypatch, capsys) -> None:
    from raylauncher.local.poller import LocalLambdaContext

    store, launcher = system
    # Given a QUEUED job and free slots (its "slot freed" event was lost)
    queued = store.create(Job.new("sales-summary", "schedule"))
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "raylauncher")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "raylauncher-watchdog")
    import lambdas.watchdog.handler as watchdog_handler

    watchdog_handler = importlib.reload(watchdog_handler)  # a cold start: Powertools reads the environment now
    # When EventBridge Scheduler invokes the watchdog Lambda
    try:
        report = watchdog_handler.handler({}, LocalLambdaContext(function_name="watchdog", aws_request_id="r-1"))
    finally:
        watchdog_handler.watchdog.cache_clear()
    # Then the queued job was launched and the report says so
    assert report["launched"] == [queued.job_id]
    assert store.get(queued.job_id).status == JobStatus.LAUNCHING
    # And the counts went out as CloudWatch metrics (embedded metric format on stdout)
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    [metrics] = [m for m in emf if "QueuedJobsLaunched" in m]
    assert metrics["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "raylauncher"
    assert metrics["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]  # what the alarms select on
    assert (metrics["QueuedJobsLaunched"], metrics["TeardownFailedJobs"], metrics["service"]) == ([1.0], [0.0], "raylauncher-watchdog")


def test_a_finished_job_still_holding_its_slot_gives_it_back_once(settings: Settings, system) -> None:
    store, launcher = system
    # Given a job that ended while holding a slot whose release never happened (driver died),
    # and a job queued behind the cap
    held = [launcher.try_launch(store.create(Job.new("sales-summary", "api"))) for _ in range(2)]
    ended = store.transition(held[0], JobStatus.FAILED, reason_code=ReasonCode.DRIVER_ERROR, reason_message="died")
    queued = launcher.try_launch(store.create(Job.new("sales-summary", "api")))
    assert ended.slot_held and queued.status == JobStatus.QUEUED
    # When the watchdog sweeps twice
    first = Watchdog(store, launcher).sweep()
    second = Watchdog(store, launcher).sweep()
    # Then the slot came back exactly once and the queued job took it
    assert first.slots_released == [ended.job_id] and second.slots_released == []
    assert store.get(ended.job_id).slot_held is False
    assert first.launched == [queued.job_id]
    assert slots_used(settings, pipeline_slots_id("sales-summary")) == 2


def marked_cluster(run_id: str) -> subprocess.Popen[bytes]:
    """A stand-in for a job attempt's local cluster: a process in its own session carrying the
    attempt's marker, as LocalRayBackend starts `ray start --head --block`."""
    return subprocess.Popen(["sleep", "600"], env={**os.environ, **marker_env(run_id)}, start_new_session=True)


def test_a_lost_driver_is_taken_over_its_cluster_torn_down_and_a_second_sweep_changes_nothing(
    settings: Settings, system, fault_row
) -> None:
    store, launcher = system
    # Given two running jobs whose drivers stopped heartbeating 2 minutes ago (lease: 60 s), each
    # with its cluster's processes still up — one on its first attempt, one on its last
    clusters, jobs = [], []
    for attempt in (1, 2):
        job = store.transition(launcher.try_launch(store.create(Job.new("sales-summary", "api"))),
                               JobStatus.PROVISIONING, owner=f"driver:test:{attempt}")  # fmt: skip
        job = store.mark(job, attempt=attempt)
        cluster = marked_cluster(job.run_id)
        job = store.transition(store.transition(job, JobStatus.SUBMITTED), JobStatus.RUNNING,
                               cluster={"backend": "local", "session_id": cluster.pid})  # fmt: skip
        lost_at = utc_now() - timedelta(minutes=2)
        jobs.append(store.mark(job, heartbeat_at=iso(lost_at)))
        clusters.append(cluster)
    first, last = jobs
    # When the watchdog sweeps
    watchdog = Watchdog(store, launcher, teardown=LocalProcessTeardown(MemoryClusterTokens(), grace_s=2), lease_s=60)
    report = watchdog.sweep()
    # Then both were taken over and their clusters are gone
    assert sorted(report.drivers_lost) == sorted(j.job_id for j in jobs)
    for cluster in clusters:
        assert cluster.wait(timeout=10) is not None
    # And the first is QUEUED for attempt 2 (DRIVER_LOST is an infrastructure failure), its
    # lost attempt kept with the reason; the last one ended FAILED(DRIVER_LOST) saying why
    retried = store.get(first.job_id)
    assert (retried.status, retried.attempt, retried.slot_held) == (JobStatus.QUEUED, 2, False)
    assert retried.attempts[0]["reason_code"] == ReasonCode.DRIVER_LOST and report.retried == [first.job_id]
    ended = store.get(last.job_id)
    assert (ended.status, ended.reason_code, ended.slot_held) == (JobStatus.FAILED, ReasonCode.DRIVER_LOST, False)
    assert "no heartbeat since" in (ended.reason_message or "") and "while RUNNING" in (ended.reason_message or "")
    assert slots_used(settings, pipeline_slots_id("sales-summary")) == 0
    # And a driver that comes back to life finds the job no longer its own
    with pytest.raises(TransitionConflict):
        store.renew_lease(last.job_id, "driver:test:2")
    # When the watchdog sweeps again, Then nothing changes
    before = {j.job_id: j.model_dump() for j in store.list_jobs()}
    again = watchdog.sweep()
    assert (again.drivers_lost, again.retried, again.failed_unclaimed, again.slots_released) == ([], [], [], [])
    assert {j.job_id: j.model_dump() for j in store.list_jobs()} == before
    fault_row(FaultRow("driver lost (no heartbeat past the lease), watchdog sweep", "local processes",
                       ended.status.value, ended.reason_code.value, ended.attempt, None, 0, 0, 0))  # fmt: skip


def test_a_job_tearing_down_when_its_driver_died_keeps_its_outcome(settings: Settings, system) -> None:
    store, launcher = system
    # Given a job whose driver died while tearing down a SUCCEEDED job's cluster
    job = store.transition(launcher.try_launch(store.create(Job.new("sales-summary", "api"))), JobStatus.PROVISIONING,
                           owner="driver:test")  # fmt: skip
    cluster = marked_cluster(job.run_id)
    job = store.transition(job, JobStatus.TEARING_DOWN, pending_outcome=JobStatus.SUCCEEDED,
                           cluster={"backend": "local", "session_id": cluster.pid})  # fmt: skip
    job = store.mark(job, heartbeat_at=iso(utc_now() - timedelta(minutes=5)))
    # When the watchdog sweeps
    report = Watchdog(store, launcher, teardown=LocalProcessTeardown(MemoryClusterTokens(), grace_s=2), lease_s=60).sweep()
    # Then it finished the teardown and the job ends as its driver had decided: SUCCEEDED
    assert report.drivers_lost == [job.job_id]
    assert cluster.wait(timeout=10) is not None
    done = store.get(job.job_id)
    assert (done.status, done.owner, done.slot_held) == (JobStatus.SUCCEEDED, "watchdog", False)


class FailedLaunches(Bastion):
    """A bastion whose SSM command ends Failed (what moto cannot do: its commands succeed)."""

    def run_driver(self, job_id: str) -> str:
        return f"cmd-{job_id}"

    def launch_failure(self, ref: str) -> LaunchFailure | None:
        return LaunchFailure("Failed: Failed", "bash: raylauncher: command not found")


def test_a_launch_whose_ssm_command_failed_ends_at_once_not_after_the_grace(settings: Settings, system) -> None:
    store, _ = system
    launcher = build_launcher(settings, store, FailedLaunches())
    # Given a job launched a moment ago whose bastion command has already failed
    job = launcher.try_launch(store.create(Job.new("sales-summary", "api")))
    job = store.mark(store.get(job.job_id), attempt=2)  # its last attempt: the pipeline allows 2
    assert (job.status, job.launch_ref) == (JobStatus.LAUNCHING, f"cmd-{job.job_id}")
    # When the watchdog sweeps now (well within the 10-minute launch grace)
    report = Watchdog(store, launcher, launch_grace_s=600).sweep()
    # Then the job FAILED(DRIVER_NOT_STARTED) with the command's status and output, slot back
    done = store.get(job.job_id)
    assert report.failed_unclaimed == [job.job_id]
    assert (done.status, done.reason_code, done.slot_held) == (JobStatus.FAILED, ReasonCode.DRIVER_NOT_STARTED, False)
    assert "ended Failed" in (done.reason_message or "") and "command not found" in (done.reason_message or "")


def test_orphaned_ray_tokens_are_deleted_once_their_cluster_is_gone_and_no_other(settings: Settings, system) -> None:
    from raylauncher import aws
    from raylauncher.cluster_tokens import SsmClusterTokens, TokenNotFound

    store, launcher = system
    tokens = SsmClusterTokens(aws.client("ssm", settings))
    # Given token parameters a driver and a takeover both failed to delete — of a job that
    # SUCCEEDED, of a job that is not in the table, of a job's earlier attempt — and the tokens
    # of a running job and of a job whose teardown failed (its cluster may still be up)
    def job_in(*path: JobStatus, attempt: int = 1) -> Job:
        job = store.create(Job.new("sales-summary", "api"))
        job = store.mark(job, attempt=attempt) if attempt > 1 else job
        for status in path:
            job = store.transition(job, status)
        return job

    ended = job_in(JobStatus.LAUNCHING, JobStatus.PROVISIONING, JobStatus.TEARING_DOWN, JobStatus.SUCCEEDED)
    unknown = Job.new("sales-summary", "api")
    retried = job_in(JobStatus.LAUNCHING, JobStatus.PROVISIONING, attempt=2)
    earlier_attempt = retried.model_copy(update={"attempt": 1})
    running = job_in(JobStatus.LAUNCHING, JobStatus.PROVISIONING)
    stuck = job_in(JobStatus.LAUNCHING, JobStatus.PROVISIONING, JobStatus.TEARING_DOWN, JobStatus.TEARDOWN_FAILED)
    for job in (ended, unknown, earlier_attempt, retried, running, stuck):
        tokens.issue(job)
    watchdog = Watchdog(store, launcher, tokens=tokens, token_grace_s=600)
    # When the watchdog sweeps now, Then no token is touched: each is younger than the grace
    assert watchdog.sweep().tokens_deleted == []
    # When it sweeps 11 minutes later
    later = utc_now() + timedelta(minutes=11)
    report = Watchdog(store, launcher, tokens=tokens, token_grace_s=600, clock=lambda: later).sweep()
    # Then the orphans are deleted and reported, the others kept
    orphans = [ended, unknown, earlier_attempt]
    assert {f"{j.job_id}/{j.run_id}" for j in orphans} <= set(report.tokens_deleted)
    for job in orphans:
        with pytest.raises(TokenNotFound):
            tokens.read(job)
    for job in (retried, running, stuck):
        assert tokens.read(job)
    # And the listing carries names and dates only, never a token's value
    listed = repr(tokens.stored())
    assert not any(tokens.read(job) in listed for job in (retried, running, stuck))
