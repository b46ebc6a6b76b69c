"""The job: its states, the one table of allowed transitions, and why a job did not succeed.

Our deployment status (`JobStatus`) is kept apart from Ray's own job status (`ray_status`,
one of PENDING/RUNNING/STOPPED/SUCCEEDED/FAILED as reported by the Ray Jobs API).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from raylauncher.errors import IllegalTransition, InvalidJobId

# A job id is the only value that ever reaches the bastion's shell, so its alphabet is tiny.
JOB_ID_PATTERN = re.compile(r"^[a-z][a-z0-9-]{2,62}[a-z0-9]$")
#: One attempt of a job: the job id (attempt 1) or `<job id>-a<n>` (the Ray submission id and
#: the name its cluster is found by).
RUN_ID_PATTERN = re.compile(r"^[a-z][a-z0-9-]{2,62}[a-z0-9](-a[1-9][0-9]{0,2})?$")


class JobStatus(StrEnum):
    QUEUED = "QUEUED"  # recorded, nothing launched yet
    LAUNCHING = "LAUNCHING"  # the bastion was asked to start the driver
    PROVISIONING = "PROVISIONING"  # the driver owns the job and is bringing the cluster up
    SUBMITTED = "SUBMITTED"  # the Ray job was submitted (submission id = job id)
    RUNNING = "RUNNING"  # Ray reports the job running
    TEARING_DOWN = "TEARING_DOWN"  # the outcome is known; logs kept, cluster going down
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"
    TEARDOWN_FAILED = "TEARDOWN_FAILED"  # the cluster may still be up: a person or reaper must act


S = JobStatus
#: THE transition table. Anything not listed is forbidden. Once a cluster may exist
#: (PROVISIONING and later) the only way out is through TEARING_DOWN.
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    S.QUEUED: frozenset({S.LAUNCHING, S.CANCELLED, S.FAILED}),
    S.LAUNCHING: frozenset({S.PROVISIONING, S.CANCELLED, S.FAILED, S.QUEUED}),  # QUEUED: a retry
    S.PROVISIONING: frozenset({S.SUBMITTED, S.TEARING_DOWN}),
    S.SUBMITTED: frozenset({S.RUNNING, S.TEARING_DOWN}),
    S.RUNNING: frozenset({S.TEARING_DOWN}),
    # QUEUED: the cluster is verified gone and the failure is retried (a new attempt, new cluster)
    S.TEARING_DOWN: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.TIMED_OUT, S.TEARDOWN_FAILED, S.QUEUED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
    S.TIMED_OUT: frozenset(),
    S.TEARDOWN_FAILED: frozenset(),
}
TERMINAL: frozenset[JobStatus] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
#: What TEARING_DOWN may end in (the driver decides the outcome before it tears down).
OUTCOMES: frozenset[JobStatus] = TRANSITIONS[S.TEARING_DOWN] - {S.TEARDOWN_FAILED, S.QUEUED}


class ReasonCode(StrEnum):
    """Why a job did not succeed. Stored with a human message on every non-success."""

    LAUNCH_FAILED = "LAUNCH_FAILED"  # the bastion could not be asked to run the driver
    DRIVER_NOT_STARTED = "DRIVER_NOT_STARTED"  # launched, but no driver claimed it (watchdog)
    PROVISIONING_FAILED = "PROVISIONING_FAILED"  # the cluster did not come up
    PROVISIONING_TIMEOUT = "PROVISIONING_TIMEOUT"  # not up before the provisioning deadline
    SUBMIT_FAILED = "SUBMIT_FAILED"  # the Ray Jobs API refused the job
    RAY_JOB_FAILED = "RAY_JOB_FAILED"  # the entrypoint failed; the message is Ray's
    RAY_JOB_STOPPED = "RAY_JOB_STOPPED"  # somebody stopped the Ray job
    RUN_TIMEOUT = "RUN_TIMEOUT"  # the pipeline's run deadline passed
    CANCEL_REQUESTED = "CANCEL_REQUESTED"  # somebody asked for the job to be cancelled
    DRIVER_TERMINATED = "DRIVER_TERMINATED"  # the driver got SIGTERM/SIGINT
    DRIVER_ERROR = "DRIVER_ERROR"  # an unexpected error in the driver
    TEARDOWN_FAILED = "TEARDOWN_FAILED"  # the cluster could not be verified gone
    DRIVER_LOST = "DRIVER_LOST"  # the driver stopped heartbeating; the watchdog tore the cluster down
    NODE_LOST = "NODE_LOST"  # the Ray job failed after nodes of its cluster were taken away (spot interruption)


class FailureClass(StrEnum):
    INFRASTRUCTURE = "infrastructure"  # retried on a new cluster while the pipeline's max_attempts allow
    APPLICATION = "application"  # the job's own doing: retried only if the pipeline opts in
    FINAL = "final"  # never retried: somebody asked for it, or the cluster may still be up


#: THE retry classification, one line per reason.
FAILURE_CLASS: dict[ReasonCode, FailureClass] = {
    ReasonCode.LAUNCH_FAILED: FailureClass.INFRASTRUCTURE,
    ReasonCode.DRIVER_NOT_STARTED: FailureClass.INFRASTRUCTURE,
    ReasonCode.PROVISIONING_FAILED: FailureClass.INFRASTRUCTURE,
    ReasonCode.PROVISIONING_TIMEOUT: FailureClass.INFRASTRUCTURE,
    ReasonCode.SUBMIT_FAILED: FailureClass.INFRASTRUCTURE,
    ReasonCode.DRIVER_LOST: FailureClass.INFRASTRUCTURE,
    ReasonCode.DRIVER_TERMINATED: FailureClass.INFRASTRUCTURE,  # e.g. the bastion rebooting
    ReasonCode.NODE_LOST: FailureClass.INFRASTRUCTURE,  # a spot worker reclaimed under the job
    ReasonCode.RAY_JOB_FAILED: FailureClass.APPLICATION,
    ReasonCode.RUN_TIMEOUT: FailureClass.APPLICATION,
    ReasonCode.RAY_JOB_STOPPED: FailureClass.FINAL,  # somebody stopped it through Ray
    ReasonCode.CANCEL_REQUESTED: FailureClass.FINAL,
    ReasonCode.DRIVER_ERROR: FailureClass.FINAL,  # a bug of ours: retrying would repeat it
    ReasonCode.TEARDOWN_FAILED: FailureClass.FINAL,  # the old cluster may still be up
}


def is_valid_job_id(value: str) -> bool:
    return bool(JOB_ID_PATTERN.fullmatch(value))


def require_job_id(value: str) -> str:
    """Return `value` if it is a well-formed job id; raise InvalidJobId otherwise."""
    if not is_valid_job_id(value):
        raise InvalidJobId(value)
    return value


def new_job_id(pipeline: str, now: datetime) -> str:
    """`<pipeline>-<utc yyyymmdd-hhmmss>-<8 hex>`: sortable by time, unique, shell-safe."""
    return require_job_id(f"{pipeline}-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(4)}")


def run_id(job_id: str, attempt: int) -> str:
    return job_id if attempt <= 1 else f"{job_id}-a{attempt}"


def attempt_of(job_id: str, run: str) -> int | None:
    """The inverse of `run_id`: the attempt `run` names for `job_id` (None: not a run of it)."""
    if run == job_id:
        return 1
    rest = run.removeprefix(f"{job_id}-a")
    return int(rest) if rest != run and rest.isdigit() and RUN_ID_PATTERN.fullmatch(run) else None


def attempt_cluster_seconds(phase_times: dict[str, str], now: datetime | None = None) -> float:
    """PROVISIONING → the attempt's end (a terminal status, or QUEUED again for a retry) or `now`."""
    started = phase_times.get(JobStatus.PROVISIONING.value)
    queued = phase_times.get(JobStatus.QUEUED.value)
    if not started or (queued and parse_iso(queued) > parse_iso(started)):
        return 0.0  # this attempt has no cluster yet (PROVISIONING is an earlier attempt's)
    ends = [parse_iso(phase_times[s.value]) for s in TERMINAL if s.value in phase_times]
    end = min(ends) if ends else (now or utc_now())
    return max(0.0, (end - parse_iso(started)).total_seconds())


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> datetime:
    """The inverse of `iso` (also takes "+00:00"); ValueError if `value` is not ISO 8601."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def check_transition(current: JobStatus, target: JobStatus) -> None:
    """Raise IllegalTransition unless the table allows `current -> target`."""
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(current.value, target.value)


class Job(BaseModel):
    """One run of a pipeline, as stored in the job table."""

    job_id: str = Field(pattern=JOB_ID_PATTERN.pattern)
    pipeline: str
    trigger: Literal["s3", "api", "schedule"]
    status: JobStatus = JobStatus.QUEUED
    version: int = 0  # bumped by every transition; part of every transition's condition
    created_at: str
    updated_at: str
    phase_times: dict[str, str] = Field(default_factory=dict)  # status -> when it was entered
    manifest_key: str | None = None
    object_count: int = 0
    params: dict[str, Any] = Field(default_factory=dict)  # validated against the pipeline
    output_prefix: str | None = None
    logs_key: str | None = None  # the Ray job's log (grows while the job runs; driver/logs.py)
    session_logs_key: str | None = None  # tar.gz of the head's Ray session logs, kept before teardown
    ray_status: str | None = None  # Ray's own job status, never ours
    reason_code: ReasonCode | None = None
    reason_message: str | None = None
    pending_outcome: JobStatus | None = None  # decided before TEARING_DOWN, applied after
    cluster: dict[str, Any] | None = None  # what the backend needs to find the cluster again
    heartbeat_at: str | None = None
    cancel_requested: bool = False  # the driver polls it; a QUEUED job is cancelled at once
    slot_held: bool = False  # holds one of the cluster slots (admission control)
    teardown_attempts: int = 0
    summary: dict[str, Any] | None = None  # the Ray job's own summary, when it wrote one
    attempt: int = 1  # the current (or last) attempt; retries start a new one on a new cluster
    attempts: list[dict[str, Any]] = Field(default_factory=list)  # finished earlier attempts
    retry_at: str | None = None  # a QUEUED retry is not launched before this time
    owner: str | None = None  # who drives the job now: a driver's token, or "watchdog"
    launch_ref: str | None = None  # the bastion's handle of the current launch (SSM command id)
    # Warm clusters and debug holds (raylauncher/warm.py):
    cluster_key: str | None = None  # the cluster record (`cluster#<run id>`) this attempt ran on, if kept/reused
    warm: bool = False  # this attempt ran on a warm cluster (no `ray up`)
    kept: Literal["warm", "held"] | None = None  # the cluster stayed up after this job: warm or held
    kept_seconds: float | None = None  # how long it stayed up idle (warm) or held after this job
    release: str | None = None  # the release of the deployment that created it (raylauncher/releases.py)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def run_id(self) -> str:
        """This attempt's Ray submission id and cluster key: `<job>` then `<job>-a2`, `<job>-a3`…"""
        return run_id(self.job_id, self.attempt)

    def cluster_seconds(self, now: datetime | None = None) -> float:
        """Seconds clusters of this job were (or are) up, over every attempt: from entering
        PROVISIONING to the end of the attempt (now, while it runs)."""
        done = sum(float(a.get("cluster_seconds") or 0) for a in self.attempts)
        return done + attempt_cluster_seconds(self.phase_times, now)

    @classmethod
    def new(cls, pipeline: str, trigger: str, now: datetime | None = None) -> Job:
        now = now or utc_now()
        stamp = iso(now)
        return cls(
            job_id=new_job_id(pipeline, now),
            pipeline=pipeline,
            trigger=trigger,
            created_at=stamp,
            updated_at=stamp,
            phase_times={JobStatus.QUEUED.value: stamp},
        )


@dataclass(frozen=True)
class S3ObjectRef:
    """One S3 object (version) a job reads."""

    bucket: str
    key: str  # decoded: exactly as stored in the bucket
    size: int = 0
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None


def job_prefix(job_id: str) -> str:
    """Everything a job keeps in the data bucket lives under this prefix."""
    return f"jobs/{require_job_id(job_id)}/"


def logs_key_of(job: Job) -> str:
    """Where an attempt's Ray log is kept: logs/ray-job.log, then logs/ray-job-a2.log, …
    (here, not in the driver: the API reads it and must not import the driver)."""
    suffix = "" if job.attempt <= 1 else f"-a{job.attempt}"
    return job_prefix(job.job_id) + f"logs/ray-job{suffix}.log"
