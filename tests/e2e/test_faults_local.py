"""The fault suite on the local Ray backend: drivers killed (one, or all at once as when the
bastion reboots) while provisioning and while running; the watchdog takes the jobs over within
the lease, tears their clusters down, and the retried attempts succeed. Each scenario adds its
measured row to docs/faults.md (tests/faults.py)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from raylauncher.clusters.processes import leftover_processes, processes_of
from raylauncher.clusters.temp_dirs import our_temp_dirs
from raylauncher.local.runtime import LocalSystem, local_system
from raylauncher.local.shutdown import stop_unfinished_jobs
from raylauncher.model import Job, JobStatus
from raylauncher.wiring import build_watchdog
from tests.e2e.test_local_flow import driver_process, project_with_job
from tests.faults import FaultRow, input_accounting, manifest_inputs

LEASE_S = 6  # the driver renews every 1 s; the watchdog sweeps every second here
TIMEOUT_S = 300

#: The first attempt of each job sleeps (so a fault can hit it while it runs); later ones finish.
FIRST_ATTEMPT_SLEEPS = """\
import pathlib, sys, time
manifest = sys.argv[sys.argv.index("--manifest") + 1]
flag = pathlib.Path({flags!r}) / manifest.split("/")[-2]
if not flag.exists():
    flag.write_text("1")
    print("probe: first attempt, sleeping", flush=True)
    time.sleep(600)
print("probe: done", flush=True)
"""


def system_for(tmp_path: Path, clusters: int = 1):  # noqa: ANN201 - a context manager
    flags = tmp_path / "flags"  # a job's flag there: its next attempt finishes at once
    flags.mkdir()
    project, pipelines = project_with_job(
        tmp_path, FIRST_ATTEMPT_SLEEPS.format(flags=str(flags)), retry="{max_attempts: 2, backoff_s: 1}",
        clusters=clusters,
    )  # fmt: skip
    return local_system(tmp_path / "state", pipelines, project, heartbeat_interval_s=1, driver_lease_s=LEASE_S)


def sweep_until(system: LocalSystem, done: Callable[[list[Job]], bool], timeout_s: float = TIMEOUT_S) -> list[Job]:
    """The watchdog's schedule, compressed: a sweep every second until `done`."""
    watchdog = build_watchdog(system.settings)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        watchdog.sweep()
        jobs = system.store.list_jobs()
        if done(jobs):
            return jobs
        time.sleep(1)
    raise AssertionError(f"not there in {timeout_s}s: {[(j.job_id, j.status, j.attempt) for j in system.store.list_jobs()]}")


def upload(system: LocalSystem, name: str) -> str:
    """Drop one input file; returns it as the manifests name it (key@version)."""
    key = f"incoming/probe/{name}"
    resp = system.s3.put_object(Bucket=system.settings.bucket, Key=key, Body=b"a\n1\n")
    return f"{key}@{resp['VersionId']}"


def inputs_of(system: LocalSystem, job: Job) -> list[str]:
    return manifest_inputs(system.objects.get_json(job.manifest_key or ""))


def cluster_processes(run_id: str) -> list[psutil.Process]:
    return processes_of(-1, run_id)  # every process carrying the attempt's marker


def wait_gone(run_ids: list[str], since: float) -> float:
    """Seconds from `since` until no process of these attempts' clusters is left."""
    deadline = time.monotonic() + TIMEOUT_S
    while any(cluster_processes(r) for r in run_ids):
        assert time.monotonic() < deadline, f"clusters of {run_ids} still up"
        time.sleep(0.2)
    return time.monotonic() - since


def row(system: LocalSystem, scenario: str, jobs: list[Job], uploaded: list[str], outlived_s: float) -> FaultRow:
    manifests = {j.job_id: inputs_of(system, j) for j in jobs}
    lost, twice = input_accounting(uploaded, manifests, {j.job_id for j in jobs if j.status == JobStatus.SUCCEEDED})
    procs = leftover_processes()
    left = len(procs)
    assert (lost, twice, left) == (0, 0, 0), [" ".join(p.cmdline()[:3]) for p in procs[:5]]
    job = jobs[0]
    reasons = [a["reason_code"] for a in job.attempts]
    return FaultRow(scenario, "local", job.status.value, " → ".join([*reasons, job.reason_code or "none"]),
                    job.attempt, round(outlived_s, 1), left, lost, twice)  # fmt: skip


@pytest.mark.parametrize("phase", [JobStatus.PROVISIONING, JobStatus.RUNNING])
def test_a_killed_driver_is_taken_over_within_the_lease_and_the_retry_succeeds(
    tmp_path: Path, phase: JobStatus, fault_row: Callable[[FaultRow], FaultRow]
) -> None:
    with system_for(tmp_path) as system:
        # Given a job whose driver is bringing its cluster up, or whose Ray job runs
        uploaded = [upload(system, "x.csv")]
        job = wait_for(system, lambda j: j.status == phase and bool(cluster_processes(j.run_id)))
        # When the driver is SIGKILLed (no teardown of its own can run)
        driver = driver_process(job.job_id)
        driver.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        driver.wait(10)
        (tmp_path / "flags" / job.job_id).write_text("1")  # (killed before its script ran: the retry finishes)
        # Then within the lease plus a sweep the watchdog took the job over and its cluster is gone
        sweep_until(system, lambda js: js[0].attempt == 2 or js[0].is_terminal)
        outlived = wait_gone([job.run_id], killed)
        assert our_temp_dirs(job.run_id) == [], "the taken-over cluster's temp dir was left behind"
        # And the retried attempt ran on a new cluster and SUCCEEDED; the lost one is on the record
        (done,) = sweep_until(system, lambda js: js[0].is_terminal)
        assert (done.status, done.attempt) == (JobStatus.SUCCEEDED, 2), (done.reason_code, done.reason_message)
        (lost,) = done.attempts
        assert lost["reason_code"] == "DRIVER_LOST" and f"while {phase.value}" in lost["reason_message"]
        assert done.cluster and done.cluster["session_id"] != (lost["cluster"] or {}).get("session_id")
        wait_gone([done.run_id], time.monotonic())
        fault_row(row(system, f"driver SIGKILLed while {phase.value.lower()}; retried", [done], uploaded, outlived))


def test_a_rebooting_bastion_kills_every_driver_and_every_job_is_taken_over(
    tmp_path: Path, fault_row: Callable[[FaultRow], FaultRow]
) -> None:
    with system_for(tmp_path, clusters=2) as system:
        # Given two jobs running at once
        uploaded, jobs = two_running_jobs(system)
        # When every driver is SIGKILLed at once (the bastion reboots)
        drivers = [driver_process(j.job_id) for j in jobs]
        for driver in drivers:
            driver.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        # Then both clusters are torn down by the watchdog, and both retries succeed
        sweep_until(system, lambda js: all(j.attempt == 2 or j.is_terminal for j in js))
        outlived = wait_gone([j.run_id for j in jobs], killed)
        done = sweep_until(system, lambda js: len(js) == 2 and all(j.is_terminal for j in js))
        assert [(j.status, j.attempt) for j in done] == [(JobStatus.SUCCEEDED, 2)] * 2
        wait_gone([j.run_id for j in done], time.monotonic())
        fault_row(row(system, "bastion reboot: every driver SIGKILLed at once (2 jobs); retried", done, uploaded,
                      outlived))  # fmt: skip


def two_running_jobs(system: LocalSystem) -> tuple[list[str], list[Job]]:
    """Two files dropped one after the other: two jobs, both RUNNING (inputs, jobs)."""
    uploaded = [upload(system, "a.csv")]
    first = wait_for(system, lambda j: j.status == JobStatus.RUNNING)
    uploaded.append(upload(system, "b.csv"))
    second = wait_for(system, lambda j: j.job_id != first.job_id and j.status == JobStatus.RUNNING)
    return uploaded, [first, second]


def wait_for(system: LocalSystem, ready: Callable[[Job], bool], timeout_s: float = TIMEOUT_S) -> Job:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for job in system.store.list_jobs():
            if ready(job):
                return job
        time.sleep(0.2)
    raise AssertionError(f"no job got there in {timeout_s}s: {[(j.job_id, j.status) for j in system.store.list_jobs()]}")


def test_stopping_serve_tears_down_every_cluster_also_of_a_dead_driver(
    tmp_path: Path, fault_row: Callable[[FaultRow], FaultRow]
) -> None:
    with system_for(tmp_path, clusters=2) as system:
        # Given two running jobs, one of whose drivers was SIGKILLed a moment ago
        uploaded, (first, second) = two_running_jobs(system)
        driver_process(first.job_id).send_signal(signal.SIGKILL)
        # When `raylauncher serve` stops (Ctrl-C or SIGTERM: it cancels every unfinished job and
        # sweeps while it waits)
        stopped = time.monotonic()
        assert stop_unfinished_jobs(system, build_watchdog(system.settings), timeout_s=120)
        # Then both jobs ended and both clusters are gone: the live driver cancelled its job, the
        # watchdog took over the dead driver's (a cancel was asked for: no retry)
        jobs = {j.job_id: j for j in system.store.list_jobs()}
        assert (jobs[second.job_id].status, jobs[second.job_id].reason_code) == (JobStatus.CANCELLED, "CANCEL_REQUESTED")
        assert (jobs[first.job_id].status, jobs[first.job_id].reason_code, jobs[first.job_id].attempt) == (
            JobStatus.FAILED, "DRIVER_LOST", 1)  # fmt: skip
        outlived = wait_gone([first.run_id, second.run_id], stopped)
        manifests = {j.job_id: inputs_of(system, j) for j in jobs.values()}
        lost, twice = input_accounting(uploaded, manifests, set())
        assert (lost, twice, len(leftover_processes())) == (0, 0, 0)
        fault_row(FaultRow("`serve` stopped with a live and a dead driver (2 jobs)", "local", "FAILED / CANCELLED",
                           "DRIVER_LOST / CANCEL_REQUESTED", 1, round(outlived, 1), 0, lost, twice))  # fmt: skip
