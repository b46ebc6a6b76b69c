"""State-change events and the metrics made of them, without AWS: the builder against the
committed JSON Schema, the EventBridge adapter never raising, the metric points, the handler's EMF."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from botocore.exceptions import ClientError

from raylauncher.events import (
    DETAIL_TYPE,
    SOURCE,
    WATCHDOG_OWNER,
    EventBridgeJobEvents,
    JobStateChange,
    detail_json_schema_text,
    state_change,
    state_change_entry,
)
from raylauncher.job_metrics import JOB_ALARMS, MetricPoint, state_change_metrics
from raylauncher.model import Job, JobStatus, ReasonCode, iso

DOCS = Path(__file__).resolve().parents[2] / "docs"
S = JobStatus
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)  # CloudWatch takes the last 14 days


def at(seconds: float) -> str:
    return iso(T0 + timedelta(seconds=seconds))


def job(**changes: Any) -> Job:
    base = Job.new("sales-summary", "s3", now=T0)
    return base.model_copy(update=changes)


def moved(before: Job, to: JobStatus, seconds: float, **changes: Any) -> Job:
    """`before` after a transition to `to` at T0 + seconds (what the store returns)."""
    stamp = at(seconds)
    return before.model_copy(update={"status": to, "version": before.version + 1, "updated_at": stamp,
                                     "phase_times": {**before.phase_times, to.value: stamp}, **changes})  # fmt: skip


def lifecycle() -> list[tuple[Job | None, Job]]:
    """A job's changes: recorded, launched after 5 s, provisioned in 60 s, run 100 s, torn down."""
    steps = [(S.LAUNCHING, 5), (S.PROVISIONING, 10), (S.SUBMITTED, 70), (S.RUNNING, 75), (S.TEARING_DOWN, 170)]
    first = job()
    changes: list[tuple[Job | None, Job]] = [(None, first)]
    current = first
    for status, seconds in steps:
        nxt = moved(current, status, seconds)
        changes.append((current, nxt))
        current = nxt
    changes.append((current, moved(current, S.SUCCEEDED, 200)))
    return changes


# -- the schema -----------------------------------------------------------------------------


def test_committed_event_schema_matches_the_code() -> None:
    assert (DOCS / "events.schema.json").read_text(encoding="utf-8") == detail_json_schema_text() + "\n", (
        "docs/events.schema.json is stale: run `python -m raylauncher.events > docs/events.schema.json`"
    )


def test_every_built_detail_validates_against_the_committed_schema() -> None:
    validator = jsonschema.Draft202012Validator(json.loads((DOCS / "events.schema.json").read_text(encoding="utf-8")))
    last = lifecycle()[-1][1]
    failed = moved(moved(job(), S.LAUNCHING, 1), S.FAILED, 2, reason_code=ReasonCode.LAUNCH_FAILED, reason_message="é" * 3000)
    for before, after in [*lifecycle(), (None, last), (job(), failed)]:
        entry = state_change_entry(before, after, "bus")
        validator.validate(json.loads(entry["Detail"]))


def test_the_example_in_the_docs_is_a_valid_event() -> None:
    example = json.loads((DOCS / "events.md").read_text(encoding="utf-8").split("```json")[1].split("```")[0])
    schema = json.loads((DOCS / "events.schema.json").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(schema).validate(example["detail"])
    assert (example["source"], example["detail-type"]) == (SOURCE, DETAIL_TYPE)


def test_the_entry_is_the_documented_envelope() -> None:
    before, after = lifecycle()[3]
    entry = state_change_entry(before, after, "raylauncher-events")
    assert (entry["Source"], entry["DetailType"], entry["EventBusName"]) == (SOURCE, DETAIL_TYPE, "raylauncher-events")
    assert entry["Time"] == T0 + timedelta(seconds=70)
    detail = json.loads(entry["Detail"])
    assert (detail["from"], detail["to"], detail["version"], detail["attempt"]) == ("PROVISIONING", "SUBMITTED", 3, 1)
    assert detail["cluster_seconds"] == 60.0 and detail["time"] == at(70)
    assert len(entry["Detail"].encode()) < 256 * 1024  # PutEvents' limit per entry


# -- what the detail says -------------------------------------------------------------------


def test_the_watchdog_owner_is_the_one_the_watchdog_writes() -> None:
    from raylauncher.driver.lease import new_owner_token
    from raylauncher.watchdog import WATCHDOG_OWNER as WRITTEN

    assert WATCHDOG_OWNER == WRITTEN
    assert state_change(None, job(owner=new_owner_token())).driven_by == "driver"


def test_a_new_job_has_no_from() -> None:
    change = state_change(None, job())
    assert (change.from_, change.to, change.version, change.terminal) == (None, S.QUEUED, 0, False)


def test_an_infrastructure_failure_at_the_end_has_no_retry_left() -> None:
    # Given a job whose last attempt failed to provision
    tearing = moved(moved(job(), S.PROVISIONING, 10), S.TEARING_DOWN, 20, reason_code=ReasonCode.PROVISIONING_FAILED)
    ended = moved(tearing, S.FAILED, 30, reason_code=ReasonCode.PROVISIONING_FAILED, reason_message="x" * 2000)
    change = state_change(tearing, ended)
    # Then it is final, of the infrastructure class, retries exhausted, the message clipped
    assert (change.terminal, change.failure_class, change.retries_exhausted) == (True, "infrastructure", True)
    assert len(change.reason_message or "") == 1000 and change.reason_message.endswith("…")  # type: ignore[union-attr]
    # And an application failure or a cancel is not "retries exhausted"
    for reason in (ReasonCode.RAY_JOB_FAILED, ReasonCode.CANCEL_REQUESTED):
        assert not state_change(tearing, moved(tearing, S.FAILED, 30, reason_code=reason)).retries_exhausted


def test_a_retry_names_the_reason_of_the_attempt_that_ended() -> None:
    # Given a job going back to QUEUED for attempt 2 (its own reason cleared, the attempt kept)
    tearing = moved(moved(job(), S.PROVISIONING, 10), S.TEARING_DOWN, 20, reason_code=ReasonCode.DRIVER_LOST)
    ended_attempt = {"attempt": 1, "status": "FAILED", "reason_code": "DRIVER_LOST", "reason_message": "silent driver"}
    retried = moved(tearing, S.QUEUED, 30, attempt=2, attempts=[ended_attempt], reason_code=None, reason_message=None)
    change = state_change(tearing, retried)
    # Then the event says why, and which attempt comes next
    assert (change.reason_code, change.reason_message, change.failure_class) == (
        ReasonCode.DRIVER_LOST, "silent driver", "infrastructure")  # fmt: skip
    assert (change.attempt, change.run_id, change.retries_exhausted) == (2, f"{retried.job_id}-a2", False)


# -- the EventBridge adapter ----------------------------------------------------------------


class StubEvents:
    def __init__(self, answer: Any) -> None:
        self.answer, self.sent = answer, []

    def put_events(self, Entries: list[dict[str, Any]]) -> dict[str, Any]:  # noqa: N803 - boto3's name
        self.sent.append(Entries)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(
    ("answer", "logged"),
    [
        ({"FailedEntryCount": 1, "Entries": [{"ErrorCode": "InternalFailure", "ErrorMessage": "try later"}]}, "InternalFailure"),
        (ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no"}}, "PutEvents"), "AccessDeniedException"),
        (RuntimeError("a bug"), "not published"),
    ],
)  # fmt: skip
def test_a_failed_publish_is_logged_and_never_raised(answer: Any, logged: str, caplog: pytest.LogCaptureFixture) -> None:
    events = StubEvents(answer)
    with caplog.at_level(logging.WARNING):
        assert EventBridgeJobEvents(events, "bus").job_changed(None, job()) is False
    assert logged in caplog.text and len(events.sent) == 1


def test_an_accepted_event_is_one_entry_on_the_bus() -> None:
    events = StubEvents({"FailedEntryCount": 0, "Entries": [{"EventId": "1"}]})
    assert EventBridgeJobEvents(events, "bus").job_changed(None, job()) is True
    [[entry]] = events.sent
    assert entry["EventBusName"] == "bus" and json.loads(entry["Detail"])["to"] == "QUEUED"


# -- metrics --------------------------------------------------------------------------------


def metrics_of(before: Job | None, after: Job) -> list[MetricPoint]:
    return state_change_metrics(state_change(before, after))


def test_a_successful_lifecycle_gives_its_counts_and_phase_times() -> None:
    points = [p for before, after in lifecycle() for p in metrics_of(before, after)]
    pipeline = {"pipeline": "sales-summary"}
    assert points == [
        MetricPoint("JobsCreated", "Count", 1, pipeline),
        MetricPoint("QueueWaitSeconds", "Seconds", 5.0, pipeline),
        MetricPoint("JobsStarted", "Count", 1, pipeline),
        MetricPoint("ProvisioningSeconds", "Seconds", 60.0, pipeline),
        MetricPoint("RunSeconds", "Seconds", 100.0, pipeline),
        MetricPoint("JobsSucceeded", "Count", 1, pipeline),
        MetricPoint("ClusterSeconds", "Seconds", 190.0, pipeline),
    ]


def test_failures_are_counted_by_reason_and_the_alarmed_ones_without_dimensions() -> None:
    owned = moved(job(), S.PROVISIONING, 10, owner="driver:bastion:0a1b2c3d")
    running = moved(moved(owned, S.SUBMITTED, 20), S.RUNNING, 30)
    assert state_change(owned, running).driven_by == "driver"
    # Driver lost: the watchdog takes the job over and starts the teardown
    lost = moved(running, S.TEARING_DOWN, 40, reason_code=ReasonCode.DRIVER_LOST, owner=WATCHDOG_OWNER)
    assert MetricPoint("DriverLost", "Count", 1, {}) in metrics_of(running, lost)
    # ... or takes over one already tearing down (no status change: the outcome was decided)
    tearing = moved(running, S.TEARING_DOWN, 40, reason_code=ReasonCode.RAY_JOB_FAILED)
    assert "DriverLost" not in {p.name for p in metrics_of(running, tearing)}
    taken = tearing.model_copy(update={"version": tearing.version + 1, "owner": WATCHDOG_OWNER, "updated_at": at(45)})
    change = state_change(tearing, taken)
    assert (change.from_, change.to, change.driven_by) == (S.TEARING_DOWN, S.TEARING_DOWN, "watchdog")
    assert state_change_metrics(change) == [MetricPoint("DriverLost", "Count", 1, {})]
    # ... and the job ends with no retry left
    ended = moved(lost, S.FAILED, 50, reason_code=ReasonCode.DRIVER_LOST)
    names = {(p.name, tuple(p.dimensions.values())) for p in metrics_of(lost, ended)}
    assert names >= {("JobsFailed", ("sales-summary",)), ("JobsFailed", ("sales-summary", "DRIVER_LOST")),
                     ("RetriesExhausted", ()), ("ClusterSeconds", ("sales-summary",))}  # fmt: skip
    assert ("DriverLost", ()) not in names  # counted once, when it was found
    # A teardown that failed
    stuck = moved(lost, S.TEARDOWN_FAILED, 60, reason_code=ReasonCode.TEARDOWN_FAILED)
    assert MetricPoint("TeardownFailed", "Count", 1, {}) in metrics_of(lost, stuck)
    # A retry is counted by the reason of the attempt that ended
    ended_attempt = {"attempt": 1, "reason_code": "PROVISIONING_FAILED"}
    retried = moved(lost, S.QUEUED, 70, attempt=2, attempts=[ended_attempt], reason_code=None)
    assert metrics_of(lost, retried) == [
        MetricPoint("JobsRetried", "Count", 1, {"pipeline": "sales-summary", "reason": "PROVISIONING_FAILED"})]
    # Every alarmed metric is one the function can emit
    assert set(JOB_ALARMS) == {"DriverLost", "TeardownFailed", "RetriesExhausted"}


def test_the_metrics_lambda_writes_one_emf_line_per_point(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "raylauncher-job_metrics")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "raylauncher")
    from lambdas.job_metrics import handler as job_metrics
    from raylauncher.local.poller import LocalLambdaContext

    monkeypatch.setattr(job_metrics.logger, "service", "raylauncher-job_metrics")
    before, after = lifecycle()[-1]
    event = {"source": SOURCE, "detail-type": DETAIL_TYPE, "detail": json.loads(state_change_entry(before, after, "b")["Detail"])}
    result = job_metrics.handler(event, LocalLambdaContext(aws_request_id="r-1"))
    assert result["metrics"] == ["JobsSucceeded", "ClusterSeconds"]
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    assert [(m["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"], m["_aws"]["CloudWatchMetrics"][0]["Dimensions"])
            for m in emf] == [("JobsSucceeded", [["service", "pipeline"]]), ("ClusterSeconds", [["service", "pipeline"]])]  # fmt: skip
    assert emf[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "raylauncher"
    assert emf[0]["_aws"]["Timestamp"] == int((T0 + timedelta(seconds=200)).timestamp() * 1000)
    assert JobStateChange.model_validate(event["detail"]).to == S.SUCCEEDED
