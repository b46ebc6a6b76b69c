"""The DynamoDB job store against moto server: conditional transitions, races, heartbeats."""

import threading

import pytest

from raylauncher import aws
from raylauncher.config import Settings
from raylauncher.errors import IllegalTransition, JobAlreadyExists, JobNotFound, TransitionConflict
from raylauncher.model import Job, JobStatus, ReasonCode
from raylauncher.store import JOB_TABLE, DynamoJobStore, JobQuery
from tests.faults import FaultRow


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


WRITERS = 50


def test_fifty_concurrent_writers_exactly_one_wins_each_round_and_no_update_is_lost(
    store: DynamoJobStore, settings: Settings, fault_row
) -> None:
    # Given one job and 50 writers, each with its own client (as 50 Lambdas or drivers would)
    job = store.create(Job.new("p-1", "s3"))
    stores = [DynamoJobStore(aws.client("dynamodb", settings), settings.table) for _ in range(WRITERS)]

    def race(write) -> list[object]:  # noqa: ANN001
        """All writers at the same instant; what each one got (a Job or the error)."""
        barrier = threading.Barrier(WRITERS)
        results: list[object] = [None] * WRITERS

        def one(i: int) -> None:
            barrier.wait()
            try:
                results[i] = write(i)
            except TransitionConflict as err:
                results[i] = err

        threads = [threading.Thread(target=one, args=(i,)) for i in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    # When, three rounds running, every writer takes the job over from the same snapshot
    versions = [job.version]
    for round_ in range(3):
        snapshot = store.get(job.job_id)
        results = race(lambda i: stores[i].take_over(snapshot, f"writer-{i}", reason_message=f"round {round_} by {i}"))
        # Then exactly one wins each round, the others conflict, and the stored record is the winner's
        winners = [(i, r) for i, r in enumerate(results) if isinstance(r, Job)]
        assert len(winners) == 1 and sum(isinstance(r, TransitionConflict) for r in results) == WRITERS - 1
        ((i, won),) = winners
        stored = store.get(job.job_id)
        assert (stored.owner, stored.reason_message, stored.version) == (f"writer-{i}", f"round {round_} by {i}", won.version)
        versions.append(stored.version)

    # When every writer adds its own entry by read-modify-write, retrying on conflict
    def add_mine(i: int) -> Job:
        while True:
            fresh = stores[i].get(job.job_id)
            try:
                return stores[i].take_over(fresh, f"writer-{i}", summary={**(fresh.summary or {}), f"w{i}": i})
            except TransitionConflict:
                continue

    race(add_mine)
    stored = store.get(job.job_id)
    versions.append(stored.version)
    # Then no update is lost: all 50 entries are there, one version per successful write
    assert stored.summary == {f"w{i}": i for i in range(WRITERS)}
    assert stored.version == versions[-2] + WRITERS

    # When all 50 race to end the job, half cancelling, half failing it
    snapshot = store.get(job.job_id)
    results = race(lambda i: stores[i].transition(
        snapshot, JobStatus.CANCELLED if i % 2 else JobStatus.FAILED,
        reason_code=ReasonCode.CANCEL_REQUESTED if i % 2 else ReasonCode.LAUNCH_FAILED))  # fmt: skip
    winners = [r for r in results if isinstance(r, Job)]
    assert len(winners) == 1
    final = store.get(job.job_id)
    versions.append(final.version)
    # Then one terminal state, the winner's, and the version rose strictly at every step
    assert (final.status, final.reason_code) == (winners[0].status, winners[0].reason_code) and final.is_terminal
    assert all(b > a for a, b in zip(versions, versions[1:], strict=False)) and versions[-1] == WRITERS + 4
    fault_row(FaultRow(
        scenario=f"{WRITERS} concurrent writers on one job (3 take-over rounds, {WRITERS} read-modify-writes, "
                 "a race to end it; objects lost = updates lost)", backend="moto",
        terminal_state=final.status.value, reason=final.reason_code or "", attempts=final.attempt,
        cluster_seconds_after_fault=None, clusters_left=0,
        objects_lost=WRITERS - len(stored.summary or {}), objects_processed_twice=0,
    ))  # fmt: skip


def test_every_write_keeps_the_index_attributes(store: DynamoJobStore) -> None:
    # Given two jobs, one of which takes a cluster slot
    older = store.create(Job.new("p-1", "s3"))
    newer = store.create(Job.new("p-2", "api"))
    held = store.transition(older, JobStatus.LAUNCHING, slot_held=True)
    # Then the indexes find them by creation, status, pipeline and slot
    assert [j.job_id for j in store.find(JobQuery(), 10)] == [newer.job_id, older.job_id]
    assert [j.job_id for j in store.find(JobQuery(status=JobStatus.LAUNCHING), 10)] == [older.job_id]
    assert [j.job_id for j in store.find(JobQuery(pipeline="p-2"), 10)] == [newer.job_id]
    assert [j.job_id for j in store.find(JobQuery(holding_slot=True), 10)] == [older.job_id]
    assert store.count(JobQuery(status=JobStatus.QUEUED)) == 1
    # When the job ends and its slot flag is cleared, Then it leaves the sparse slot index
    ended = store.transition(held, JobStatus.FAILED, slot_held=False)
    assert store.find(JobQuery(holding_slot=True), 10) == []
    assert [j.job_id for j in store.find(JobQuery(status=JobStatus.FAILED), 10)] == [ended.job_id]
