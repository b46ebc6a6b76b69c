"""Operations on a job from outside its driver: cancel (later: retry, list for the API)."""

from __future__ import annotations

from collections.abc import Callable

from raylauncher.errors import TransitionConflict
from raylauncher.model import Job, JobStatus, ReasonCode
from raylauncher.store import JobStore

#: Before PROVISIONING no cluster exists: these end CANCELLED at once. A driver that then tries
#: to claim the job gets a conflict and leaves without launching anything.
CANCEL_AT_ONCE = frozenset({JobStatus.QUEUED, JobStatus.LAUNCHING})


def request_cancel(
    store: JobStore, job_id: str, max_tries: int = 5, on_finished: Callable[[Job], object] = lambda job: None
) -> Job:
    """Cancel job `job_id`. Not yet provisioning: it ends CANCELLED now. Provisioning or
    running: `cancel_requested` is set and the driver stops the Ray job, tears the cluster down
    and ends the job CANCELLED. A finished job is returned as it is. Raises JobNotFound."""
    for _ in range(max_tries):
        job = store.get(job_id)
        if job.is_terminal or job.cancel_requested or job.status == JobStatus.TEARING_DOWN:
            return job
        try:
            if job.status in CANCEL_AT_ONCE:
                job = store.transition(
                    job, JobStatus.CANCELLED, cancel_requested=True,
                    reason_code=ReasonCode.CANCEL_REQUESTED, reason_message="cancelled before any cluster was launched",
                )  # fmt: skip
                on_finished(job)  # a LAUNCHING job held a cluster slot
                return job
            return store.mark(job, cancel_requested=True)
        except TransitionConflict:
            continue  # the job moved on while we looked: look again
    raise TransitionConflict(job_id, "a stable status", None)
