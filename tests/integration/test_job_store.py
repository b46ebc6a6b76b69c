"""The DynamoDB job store against moto server: conditional transitions, races, heartbeats."""

import threading

import pytest

from raylauncher import aws
from raylauncher.config import Settings
from raylauncher.errors import IllegalTransition, JobAlreadyExists, JobNotFound, TransitionConflict
from raylauncher.model import Job, JobStatus, ReasonCode
from raylauncher.store import JOB_TABLE, DynamoJobStore


@pytest.fixture
def store(settings: Settings) -> DynamoJobStore:
    ddb = aws.client("dynamodb", settings)
    ddb.create_table(**JOB_TABLE.create_table_kwargs(settings.table))
    return DynamoJobStore(ddb, settings.table)


def test_create_get_and_transition(store: DynamoJobStore) -> None:
    # Given a recorded job
    job = store.create(Job.new("sales-summary", "s3"))
    assert store.get(job.job_id) == job
    # When it moves to LAUNCHING
    moved = store.transition(job, JobStatus.LAUNCHING)
    # Then status, version and the phase timeline are updated, and the stored record agrees
    assert (moved.status, moved.version) == (JobStatus.LAUNCHING, 1)
    assert set(moved.phase_times) == {"QUEUED", "LAUNCHING"}
    assert store.get(job.job_id) == moved


def test_fields_are_set_and_removed_with_a_transition(store: DynamoJobStore) -> None:
    job = store.transition(store.create(Job.new("p-1", "s3")), JobStatus.FAILED,
                           reason_code=ReasonCode.LAUNCH_FAILED, reason_message="bastion said no",
                           summary={"seconds": 1.5, "rows": 3})  # fmt: skip
    assert (job.reason_code, job.reason_message) == (ReasonCode.LAUNCH_FAILED, "bastion said no")
    assert job.summary == {"seconds": 1.5, "rows": 3}


def test_a_forbidden_transition_never_reaches_the_table(store: DynamoJobStore) -> None:
    job = store.create(Job.new("p-1", "s3"))
    with pytest.raises(IllegalTransition):
        store.transition(job, JobStatus.SUCCEEDED)
    assert store.get(job.job_id).status == JobStatus.QUEUED


def test_stale_writer_loses(store: DynamoJobStore) -> None:
    # Given a job that moved on since a writer read it
    stale = store.create(Job.new("p-1", "s3"))
    store.transition(stale, JobStatus.LAUNCHING)
    # When the stale writer tries its own move, Then it conflicts and sees the actual status
    with pytest.raises(TransitionConflict) as err:
        store.transition(stale, JobStatus.CANCELLED)
    assert (err.value.expected, err.value.actual) == ("QUEUED", "LAUNCHING")


def test_two_concurrent_writers_exactly_one_wins(store: DynamoJobStore) -> None:
    # Given one job and two writers holding the same snapshot, started at the same instant
    job = store.create(Job.new("p-1", "s3"))
    barrier = threading.Barrier(2)
    results: dict[str, object] = {}

    def write(target: JobStatus) -> None:
        barrier.wait()
        try:
            results[target.value] = store.transition(job, target)
        except TransitionConflict as err:
            results[target.value] = err

    threads = [threading.Thread(target=write, args=(t,)) for t in (JobStatus.LAUNCHING, JobStatus.CANCELLED)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then exactly one transition won and the stored status is the winner's
    winners = [v for v in results.values() if isinstance(v, Job)]
    losers = [v for v in results.values() if isinstance(v, TransitionConflict)]
    assert len(winners) == 1 and len(losers) == 1
    assert store.get(job.job_id).status == winners[0].status
    assert store.get(job.job_id).version == 1


def test_heartbeat_keeps_status_and_version(store: DynamoJobStore) -> None:
    job = store.transition(store.create(Job.new("p-1", "s3")), JobStatus.LAUNCHING)
    beat = store.heartbeat(job, ray_status="RUNNING")
    assert (beat.status, beat.version, beat.ray_status) == (JobStatus.LAUNCHING, 1, "RUNNING")
    assert beat.heartbeat_at is not None
    # a heartbeat for a job that moved on is refused
    store.transition(beat, JobStatus.FAILED)
    with pytest.raises(TransitionConflict):
        store.heartbeat(beat)


def test_duplicates_and_missing(store: DynamoJobStore) -> None:
    job = store.create(Job.new("p-1", "s3"))
    with pytest.raises(JobAlreadyExists):
        store.create(job)
    with pytest.raises(JobNotFound):
        store.get("p-1-20260101-000000-00000000")
    assert [j.job_id for j in store.list_jobs()] == [job.job_id]
