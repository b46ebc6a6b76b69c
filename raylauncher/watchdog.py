"""The watchdog: a periodic sweep that keeps the promises when an event was lost.

Every few minutes (an EventBridge schedule on AWS; `raylauncher watchdog` locally) it
1. fails LAUNCHING jobs that no driver claimed within the launch grace period (the bastion was
   down, or the SSM command was lost): reason DRIVER_NOT_STARTED; no cluster was started for
   them, since only a driver starts clusters, and a driver that shows up late gets a conflict;
2. gives back the slots of those and of finished jobs still holding one (a driver that died
   between its last transition and the release), then launches QUEUED jobs that now fit (a lost
   "slot freed" event would otherwise leave them queued forever);
3. terminates the nodes of clusters past their `raylauncher:expires-at` (raylauncher/reaper.py),
   when a reaper is given (on AWS);
4. reports jobs that need a person: TEARDOWN_FAILED in the last day (the cluster may still be
   up) and running jobs whose driver stopped sending heartbeats. The Lambda publishes the counts
   as CloudWatch metrics; the stack's alarms page whoever subscribed to its alerts topic.
Each step is a conditional transition: a sweep racing a driver or another sweep loses cleanly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from raylauncher.admission import Launcher
from raylauncher.errors import IllegalTransition, TransitionConflict
from raylauncher.model import Job, JobStatus, ReasonCode, parse_iso, utc_now
from raylauncher.reaper import ClusterReaper, ReaperError
from raylauncher.store import DynamoJobStore

log = logging.getLogger(__name__)

#: Statuses whose driver sends heartbeats (see driver.py).
_DRIVEN = frozenset({JobStatus.PROVISIONING, JobStatus.SUBMITTED, JobStatus.RUNNING, JobStatus.TEARING_DOWN})


#: SweepReport field -> the CloudWatch metric (namespace METRICS_NAMESPACE) the Lambda publishes.
METRICS_NAMESPACE = "raylauncher"
METRICS = {
    "failed_unclaimed": "DriverNotStarted",
    "teardown_failed": "TeardownFailedJobs",
    "silent_drivers": "SilentDrivers",
    "launched": "QueuedJobsLaunched",
    "reaped": "InstancesReaped",
    "reaper_failed": "ReaperFailed",
}


@dataclass
class SweepReport:
    failed_unclaimed: list[str] = field(default_factory=list)
    slots_released: list[str] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)
    teardown_failed: list[str] = field(default_factory=list)
    silent_drivers: list[str] = field(default_factory=list)
    reaped: list[str] = field(default_factory=list)  # "<cluster>/<instance id>"
    reaper_failed: list[str] = field(default_factory=list)  # why, when it could not look or act

    def as_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.__dict__.items()}


class Watchdog:
    def __init__(
        self,
        store: DynamoJobStore,
        launcher: Launcher,
        *,
        launch_grace_s: float = 600,
        heartbeat_grace_s: float = 900,
        attention_window_s: float = 24 * 3600,
        reaper: ClusterReaper | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._launcher = launcher
        self._reaper = reaper
        self._launch_grace = timedelta(seconds=launch_grace_s)
        self._heartbeat_grace = timedelta(seconds=heartbeat_grace_s)
        self._attention_window = timedelta(seconds=attention_window_s)
        self._clock = clock

    def sweep(self) -> SweepReport:
        now = self._clock()
        report = SweepReport()
        jobs = self._store.list_jobs()
        for job in jobs:
            if job.status == JobStatus.LAUNCHING and now - parse_iso(job.updated_at) > self._launch_grace:
                if self._fail_unclaimed(job):
                    report.failed_unclaimed.append(job.job_id)
                continue
            if job.is_terminal and job.slot_held and self._launcher.release(job):
                report.slots_released.append(job.job_id)
            if job.status == JobStatus.TEARDOWN_FAILED:
                if now - parse_iso(job.updated_at) <= self._attention_window:
                    report.teardown_failed.append(job.job_id)
            elif job.status in _DRIVEN and now - parse_iso(job.heartbeat_at or job.updated_at) > self._heartbeat_grace:
                report.silent_drivers.append(job.job_id)
        if self._reaper:  # before launching: an error there must not keep orphans running
            try:
                report.reaped = [f"{r.cluster}/{r.instance_id}" for r in self._reaper.reap(now)]
            except ReaperError as err:  # the rest of the sweep stands; the alarm tells a person
                log.exception("reaper failed")
                report.reaper_failed = [str(err)]
        report.launched = [j.job_id for j in self._launcher.launch_queued(jobs)]
        if report.teardown_failed or report.silent_drivers or report.reaped or report.reaper_failed:
            log.warning("jobs need attention: %s", report.as_dict())
        return report

    def _fail_unclaimed(self, job: Job) -> bool:
        try:
            failed = self._store.transition(
                job, JobStatus.FAILED, reason_code=ReasonCode.DRIVER_NOT_STARTED,
                reason_message=(f"no driver claimed the job within {int(self._launch_grace.total_seconds())} s of "
                                "its launch (bastion down or its SSM command lost); no cluster was started"),
            )  # fmt: skip
        except (TransitionConflict, IllegalTransition):
            return False  # the driver claimed it meanwhile
        self._launcher.release(failed)
        return True
