"""Per-job metrics, derived from state-change events alone (no AWS, no Powertools here): the
metrics Lambda (lambdas/job_metrics/handler.py) publishes them, the stack alarms on some.

Counts and durations are emitted on the transition that completes them, so a redelivered event
(at-least-once) can count twice: the alarms fire on >= 1, which a duplicate does not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from raylauncher.events import JobStateChange
from raylauncher.model import JobStatus, parse_iso

S = JobStatus

#: Alarmed metrics (one series each: no dimension but the service) -> why they page someone.
JOB_ALARMS = {
    "DriverLost": "a job's driver stopped heartbeating and the watchdog took the job over (DRIVER_LOST): check the bastion",
    "TeardownFailed": "a job's cluster could not be verified gone and may still cost money: check its instances",
    "RetriesExhausted": "a job failed for an infrastructure reason with no attempt left: see its reason",
}


@dataclass(frozen=True)
class MetricPoint:
    name: str
    unit: Literal["Count", "Seconds"]
    value: float
    dimensions: dict[str, str] = field(default_factory=dict)


def _seconds(change: JobStateChange, start: JobStatus, end: JobStatus) -> float | None:
    times = change.phase_times
    if start.value not in times or end.value not in times:
        return None
    return max(0.0, (parse_iso(times[end.value]) - parse_iso(times[start.value])).total_seconds())


def state_change_metrics(change: JobStateChange) -> list[MetricPoint]:
    """The metric points one state change produces.

    Per pipeline: JobsCreated (recorded), JobsStarted (an attempt began provisioning a cluster),
    JobsSucceeded, JobsFailed (every other final status, also by reason), JobsRetried (by
    reason), QueueWaitSeconds (QUEUED -> LAUNCHING), ProvisioningSeconds (PROVISIONING ->
    SUBMITTED), RunSeconds (SUBMITTED -> TEARING_DOWN), ClusterSeconds (all attempts, when the
    job is final), WarmIdleSeconds / HeldClusterSeconds (how long a kept cluster stayed up idle
    or held after the job). Alarmed, without dimensions: DriverLost (the watchdog took the job over),
    TeardownFailed, RetriesExhausted.
    """
    pipeline = {"pipeline": change.pipeline}
    points: list[MetricPoint] = []

    def count(name: str, dimensions: dict[str, str]) -> None:
        points.append(MetricPoint(name, "Count", 1, dimensions))

    def duration(name: str, start: JobStatus, end: JobStatus) -> None:
        seconds = _seconds(change, start, end)
        if seconds is not None:
            points.append(MetricPoint(name, "Seconds", seconds, pipeline))

    if change.to == S.TEARING_DOWN and change.driven_by == "watchdog":
        count("DriverLost", {})  # the watchdog took the job over (into TEARING_DOWN, or already there)
    if change.from_ == change.to:  # a takeover, or a kept cluster's idle time: the status did not change
        if change.kept and change.kept_seconds is not None:  # the idle cost of a warm/held cluster
            name = "WarmIdleSeconds" if change.kept == "warm" else "HeldClusterSeconds"
            points.append(MetricPoint(name, "Seconds", change.kept_seconds, pipeline))
        return points
    if change.from_ is None:
        count("JobsCreated", pipeline)
    if change.to == S.LAUNCHING:
        duration("QueueWaitSeconds", S.QUEUED, S.LAUNCHING)
    elif change.to == S.PROVISIONING:
        count("JobsStarted", pipeline)
    elif change.to == S.SUBMITTED:
        duration("ProvisioningSeconds", S.PROVISIONING, S.SUBMITTED)
    elif change.to == S.TEARING_DOWN:
        duration("RunSeconds", S.SUBMITTED, S.TEARING_DOWN)
    reason = change.reason_code.value if change.reason_code else change.to.value
    if change.to == S.QUEUED and change.from_ is not None:
        count("JobsRetried", {**pipeline, "reason": reason})
    if change.terminal:
        if change.to == S.SUCCEEDED:
            count("JobsSucceeded", pipeline)
        else:
            count("JobsFailed", pipeline)
            count("JobsFailed", {**pipeline, "reason": reason})
        points.append(MetricPoint("ClusterSeconds", "Seconds", change.cluster_seconds, pipeline))
    if change.to == S.TEARDOWN_FAILED:
        count("TeardownFailed", {})
    if change.retries_exhausted:
        count("RetriesExhausted", {})
    return points
