"""Job state-change events on moto server: the local bus, its rule and queue (as bootstrapped),
read back in order — a whole lifecycle, a watchdog takeover and its retry; a bus that refuses
or cannot be reached never blocks a transition."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

import pytest

from tests.doubles import MemoryClusterTokens
from raylauncher import aws
from raylauncher.config import Settings, load_pipelines
from raylauncher.events import DETAIL_TYPE, PUBLISH_CLIENT_CONFIG, SOURCE, EventBridgeJobEvents, JobStateChange
from raylauncher.job_metrics import JOB_ALARMS, state_change_metrics
from raylauncher.local.stack import LocalResources, bootstrap
from raylauncher.model import Job, JobStatus, ReasonCode, iso, utc_now
from raylauncher.store import DynamoJobStore
from raylauncher.teardown import ClusterTeardown
from raylauncher.watchdog import Watchdog
from raylauncher.wiring import build_launcher, build_store


@pytest.fixture
def with_bus(settings: Settings) -> tuple[Settings, LocalResources]:
    settings = settings.model_copy(update={"event_bus": f"bus-{settings.table}"})
    resources = bootstrap(settings, load_pipelines(settings.pipelines_file), queue_name=f"{settings.table}-intake")
    return settings, resources


def read_events(settings: Settings, queue_url: str, expected: int, timeout_s: float = 10) -> list[dict[str, Any]]:
    """The events on the queue, in the order received (deleted once read)."""
    sqs = aws.client("sqs", settings)
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while len(found) < expected and time.monotonic() < deadline:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        for message in messages:
            found.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return found


def test_a_job_lifecycle_arrives_on_the_queue_in_order(with_bus: tuple[Settings, LocalResources]) -> None:
    settings, resources = with_bus
    assert resources.events_queue_url
    store = build_store(settings)  # the wiring every entry point uses: events on the settings' bus
    # Given a job recorded, launched by admission control (a transaction), then driven to the end
    job = store.create(Job.new("sales-summary", "api"))
    job = build_launcher(settings, store).try_launch(job)
    assert job.status == JobStatus.LAUNCHING
    for step, fields in (
        (JobStatus.PROVISIONING, {}),
        (JobStatus.SUBMITTED, {"ray_status": "PENDING"}),
        (JobStatus.RUNNING, {"ray_status": "RUNNING"}),
        (JobStatus.TEARING_DOWN, {"pending_outcome": JobStatus.FAILED, "reason_code": ReasonCode.RAY_JOB_FAILED,
                                  "reason_message": "x" * 5000}),
        (JobStatus.FAILED, {"reason_code": ReasonCode.RAY_JOB_FAILED, "reason_message": "x" * 5000}),
    ):  # fmt: skip
        job = store.heartbeat(job)  # not a transition: no event
        job = store.transition(job, step, **fields)
    # When the local queue behind the bus's rule is read
    events = read_events(settings, resources.events_queue_url, expected=7)
    # Then every change arrived once, in order, as the documented envelope and detail
    assert [(e["source"], e["detail-type"]) for e in events] == [(SOURCE, DETAIL_TYPE)] * 7
    details = [JobStateChange.model_validate(e["detail"]) for e in events]
    assert [(d.from_, d.to) for d in details] == [
        (None, JobStatus.QUEUED), (JobStatus.QUEUED, JobStatus.LAUNCHING), (JobStatus.LAUNCHING, JobStatus.PROVISIONING),
        (JobStatus.PROVISIONING, JobStatus.SUBMITTED), (JobStatus.SUBMITTED, JobStatus.RUNNING),
        (JobStatus.RUNNING, JobStatus.TEARING_DOWN), (JobStatus.TEARING_DOWN, JobStatus.FAILED),
    ]  # fmt: skip
    assert [d.version for d in details] == list(range(7))
    assert {d.job_id for d in details} == {job.job_id}
    last = details[-1]
    assert (last.terminal, last.reason_code, last.failure_class, last.retries_exhausted) == (
        True, ReasonCode.RAY_JOB_FAILED, "application", False)  # fmt: skip
    assert len(last.reason_message or "") == 1000
    assert last.phase_times == job.phase_times and last.time == job.updated_at
    assert last.cluster_seconds == pytest.approx(job.cluster_seconds(), abs=0.01) and last.cluster_seconds > 0


def test_a_bus_that_refuses_or_cannot_be_reached_never_blocks_a_transition(
    with_bus: tuple[Settings, LocalResources], caplog: pytest.LogCaptureFixture
) -> None:
    settings, _ = with_bus
    ddb = aws.client("dynamodb", settings)
    missing_bus = EventBridgeJobEvents(aws.client("events", settings, PUBLISH_CLIENT_CONFIG), "no-such-bus")
    unreachable = EventBridgeJobEvents(
        aws.client("events", settings.model_copy(update={"endpoint_url": "http://127.0.0.1:9"}), PUBLISH_CLIENT_CONFIG),
        "any-bus",
    )  # fmt: skip
    for events in (missing_bus, unreachable):
        store = DynamoJobStore(ddb, settings.table, events)
        # Given a store whose events cannot be published
        started = time.monotonic()
        job = store.create(Job.new("sales-summary", "api"))
        # When the job moves on, Then the transitions are written all the same, and promptly
        job = store.transition(store.transition(job, JobStatus.LAUNCHING), JobStatus.CANCELLED)
        assert store.get(job.job_id).status == JobStatus.CANCELLED
        assert time.monotonic() - started < 10
    # And each failure is logged with its code
    codes = [r.getMessage().rsplit(": ", 1)[-1] for r in caplog.records if "not published" in r.getMessage()]
    assert codes == ["ResourceNotFoundException"] * 3 + ["EndpointConnectionError"] * 3


class GoneAlready(ClusterTeardown):
    def __init__(self) -> None:
        super().__init__(MemoryClusterTokens())

    def _teardown(self, job: Job) -> None:
        """The lost driver's cluster is verified gone (what the EC2/local teardown reports)."""


def test_a_lost_driver_taken_over_by_the_watchdog_is_announced_and_counted(
    with_bus: tuple[Settings, LocalResources],
) -> None:
    settings, resources = with_bus
    assert resources.events_queue_url
    store = build_store(settings)
    launcher = build_launcher(settings, store)
    # Given a running job whose driver stopped heartbeating
    job = launcher.try_launch(store.create(Job.new("sales-summary", "api")))
    job = store.transition(job, JobStatus.PROVISIONING, owner="driver:bastion:0a1b2c3d", heartbeat_at=iso(utc_now()))
    job = store.transition(store.transition(job, JobStatus.SUBMITTED), JobStatus.RUNNING)
    read_events(settings, resources.events_queue_url, expected=5)
    # When the watchdog sweeps after the driver's lease ran out
    later = utc_now() + timedelta(minutes=10)
    Watchdog(store, launcher, teardown=GoneAlready(), clock=lambda: later, lease_s=60).sweep()
    # Then the takeover and the retry it decided arrive, in order
    details = [JobStateChange.model_validate(e["detail"]) for e in read_events(settings, resources.events_queue_url, 2)]
    assert [(d.from_, d.to, d.driven_by, d.reason_code, d.attempt) for d in details] == [
        (JobStatus.RUNNING, JobStatus.TEARING_DOWN, "watchdog", ReasonCode.DRIVER_LOST, 1),
        (JobStatus.TEARING_DOWN, JobStatus.QUEUED, None, ReasonCode.DRIVER_LOST, 2),
    ]  # fmt: skip
    # And the metrics count one lost driver and one retry for that reason
    points = [p for d in details for p in state_change_metrics(d)]
    assert [p.name for p in points if p.name in JOB_ALARMS] == ["DriverLost"]
    assert [p.dimensions for p in points if p.name == "JobsRetried"] == [{"pipeline": "sales-summary", "reason": "DRIVER_LOST"}]
