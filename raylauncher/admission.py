"""Admission control: never more clusters than the owner allowed, per pipeline and in total.

A cluster slot is taken in the same DynamoDB transaction that moves the job QUEUED ->
LAUNCHING (so two intakes can never both take the last slot), and given back in the same
transaction that clears the job's `slot_held` flag once it is terminal (so a slot is released
exactly once). A job that finds no slot stays QUEUED; when a slot frees, the oldest QUEUED job
is launched (FIFO).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from raylauncher.bastion import Bastion, LaunchFailure
from raylauncher.config import PipelinesConfig
from raylauncher.errors import BastionUnavailable, RayLauncherError, TransactionRefused, TransitionConflict
from raylauncher.model import Job, JobStatus, ReasonCode, parse_iso, utc_now
from raylauncher.retries import next_attempt
from raylauncher.store import SLOT_POOL, DynamoJobStore, JobQuery, JobStore, created_key
from raylauncher.warm import ClusterStatus, profile_of

log = logging.getLogger(__name__)

TOTAL_SLOTS_ID = "slots#total"


def pipeline_slots_id(pipeline: str) -> str:
    return f"slots#pipeline#{pipeline}"


def queue_position(job: Job, store: JobStore) -> int | None:
    """1 for the next QUEUED job to launch (oldest first, across pipelines); None if not queued.
    Counts the QUEUED jobs created before it (the by_status index: no scan)."""
    if job.status != JobStatus.QUEUED:
        return None
    ahead = store.count(JobQuery(status=JobStatus.QUEUED, created_before=created_key(job.created_at, job.job_id)))
    return ahead + 1


class Launcher:
    """Launches jobs within the caps: QUEUED -> LAUNCHING + slot, then the bastion runs the driver."""

    def __init__(
        self,
        store: DynamoJobStore,
        bastion: Bastion,
        pipelines: PipelinesConfig,
        control_client: Any,
        control_table: str,
        max_clusters_total: int,
        on_launched: Callable[[Job], None] = lambda job: None,
    ) -> None:
        self._store = store
        self._bastion = bastion
        self._pipelines = pipelines
        self._ddb = control_client
        self._table = control_table
        self._total = max_clusters_total
        self._on_launched = on_launched

    def _slot(self, slot_id: str, delta: int, cap: int | None) -> dict[str, Any]:
        update: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"id": {"S": slot_id}},
            "UpdateExpression": "SET used = if_not_exists(used, :zero) + :delta",
            "ExpressionAttributeValues": {":zero": {"N": "0"}, ":delta": {"N": str(delta)}},
        }
        if cap is not None:  # taking a slot: only below the cap
            update["ConditionExpression"] = "attribute_not_exists(used) OR used < :cap"
            update["ExpressionAttributeValues"][":cap"] = {"N": str(cap)}
        else:  # giving one back: never below zero
            update["ConditionExpression"] = "used > :zero"
        return {"Update": update}

    def slot_release_items(self, pipeline: str) -> list[dict[str, Any]]:
        """The two updates that give back one cluster slot of `pipeline` (for a transaction)."""
        return [self._slot(pipeline_slots_id(pipeline), -1, None), self._slot(TOTAL_SLOTS_ID, -1, None)]

    def try_launch(self, job: Job) -> Job:
        """Hand `job` to a warm cluster of its pipeline, else take a slot and launch it, or leave
        it QUEUED when the caps are reached. Raises TransitionConflict if the job moved on meanwhile."""
        warm = self._assign_warm(job)
        if warm is not None:
            return warm
        cap = self._pipelines.get(job.pipeline).max_concurrent_clusters
        slots = [self._slot(pipeline_slots_id(job.pipeline), +1, cap), self._slot(TOTAL_SLOTS_ID, +1, self._total)]
        try:
            job = self._store.transact(job, self._store.transition_params(job, JobStatus.LAUNCHING, slot_held=True), slots)
        except TransactionRefused:
            log.info("job %s stays QUEUED: no free cluster slot", job.job_id)
            return job
        try:
            ref = self._bastion.run_driver(job.job_id)
        except BastionUnavailable as err:
            log.error("job %s: bastion unavailable: %s", job.job_id, err)
            message = f"could not start the driver on the bastion: {err}"
            retry = next_attempt(job, JobStatus.FAILED, ReasonCode.LAUNCH_FAILED, message,
                                 self._pipelines.get(job.pipeline).retry, utc_now())  # fmt: skip
            try:
                if retry is not None:  # launched again after its backoff (watchdog or a freed slot)
                    return self.requeue(job, retry)
                job = self._store.transition(job, JobStatus.FAILED, reason_code=ReasonCode.LAUNCH_FAILED,
                                             reason_message=message)  # fmt: skip
            except TransitionConflict:  # a driver started after all, or a cancel came first
                return self._store.get(job.job_id)
            self.release(job)
            return job
        try:  # kept so the watchdog can ask how the launch went (fails if a driver claimed it already)
            job = self._store.mark(job, launch_ref=ref)
        except (TransitionConflict, RayLauncherError):
            pass
        self._on_launched(job)
        return job

    def _assign_warm(self, job: Job) -> Job | None:
        """QUEUED -> LAUNCHING onto a WARM cluster of the job's pipeline and profile, in one
        transaction with the cluster's WARM -> ASSIGNED (raylauncher/warm.py). The cluster keeps
        its slot; no driver is started: the cluster's holder claims the job. None if no warm
        cluster took it."""
        pipeline = self._pipelines.get(job.pipeline)
        if pipeline.keep_warm_seconds <= 0:
            return None
        clusters = self._store.clusters
        try:
            warm = clusters.live(job.pipeline, ClusterStatus.WARM)
        except RayLauncherError:
            return None
        now = utc_now()
        for record in sorted(warm, key=lambda r: r.idle_since or ""):
            deadline = record.deadline()
            if record.profile != profile_of(pipeline) or (deadline is not None and deadline <= now):
                continue
            assign = clusters.update_params(record, ClusterStatus.ASSIGNED, assigned_job=job.job_id)
            params = self._store.transition_params(job, JobStatus.LAUNCHING, cluster_key=record.key, warm=True)
            try:
                launched = self._store.transact(job, params, [{"Update": assign}])
            except TransactionRefused:  # the cluster went on meanwhile: the next one, or a slot
                continue
            log.info("job %s: assigned to warm cluster %s", job.job_id, record.name)
            return launched
        return None

    def launch_failure(self, job: Job) -> LaunchFailure | None:
        """How the job's launch failed on the bastion, if it has (see Bastion.launch_failure)."""
        return self._bastion.launch_failure(job.launch_ref) if job.launch_ref else None

    def requeue(self, job: Job, fields: dict[str, Any]) -> Job:
        """Back to QUEUED for the next attempt (fields from retries.next_attempt), giving back
        the job's slot in the same transaction. Raises TransitionConflict if the job moved on."""
        fields = {**fields, "slot_held": False, "cluster_key": None, "warm": False}  # a new cluster (or warm one)
        if not job.slot_held:
            return self._store.transition(job, JobStatus.QUEUED, **fields)
        params = self._store.transition_params(job, JobStatus.QUEUED, **fields)
        return self._store.transact(job, params, self.slot_release_items(job.pipeline))

    def release(self, job: Job) -> bool:
        """Give back the slot of a terminal job (once: guarded by its slot_held flag)."""
        if not (job.is_terminal and job.slot_held):
            return False
        clear = {
            "TableName": self._store.table_name,
            "Key": {"job_id": {"S": job.job_id}},
            "UpdateExpression": f"SET slot_held = :no REMOVE {SLOT_POOL}",  # leaves the sparse index
            "ConditionExpression": "slot_held = :yes AND #status = :status",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {":no": {"BOOL": False}, ":yes": {"BOOL": True},
                                          ":status": {"S": job.status.value}},
        }  # fmt: skip
        slots = [self._slot(pipeline_slots_id(job.pipeline), -1, None), self._slot(TOTAL_SLOTS_ID, -1, None)]
        try:
            self._ddb.transact_write_items(TransactItems=[{"Update": clear}, *slots])
        except Exception:  # noqa: BLE001 - already released, or the table is unreachable: logged
            log.warning("job %s: slot not released (already released?)", job.job_id, exc_info=True)
            return False
        return True

    @property
    def pipelines(self) -> PipelinesConfig:
        return self._pipelines

    def launch_queued(self, jobs: list[Job] | None = None) -> list[Job]:
        """Launch QUEUED jobs, oldest first, while slots allow. `jobs`: a listing the caller
        already made (each launch is conditional on the job's version: a stale one is skipped);
        otherwise the QUEUED jobs are read from the by_status index, oldest first, lazily."""
        launched = []
        now = utc_now()
        if jobs is None:
            listed: Iterable[Job] = self._store.iter_jobs(JobQuery(status=JobStatus.QUEUED, oldest_first=True))
        else:
            listed = sorted((j for j in jobs if j.status == JobStatus.QUEUED), key=lambda j: (j.created_at, j.job_id))
        queued = (j for j in listed if not _backing_off(j, now))
        for job in queued:
            try:
                after = self.try_launch(job)
            except (TransitionConflict, RayLauncherError):
                continue
            if after.status != JobStatus.QUEUED:
                launched.append(after)
        return launched

    def finished(self, job: Job) -> list[Job]:
        """A job ended (or was queued again for a retry): give back its slot and launch
        whatever now fits."""
        self.release(job)
        return self.launch_queued()


def _backing_off(job: Job, now: datetime) -> bool:
    """A retry waiting for its backoff (retry_at) is not launched yet."""
    return bool(job.retry_at) and parse_iso(job.retry_at) > now  # type: ignore[arg-type]
