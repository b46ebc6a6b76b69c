"""The driver's side of warm clusters and debug holds (rules and records: raylauncher/warm.py).

After a job whose pipeline keeps its cluster, the driver that ran it becomes the cluster's
holder: it ends the job and records the cluster WARM or HELD in one transaction, moves the
reaper's expiry forward (only then: kept or reused), renews the cluster's lease, runs the jobs
admission assigns to the cluster (no `ray up`; each with its own Ray submission id) after
checking the cluster still answers, and tears the cluster down when its time runs out, a
release is asked for, or a signal arrives. If the holder dies, its lease lapses and the
watchdog tears the cluster down from the record.

`ClusterHolder` is a part of `Driver` (driver/core.py): it uses the driver's store, backend,
pipelines and attempt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from raylauncher.clusters.base import ClusterBackend, ClusterHandle
from raylauncher.config import PipelinesConfig
from raylauncher.driver.jobs_client import JobsClient, TimedJobsClient
from raylauncher.driver.lease import ClusterLease, Lease
from raylauncher.driver.outcome import Outcome, clip
from raylauncher.driver.signals import SignalGuard
from raylauncher.errors import (
    IllegalTransition,
    JobNotFound,
    RayLauncherError,
    TransitionConflict,
)
from raylauncher.model import Job, JobStatus, ReasonCode, iso, utc_now
from raylauncher.retries import next_attempt
from raylauncher.store import JobStore
from raylauncher.warm import (
    ClusterRecord,
    ClusterStatus,
    cluster_key,
    keep_mode,
    note_kept_seconds,
    profile_of,
    retire,
)

if TYPE_CHECKING:
    from raylauncher.cluster_records import ClusterRecords

log = logging.getLogger(__name__)

#: The reaper's expiry of a kept cluster: its time + a lease + this (a watchdog sweep or more).
EXPIRY_MARGIN_S = 900.0
#: States in which the holder still holds the cluster.
HELD_STATES = frozenset({ClusterStatus.ACTIVE, ClusterStatus.WARM, ClusterStatus.ASSIGNED, ClusterStatus.HELD})
#: How long a reused cluster's Jobs API gets to answer before the job is given another cluster.
HEALTH_TIMEOUT_S = 10.0


@dataclass
class Kept:
    """The cluster this driver holds: its record, the job attempt that brought it up (its run id
    is the cluster's marker, name and token) and its handle. `retire_now`: the reaper's expiry
    could not be moved forward, so the cluster must not stay up."""

    key: str
    origin: Job
    handle: ClusterHandle
    retire_now: bool = False


class ClusterHolder:
    # The driver's parts this uses (set by Driver.__init__).
    _store: JobStore
    _backend: ClusterBackend
    _pipelines: PipelinesConfig
    _jobs_client: Callable[..., JobsClient]
    _clusters: ClusterRecords | None
    _release_slot_items: Callable[[str], list[dict[str, Any]]]
    _launch_queued: Callable[[], object]
    _lease_s: float
    _warm_poll_s: float
    _heartbeat_s: float
    _provisioning_timeout_s: float
    _handle: ClusterHandle | None
    _kept: Kept | None

    # Provided by Driver.
    def _attempt(self, job: Job, guard: SignalGuard, lease: Lease) -> Job: ...  # pragma: no cover
    def _after_attempt(self, job: Job, guard: SignalGuard) -> None: ...  # pragma: no cover
    def _finish(self, job: Job, outcome: Outcome | None, client: JobsClient | None) -> Job: ...  # pragma: no cover
    def _fresh(self, job: Job) -> Job: ...  # pragma: no cover

    # -- keeping the cluster after a job ---------------------------------------------------------

    def _keep_mode(self, job: Job, outcome: Outcome) -> str | None:
        """"warm"/"held" if the pipeline keeps this cluster after this outcome, else None."""
        if self._clusters is None or (self._kept is None and self._handle is None):
            return None
        try:
            pipeline = self._pipelines.get(job.pipeline)
            mode = keep_mode(pipeline, outcome.status, outcome.reason_code)
            if mode is None:
                return None
            fresh = self._store.get(job.job_id)
            if fresh.cancel_requested or fresh.owner != job.owner:
                return None
            if next_attempt(fresh, outcome.status, outcome.reason_code, outcome.message, pipeline.retry, utc_now()):
                return None  # retried: on a new cluster, like every retry
        except RayLauncherError:
            return None
        return mode

    def _keep(self, job: Job, outcome: Outcome, mode: str, **extra: Any) -> Job | None:
        """The job ends and its cluster stays up, WARM or HELD, in one transaction: the job's
        final status (its slot, if it holds one, moves to the cluster record) and the cluster
        record owned by this driver. Then the reaper's expiry is moved forward; if that fails the
        cluster is retired at once. None if the cluster cannot be kept (it is torn down as
        usual); the fresh job if it was taken over."""
        assert self._clusters is not None
        pipeline = self._pipelines.get(job.pipeline)
        now = utc_now()
        seconds = pipeline.keep_warm_seconds if mode == "warm" else pipeline.keep_failed_cluster_seconds
        until = iso(now + timedelta(seconds=seconds))
        origin = self._kept.origin if self._kept is not None else job
        handle = self._kept.handle if self._kept is not None else self._handle
        assert handle is not None
        status = ClusterStatus.WARM if mode == "warm" else ClusterStatus.HELD
        timing: dict[str, Any] = {"idle_since": iso(now), "heartbeat_at": iso(now), "last_job": job.job_id,
                                  "idle_until": until if mode == "warm" else None,
                                  "held_until": until if mode == "held" else None}  # fmt: skip
        try:
            if self._kept is None:
                record = ClusterRecord(
                    key=cluster_key(job.run_id), name=handle.name, pipeline=job.pipeline, profile=profile_of(pipeline),
                    status=status, owner=job.owner, created_at=job.phase_times.get(JobStatus.PROVISIONING.value, iso(now)),
                    origin_job_id=job.job_id, origin_attempt=job.attempt, details=dict(handle.details),
                    slot_held=job.slot_held, jobs_served=[job.job_id], **timing,
                )  # fmt: skip
                other = {"Put": self._clusters.put_params(record)}
            else:
                record = self._clusters.get(self._kept.key)
                if record.owner != job.owner or record.status != ClusterStatus.ACTIVE:
                    return None
                other = {"Update": self._clusters.update_params(record, status, **timing)}
            params = self._store.transition_params(  # type: ignore[attr-defined]
                job, outcome.status, reason_code=outcome.reason_code, reason_message=outcome.message, slot_held=False,
                cluster_key=record.key, kept=mode, **{k: v for k, v in extra.items() if v is not None},
            )  # fmt: skip
            moved = self._store.transact(job, params, [other])  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - not kept: torn down as usual
            log.warning("job %s: its cluster cannot be kept %s; tearing it down", job.job_id, mode, exc_info=True)
            fresh = self._fresh(job)
            return fresh if fresh.owner != job.owner or fresh.is_terminal else None
        if self._kept is None:
            self._kept = Kept(record.key, origin.model_copy(update={"cluster": dict(handle.details)}), handle)
        try:  # only now: a cluster that was not kept keeps the bound it had
            self._backend.extend_expiry(origin, now + timedelta(seconds=seconds + self._lease_s + EXPIRY_MARGIN_S))
        except Exception:  # noqa: BLE001 - kept past its reaper bound would be reaped mid-hold: retire it
            log.exception("cluster %s: the reaper's expiry could not be moved; tearing it down", record.key)
            self._kept.retire_now = True
        log.info("job %s ended %s; its cluster %s stays up %s until %s", job.job_id, outcome.status, record.name, mode, until)
        return moved

    def _cluster_going_down(self) -> None:
        """A job on a kept cluster ended in a way that never reuses it: its record -> TEARING_DOWN."""
        assert self._kept is not None and self._clusters is not None
        try:
            record = self._clusters.get(self._kept.key)
            if record.status in HELD_STATES:
                self._clusters.update(record, ClusterStatus.TEARING_DOWN)
        except RayLauncherError:
            log.warning("cluster %s: could not record its teardown", self._kept.key, exc_info=True)

    def _cluster_gone(self, ok: bool) -> None:
        """After the teardown of a kept cluster: its record ends (and its slot is given back)."""
        if self._kept is None or self._clusters is None:
            return
        key, self._kept = self._kept.key, None
        try:
            record = self._clusters.get(key)
        except RayLauncherError:
            log.warning("cluster %s: could not read its record after teardown", key, exc_info=True)
            return
        if record.status == ClusterStatus.TEARING_DOWN:
            target = ClusterStatus.TORN_DOWN if ok else ClusterStatus.TEARDOWN_FAILED
            self._clusters.end(record, target, self._release_slot_items(record.pipeline))

    # -- holding it --------------------------------------------------------------------------------

    def _hold(self, guard: SignalGuard, owner: str, first: Callable[[], None]) -> None:
        """Hold the kept cluster: renew its lease (from before `first`, the ended job's
        bookkeeping, so there is no gap after the job's own lease), serve the jobs admission
        assigns to it, tear it down when its time runs out, a release is asked for, or a
        signal arrives."""
        assert self._kept is not None and self._clusters is not None
        lease = ClusterLease(self._clusters, self._kept.key, owner, self._heartbeat_s)
        unreadable_since: float | None = None
        with lease.held():
            first()
            while self._kept is not None:
                if lease.lost:
                    log.warning("cluster %s: lease lost; the watchdog tears it down", self._kept.key)
                    self._kept = None
                    break
                try:
                    record = self._clusters.get(self._kept.key)
                    unreadable_since = None
                except RayLauncherError:
                    unreadable_since = unreadable_since or time.monotonic()
                    if time.monotonic() - unreadable_since > self._lease_s:  # our lease lapses: never hold blind
                        log.error("cluster %s: the store is unreachable for a lease; tearing it down", self._kept.key)
                        self._down_quietly(self._kept.origin)
                        self._kept = None
                        break
                    time.sleep(self._warm_poll_s)
                    continue
                if record.owner != owner or record.status not in HELD_STATES:
                    log.warning("cluster %s is %s (owner %s): no longer ours", record.key, record.status, record.owner)
                    self._kept = None
                    break
                if record.status == ClusterStatus.ASSIGNED and not guard.fired and not self._kept.retire_now:
                    self._serve(record, guard, owner)
                    continue
                deadline = record.deadline()
                if (guard.fired or self._kept.retire_now or record.status == ClusterStatus.ACTIVE
                        or record.release_requested or (deadline is not None and utc_now() >= deadline)):  # fmt: skip
                    self._retire(record)
                    continue
                time.sleep(self._warm_poll_s)

    def _answers(self, handle: ClusterHandle) -> bool:
        """The kept cluster's Jobs API answers the driver (with its token) within a deadline."""
        try:
            TimedJobsClient(self._jobs_client(handle.dashboard_url, headers=handle.auth_headers),
                            HEALTH_TIMEOUT_S).list_jobs()  # fmt: skip
        except Exception:  # noqa: BLE001 - any failure: not fit to take a job
            log.warning("cluster %s: its Jobs API does not answer", handle.name, exc_info=True)
            return False
        return True

    def _serve(self, record: ClusterRecord, guard: SignalGuard, owner: str) -> None:
        """Run the job admission assigned to the kept cluster on it (no `ray up`; its own Ray
        submission id), then keep the cluster again or tear it down, as its outcome says. A
        cluster that no longer answers is torn down and the job queued again for another."""
        assert self._kept is not None and self._clusters is not None
        kept, now = self._kept, utc_now()
        if not self._answers(kept.handle):
            self._retire(record)  # an ASSIGNED record: its job is queued again
            return
        idle = record.idle_seconds(now)
        details = {**kept.handle.details, "origin_job_id": kept.origin.job_id, "origin_attempt": kept.origin.attempt}
        try:
            job = self._store.get(record.assigned_job or "")
            if job.status != JobStatus.LAUNCHING or job.cluster_key != record.key:
                raise TransitionConflict(job.job_id, job.status.value, JobStatus.PROVISIONING.value)
            claimed = self._store.transition(job, JobStatus.PROVISIONING, owner=owner, heartbeat_at=iso(now),
                                             cluster=details, warm=True)  # fmt: skip
        except (JobNotFound, IllegalTransition, TransitionConflict):  # cancelled (or gone) first: idle again
            log.info("cluster %s: assigned job %s is not ours to run; warm again", record.key, record.assigned_job)
            try:
                self._clusters.update(record, ClusterStatus.WARM, assigned_job=None)
            except RayLauncherError:
                pass
            return
        except RayLauncherError:  # the store cannot say now: look again (held blind at most a lease)
            log.warning("cluster %s: could not claim job %s yet", record.key, record.assigned_job, exc_info=True)
            time.sleep(self._warm_poll_s)
            return
        note_kept_seconds(self._store, record.last_job, idle)
        try:
            pipeline = self._pipelines.get(claimed.pipeline)
            self._clusters.update(
                record, ClusterStatus.ACTIVE, assigned_job=None, idle_since=None, idle_until=None,
                last_job=claimed.job_id, jobs_served=[*record.jobs_served, claimed.job_id],
                warm_seconds=round(record.warm_seconds + idle, 3),
            )  # fmt: skip
            self._backend.extend_expiry(kept.origin, now + timedelta(
                seconds=self._provisioning_timeout_s + pipeline.run_timeout_s + self._lease_s + EXPIRY_MARGIN_S))
        except Exception as err:  # noqa: BLE001 - the job is ours: it ends (infrastructure) and the cluster goes
            log.exception("cluster %s: could not take job %s on", record.key, claimed.job_id)
            job = self._finish(claimed, Outcome(JobStatus.FAILED, ReasonCode.PROVISIONING_FAILED,
                                                clip(f"the warm cluster could not take the job: {err}")), None)  # fmt: skip
            self._after_attempt(job, guard)
            return
        log.info("job %s: runs on warm cluster %s (idle %.1fs)", claimed.job_id, record.name, idle)
        lease = Lease(self._store, claimed.job_id, owner, self._heartbeat_s)
        with lease.held():
            job = self._attempt(claimed, guard, lease)
        self._after_attempt(job, guard)

    def _retire(self, record: ClusterRecord) -> None:
        """Tear the kept cluster down (time ran out, release, signal, not answering) and launch
        what is queued (its slot is free)."""
        assert self._kept is not None and self._clusters is not None
        origin = self._kept.origin
        done = retire(self._clusters, self._store, record, utc_now(), lambda: self._down_quietly(origin),
                      self._release_slot_items(record.pipeline))  # fmt: skip
        if done is None:  # it changed meanwhile (e.g. a job was assigned): look again
            return
        self._kept = None
        try:
            self._launch_queued()
        except Exception:  # noqa: BLE001 - the watchdog launches them at its next sweep
            log.exception("could not launch queued jobs after the teardown of %s", record.key)

    def _down_quietly(self, origin: Job) -> bool:
        """Down; on failure the reaper's expiry is moved to now (best-effort), so the reaper's
        next sweep terminates what is left instead of waiting out the hold."""
        try:
            self._backend.down(origin)
            return True
        except Exception:  # noqa: BLE001 - TEARDOWN_FAILED: the reaper and a person act
            log.exception("cluster of %s: TEARDOWN FAILED", origin.run_id)
        try:
            self._backend.extend_expiry(origin, utc_now())
        except Exception:  # noqa: BLE001 - its earlier bound stands
            log.warning("cluster of %s: its expiry could not be moved to now", origin.run_id, exc_info=True)
        return False
