"""Admission control against moto server: never more clusters than the caps, FIFO when slots free."""

import threading

import pytest

from raylauncher import aws
from raylauncher.admission import TOTAL_SLOTS_ID, Launcher, pipeline_slots_id, queue_position
from raylauncher.config import Settings, load_pipelines
from raylauncher.local.stack import bootstrap
from raylauncher.model import Job, JobStatus
from raylauncher.store import DynamoJobStore, JobQuery
from raylauncher.wiring import build_launcher, build_store
from tests.conftest import launcher_calls


@pytest.fixture
def launcher(settings: Settings) -> Launcher:
    bootstrap(settings, load_pipelines(settings.pipelines_file), queue_name=f"{settings.table}-intake")
    return build_launcher(settings, build_store(settings))


def slots_used(settings: Settings, slot_id: str) -> int:
    item = aws.client("dynamodb", settings).get_item(
        TableName=settings.idempotency_table, Key={"id": {"S": slot_id}}, ConsistentRead=True
    ).get("Item", {})
    return int(item.get("used", {}).get("N", "0"))


def finish(store: DynamoJobStore, job: Job) -> Job:
    """What a driver does to a launched job, in short: claim, run, tear down, succeed."""
    for step in (JobStatus.PROVISIONING, JobStatus.TEARING_DOWN, JobStatus.SUCCEEDED):
        job = store.transition(job, step)
    return job


def test_twenty_racing_intakes_for_two_slots_then_fifo(settings: Settings, launcher: Launcher) -> None:
    store = build_store(settings)
    cap = load_pipelines(settings.pipelines_file).get("sales-summary").max_concurrent_clusters
    assert cap == 2
    # Given 20 recorded jobs of one pipeline whose cap is 2
    jobs = [store.create(Job.new("sales-summary", "api")) for _ in range(20)]
    order = [j.job_id for j in sorted(jobs, key=lambda j: (j.created_at, j.job_id))]
    # When 20 intakes try to launch them at the same instant
    barrier = threading.Barrier(len(jobs))

    def race(job: Job) -> None:
        barrier.wait()
        launcher.try_launch(job)

    threads = [threading.Thread(target=race, args=(j,)) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Then exactly 2 launched (2 drivers asked for), the other 18 wait QUEUED
    current = store.list_jobs()
    launched = [j for j in current if j.status == JobStatus.LAUNCHING]
    assert len(launched) == 2 and all(j.slot_held for j in launched)
    assert sum(j.status == JobStatus.QUEUED for j in current) == 18
    assert len(launcher_calls(settings)) == 2
    assert slots_used(settings, pipeline_slots_id("sales-summary")) == 2
    queued = sorted((j for j in current if j.status == JobStatus.QUEUED), key=lambda j: (j.created_at, j.job_id))
    assert [queue_position(j, store) for j in queued] == list(range(1, 19))  # from the by_status index

    # When launched jobs finish one at a time, Then the oldest queued job takes the freed slot
    launch_order = []
    while running := [j for j in store.list_jobs() if j.status == JobStatus.LAUNCHING]:
        done = finish(store, running[0])
        newly = launcher.finished(done)
        launch_order += [j.job_id for j in newly]
        assert len(newly) <= 1
        assert slots_used(settings, pipeline_slots_id("sales-summary")) <= cap
        assert slots_used(settings, TOTAL_SLOTS_ID) <= cap
    queued_order = [jid for jid in order if jid not in {j.job_id for j in launched}]
    assert launch_order == queued_order
    # and once all are done, every slot is free again and every job ran once
    assert slots_used(settings, pipeline_slots_id("sales-summary")) == 0
    assert slots_used(settings, TOTAL_SLOTS_ID) == 0
    assert store.find(JobQuery(holding_slot=True), 100) == []  # releases left the sparse index too
    assert sorted(launcher_calls(settings)) == sorted(f"driver start {jid}" for jid in order)


def test_a_slot_is_released_once(settings: Settings, launcher: Launcher) -> None:
    store = build_store(settings)
    job = launcher.try_launch(store.create(Job.new("sales-summary", "api")))
    done = finish(store, job)
    assert launcher.release(done) is True
    assert launcher.release(store.get(done.job_id)) is False  # slot_held is already false
    assert launcher.release(done) is False  # a stale copy cannot release twice either
    assert slots_used(settings, pipeline_slots_id("sales-summary")) == 0


def test_the_total_cap_holds_across_pipelines(settings: Settings, launcher: Launcher) -> None:
    # Given a deployment-wide cap of 1 cluster
    store = build_store(settings)
    tight = build_launcher(settings.model_copy(update={"max_clusters_total": 1}), store)
    first = tight.try_launch(store.create(Job.new("sales-summary", "api")))
    second = tight.try_launch(store.create(Job.new("sales-summary", "api")))
    # Then the second waits although its pipeline allows 2
    assert (first.status, second.status) == (JobStatus.LAUNCHING, JobStatus.QUEUED)
