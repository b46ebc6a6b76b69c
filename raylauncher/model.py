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
    S.LAUNCHING: frozenset({S.PROVISIONING, S.CANCELLED, S.FAILED}),
    S.PROVISIONING: frozenset({S.SUBMITTED, S.TEARING_DOWN}),
    S.SUBMITTED: frozenset({S.RUNNING, S.TEARING_DOWN}),
    S.RUNNING: frozenset({S.TEARING_DOWN}),
    S.TEARING_DOWN: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.TIMED_OUT, S.TEARDOWN_FAILED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
    S.TIMED_OUT: frozenset(),
    S.TEARDOWN_FAILED: frozenset(),
}
TERMINAL: frozenset[JobStatus] = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)
#: What TEARING_DOWN may end in (the driver decides the outcome before it tears down).
OUTCOMES: frozenset[JobStatus] = TRANSITIONS[S.TEARING_DOWN] - {S.TEARDOWN_FAILED}


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
    logs_key: str | None = None
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

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL

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
