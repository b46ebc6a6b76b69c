"""Ray token authentication on local clusters, and the secrets-hygiene scan over a demo run.

Every cluster runs in token mode with its own fresh token (an SSM SecureString while it is
up, moto's SSM here); its Jobs API and dashboard refuse a caller without it (401) or with
another (403), and accept the driver's. No token may appear in any record, event, object, SSM
command or log file afterwards.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

from raylauncher.cluster_tokens import SsmClusterTokens, TokenNotFound, auth_headers, new_token, token_parameter
from raylauncher.local.demo import upload_sample_files, verify_job_output
from raylauncher.local.runtime import LocalSystem, local_system
from raylauncher.local.secrets_scan import TokenWitness, scan_files, scan_moto
from raylauncher.model import Job, JobStatus
from tests.e2e.test_local_flow import all_terminal, project_with_job, run_until

#: Routes of the head's HTTP server: the Jobs API, the dashboard's own API, the state API.
PROTECTED = ("/api/jobs/", "/api/version", "/api/v0/nodes", "/nodes?view=summary")


def status_of(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:  # noqa: S310
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


def wait_running(system: LocalSystem, timeout_s: float = 120) -> Job:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = system.store.list_jobs()
        if jobs and jobs[0].status == JobStatus.RUNNING and (jobs[0].cluster or {}).get("dashboard_url"):
            return jobs[0]
        time.sleep(0.3)
    raise AssertionError(f"no job RUNNING in time: {[(j.job_id, j.status) for j in system.store.list_jobs()]}")


def test_a_running_cluster_refuses_callers_without_its_token_and_forgets_it_at_teardown(tmp_path: Path) -> None:
    # The job runs until the test lets it end (it takes the flag file away), not for a fixed time.
    flag = tmp_path / "let-the-job-end"
    project, pipelines = project_with_job(
        tmp_path, f"import os, time\nprint('probe: up', flush=True)\nwhile not os.path.exists({str(flag)!r}):\n"
                  f"    time.sleep(0.2)\nos.remove({str(flag)!r})\n")  # fmt: skip
    with local_system(tmp_path / "state", pipelines, project) as system:
        # Given a job running on its own local cluster
        system.s3.put_object(Bucket=system.settings.bucket, Key="incoming/probe/x.csv", Body=b"a\n1\n")
        job = wait_running(system)
        url = job.cluster["dashboard_url"]  # type: ignore[index]
        tokens = SsmClusterTokens(_ssm(system))
        # When the cluster's HTTP routes are called without the token, with another, and with its own
        token = tokens.read(job)
        outcomes = {path: (status_of(url + path, {}), status_of(url + path, auth_headers(new_token())),
                           status_of(url + path, auth_headers(token))) for path in PROTECTED}  # fmt: skip
        # Then it answers 401, 403 and 200 on every one of them
        assert outcomes == dict.fromkeys(PROTECTED, (401, 403, 200))
        # And the token is stored only as a SecureString, and is not in the job's record
        meta = _ssm(system).describe_parameters(
            ParameterFilters=[{"Key": "Name", "Values": [token_parameter(job.job_id, job.run_id)]}]
        )["Parameters"]
        assert [m["Type"] for m in meta] == ["SecureString"]
        assert token not in system.store.get(job.job_id).model_dump_json()
        # When the job ends, Then its cluster is gone and its token deleted with it
        flag.touch()
        (done,) = run_until(system, all_terminal)
        assert done.status == JobStatus.SUCCEEDED, (done.reason_code, done.reason_message)
        try:
            tokens.read(done)
            raise AssertionError("the token outlived its cluster")
        except TokenNotFound:
            pass
        # And a second job's cluster has a token of its own
        system.s3.put_object(Bucket=system.settings.bucket, Key="incoming/probe/y.csv", Body=b"a\n2\n")
        second = wait_running(system)
        assert second.job_id != job.job_id and tokens.read(second) != token
        flag.touch()
        run_until(system, lambda jobs: len(jobs) == 2 and all_terminal(jobs))


def _ssm(system: LocalSystem):  # noqa: ANN202
    from raylauncher import aws

    return aws.client("ssm", system.settings)


def test_no_token_of_a_demo_run_appears_in_records_events_objects_commands_or_logs(tmp_path: Path) -> None:
    witness = TokenWitness.install()
    before = set(witness.tokens)
    state = tmp_path / "state"
    with local_system(state, event_bus="raylauncher-events") as system:
        # Given the demo's run: CSV files dropped under the prefix, the job run on its own cluster
        upload_sample_files(system, files=2, rows_per_file=2_000)
        (job,) = run_until(system, all_terminal)
        assert job.status == JobStatus.SUCCEEDED, (job.reason_code, job.reason_message)
        assert verify_job_output(system, job) == []
        # When everything the local AWS holds and every file of the run is scanned for its token
        tokens = witness.tokens - before
        assert len(tokens) == 1, "the witness saw the cluster's token being stored"
        moto_findings, items = scan_moto(system.settings.endpoint_url or "", tokens)
        file_findings, files = scan_files(state, tokens)
        # Then there was plenty to read: the job record, its events, its logs and the head's session
        # logs in S3 (the tarball's members each read), the driver's and `ray start`'s log files ...
        assert items > 50 and files >= 2
        assert job.session_logs_key and job.session_logs_key in _keys(system)
        assert {p.name.split(".", 1)[1] for p in state.rglob("*.log")} == {"log", "ray-start.log"}
        # ... and the token is nowhere
        assert moto_findings == [] and file_findings == []
        # And the scan does find a token where one is: planted in a log object and a file
        (token,) = tokens
        system.s3.put_object(Bucket=system.settings.bucket, Key="planted/leak.log", Body=f"x {token} y".encode())
        (state / "planted.log").write_text(f"Authorization: Bearer {token}\n")
        planted_moto, _ = scan_moto(system.settings.endpoint_url or "", tokens)
        planted_files, _ = scan_files(state, tokens)
        assert [f.where.split("?")[0] for f in planted_moto] == [f"s3://{system.settings.bucket}/planted/leak.log"]
        assert [Path(f.where).name for f in planted_files] == ["planted.log"]
        for version in system.s3.list_object_versions(Bucket=system.settings.bucket, Prefix="planted/").get(
            "Versions", []
        ):
            system.s3.delete_object(Bucket=system.settings.bucket, Key="planted/leak.log", VersionId=version["VersionId"])
        (state / "planted.log").unlink()


def _keys(system: LocalSystem) -> list[str]:
    pages = system.s3.get_paginator("list_objects_v2").paginate(Bucket=system.settings.bucket)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]
