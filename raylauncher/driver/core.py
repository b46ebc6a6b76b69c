"""The driver: one job attempt's life on the bastion.

claim (LAUNCHING -> PROVISIONING, with an owner token and a lease) -> cluster up -> submit
(submission id = the attempt's run id, at most once) -> follow (RUNNING, run deadline) -> decide
the outcome -> TEARING_DOWN -> keep Ray's logs in S3 (the job's log, copied there while it
runs too, and the head's session logs; driver/logs.py) -> cluster down -> outcome, a retry
(QUEUED, next attempt) or TEARDOWN_FAILED.

Teardown runs in `finally`, also after SIGTERM/SIGINT and after any error, and even when the
job store cannot be written: the cluster going down never depends on bookkeeping. The one
exception: a driver whose lease was taken over (the watchdog declared it lost) leaves the job
and its cluster to the watchdog.
"""

from __future__ import annotations

import logging
import shlex
import time
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from raylauncher.clusters.base import ClusterBackend, ClusterHandle
from raylauncher.cluster_records import ClusterRecords
from raylauncher.config import Pipeline, PipelinesConfig
from raylauncher.driver.jobs_client import JobsClient, TimedJobsClient, ray_status, stop_quietly
from raylauncher.driver.holder import ClusterHolder, Kept
from raylauncher.driver.lease import JobTakenOver, Lease, new_owner_token
from raylauncher.driver.logs import JobLogShipper, keep_session_logs
from raylauncher.driver.outcome import RAY_TERMINAL, Outcome, clip, outcome_of
from raylauncher.driver.signals import DriverTerminated, SignalGuard
from raylauncher.errors import (
    IllegalTransition,
    ProvisioningCancelled,
    ProvisioningFailed,
    ProvisioningTimedOut,
    RayLauncherError,
    StorageError,
    TeardownFailed,
    TransitionConflict,
)
from raylauncher.model import Job, JobStatus, ReasonCode, iso, job_prefix, logs_key_of, parse_iso, utc_now
from raylauncher.objects import ObjectStore
from raylauncher.retries import next_attempt
from raylauncher.store import JobStore
from raylauncher.warm import origin_of

__all__ = ["Driver", "logs_key_of"]  # logs_key_of: re-exported from model.py (the API reads it too)

log = logging.getLogger(__name__)

#: A retry whose backoff is at most this long is launched by the driver itself after the wait;
#: a longer one by the watchdog's next sweep.
RETRY_WAIT_CAP_S = 120.0
#: A fetch of the Ray job's log gets at most this long (it runs between two polls).
LOG_FETCH_TIMEOUT_S = 30.0


class Driver(ClusterHolder):
    def __init__(
        self,
        store: JobStore,
        objects: ObjectStore,
        backend: ClusterBackend,
        pipelines: PipelinesConfig,
        jobs_client: Callable[..., JobsClient],  # (address, headers=...) -> a Jobs SDK client
        project_dir: Path,
        provisioning_timeout_s: float,
        poll_interval_s: float = 2.0,
        heartbeat_interval_s: float = 15.0,
        api_timeout_s: float = 60.0,
        submit_timeout_s: float = 120.0,
        log_flush_interval_s: float = 15.0,
        session_logs_timeout_s: float = 60.0,
        on_finished: Callable[[Job], object] = lambda job: None,
        requeue: Callable[[Job, dict[str, Any]], Job] | None = None,
        clusters: ClusterRecords | None = None,
        release_slot_items: Callable[[str], list[dict[str, Any]]] | None = None,
        launch_queued: Callable[[], object] = lambda: None,
        lease_s: float = 60.0,
        warm_poll_s: float = 0.5,
    ) -> None:
        self._store = store
        self._objects = objects
        self._backend = backend
        self._pipelines = pipelines
        self._jobs_client = jobs_client
        self._project_dir = project_dir
        self._provisioning_timeout_s = provisioning_timeout_s
        self._poll_s = poll_interval_s
        self._heartbeat_s = heartbeat_interval_s
        self._api_timeout_s = api_timeout_s
        self._submit_timeout_s = submit_timeout_s
        self._log_flush_s = log_flush_interval_s
        self._session_logs_timeout_s = session_logs_timeout_s
        self._on_finished = on_finished  # gives back the cluster slot, launches what is queued
        self._requeue = requeue  # QUEUED again for the next attempt (gives back the slot too)
        # Warm clusters and debug holds (raylauncher/warm.py); None: every cluster goes down.
        self._clusters = clusters
        self._release_slot_items = release_slot_items or (lambda pipeline: [])
        self._launch_queued = launch_queued  # a kept cluster going down frees a slot
        self._lease_s = lease_s
        self._warm_poll_s = warm_poll_s
        self._handle: ClusterHandle | None = None  # the current attempt's cluster, once up
        self._kept: Kept | None = None  # the cluster this driver holds (warm or held), if any

    def run(self, job_id: str) -> Job:
        """Run the job's current attempt. If another driver (or the watchdog) owns it, or takes
        it over meanwhile, leave it alone and return it as the store has it."""
        guard = SignalGuard()
        owner = new_owner_token()
        with guard.installed():
            job = self._store.get(job_id)
            try:
                job = self._store.transition(job, JobStatus.PROVISIONING, owner=owner, heartbeat_at=iso(utc_now()))
            except (IllegalTransition, TransitionConflict):
                job = self._store.get(job_id)
                log.warning("job %s is not ours to run (status %s); leaving it alone", job_id, job.status)
                return job
            lease = Lease(self._store, job_id, owner, self._heartbeat_s)
            with lease.held():
                job = self._attempt(job, guard, lease)
            if self._kept is not None:  # the job ended, its cluster stays up: hold it (signals still ours)
                self._hold(guard, owner, first=lambda: self._after_attempt(job, guard))
                return job
        self._after_attempt(job, guard)
        return job

    def _after_attempt(self, job: Job, guard: SignalGuard) -> None:
        if job.status == JobStatus.QUEUED and job.retry_at and not guard.fired:
            wait = (parse_iso(job.retry_at) - utc_now()).total_seconds()
            if wait <= RETRY_WAIT_CAP_S:
                log.info("job %s: attempt %d in %.0fs", job.job_id, job.attempt, max(wait, 0))
                time.sleep(max(wait, 0))
        if job.is_terminal or job.status == JobStatus.QUEUED:
            try:
                self._on_finished(job)
            except Exception:  # noqa: BLE001 - the cluster is down; a slot left taken is logged
                log.exception("job %s: could not release its cluster slot", job.job_id)

    def _attempt(self, job: Job, guard: SignalGuard, lease: Lease) -> Job:
        outcome: Outcome | None = None
        client: JobsClient | None = None
        shipper: JobLogShipper | None = None
        job_id = job.job_id
        try:
            pipeline = self._pipelines.get(job.pipeline)
            stop_asked = self._cancel_check(job_id)
            if self._kept is not None:  # a warm cluster: no `ray up`
                handle = self._kept.handle
            else:
                self._handle = None
                handle = self._backend.up(
                    job, pipeline, self._provisioning_timeout_s, lambda: bool(guard.fired) or lease.lost or stop_asked()
                )
                self._handle = handle
                lease.check()
                job = self._write(lambda j: self._store.heartbeat(j, cluster=handle.details), job)
            ray = self._jobs_client(handle.dashboard_url, headers=handle.auth_headers)
            client = TimedJobsClient(ray, self._api_timeout_s)
            shipper = self._log_shipper(job, TimedJobsClient(ray, min(self._api_timeout_s, LOG_FETCH_TIMEOUT_S)))
            self._submit_once(client, job, pipeline, handle)
            submitted = job
            job = _with_store_retries(lambda: self._store.transition(submitted, JobStatus.SUBMITTED, ray_status="PENDING"))
            job, outcome = self._follow(client, job, pipeline, guard, lease, shipper)
            outcome = self._blame_lost_nodes(job, outcome)
        except ProvisioningCancelled as err:
            outcome = (
                Outcome(JobStatus.FAILED, ReasonCode.DRIVER_TERMINATED, f"driver received {guard.fired} while provisioning")
                if guard.fired
                else Outcome(JobStatus.CANCELLED, ReasonCode.CANCEL_REQUESTED, str(err))
            )
        except DriverTerminated as sig:
            outcome = Outcome(JobStatus.FAILED, ReasonCode.DRIVER_TERMINATED, f"driver received {sig}")
        except ProvisioningTimedOut as err:
            outcome = Outcome(JobStatus.TIMED_OUT, ReasonCode.PROVISIONING_TIMEOUT,
                              clip(f"provisioning deadline of {self._provisioning_timeout_s:.0f}s passed: {err}"))  # fmt: skip
        except ProvisioningFailed as err:
            outcome = Outcome(JobStatus.FAILED, ReasonCode.PROVISIONING_FAILED, clip(str(err)))
        except _SubmitFailed as err:
            outcome = Outcome(JobStatus.FAILED, ReasonCode.SUBMIT_FAILED, clip(str(err)))
        except JobTakenOver:
            pass  # handled below: not ours any more
        except Exception as err:  # noqa: BLE001 - any error still ends in teardown with a reason
            log.exception("job %s: driver error", job_id)
            outcome = Outcome(JobStatus.FAILED, ReasonCode.DRIVER_ERROR, clip(f"{type(err).__name__}: {err}"))
        finally:
            if self._taken_over(job_id, lease):
                log.warning("job %s was taken over (driver declared lost); its cluster is the watchdog's now", job_id)
                job = self._fresh(job)
            else:
                job = self._finish(job, outcome, client, shipper)
        return job

    def _blame_lost_nodes(self, job: Job, outcome: Outcome) -> Outcome:
        """A Ray job that failed after the cloud took nodes away (spot interruption) failed for
        the infrastructure (NODE_LOST: retried per the pipeline's policy), not for itself."""
        if outcome.reason_code != ReasonCode.RAY_JOB_FAILED:
            return outcome
        lost = self._backend.lost_nodes(origin_of(job))
        if not lost:
            return outcome
        return Outcome(JobStatus.FAILED, ReasonCode.NODE_LOST,
                       clip(f"node(s) {', '.join(lost)} were interrupted by EC2 (spot) while the job ran; "
                            f"Ray said: {outcome.message}"))  # fmt: skip

    # -- the phases --------------------------------------------------------------------------

    def _submit_once(self, client: JobsClient, job: Job, pipeline: Pipeline, handle: ClusterHandle) -> None:
        """Submit with submission id = job id, unless Ray already has it (a re-run never submits
        twice). A fresh head can refuse submissions until its job agent has registered (HTTP
        500 "no available agent"), so a refusal is retried until the submit deadline; before
        each retry Ray is asked again whether the previous attempt got through after all. A head
        that stops answering meanwhile is retried the same way, unless the backend can tell that
        the cluster is gone (a local head that failed its own start-up after its Jobs API
        answered, seen under load): then at once, with the cluster's last words."""
        script = self._project_dir / pipeline.entrypoint.script
        if not script.is_file():  # not worth a retry
            raise _SubmitFailed(f"entrypoint {pipeline.entrypoint.script} not found under {self._project_dir}")
        deadline = time.monotonic() + self._submit_timeout_s
        while True:
            try:
                if self._known_to_ray(client, job):
                    log.info("job %s is known to Ray; following it", job.job_id)
                    return
                self._submit(client, job, pipeline, handle, script)
                return
            except _SubmitFailed as err:
                if (gone := handle.gone()) is not None:
                    raise _SubmitFailed(f"the cluster went away before the job was submitted: {gone}") from err
                if time.monotonic() > deadline:
                    raise
                log.warning("job %s: submission refused, retrying", job.job_id, exc_info=True)
                time.sleep(2)

    @staticmethod
    def _known_to_ray(client: JobsClient, job: Job) -> bool:
        try:
            jobs = client.list_jobs()
        except OSError as err:  # refused, reset, timed out (requests' errors and TimeoutError are OSErrors)
            raise _SubmitFailed(f"Ray Jobs API did not answer: {type(err).__name__}: {err}") from err
        return any(getattr(j, "submission_id", None) == job.run_id for j in jobs)

    def _submit(self, client: JobsClient, job: Job, pipeline: Pipeline, handle: ClusterHandle, script: Path) -> None:
        manifest_uri = self._objects.uri(job.manifest_key or job_prefix(job.job_id) + "manifest.json")
        output_uri = self._objects.uri(job.output_prefix or "")
        argv = [handle.python, script.name, *pipeline.entrypoint.args, "--manifest", manifest_uri, "--output", output_uri]
        try:
            client.submit_job(
                entrypoint=shlex.join(argv),
                submission_id=job.run_id,
                runtime_env={"working_dir": str(script.parent), "env_vars": dict(handle.job_env)},
                metadata={"job_id": job.job_id, "pipeline": job.pipeline, "attempt": str(job.attempt)},
            )
        except Exception as err:  # noqa: BLE001 - the SDK raises plain RuntimeError for HTTP errors
            raise _SubmitFailed(f"Ray Jobs API refused the job: {err}") from err
        log.info("job %s submitted as %s: %s", job.job_id, job.run_id, shlex.join(argv))

    def _follow(
        self, client: JobsClient, job: Job, pipeline: Pipeline, guard: SignalGuard, lease: Lease,
        shipper: JobLogShipper | None = None,
    ) -> tuple[Job, Outcome]:
        """Poll Ray until the job ends, the run deadline passes, a cancel or a signal arrives.
        Every `log_flush_interval_s` the Ray job's log so far is copied to S3 (best-effort); the
        record gets its key with the next write after the first upload."""
        deadline = time.monotonic() + pipeline.run_timeout_s
        last_beat = time.monotonic()
        cancelled = self._cancel_check(job.job_id, every_s=0)
        while True:
            lease.check()
            if guard.fired:
                raise DriverTerminated(guard.fired)
            if cancelled():
                return job, Outcome(JobStatus.CANCELLED, ReasonCode.CANCEL_REQUESTED, "cancel requested while the job ran")
            if shipper is not None and shipper.due():
                shipper.flush()
            logs = {"logs_key": shipper.key} if shipper is not None and shipper.uploaded and job.logs_key != shipper.key else {}
            info = client.get_job_info(job.run_id)
            status = ray_status(info)
            if status == "RUNNING" and job.status == JobStatus.SUBMITTED:
                job = self._write(lambda j: self._store.transition(j, JobStatus.RUNNING, ray_status=status, **logs), job)
            elif status != job.ray_status or logs or time.monotonic() - last_beat >= self._heartbeat_s:
                job = self._write(lambda j: self._store.heartbeat(j, ray_status=status, **logs), job)
                last_beat = time.monotonic()
            if status in RAY_TERMINAL:
                return job, outcome_of(status, getattr(info, "message", None))
            if time.monotonic() > deadline:  # _finish stops the Ray job
                return job, Outcome(
                    JobStatus.TIMED_OUT,
                    ReasonCode.RUN_TIMEOUT,
                    f"the Ray job ran longer than the pipeline's run_timeout_s={pipeline.run_timeout_s}; stopped",
                )
            time.sleep(self._poll_s)

    def _finish(
        self, job: Job, outcome: Outcome | None, client: JobsClient | None, shipper: JobLogShipper | None = None
    ) -> Job:
        """Stop the Ray job if it still runs, TEARING_DOWN, keep logs (the Ray job's, then the
        head's session logs, bounded), cluster down, final state. The cluster goes down whatever
        the steps before it do (store, S3 or Ray API failures, a log fetch that hangs)."""
        outcome = outcome or Outcome(JobStatus.FAILED, ReasonCode.DRIVER_ERROR, "driver ended without an outcome")
        logs_key: str | None = None
        session_logs_key: str | None = None
        summary: dict[str, Any] | None = None
        try:
            last_word = None
            if client is not None and outcome.status != JobStatus.SUCCEEDED:
                last_word = stop_quietly(client, job.run_id)  # Ray's last word goes on the record
            extra = {"ray_status": last_word} if last_word else {}
            job = self._record(job, JobStatus.TEARING_DOWN, pending_outcome=outcome.status,
                               reason_code=outcome.reason_code, reason_message=outcome.message, **extra)  # fmt: skip
            logs_key = shipper.finish() if shipper is not None else None
            summary = self._read_summary(job)
            session_logs_key = self._keep_session_logs(job)
        except JobTakenOver:
            log.warning("job %s was taken over while tearing down; its cluster is the watchdog's now", job.job_id)
            return self._fresh(job)
        except Exception:  # noqa: BLE001 - bookkeeping must never keep a cluster up
            log.exception("job %s: error before teardown; tearing down anyway", job.job_id)
        final, reason_code, message = outcome.status, outcome.reason_code, outcome.message
        keep = self._keep_mode(job, outcome)
        if keep is not None:
            kept = self._keep(job, outcome, keep, logs_key=logs_key, session_logs_key=session_logs_key, summary=summary)
            if kept is not None:
                return kept
        if self._kept is not None:  # a kept cluster that must not serve again
            self._cluster_going_down()
        try:
            attempts = self._backend.down(origin_of(job))
        except Exception as err:  # noqa: BLE001 - whatever failed, the cluster may still be up
            log.exception("job %s: TEARDOWN FAILED, the cluster may still be running", job.job_id)
            attempts = err.attempts if isinstance(err, TeardownFailed) else 1
            final, reason_code = JobStatus.TEARDOWN_FAILED, ReasonCode.TEARDOWN_FAILED
            message = clip(f"teardown failed ({type(err).__name__}: {err}); the job itself ended {outcome.status}"
                           + (f": {outcome.message}" if outcome.message else ""))  # fmt: skip
        self._cluster_gone(final != JobStatus.TEARDOWN_FAILED)
        if final != JobStatus.TEARDOWN_FAILED:
            retry = self._next_attempt(job, final, reason_code, message, logs_key=logs_key,
                                       session_logs_key=session_logs_key)  # fmt: skip
            if retry is not None:
                return retry
        try:
            return self._record(job, final, reason_code=reason_code, reason_message=message,
                                logs_key=logs_key, session_logs_key=session_logs_key, summary=summary,
                                teardown_attempts=attempts)  # fmt: skip
        except JobTakenOver:
            return self._fresh(job)

    def _next_attempt(self, job: Job, final: JobStatus, reason: ReasonCode | None, message: str | None,
                      **extra: Any) -> Job | None:  # fmt: skip
        """Back to QUEUED for another attempt when the pipeline's retry policy says so."""
        if self._requeue is None:
            return None
        try:
            fresh = self._store.get(job.job_id)  # the cancel flag as it is now
            if fresh.owner != job.owner or fresh.status != JobStatus.TEARING_DOWN:
                return None
            fields = next_attempt(fresh, final, reason, message, self._pipelines.get(job.pipeline).retry,
                                  utc_now(), **extra)  # fmt: skip
            if fields is None:
                return None
            queued = self._requeue(fresh, fields)
        except Exception:  # noqa: BLE001 - not retried: the failure is recorded as final instead
            log.exception("job %s: could not queue another attempt", job.job_id)
            return None
        log.warning("job %s: attempt %d ended %s (%s); attempt %d queued for %s", job.job_id, job.attempt,
                    final, reason, queued.attempt, queued.retry_at)  # fmt: skip
        return queued

    # -- helpers -----------------------------------------------------------------------------

    def _cancel_check(self, job_id: str, every_s: float = 2.0) -> Callable[[], bool]:
        """A cheap `cancelled()` for polling loops: reads the job's flag at most every `every_s`."""
        last = {"at": float("-inf"), "value": False}

        def cancelled() -> bool:
            if not last["value"] and time.monotonic() - last["at"] >= every_s:
                last["at"] = time.monotonic()
                try:
                    last["value"] = self._store.get(job_id).cancel_requested
                except Exception:  # noqa: BLE001 - a failed read is "not cancelled", never a crash
                    log.warning("job %s: could not read the cancel flag", job_id, exc_info=True)
            return bool(last["value"])

        return cancelled

    def _write(self, write: Callable[[Job], Job], job: Job) -> Job:
        """A store write while the job runs (RUNNING, heartbeats with Ray's status). A store that
        refuses it (throttling, a network blip) is retried, then skipped: the next poll writes
        again. A conflict because the job was taken over is JobTakenOver."""
        try:
            return _with_store_retries(lambda: write(job))
        except StorageError as err:
            log.warning("job %s: store write skipped (%s); retried at the next poll", job.job_id, err.code)
            return job
        except TransitionConflict:
            if self._fresh(job).owner != job.owner:
                raise JobTakenOver(job.job_id) from None
            raise

    def _fresh(self, job: Job) -> Job:
        try:
            return self._store.get(job.job_id)
        except RayLauncherError:
            return job

    def _taken_over(self, job_id: str, lease: Lease) -> bool:
        """True if the job is no longer this driver's. An unreadable store counts as ours: the
        cluster then goes down (a second teardown is harmless, an orphan is not)."""
        if lease.lost:
            return True
        try:
            return self._store.get(job_id).owner != lease.owner
        except RayLauncherError:
            return False

    def _record(self, job: Job, target: JobStatus, **fields: Any) -> Job:
        """Best-effort transition during teardown: if it cannot be written, say so and go on.

        Our in-memory copy may be one write behind (a signal can land between a store write
        and the assignment of its result); this driver owns the job, so it re-reads once.
        Raises JobTakenOver if the job is no longer ours."""
        try:
            try:
                return _with_store_retries(lambda: self._store.transition(job, target, **fields))
            except TransitionConflict:
                fresh = self._store.get(job.job_id)
                if fresh.owner != job.owner:
                    raise JobTakenOver(job.job_id) from None
                if fresh.status == target:  # our write landed, its answer was lost
                    return fresh
                return _with_store_retries(lambda: self._store.transition(fresh, target, **fields))
        except JobTakenOver:
            raise
        except RayLauncherError:
            log.exception("job %s: could not record %s", job.job_id, target)
            return job

    def _log_shipper(self, job: Job, client: JobsClient) -> JobLogShipper:
        return JobLogShipper(self._objects, job, lambda: client.get_job_logs(job.run_id), self._log_flush_s)

    def _keep_session_logs(self, job: Job) -> str | None:
        """The head's Ray session logs into S3 before teardown: at most session_logs_timeout_s
        (then teardown goes on without them); never raises."""
        if self._session_logs_timeout_s <= 0:
            return None
        timeout_s = self._session_logs_timeout_s
        origin = origin_of(job)
        return keep_session_logs(self._objects, job, lambda dest: self._backend.collect_logs(origin, dest, timeout_s),
                                 timeout_s + 5)  # fmt: skip

    def _read_summary(self, job: Job) -> dict[str, Any] | None:
        if not job.output_prefix:
            return None
        try:
            summary = self._objects.get_json(str(PurePosixPath(job.output_prefix) / "summary.json"))
        except (StorageError, ValueError):
            return None
        return summary if isinstance(summary, dict) else None


class _SubmitFailed(RayLauncherError):
    pass


#: Waits between tries of a store write the store refused (throttling is transient).
STORE_RETRY_DELAYS_S = (0.2, 0.5, 1.0, 2.0, 4.0)


def _with_store_retries(write: Callable[[], Job]) -> Job:
    for delay in STORE_RETRY_DELAYS_S:
        try:
            return write()
        except StorageError as err:
            log.warning("job store refused a write (%s); again in %.1fs", err.code, delay)
            time.sleep(delay)
    return write()

