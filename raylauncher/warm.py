"""Warm clusters and debug holds: a cluster that outlives its job, as a record of its own.

A pipeline with `keep_warm_seconds` keeps a cluster up after a job that SUCCEEDED (or FAILED
for an application reason: RAY_JOB_FAILED) so the pipeline's next job skips `ray up`; one with
`keep_failed_cluster_seconds` keeps the cluster of a job that FAILED for an application
reason for debugging (HELD) until the time runs out or `raylauncher jobs release JOB`.
Never after an infrastructure failure, a cancel, a deadline or a teardown problem.

The cluster record is an item of the job table, `cluster#<run id of the cluster's first job>`,
with `kind = "cluster"` (so the by_created index lists clusters apart from jobs; its status and
pipeline attributes have names of their own so the job indexes never see it). It is written
only when a cluster is kept: with the defaults (0) nothing here runs.

Who holds a kept cluster (the driver process that ran its last job) renews a lease on the
record (`heartbeat_at`) like a running driver. The watchdog tears down a cluster whose lease
lapsed or whose time ran out (plus a lease), from the record alone. The cluster keeps the
cluster slot its first job took (it counts against the caps) and gives it back when torn down.

THE cluster state machine (every change a conditional update on status and version):
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from raylauncher.config import Pipeline
from raylauncher.errors import IllegalTransition, RayLauncherError, TransitionConflict
from raylauncher.model import Job, JobStatus, ReasonCode, parse_iso

if TYPE_CHECKING:  # the ports: DynamoDB adapters in raylauncher/cluster_records.py and store.py
    from raylauncher.cluster_records import ClusterRecords
    from raylauncher.store import JobStore

log = logging.getLogger(__name__)

KIND_CLUSTER = "cluster"
KEY_PREFIX = "cluster#"
#: A torn-down cluster record stays readable this long (the table's TTL attribute removes it).
RECORD_RETENTION_S = 14 * 24 * 3600


class ClusterStatus(StrEnum):
    ACTIVE = "ACTIVE"  # a job runs on it (its holder is that job's driver)
    WARM = "WARM"  # idle, waiting for the pipeline's next job until idle_until
    ASSIGNED = "ASSIGNED"  # admission gave it a LAUNCHING job; its holder claims it
    HELD = "HELD"  # kept after an application failure, for debugging, until held_until
    TEARING_DOWN = "TEARING_DOWN"  # going down (holder or watchdog)
    TORN_DOWN = "TORN_DOWN"
    TEARDOWN_FAILED = "TEARDOWN_FAILED"  # may still be up: the reaper (EC2) and a person act


C = ClusterStatus
#: THE cluster transition table. Anything not listed is forbidden.
CLUSTER_TRANSITIONS: dict[ClusterStatus, frozenset[ClusterStatus]] = {
    C.ACTIVE: frozenset({C.WARM, C.HELD, C.TEARING_DOWN}),
    C.WARM: frozenset({C.ASSIGNED, C.TEARING_DOWN}),
    C.ASSIGNED: frozenset({C.ACTIVE, C.WARM, C.TEARING_DOWN}),  # WARM: the job was cancelled first
    C.HELD: frozenset({C.TEARING_DOWN}),
    C.TEARING_DOWN: frozenset({C.TORN_DOWN, C.TEARDOWN_FAILED}),
    C.TORN_DOWN: frozenset(),
    C.TEARDOWN_FAILED: frozenset(),
}
LIVE: frozenset[ClusterStatus] = frozenset({C.ACTIVE, C.WARM, C.ASSIGNED, C.HELD, C.TEARING_DOWN})

__doc__ += "\n".join(
    f"    {s.value:<15} -> {', '.join(sorted(t.value for t in nxt)) or '(final)'}" for s, nxt in CLUSTER_TRANSITIONS.items()
)


def cluster_key(origin_run_id: str) -> str:
    return KEY_PREFIX + origin_run_id


def profile_of(pipeline: Pipeline) -> str:
    """A fingerprint of the pipeline's cluster profile: a warm cluster serves only its own."""
    return hashlib.sha256(pipeline.cluster.model_dump_json().encode()).hexdigest()[:16]


def keep_mode(pipeline: Pipeline, status: JobStatus, reason: ReasonCode | None) -> str | None:
    """"warm", "held" or None (tear down): what happens to a cluster whose job ended so.
    Only a success or the job's own failure (RAY_JOB_FAILED) keeps a cluster: never after an
    infrastructure failure, a cancel, a deadline (RUN_TIMEOUT) or a teardown problem."""
    if status == JobStatus.SUCCEEDED:
        return "warm" if pipeline.keep_warm_seconds > 0 else None
    if status == JobStatus.FAILED and reason == ReasonCode.RAY_JOB_FAILED:
        if pipeline.keep_failed_cluster_seconds > 0:
            return "held"
        return "warm" if pipeline.keep_warm_seconds > 0 else None
    return None


class ClusterRecord(BaseModel):
    key: str  # cluster#<origin run id>
    name: str  # the backend's name of the cluster (rl-<run id> on EC2)
    pipeline: str
    profile: str
    status: ClusterStatus
    version: int = 0
    owner: str | None = None
    heartbeat_at: str | None = None
    created_at: str  # when its first job entered PROVISIONING
    origin_job_id: str  # the job (and attempt) that brought it up: its marker and its Ray token
    origin_attempt: int = 1
    details: dict[str, Any] = Field(default_factory=dict)  # the backend's handle details
    slot_held: bool = False  # holds the cluster slot its first job took
    jobs_served: list[str] = Field(default_factory=list)
    last_job: str | None = None
    assigned_job: str | None = None
    idle_since: str | None = None
    idle_until: str | None = None  # WARM: torn down after this
    held_until: str | None = None  # HELD: torn down after this
    release_requested: bool = False
    warm_seconds: float = 0.0  # total idle (WARM/ASSIGNED) seconds
    held_seconds: float = 0.0
    torn_down_at: str | None = None
    cluster_seconds: float | None = None  # created -> torn down

    @property
    def origin_run_id(self) -> str:
        return self.key.removeprefix(KEY_PREFIX)

    def origin_job(self, pipeline_trigger: str = "api") -> Job:
        """The job (attempt) the cluster belongs to, as teardown needs it: its run id is the local
        marker, the EC2 cluster name and the Ray token's parameter."""
        return Job(job_id=self.origin_job_id, pipeline=self.pipeline, trigger=pipeline_trigger,  # type: ignore[arg-type]
                   created_at=self.created_at, updated_at=self.created_at, attempt=self.origin_attempt,
                   cluster=dict(self.details), status=JobStatus.TEARING_DOWN)  # fmt: skip

    def deadline(self) -> datetime | None:
        """When a WARM/ASSIGNED/HELD cluster's time runs out."""
        until = self.held_until if self.status == C.HELD else self.idle_until
        return parse_iso(until) if until and self.status in (C.WARM, C.ASSIGNED, C.HELD) else None

    def idle_seconds(self, now: datetime) -> float:
        return max(0.0, (now - parse_iso(self.idle_since)).total_seconds()) if self.idle_since else 0.0


def origin_of(job: Job) -> Job:
    """The job attempt whose cluster `job` ran on: itself, unless it ran on a kept cluster (its
    record names the cluster's first job). Teardown, logs and tokens go through this."""
    details = job.cluster or {}
    origin_id, origin_attempt = details.get("origin_job_id"), details.get("origin_attempt")
    if not origin_id or (origin_id == job.job_id and int(origin_attempt or 1) == job.attempt):
        return job
    return job.model_copy(update={"job_id": origin_id, "attempt": int(origin_attempt or 1)})


def seconds_between(start: str | None, end: datetime) -> float:
    return max(0.0, (end - parse_iso(start)).total_seconds()) if start else 0.0


#: A kept cluster idle or held (not running a job): the states whose seconds are idle cost.
KEPT: frozenset[ClusterStatus] = frozenset({C.WARM, C.ASSIGNED, C.HELD})


def kept_totals(record: ClusterRecord, now: datetime) -> dict[str, float]:
    """The record's warm/held seconds including the idle stretch now ending."""
    idle = record.idle_seconds(now)
    if record.status in (C.WARM, C.ASSIGNED):
        return {"warm_seconds": round(record.warm_seconds + idle, 3)}
    if record.status == C.HELD:
        return {"held_seconds": round(record.held_seconds + idle, 3)}
    return {}


def note_kept_seconds(store: JobStore, job_id: str | None, seconds: float) -> None:
    """How long the cluster stayed up idle (warm) or held after `job_id`, on that job's record
    and announced as its event (best-effort: the cluster record has the totals)."""
    if not job_id:
        return
    try:
        job = store.get(job_id)
        if job.kept:
            store.note(job, kept_seconds=round(seconds, 3))  # type: ignore[attr-defined]
    except (RayLauncherError, AttributeError):
        log.warning("job %s: kept seconds not recorded", job_id, exc_info=True)


def requeue_assigned(store: JobStore, job_id: str, key: str) -> None:
    """A job assigned to a cluster that went down before it was claimed: QUEUED again (it gets
    another warm cluster or a slot of its own)."""
    try:
        job = store.get(job_id)
        if job.status == JobStatus.LAUNCHING and job.cluster_key == key:
            store.transition(job, JobStatus.QUEUED, cluster_key=None, warm=False)
    except (TransitionConflict, IllegalTransition, RayLauncherError):
        log.warning("job %s: could not be queued again after its warm cluster went down", job_id, exc_info=True)


def retire(
    clusters: ClusterRecords,
    store: JobStore,
    record: ClusterRecord,
    now: datetime,
    down: Callable[[], bool],
    slot_items: list[dict[str, Any]],
    takeover: dict[str, Any] | None = None,
) -> ClusterStatus | None:
    """Tear a kept cluster down from its record — by its holder (time ran out, release, signal)
    or by the watchdog (`takeover`: the new owner fields; the update is then also conditional on
    the heartbeat it judged lapsed, so a live holder's renewal wins). TEARING_DOWN with its idle
    or held seconds, `down()`, then TORN_DOWN or TEARDOWN_FAILED with its slot given back (one
    transaction), and a job assigned to it but not claimed QUEUED again. None if the record
    moved on meanwhile (nothing done); else the final cluster status."""
    fields = {**(takeover or {}), **kept_totals(record, now)}
    target = None if record.status == C.TEARING_DOWN else C.TEARING_DOWN  # a stuck teardown retaken
    try:
        going = clusters.update(record, target, expect_heartbeat=takeover is not None, **fields)
    except RayLauncherError:  # TransitionConflict: it changed (a job assigned, a renewal); or unreadable
        return None
    log.info("cluster %s: tearing down (%s, idle %.1fs, by %s)", record.key, record.status, record.idle_seconds(now),
             going.owner)  # fmt: skip
    if record.status in KEPT:
        note_kept_seconds(store, record.last_job, record.idle_seconds(now))
    final = C.TORN_DOWN if down() else C.TEARDOWN_FAILED
    clusters.end(going, final, slot_items)
    if record.status == C.ASSIGNED and record.assigned_job:
        requeue_assigned(store, record.assigned_job, record.key)
    return final


__all__ = [
    "CLUSTER_TRANSITIONS", "KEPT", "ClusterRecord", "ClusterStatus", "cluster_key", "keep_mode", "kept_totals",
    "origin_of", "profile_of", "retire",
]  # fmt: skip
