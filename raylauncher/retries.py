"""Retries: which failed attempt starts another one, when, and what of it is kept.

A failed attempt whose reason is of the INFRASTRUCTURE class (model.FAILURE_CLASS) — or of the
APPLICATION class when the pipeline opts in — is retried while the pipeline's `retry.max_attempts`
allow and nobody asked for a cancel: once its cluster is verified gone the job goes back to
QUEUED with `attempt + 1` (a new Ray submission id `<job>-a<n>` and a new cluster), not before
`retry_at` (exponential backoff). The attempt that ended is kept on the record (`attempts`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from raylauncher.config import RetryPolicy
from raylauncher.model import FAILURE_CLASS, FailureClass, Job, JobStatus, ReasonCode, attempt_cluster_seconds, iso


def retryable(reason: ReasonCode | None, policy: RetryPolicy) -> bool:
    cls = FAILURE_CLASS.get(reason) if reason else None
    return cls == FailureClass.INFRASTRUCTURE or (cls == FailureClass.APPLICATION and policy.retry_application_failures)


def backoff_s(policy: RetryPolicy, attempt: int) -> float:
    """The wait before attempt `attempt + 1`."""
    return float(min(policy.max_backoff_s, policy.backoff_s * policy.backoff_multiplier ** (attempt - 1)))


def attempt_record(job: Job, status: JobStatus, reason: ReasonCode | None, message: str | None, now: datetime,
                   **extra: Any) -> dict[str, Any]:  # fmt: skip
    """What is kept of an attempt that ended."""
    return {
        "attempt": job.attempt,
        "run_id": job.run_id,
        "status": status.value,
        "reason_code": reason.value if reason else None,
        "reason_message": message,
        "phase_times": dict(job.phase_times),
        "cluster": job.cluster,
        "cluster_seconds": round(attempt_cluster_seconds(job.phase_times, now), 3),
        "ended_at": iso(now),
        **extra,
    }


def next_attempt(job: Job, status: JobStatus, reason: ReasonCode | None, message: str | None,
                 policy: RetryPolicy, now: datetime, **extra: Any) -> dict[str, Any] | None:  # fmt: skip
    """The fields of the QUEUED transition that starts the next attempt, or None when the
    failure is final (not retryable, attempts used up, or a cancel was asked for)."""
    if status == JobStatus.SUCCEEDED or job.cancel_requested or not retryable(reason, policy):
        return None
    if job.attempt >= policy.max_attempts:
        return None
    return {
        "attempt": job.attempt + 1,
        "attempts": [*job.attempts, attempt_record(job, status, reason, message, now, **extra)],
        "retry_at": iso(now + timedelta(seconds=backoff_s(policy, job.attempt))),
        "reason_code": None, "reason_message": None, "pending_outcome": None, "cluster": None,
        "ray_status": None, "owner": None, "logs_key": None, "session_logs_key": None, "summary": None, "heartbeat_at": None, "launch_ref": None,
        "teardown_attempts": 0,
    }  # fmt: skip
