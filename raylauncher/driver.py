"""The driver: one job's life on the bastion.

claim (LAUNCHING -> PROVISIONING) -> cluster up -> submit (submission id = job id, at most
once) -> follow (heartbeats, RUNNING, run deadline) -> decide the outcome -> TEARING_DOWN ->
keep Ray's logs in S3 -> cluster down -> outcome (or TEARDOWN_FAILED).

Teardown runs in `finally`, also after SIGTERM/SIGINT and after any error, and even when the
job store cannot be written: the cluster going down never depends on bookkeeping.
"""

from __future__ import annotations

import logging
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from raylauncher.clusters.base import ClusterBackend, ClusterHandle
from raylauncher.config import Pipeline, PipelinesConfig
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
from raylauncher.model import Job, JobStatus, ReasonCode, job_prefix
from raylauncher.objects import ObjectStore
from raylauncher.store import JobStore

log = logging.getLogger(__name__)

RAY_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
REASON_LIMIT = 4000  # characters of a reason message kept on the record
STOP_WAIT_S = 30.0  # how long a stopped Ray job gets to wind down before teardown


class JobsClient(Protocol):
    """The part of Ray's JobSubmissionClient the driver uses."""

    def list_jobs(self) -> list[Any]: ...
    def submit_job(self, **kwargs: Any) -> str: ...
    def get_job_info(self, job_id: str) -> Any: ...
    def get_job_logs(self, job_id: str) -> str: ...
    def stop_job(self, job_id: str) -> bool: ...


@dataclass(frozen=True)
class Outcome:
    status: JobStatus
    reason_code: ReasonCode | None = None
    message: str | None = None


class DriverTerminated(RayLauncherError):
    """SIGTERM/SIGINT arrived; raised at the next safe point, never from the signal handler."""


def clip(text: str, limit: int = REASON_LIMIT) -> str:
    """Keep the head (what failed) and the tail (the last log lines) of a long message."""
    if len(text) <= limit:
        return text
    head = limit // 4
    return text[:head] + "\n…\n" + text[-(limit - head - 3) :]


def _ray_status(info: Any) -> str:
    status = getattr(info, "status", info)
    return str(getattr(status, "value", status))


class SignalGuard:
    """Records the first SIGTERM/SIGINT. The handler never raises: the driver looks at `fired`
    at safe points (polling loops, launcher waits), so a signal can never cut teardown short."""

    def __init__(self) -> None:
        self.fired: str | None = None

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.fired is None:
            self.fired = signal.Signals(signum).name
            log.warning("received %s: stopping the job and tearing the cluster down", self.fired)

    @contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals are only delivered to the main thread anyway
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)


class TimedJobsClient:
    """Ray's JobSubmissionClient sets no HTTP timeout: a head that accepts connections but never
    answers would hold the driver (and the cluster) forever. Every call here has a deadline."""

    def __init__(self, inner: JobsClient, timeout_s: float) -> None:
        self._inner = inner
        self._timeout_s = timeout_s

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        result: dict[str, Any] = {}

        def target() -> None:
            try:
                result["value"] = getattr(self._inner, name)(*args, **kwargs)
            except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
                result["error"] = err

        worker = threading.Thread(target=target, name=f"ray-jobs-{name}", daemon=True)
        worker.start()
        worker.join(self._timeout_s)
        if worker.is_alive():
            raise TimeoutError(f"Ray Jobs API call {name} did not answer within {self._timeout_s:.0f}s")
        if "error" in result:
            raise result["error"]
        return result["value"]

    def list_jobs(self) -> list[Any]:
        return list(self._call("list_jobs"))

    def submit_job(self, **kwargs: Any) -> str:
        return str(self._call("submit_job", **kwargs))

    def get_job_info(self, job_id: str) -> Any:
        return self._call("get_job_info", job_id)

    def get_job_logs(self, job_id: str) -> str:
        return str(self._call("get_job_logs", job_id))

    def stop_job(self, job_id: str) -> bool:
        return bool(self._call("stop_job", job_id))


class Driver:
    def __init__(
        self,
        store: JobStore,
        objects: ObjectStore,
        backend: ClusterBackend,
        pipelines: PipelinesConfig,
        jobs_client: Callable[[str], JobsClient],
        project_dir: Path,
        provisioning_timeout_s: float,
        poll_interval_s: float = 2.0,
        heartbeat_interval_s: float = 15.0,
        api_timeout_s: float = 60.0,
        submit_timeout_s: float = 120.0,
        on_finished: Callable[[Job], object] = lambda job: None,
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
        self._on_finished = on_finished  # gives back the cluster slot, launches what is queued

    def run(self, job_id: str) -> Job:
        """Run job `job_id` to a terminal state. If another driver owns it, return it untouched."""
        guard = SignalGuard()
        with guard.installed():
            job = self._store.get(job_id)
            try:
                job = self._store.transition(job, JobStatus.PROVISIONING)
            except (IllegalTransition, TransitionConflict):
                job = self._store.get(job_id)
                log.warning("job %s is not ours to run (status %s); leaving it alone", job_id, job.status)
                return job
            outcome: Outcome | None = None
            client: JobsClient | None = None
            try:
                pipeline = self._pipelines.get(job.pipeline)
                stop_asked = self._cancel_check(job_id)
                handle = self._backend.up(
                    job, pipeline, self._provisioning_timeout_s, lambda: bool(guard.fired) or stop_asked()
                )
                job = self._store.heartbeat(job, cluster=handle.details)
                client = TimedJobsClient(self._jobs_client(handle.dashboard_url), self._api_timeout_s)
                self._submit_once(client, job, pipeline, handle)
                job = self._store.transition(job, JobStatus.SUBMITTED, ray_status="PENDING")
                job, outcome = self._follow(client, job, pipeline, guard)
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
            except Exception as err:  # noqa: BLE001 - any error still ends in teardown with a reason
                log.exception("job %s: driver error", job_id)
                outcome = Outcome(JobStatus.FAILED, ReasonCode.DRIVER_ERROR, clip(f"{type(err).__name__}: {err}"))
            finally:
                job = self._finish(job, outcome, client)
        if job.is_terminal:
            try:
                self._on_finished(job)
            except Exception:  # noqa: BLE001 - the cluster is down; a slot left taken is logged
                log.exception("job %s: could not release its cluster slot", job_id)
        return job

    # -- the phases --------------------------------------------------------------------------

    def _submit_once(self, client: JobsClient, job: Job, pipeline: Pipeline, handle: ClusterHandle) -> None:
        """Submit with submission id = job id, unless Ray already has it (a re-run never submits
        twice). A fresh head can refuse submissions until its job agent has registered (HTTP
        500 "no available agent"), so a refusal is retried until the submit deadline; before
        each retry Ray is asked again whether the previous attempt got through after all."""
        script = self._project_dir / pipeline.entrypoint.script
        if not script.is_file():  # not worth a retry
            raise _SubmitFailed(f"entrypoint {pipeline.entrypoint.script} not found under {self._project_dir}")
        deadline = time.monotonic() + self._submit_timeout_s
        while True:
            if any(getattr(j, "submission_id", None) == job.job_id for j in client.list_jobs()):
                log.info("job %s is known to Ray; following it", job.job_id)
                return
            try:
                self._submit(client, job, pipeline, handle, script)
                return
            except _SubmitFailed:
                if time.monotonic() > deadline:
                    raise
                log.warning("job %s: submission refused, retrying", job.job_id, exc_info=True)
                time.sleep(2)

    def _submit(self, client: JobsClient, job: Job, pipeline: Pipeline, handle: ClusterHandle, script: Path) -> None:
        manifest_uri = self._objects.uri(job.manifest_key or job_prefix(job.job_id) + "manifest.json")
        output_uri = self._objects.uri(job.output_prefix or "")
        argv = [handle.python, script.name, *pipeline.entrypoint.args, "--manifest", manifest_uri, "--output", output_uri]
        try:
            client.submit_job(
                entrypoint=shlex.join(argv),
                submission_id=job.job_id,
                runtime_env={"working_dir": str(script.parent), "env_vars": dict(handle.job_env)},
                metadata={"job_id": job.job_id, "pipeline": job.pipeline},
            )
        except Exception as err:  # noqa: BLE001 - the SDK raises plain RuntimeError for HTTP errors
            raise _SubmitFailed(f"Ray Jobs API refused the job: {err}") from err
        log.info("job %s submitted: %s", job.job_id, shlex.join(argv))

    def _follow(self, client: JobsClient, job: Job, pipeline: Pipeline, guard: SignalGuard) -> tuple[Job, Outcome]:
        """Poll Ray until the job ends, the run deadline passes, a cancel or a signal arrives."""
        deadline = time.monotonic() + pipeline.run_timeout_s
        last_beat = time.monotonic()
        cancelled = self._cancel_check(job.job_id, every_s=0)
        while True:
            if guard.fired:
                raise DriverTerminated(guard.fired)
            if cancelled():
                return job, Outcome(JobStatus.CANCELLED, ReasonCode.CANCEL_REQUESTED, "cancel requested while the job ran")
            info = client.get_job_info(job.job_id)
            ray_status = _ray_status(info)
            if ray_status == "RUNNING" and job.status == JobStatus.SUBMITTED:
                job = self._store.transition(job, JobStatus.RUNNING, ray_status=ray_status)
            elif ray_status != job.ray_status or time.monotonic() - last_beat >= self._heartbeat_s:
                job = self._store.heartbeat(job, ray_status=ray_status)
                last_beat = time.monotonic()
            if ray_status in RAY_TERMINAL:
                return job, _outcome_of(ray_status, getattr(info, "message", None))
            if time.monotonic() > deadline:  # _finish stops the Ray job
                return job, Outcome(
                    JobStatus.TIMED_OUT,
                    ReasonCode.RUN_TIMEOUT,
                    f"the Ray job ran longer than the pipeline's run_timeout_s={pipeline.run_timeout_s}; stopped",
                )
            time.sleep(self._poll_s)

    def _finish(self, job: Job, outcome: Outcome | None, client: JobsClient | None) -> Job:
        """Stop the Ray job if it still runs, TEARING_DOWN, keep logs, cluster down, final state.
        The cluster goes down whatever the steps before it do (store, S3 or Ray API failures)."""
        outcome = outcome or Outcome(JobStatus.FAILED, ReasonCode.DRIVER_ERROR, "driver ended without an outcome")
        logs_key: str | None = None
        summary: dict[str, Any] | None = None
        try:
            if client is not None and outcome.status != JobStatus.SUCCEEDED:
                _stop_quietly(client, job.job_id)
            job = self._record(job, JobStatus.TEARING_DOWN, pending_outcome=outcome.status,
                               reason_code=outcome.reason_code, reason_message=outcome.message)  # fmt: skip
            logs_key = self._keep_logs(job.job_id, client) if client is not None else None
            summary = self._read_summary(job)
        except Exception:  # noqa: BLE001 - bookkeeping must never keep a cluster up
            log.exception("job %s: error before teardown; tearing down anyway", job.job_id)
        final, reason_code, message = outcome.status, outcome.reason_code, outcome.message
        try:
            attempts = self._backend.down(job)
        except Exception as err:  # noqa: BLE001 - whatever failed, the cluster may still be up
            log.exception("job %s: TEARDOWN FAILED, the cluster may still be running", job.job_id)
            attempts = err.attempts if isinstance(err, TeardownFailed) else 1
            final, reason_code = JobStatus.TEARDOWN_FAILED, ReasonCode.TEARDOWN_FAILED
            message = clip(f"teardown failed ({type(err).__name__}: {err}); the job itself ended {outcome.status}"
                           + (f": {outcome.message}" if outcome.message else ""))  # fmt: skip
        return self._record(job, final, reason_code=reason_code, reason_message=message,
                            logs_key=logs_key, summary=summary, teardown_attempts=attempts)  # fmt: skip

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

    def _record(self, job: Job, target: JobStatus, **fields: Any) -> Job:
        """Best-effort transition during teardown: if it cannot be written, say so and go on.

        Our in-memory copy may be one write behind (a signal can land between a store write
        and the assignment of its result); this driver owns the job, so it re-reads once."""
        try:
            try:
                return self._store.transition(job, target, **fields)
            except TransitionConflict:
                fresh = self._store.get(job.job_id)
                if fresh.status == target:  # our write landed, its answer was lost
                    return fresh
                return self._store.transition(fresh, target, **fields)
        except RayLauncherError:
            log.exception("job %s: could not record %s", job.job_id, target)
            return job

    def _keep_logs(self, job_id: str, client: JobsClient) -> str | None:
        key = job_prefix(job_id) + "logs/ray-job.log"
        try:
            self._objects.put_bytes(key, client.get_job_logs(job_id).encode(), "text/plain; charset=utf-8")
        except Exception:  # noqa: BLE001 - losing logs must not keep the cluster up
            log.exception("job %s: could not keep the Ray job logs", job_id)
            return None
        return key

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


def _outcome_of(ray_status: str, message: str | None) -> Outcome:
    if ray_status == "SUCCEEDED":
        return Outcome(JobStatus.SUCCEEDED)
    if ray_status == "STOPPED":
        return Outcome(JobStatus.FAILED, ReasonCode.RAY_JOB_STOPPED, clip(message or "the Ray job was stopped"))
    return Outcome(JobStatus.FAILED, ReasonCode.RAY_JOB_FAILED, clip(message or "the Ray job failed"))


def _stop_quietly(client: JobsClient, job_id: str) -> None:
    """Ask Ray to stop the job and give it a moment; teardown follows whatever happens."""
    try:
        if _ray_status(client.get_job_info(job_id)) in RAY_TERMINAL:
            return
        client.stop_job(job_id)
        deadline = time.monotonic() + STOP_WAIT_S
        while time.monotonic() < deadline and _ray_status(client.get_job_info(job_id)) not in RAY_TERMINAL:
            time.sleep(0.5)
    except Exception:  # noqa: BLE001
        log.warning("job %s: could not stop the Ray job cleanly", job_id, exc_info=True)
