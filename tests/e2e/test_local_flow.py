"""End to end on one machine: moto server, the intake handler, the detached driver, a real
local Ray cluster per job, the Ray Data job — and teardown, whatever happens."""

from __future__ import annotations

import io
import os
import signal
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from raylauncher.clusters.processes import leftover_processes, processes_of
from raylauncher.local.demo import upload_sample_files, verify_job_output
from raylauncher.local.runtime import LocalSystem, local_system, wait_for_jobs
from raylauncher.model import Job, JobStatus, ReasonCode

JOB_TIMEOUT_S = 240


def run_until(system: LocalSystem, done: Callable[[list[Job]], bool]) -> list[Job]:
    jobs = wait_for_jobs(system.store, done, JOB_TIMEOUT_S)
    assert done(jobs), f"jobs did not get there in time: {[(j.job_id, j.status, j.reason_code, j.reason_message) for j in jobs]}"
    return jobs


def all_terminal(jobs: list[Job]) -> bool:
    return bool(jobs) and all(j.is_terminal for j in jobs)


def assert_torn_down(job: Job) -> None:
    assert job.cluster and job.cluster["backend"] == "local"
    assert processes_of(int(job.cluster["session_id"]), job.job_id) == []
    assert not Path(job.cluster["temp_dir"]).exists()
    assert leftover_processes() == []


def log_text(system: LocalSystem, job: Job) -> str:
    assert job.logs_key == f"jobs/{job.job_id}/logs/ray-job.log"
    return system.objects.get_bytes(job.logs_key).decode()


def project_with_job(
    tmp_path: Path, script: str, run_timeout_s: int = 600, retry: str = "{max_attempts: 1}", clusters: int = 1
) -> tuple[Path, Path]:
    """A project dir holding one pipeline whose entrypoint is `script` (placed under jobs/)."""
    project = tmp_path / "project"
    (project / "jobs" / "probe").mkdir(parents=True)
    (project / "jobs" / "probe" / "main.py").write_text(script)
    pipelines = project / "pipelines.yaml"
    pipelines.write_text(
        f"""
pipelines:
  - name: probe
    trigger: {{prefix: incoming/probe/}}
    entrypoint: {{script: jobs/probe/main.py}}
    cluster: {{local_num_cpus: 1}}
    run_timeout_s: {run_timeout_s}
    batching_window_s: 1
    max_concurrent_clusters: {clusters}
    retry: {retry}
    output_prefix: outputs/probe/
"""
    )
    return project, pipelines


def test_demo_flow_succeeds_and_output_matches_pandas(tmp_path: Path) -> None:
    with local_system(tmp_path / "state") as system:
        # Given CSV files (with a space, a plus and unicode in their names) dropped under the prefix
        # within the pipeline's batching window
        keys = upload_sample_files(system, files=3, rows_per_file=5_000)
        # When the system runs them
        (job,) = run_until(system, all_terminal)
        # Then the job SUCCEEDED through every phase
        assert job.status == JobStatus.SUCCEEDED, (job.reason_code, job.reason_message)
        assert list(job.phase_times) == [
            "QUEUED", "LAUNCHING", "PROVISIONING", "SUBMITTED", "RUNNING", "TEARING_DOWN", "SUCCEEDED",
        ]  # fmt: skip
        assert (job.ray_status, job.reason_code, job.object_count) == ("SUCCEEDED", None, len(keys))
        # and its Parquet aggregates equal an independent pandas computation over the same input
        assert verify_job_output(system, job) == []
        assert job.summary and job.summary["rows_in"] == 15_000
        # and Ray's logs are kept in S3 under the job's prefix, and the cluster is gone
        assert log_text(system, job).strip()
        assert_torn_down(job)


def test_entrypoint_exit_1_fails_the_job_with_rays_message(tmp_path: Path) -> None:
    project, pipelines = project_with_job(
        tmp_path, "import sys\nprint('probe: refusing bad input', flush=True)\nsys.exit(1)\n"
    )
    with local_system(tmp_path / "state", pipelines, project) as system:
        # Given a pipeline whose entrypoint exits 1
        system.s3.put_object(Bucket=system.settings.bucket, Key="incoming/probe/x.csv", Body=b"a\n1\n")
        # When it runs
        (job,) = run_until(system, all_terminal)
        # Then the job FAILED with Ray's own error message as the reason
        assert (job.status, job.reason_code) == (JobStatus.FAILED, ReasonCode.RAY_JOB_FAILED)
        assert "exit code 1" in (job.reason_message or "")
        assert job.ray_status == "FAILED"
        # and the logs are in S3, and the cluster was torn down
        assert "probe: refusing bad input" in log_text(system, job)
        assert_torn_down(job)


def test_run_deadline_stops_the_job_and_tears_down(tmp_path: Path) -> None:
    project, pipelines = project_with_job(
        tmp_path, "import time\nprint('probe: sleeping', flush=True)\ntime.sleep(600)\n", run_timeout_s=10
    )
    with local_system(tmp_path / "state", pipelines, project) as system:
        # Given a job that would run for ten minutes under a 10 s run deadline
        system.s3.put_object(Bucket=system.settings.bucket, Key="incoming/probe/x.csv", Body=b"a\n1\n")
        # When the deadline passes
        (job,) = run_until(system, all_terminal)
        # Then it ends TIMED_OUT(RUN_TIMEOUT), Ray stopped it, logs kept, cluster gone
        assert (job.status, job.reason_code) == (JobStatus.TIMED_OUT, ReasonCode.RUN_TIMEOUT)
        assert job.ray_status in {"RUNNING", "STOPPED"}
        assert "probe: sleeping" in log_text(system, job)
        assert_torn_down(job)


def test_the_job_log_is_in_s3_while_running_and_session_logs_after_the_end(tmp_path: Path) -> None:
    project, pipelines = project_with_job(
        tmp_path, "import time\nfor i in range(20):\n    print(f'probe: line {i}', flush=True)\n    time.sleep(1)\n"
    )
    with local_system(tmp_path / "state", pipelines, project, log_flush_interval_s=2) as system:
        # Given a job that prints a line a second for 20 s, and the log copied to S3 every 2 s
        system.s3.put_object(Bucket=system.settings.bucket, Key="incoming/probe/x.csv", Body=b"a\n1\n")

        # When it runs, Then its log is in S3, with the early lines, while it is still RUNNING
        def early_log_while_running(jobs: list[Job]) -> bool:
            if not jobs or jobs[0].status != JobStatus.RUNNING or not jobs[0].logs_key:
                return False
            return "probe: line 1\n" in system.objects.get_bytes(jobs[0].logs_key).decode()

        (running,) = run_until(system, early_log_while_running)
        early = log_text(system, running)
        assert "probe: line 19" not in early and system.store.get(running.job_id).status == JobStatus.RUNNING
        # Then, after the end, the whole log, which the early copy is the beginning of
        (job,) = run_until(system, all_terminal)
        assert job.status == JobStatus.SUCCEEDED, (job.reason_code, job.reason_message)
        final = log_text(system, job)
        assert final.startswith(early) and "probe: line 19" in final
        # and the head's session logs (raylet, GCS) kept as a tar.gz before the cluster went down
        assert job.session_logs_key == f"jobs/{job.job_id}/logs/ray-session.tar.gz"
        with tarfile.open(fileobj=io.BytesIO(system.objects.get_bytes(job.session_logs_key)), mode="r:gz") as tar:
            names = [Path(m.name).name for m in tar.getmembers() if m.isfile()]
        assert any(n.startswith("raylet") for n in names) and any(n.startswith("gcs_server") for n in names), names
        assert_torn_down(job)


def driver_process(job_id: str) -> psutil.Process:
    for proc in psutil.process_iter(["cmdline"]):
        if (proc.info["cmdline"] or [])[-3:] == ["driver", "run", job_id]:
            return proc
    raise AssertionError(f"no driver process for {job_id}")


def test_sigterm_to_the_driver_still_tears_the_cluster_down(tmp_path: Path) -> None:
    project, pipelines = project_with_job(tmp_path, "import time\ntime.sleep(600)\n")
    with local_system(tmp_path / "state", pipelines, project) as system:
        # Given a running job
        system.s3.put_object(Bucket=system.settings.bucket, Key="incoming/probe/x.csv", Body=b"a\n1\n")
        (job,) = run_until(system, lambda jobs: bool(jobs) and jobs[0].status == JobStatus.RUNNING)
        # When its driver is sent SIGTERM (the bastion stops the unit, or a person kills it)
        driver = driver_process(job.job_id)
        assert driver.pid != os.getpid()
        driver.send_signal(signal.SIGTERM)
        # Then the job ends FAILED(DRIVER_TERMINATED), the logs are kept and the cluster is gone
        (job,) = run_until(system, all_terminal)
        assert (job.status, job.reason_code) == (JobStatus.FAILED, ReasonCode.DRIVER_TERMINATED)
        assert "SIGTERM" in (job.reason_message or "")
        assert job.logs_key is not None
        assert_torn_down(job)
        driver.wait(timeout=30)


@pytest.fixture(autouse=True)
def _no_cluster_left_behind() -> Iterator[None]:
    yield
    time.sleep(0.5)
    left = leftover_processes()
    for proc in left:  # so one failure does not spill into the next test
        proc.kill()
    assert left == [], "a test left a local Ray cluster running"
