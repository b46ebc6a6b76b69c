"""Warm clusters and debug holds end to end on one machine: moto server, the intake, detached
drivers, real local Ray clusters (raylauncher/warm.py)."""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from raylauncher.clusters.processes import leftover_processes, processes_of
from raylauncher.local.runtime import LocalSystem, local_system
from raylauncher.model import Job, JobStatus, ReasonCode, parse_iso
from raylauncher.warm import ClusterRecord, ClusterStatus
from raylauncher.wiring import build_watchdog
from tests.faults import FaultRow

TIMEOUT_S = 240
SLEEPY = "import time\ntime.sleep(3)\nprint('probe ok', flush=True)\n"


def warm_project(tmp_path: Path, script: str, extra: str) -> tuple[Path, Path]:
    project = tmp_path / "project"
    (project / "jobs" / "probe").mkdir(parents=True)
    (project / "jobs" / "probe" / "main.py").write_text(script)
    pipelines = project / "pipelines.yaml"
    pipelines.write_text(f"""
pipelines:
  - name: probe
    trigger: {{prefix: incoming/probe/}}
    entrypoint: {{script: jobs/probe/main.py}}
    cluster: {{local_num_cpus: 1}}
    batching_window_s: 1
    max_concurrent_clusters: 1
    retry: {{max_attempts: 1}}
    output_prefix: outputs/probe/
{extra}
""")
    return project, pipelines


def until(check: Callable[[], object], timeout_s: float = TIMEOUT_S, what: str = "") -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not in time: {what}")


def drop(system: LocalSystem, name: str) -> None:
    system.s3.put_object(Bucket=system.settings.bucket, Key=f"incoming/probe/{name}.csv", Body=b"a\n1\n")


def jobs_now(system: LocalSystem) -> list[Job]:
    return sorted(system.store.list_jobs(), key=lambda j: j.created_at)


def nth_job(system: LocalSystem, n: int, done: Callable[[Job], bool]) -> Job:
    def found() -> Job | None:
        jobs = jobs_now(system)
        return jobs[n] if len(jobs) > n and done(jobs[n]) else None

    return until(found, what=f"job {n}")  # type: ignore[return-value]


def live_cluster(system: LocalSystem, status: ClusterStatus) -> ClusterRecord:
    return until(lambda: system.store.clusters.live("probe", status), what=str(status))[0]  # type: ignore[index]


def to_running_s(job: Job) -> float:
    return (parse_iso(job.phase_times["RUNNING"]) - parse_iso(job.created_at)).total_seconds()


def cluster_gone(record: ClusterRecord) -> bool:
    return processes_of(int(record.details["session_id"]), record.origin_run_id) == [] and not leftover_processes()


def holder_process(job_id: str) -> psutil.Process:
    for proc in psutil.process_iter(["cmdline"]):
        if (proc.info["cmdline"] or [])[-3:] == ["driver", "run", job_id]:
            return proc
    raise AssertionError(f"no driver process for {job_id}")


def gcs_servers(record: ClusterRecord) -> set[int]:
    """The pids of the cluster's GCS server: one per `ray start --head`."""
    found = set()
    for proc in processes_of(int(record.details["session_id"])):
        with contextlib.suppress(psutil.Error):  # gone meanwhile
            if proc.name() == "gcs_server":
                found.add(proc.pid)
    return found


def test_two_jobs_within_the_window_share_one_cluster_a_later_one_gets_a_new_one_torn_down_when_the_system_stops(tmp_path: Path) -> None:
    project, pipelines = warm_project(tmp_path, SLEEPY, "    keep_warm_seconds: 10")
    with local_system(tmp_path / "state", pipelines, project) as system:
        # Given a pipeline keeping its cluster warm for 10 s and a first job that ran
        drop(system, "one")
        first = nth_job(system, 0, lambda j: j.is_terminal)
        record = live_cluster(system, ClusterStatus.WARM)
        assert (first.status, first.kept, first.warm) == (JobStatus.SUCCEEDED, "warm", False)
        head = gcs_servers(record)
        assert len(head) == 1
        # When a second job arrives within the window
        drop(system, "two")
        second = nth_job(system, 1, lambda j: j.is_terminal)
        # Then it ran on the same cluster, with its own Ray submission id: the same record, Ray
        # session and dashboard, and no second `ray start` (the same GCS server, no other one)
        assert (second.status, second.warm, second.cluster_key) == (JobStatus.SUCCEEDED, True, record.key)
        assert second.cluster and second.cluster["session_id"] == record.details["session_id"]
        assert second.cluster.get("dashboard_url") == (first.cluster or {}).get("dashboard_url")
        assert gcs_servers(record) == head
        assert [r.key for r in system.store.clusters.live("probe")] == [record.key]
        # (the times are reported, not asserted: bench/warm_clusters.py records them)
        print(f"\nlocal: job created -> RUNNING cold {to_running_s(first):.2f} s, warm {to_running_s(second):.2f} s")
        # And after 10 s idle the cluster is torn down (its processes gone), its slot given back
        gone = until(lambda: (r := system.store.clusters.get(record.key)).status == ClusterStatus.TORN_DOWN and r,
                     what="torn down")  # fmt: skip
        assert gone.jobs_served == [first.job_id, second.job_id] and gone.warm_seconds >= 10  # type: ignore[attr-defined]
        until(lambda: cluster_gone(record), 30, "processes gone")
        # And a job after the window gets a new cluster
        drop(system, "three")
        third = nth_job(system, 2, lambda j: j.is_terminal)
        assert (third.status, third.warm) == (JobStatus.SUCCEEDED, False)
        assert third.cluster and third.cluster["session_id"] != record.details["session_id"]
        kept = live_cluster(system, ClusterStatus.WARM)
        holder = holder_process(third.job_id)
    # When the system stops while that cluster is warm (as `serve` does on Ctrl-C), Then the warm
    # cluster is torn down and its holder, no longer owning it, ends
    until(lambda: cluster_gone(kept), 30, "processes gone")
    holder.wait(timeout=30)


@pytest.mark.parametrize("kept", ["warm", "held"])
def test_the_holder_killed_while_warm_or_holding_has_its_cluster_torn_down_and_the_next_job_runs(
    tmp_path: Path, kept: str, fault_row: Callable[[FaultRow], FaultRow]
) -> None:
    script, extra = ((SLEEPY, "    keep_warm_seconds: 600") if kept == "warm"
                     else ("import sys\nsys.exit(1)\n", "    keep_failed_cluster_seconds: 600"))  # fmt: skip
    project, pipelines = warm_project(tmp_path, script, extra)
    with local_system(tmp_path / "state", pipelines, project) as system:
        # Given a first job whose cluster is kept (warm after a success, held after a failure)
        drop(system, "one")
        first = nth_job(system, 0, lambda j: j.is_terminal)
        expected = (JobStatus.SUCCEEDED, "warm") if kept == "warm" else (JobStatus.FAILED, "held")
        assert (first.status, first.kept) == expected, (first.reason_code, first.reason_message)
        record = live_cluster(system, ClusterStatus.WARM if kept == "warm" else ClusterStatus.HELD)
        # When the driver holding the kept cluster is killed
        holder_process(first.job_id).send_signal(signal.SIGKILL)
        killed = time.monotonic()
        lease_s = system.settings.driver_lease_s
        # Then a watchdog sweep after the lease tears the cluster down from its record
        watchdog = build_watchdog(system.settings)
        time.sleep(lease_s + 0.5)
        report = watchdog.sweep()
        assert report.clusters_torn_down == [record.key]
        assert system.store.clusters.get(record.key).status == ClusterStatus.TORN_DOWN
        until(lambda: cluster_gone(record), 30, "processes gone")
        outlived = time.monotonic() - killed
        assert outlived < lease_s + 30
        fault_row(FaultRow(f"holder SIGKILLed while {'warm' if kept == 'warm' else 'holding'}", "local",
                           "TORN_DOWN", "none", 1, round(outlived, 1), 0, 0, 0))  # fmt: skip
        if kept == "held":  # (the next job after a killed holder: the warm case and the stand-in show it)
            return
        # And the next job still runs (on a new cluster)
        drop(system, "two")
        second = nth_job(system, 1, lambda j: j.is_terminal)
        assert second.warm is False and second.status == (JobStatus.SUCCEEDED if kept == "warm" else JobStatus.FAILED)
        holder_process(second.job_id).send_signal(signal.SIGTERM)  # a signal ends a hold at once
        until(lambda: not system.store.clusters.live(), 60, "second cluster torn down")


def test_a_failed_jobs_cluster_is_held_then_torn_down_when_its_time_runs_out(tmp_path: Path) -> None:
    # (released by command: tests/e2e/test_warm_cli_local.py, `raylauncher jobs release`)
    hold_s = 8
    project, pipelines = warm_project(tmp_path, "import sys\nsys.exit(1)\n", f"    keep_failed_cluster_seconds: {hold_s}")
    with local_system(tmp_path / "state", pipelines, project) as system:
        drop(system, "one")
        failed = nth_job(system, 0, lambda j: j.is_terminal)
        record = live_cluster(system, ClusterStatus.HELD)
        assert (failed.status, failed.reason_code, failed.kept) == (JobStatus.FAILED, ReasonCode.RAY_JOB_FAILED, "held")
        assert not cluster_gone(record)  # still up, to look inside
        # When nobody releases it
        gone = until(lambda: (r := system.store.clusters.get(record.key)).status == ClusterStatus.TORN_DOWN and r,
                     60, "the hold's end")  # fmt: skip
        # Then its holder ended it once the hold ran out: not before, nor as late as a takeover
        assert hold_s - 1 <= gone.held_seconds < hold_s + system.settings.driver_lease_s, gone  # type: ignore[attr-defined]
        assert gone.held_seconds > 0  # type: ignore[attr-defined]
        until(lambda: cluster_gone(record), 30, "processes gone")
        assert (system.store.get(failed.job_id).kept_seconds or 0) > 0


@pytest.fixture(autouse=True)
def _no_cluster_left_behind() -> Iterator[None]:
    yield
    time.sleep(0.5)
    left = leftover_processes()
    for proc in left:
        proc.kill()
    assert left == [], "a test left a local Ray cluster running"
