"""The watchdog: a periodic sweep that keeps the promises when an event was lost.

Every few minutes (an EventBridge schedule on AWS; `raylauncher watchdog` locally) it
1. fails LAUNCHING jobs that no driver claimed within the launch grace period (the bastion was
   down, or the SSM command was lost): reason DRIVER_NOT_STARTED (retried per the pipeline's
   policy); no cluster was started for them, since only a driver starts clusters, and a driver
   that shows up late gets a conflict;
1b. takes over jobs whose driver's lease lapsed (no heartbeat for `lease_s`, PROVISIONING and
   later): the job moves to TEARING_DOWN with owner "watchdog" (a driver that comes back finds
   it is not its own and leaves it alone), the cluster is torn down from the record (EC2 API by
   tag, or the local processes by marker), and the job ends FAILED/DRIVER_LOST — or is queued
   for another attempt — all in this sweep;
2. gives back the slots of those and of finished jobs still holding one (a driver that died
   between its last transition and the release), then launches QUEUED jobs that now fit (a lost
   "slot freed" event would otherwise leave them queued forever);
2b. tears down kept (warm/held) clusters whose holder's lease lapsed or whose time ran out a
   lease ago (raylauncher/warm.py), from their record: judged on a consistent read, taken over
   only if the holder's heartbeat is still the one read;
3. terminates the nodes of clusters past their `raylauncher:expires-at` (raylauncher/reaper.py),
   when a reaper is given (on AWS);
3b. deletes Ray token parameters whose cluster is gone (raylauncher/cluster_tokens.py) that a
   driver and a takeover both failed to delete: the job ended, moved on to a later attempt,
   or does not exist — never the token of a TEARDOWN_FAILED job (its cluster may still be up)
   nor of a kept cluster that is up;
4. reports jobs that need a person: TEARDOWN_FAILED jobs and kept clusters in the last day (the
   cluster may still be up) and running jobs whose driver stopped sending heartbeats. The Lambda publishes the counts
   as CloudWatch metrics; the stack's alarms page whoever subscribed to its alerts topic.
Each step is a conditional transition: a sweep racing a driver or another sweep loses cleanly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from raylauncher.admission import Launcher
from raylauncher.bastion import LaunchFailure
from raylauncher.cluster_tokens import ClusterTokens, TokenUnavailable
from raylauncher.errors import IllegalTransition, JobNotFound, RayLauncherError, TeardownFailed, TransitionConflict
from raylauncher.model import TERMINAL, Job, JobStatus, ReasonCode, iso, parse_iso, utc_now
from raylauncher.reaper import ClusterReaper, ReaperError
from raylauncher.retries import next_attempt
from raylauncher.store import DynamoJobStore, JobQuery
from raylauncher.teardown import ClusterTeardown
from raylauncher.warm import LIVE, ClusterRecord, ClusterStatus, cluster_key, origin_of, retire

#: The owner of a job the watchdog took over.
WATCHDOG_OWNER = "watchdog"

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
    "drivers_lost": "DriversLost",
    "retried": "JobsRetried",
    "tokens_deleted": "OrphanTokensDeleted",
    "clusters_torn_down": "KeptClustersTornDown",
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
    drivers_lost: list[str] = field(default_factory=list)  # taken over, cluster torn down
    retried: list[str] = field(default_factory=list)  # queued again for another attempt
    tokens_deleted: list[str] = field(default_factory=list)  # "<job id>/<run id>" of orphaned tokens
    clusters_torn_down: list[str] = field(default_factory=list)  # warm/held clusters: lease lapsed or time out

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
        teardown: ClusterTeardown | None = None,
        lease_s: float = 60,
        tokens: ClusterTokens | None = None,
        token_grace_s: float = 600,
    ) -> None:
        self._store = store
        self._launcher = launcher
        self._reaper = reaper
        self._launch_grace = timedelta(seconds=launch_grace_s)
        self._heartbeat_grace = timedelta(seconds=heartbeat_grace_s)
        self._attention_window = timedelta(seconds=attention_window_s)
        self._clock = clock
        self._teardown = teardown  # None: lost drivers are only reported (silent_drivers)
        self._lease = timedelta(seconds=lease_s)
        self._tokens = tokens  # None: token parameters are left to the drivers and takeovers
        self._token_grace = timedelta(seconds=token_grace_s)

    def sweep(self) -> SweepReport:
        now = self._clock()
        report = SweepReport()
        jobs = self._jobs_to_sweep()
        for job in jobs:
            if job.status == JobStatus.LAUNCHING:
                late = now - parse_iso(job.updated_at) > self._launch_grace
                failure = None if late else self._launcher.launch_failure(job)  # the SSM command ended badly
                if (late or failure) and self._fail_unclaimed(job, report, failure):
                    report.failed_unclaimed.append(job.job_id)
                continue
            if self._teardown and job.status in _DRIVEN and now - self._last_beat(job) > self._lease:
                self.take_over(job, report)
                continue
            if job.is_terminal and job.slot_held and self._launcher.release(job):
                report.slots_released.append(job.job_id)
            if job.status == JobStatus.TEARDOWN_FAILED:
                if now - parse_iso(job.updated_at) <= self._attention_window:
                    report.teardown_failed.append(job.job_id)
            elif job.status in _DRIVEN and now - parse_iso(job.heartbeat_at or job.updated_at) > self._heartbeat_grace:
                report.silent_drivers.append(job.job_id)
        self._sweep_clusters(now, report)
        if self._reaper:  # before launching: an error there must not keep orphans running
            try:
                report.reaped = [f"{r.cluster}/{r.instance_id}" for r in self._reaper.reap(now)]
            except ReaperError as err:  # the rest of the sweep stands; the alarm tells a person
                log.exception("reaper failed")
                report.reaper_failed = [str(err)]
        changed = report.failed_unclaimed or report.drivers_lost or report.clusters_torn_down
        report.launched = [j.job_id for j in self._launcher.launch_queued(None if changed else jobs)]
        if self._tokens:  # last: nothing here may keep a queued job from launching
            try:
                report.tokens_deleted = self._delete_orphaned_tokens(now)
            except Exception:  # noqa: BLE001 - the next sweep tries again; the rest stands
                log.exception("the orphaned-token sweep failed")
        if report.teardown_failed or report.silent_drivers or report.reaped or report.reaper_failed:
            log.warning("jobs need attention: %s", report.as_dict())
        return report

    def _delete_orphaned_tokens(self, now: datetime) -> list[str]:
        """Tokens older than the grace (a driver that just stored one is never raced) whose job
        ended (except TEARDOWN_FAILED), is on a later attempt, or does not exist."""
        assert self._tokens is not None
        try:
            stored = self._tokens.stored()
        except TokenUnavailable as err:
            log.warning("could not list the Ray token parameters: %s", err)
            return []
        deleted = []
        for token in stored:
            if now - token.stored_at < self._token_grace:
                continue
            try:
                job: Job | None = self._store.get(token.job_id)
            except JobNotFound:
                job = None
            except RayLauncherError as err:  # the store cannot say now: the next sweep will
                log.warning("token of %s kept for now: %s", token.run_id, err)
                continue
            if job and job.run_id == token.run_id and (not job.is_terminal or job.status == JobStatus.TEARDOWN_FAILED):
                continue  # its cluster is (or may be) up
            if job and job.run_id == token.run_id and job.cluster_key == cluster_key(token.run_id):
                if self._kept_cluster_up(job.cluster_key, token.run_id):
                    continue  # the job ended, its cluster was kept (warm/held) and serves on with this token
            try:
                self._tokens.delete(token)
            except TokenUnavailable as err:
                log.warning("orphaned Ray token of %s not deleted: %s", token.run_id, err)
                continue
            deleted.append(f"{token.job_id}/{token.run_id}")
        if deleted:
            log.info("deleted orphaned Ray tokens: %s", deleted)
        return deleted

    def _kept_cluster_up(self, key: str, run_id: str) -> bool:
        """Whether the kept cluster `key` is (or may be) up: a consistent read, after the job's
        (the keep is one transaction with the job's end, so it is seen here); unreadable: yes."""
        try:
            record = self._store.clusters.get(key)
        except JobNotFound:
            return False
        except RayLauncherError as err:
            log.warning("token of %s kept for now: its cluster record cannot be read: %s", run_id, err)
            return True
        return record.status in LIVE or record.status == ClusterStatus.TEARDOWN_FAILED

    def _jobs_to_sweep(self) -> list[Job]:
        """What a sweep looks at, from the job table's indexes, never a scan of its history:
        every job in a non-terminal status (by_status), every job holding a cluster slot (the
        sparse holding_slot index: a terminal job there is a slot to give back) and the
        TEARDOWN_FAILED jobs (by_status; each one is an incident, so they stay few)."""
        queries = [JobQuery(status=s, oldest_first=True) for s in JobStatus if s not in TERMINAL]
        queries += [JobQuery(holding_slot=True, oldest_first=True), JobQuery(status=JobStatus.TEARDOWN_FAILED)]
        found: dict[str, Job] = {}
        for query in queries:
            for job in self._store.iter_jobs(query):
                found.setdefault(job.job_id, job)
        return sorted(found.values(), key=lambda j: (j.created_at, j.job_id))

    @staticmethod
    def _last_beat(job: Job) -> datetime:
        return parse_iso(job.heartbeat_at or job.updated_at)

    def _fail_unclaimed(self, job: Job, report: SweepReport, failure: LaunchFailure | None = None) -> bool:
        message = (
            f"the bastion's command {job.launch_ref} ended {failure.status} without starting a driver; no cluster "
            f"was started. Its output: {failure.output_tail}"
            if failure
            else f"no driver claimed the job within {int(self._launch_grace.total_seconds())} s of its launch "
            "(bastion down or its SSM command lost); no cluster was started"
        )
        try:
            retry = self._next_attempt(job, JobStatus.FAILED, ReasonCode.DRIVER_NOT_STARTED, message)
            if retry is not None:
                self._launcher.requeue(job, retry)
                report.retried.append(job.job_id)
                return True
            failed = self._store.transition(
                job, JobStatus.FAILED, reason_code=ReasonCode.DRIVER_NOT_STARTED, reason_message=message
            )
        except (TransitionConflict, IllegalTransition):
            return False  # the driver claimed it meanwhile
        self._launcher.release(failed)
        return True

    def take_over(self, job: Job, report: SweepReport | None = None) -> Job | None:
        """Take the job over from its lost driver, tear its cluster down, end it (or queue its next
        attempt) and give back its slot. None if the job moved on meanwhile (its driver is alive)."""
        report = report if report is not None else SweepReport()
        now = self._clock()
        last = job.heartbeat_at or job.updated_at
        message = (f"driver lost: no heartbeat since {last} ({(now - parse_iso(last)).total_seconds():.0f} s; "
                   f"lease {self._lease.total_seconds():.0f} s) while {job.status.value}; cluster torn down by the watchdog")  # fmt: skip
        try:
            if job.status == JobStatus.TEARING_DOWN:  # its outcome was decided: keep it
                job = self._store.take_over(job, WATCHDOG_OWNER)
            else:
                job = self._store.transition(
                    job, JobStatus.TEARING_DOWN, owner=WATCHDOG_OWNER, heartbeat_at=iso(now),
                    pending_outcome=JobStatus.FAILED, reason_code=ReasonCode.DRIVER_LOST, reason_message=message,
                )  # fmt: skip
        except (TransitionConflict, IllegalTransition):
            return None  # a driver wrote meanwhile: it is alive
        log.warning("job %s: %s", job.job_id, message)
        report.drivers_lost.append(job.job_id)
        assert self._teardown is not None
        try:
            self._teardown.teardown(origin_of(job))  # a job on a kept cluster: that cluster
        except (TeardownFailed, RayLauncherError) as err:
            log.error("job %s: teardown after a lost driver failed: %s", job.job_id, err)
            return self._end(job, JobStatus.TEARDOWN_FAILED, ReasonCode.TEARDOWN_FAILED,
                             f"teardown failed ({err}); {job.reason_message or message}")  # fmt: skip
        final = job.pending_outcome or JobStatus.FAILED
        reason = job.reason_code or ReasonCode.DRIVER_LOST
        retry = self._next_attempt(job, final, reason, job.reason_message or message)
        if retry is not None:
            try:
                queued = self._launcher.requeue(job, retry)
            except (TransitionConflict, IllegalTransition):
                return None
            report.retried.append(job.job_id)
            return queued
        return self._end(job, final, reason, job.reason_message or message)

    def _sweep_clusters(self, now: datetime, report: SweepReport) -> None:
        """Warm/held clusters (raylauncher/warm.py) whose holder's lease lapsed, or whose time ran
        out a lease ago (a holder that is stuck), are torn down from their record; their slot is
        given back and a job assigned to one is queued again. Kept clusters whose teardown
        failed are reported (an alarm) every sweep of the attention window, like such jobs."""
        if self._teardown is None:
            return
        try:
            records = self._store.clusters.live()
            failed = self._store.clusters.teardown_failed_since(now - self._attention_window)
        except RayLauncherError as err:
            log.warning("cluster records not swept: %s", err)
            return
        report.teardown_failed += [r.key for r in failed]
        for record in records:
            if self._lapsed_or_late(record, now) is None:
                continue
            try:  # the index is eventually consistent: judge the record as it is now
                record = self._store.clusters.get(record.key)
            except RayLauncherError as err:
                log.warning("cluster %s not swept: %s", record.key, err)
                continue
            why = self._lapsed_or_late(record, now)
            if why is None or record.status not in LIVE:
                continue
            final = self.tear_down_cluster(record, now, why)
            if final == ClusterStatus.TORN_DOWN:
                report.clusters_torn_down.append(record.key)
            elif final == ClusterStatus.TEARDOWN_FAILED:
                report.teardown_failed.append(record.key)

    def _lapsed_or_late(self, record: ClusterRecord, now: datetime) -> str | None:
        """Why the watchdog takes the kept cluster over, or None: its holder's lease lapsed, or
        its time ran out a lease ago."""
        if now - parse_iso(record.heartbeat_at or record.created_at) > self._lease:
            return "lease lapsed"
        deadline = record.deadline()
        return "time ran out" if deadline is not None and now - deadline > self._lease else None

    def tear_down_cluster(self, record: ClusterRecord, now: datetime, why: str) -> ClusterStatus | None:
        """Take the kept cluster over (conditional on the heartbeat read: a holder that renewed
        since keeps it) and tear it down from the record. None if it was not taken."""
        assert self._teardown is not None
        teardown = self._teardown

        def down() -> bool:
            try:
                teardown.teardown(record.origin_job())
            except (TeardownFailed, RayLauncherError) as err:
                log.error("cluster %s: teardown failed: %s", record.key, err)
                return False
            return True

        final = retire(self._store.clusters, self._store, record, now, down,
                       self._launcher.slot_release_items(record.pipeline),
                       takeover={"owner": WATCHDOG_OWNER, "heartbeat_at": iso(now)})  # fmt: skip
        if final is not None:
            log.warning("cluster %s (%s, holder %s): %s; torn down by the watchdog: %s", record.key, record.status,
                        record.owner, why, final)  # fmt: skip
        return final

    def _end(self, job: Job, status: JobStatus, reason: ReasonCode | None, message: str) -> Job | None:
        try:
            ended = self._store.transition(job, status, reason_code=reason, reason_message=message)
        except (TransitionConflict, IllegalTransition):
            return None
        self._launcher.release(ended)
        return ended

    def _next_attempt(self, job: Job, status: JobStatus, reason: ReasonCode, message: str) -> dict | None:  # type: ignore[type-arg]
        try:
            policy = self._launcher.pipelines.get(job.pipeline).retry
        except RayLauncherError:  # a pipeline removed from the config: not retried
            return None
        return next_attempt(job, status, reason, message, policy, self._clock())
