"""The reads the operator CLI uses, through the deployed API handler on moto server: a job's log
from an offset, the pipelines, a job's inputs, cluster and cost, listing by time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from lambdas.api import handler as api_handler
from raylauncher import aws
from raylauncher.api import MAX_LOG_CHUNK_BYTES
from raylauncher.config import ENV_PREFIX, load_pipelines
from raylauncher.model import Job, JobStatus, logs_key_of
from tests.integration.test_api import PIPELINE, VALID, assert_error, job_at


def put_log(api, job: Job, text: bytes) -> None:
    aws.client("s3", api.settings).put_object(Bucket=api.settings.bucket, Key=logs_key_of(job), Body=text)


def read_log(api, job_id: str, offset: int | str) -> dict:
    response = api.call("GET", f"/jobs/{job_id}/logs", query={"offset": str(offset)})
    assert response.status == 200, response.body
    return response.body


# ------------------------------------------------------------------ GET /jobs/{job_id}/logs


def test_a_running_jobs_log_is_followed_from_its_offset_until_the_job_ends(api) -> None:
    # Given a running job whose driver has not kept its log yet
    job = job_at(api, JobStatus.RUNNING)
    location = f"s3://{api.settings.bucket}/jobs/{job.job_id}/logs/ray-job.log"
    # When the log is read, Then it is empty, not complete, and says where it will be
    assert read_log(api, job.job_id, 0) == {"content": "", "next_offset": 0, "complete": False, "log_location": location}
    # Given the driver kept the first lines
    put_log(api, job, b"starting\n")
    first = read_log(api, job.job_id, 0)
    assert (first["content"], first["next_offset"], first["complete"]) == ("starting\n", 9, False)
    # When nothing new was written, Then reading from next_offset answers nothing new
    assert read_log(api, job.job_id, 9) == {**first, "content": ""}
    # Given the driver rewrote the whole log, longer, and the job ended
    put_log(api, job, b"starting\nrows: 3 \xe2\x82\xac\ndone\n")
    for step in (JobStatus.TEARING_DOWN, JobStatus.SUCCEEDED):
        job = api.store.transition(job, step)
    # When read from the previous next_offset, Then only the new text comes, and the log is complete
    last = read_log(api, job.job_id, 9)
    assert (last["content"], last["next_offset"], last["complete"]) == ("rows: 3 €\ndone\n", 26, True)


def test_a_big_log_comes_in_chunks_that_never_split_a_character(api) -> None:
    # Given a finished job with a log of 1 MiB + a bit, a 3-byte character straddling the 1 MiB mark
    job = job_at(api, JobStatus.SUCCEEDED)
    text = ("a" * (MAX_LOG_CHUNK_BYTES - 1) + "€" + "tail\n").encode()
    put_log(api, job, text)
    # When it is read from 0, Then the first chunk stops before the character, and is not complete
    first = read_log(api, job.job_id, 0)
    assert (first["next_offset"], first["complete"]) == (MAX_LOG_CHUNK_BYTES - 1, False)
    # And the next chunk starts with the whole character and ends the log
    rest = read_log(api, job.job_id, first["next_offset"])
    assert (rest["content"], rest["next_offset"], rest["complete"]) == ("€tail\n", len(text), True)


def test_a_retried_jobs_log_is_its_current_attempts(api) -> None:
    # Given a job on its second attempt, with attempt 1's log kept
    job = job_at(api, JobStatus.RUNNING)
    put_log(api, job, b"attempt one\n")
    job = api.store.mark(job, attempt=2)
    # When its log is read, Then it is attempt 2's (not there yet), and not complete
    body = read_log(api, job.job_id, 0)
    assert body["log_location"].endswith(f"jobs/{job.job_id}/logs/ray-job-a2.log")
    assert (body["content"], body["complete"]) == ("", False)


def test_a_finished_job_without_a_log_is_complete_and_empty(api) -> None:
    job = job_at(api, JobStatus.FAILED)  # failed before any cluster: no log will ever come
    body = read_log(api, job.job_id, 0)
    assert (body["content"], body["next_offset"], body["complete"]) == ("", 0, True)


@pytest.mark.parametrize("offset", ["-1", "x", "1.5"])
def test_a_bad_offset_is_422_naming_offset(api, offset: str) -> None:
    job = job_at(api, JobStatus.RUNNING)
    response = api.call("GET", f"/jobs/{job.job_id}/logs", query={"offset": offset})
    assert_error(response, 422, "VALIDATION_ERROR", "offset")


def test_an_offset_past_the_logs_end_is_422_naming_offset(api) -> None:
    job = job_at(api, JobStatus.RUNNING)
    put_log(api, job, b"12345\n")
    assert read_log(api, job.job_id, 6)["content"] == ""  # at the end: nothing new, no error
    assert_error(api.call("GET", f"/jobs/{job.job_id}/logs", query={"offset": "7"}), 422, "VALIDATION_ERROR", "offset")


def test_logs_of_an_unknown_job_are_404(api) -> None:
    assert_error(api.call("GET", "/jobs/sales-summary-20260101-000000-deadbeef/logs"), 404, "JOB_NOT_FOUND", "job_id")


# ------------------------------------------------------------------ GET /pipelines


def test_pipelines_are_the_deployed_config(api) -> None:
    config = load_pipelines(api.settings.pipelines_file)
    # When the pipelines are read, Then each is its config, as JSON
    response = api.call("GET", "/pipelines")
    assert response.status == 200
    assert response.body["pipelines"] == [p.model_dump(mode="json") for p in sorted(config.pipelines, key=lambda p: p.name)]
    # And the release the API runs, the one new jobs are stamped with
    assert response.body["release"] == api.settings.release is not None
    # And one pipeline alone is the same document
    one = api.call("GET", f"/pipelines/{PIPELINE}")
    assert one.status == 200 and one.body == config.get(PIPELINE).model_dump(mode="json")


def test_an_unknown_pipeline_is_404_and_a_malformed_name_422(api) -> None:
    response = api.call("GET", "/pipelines/no-such-pipeline")
    assert_error(response, 404, "PIPELINE_NOT_FOUND", "name")
    assert PIPELINE in response.error["message"]  # the message lists what exists
    assert_error(api.call("GET", "/pipelines/Bad_Name"), 422, "VALIDATION_ERROR", "name")


# ------------------------------------------------------------------ GET /jobs/{job_id}: inputs, cluster, cost


def test_a_submitted_job_shows_its_inputs_from_the_manifest(seeded_api) -> None:
    # Given a job submitted over six objects
    s3 = aws.client("s3", seeded_api.settings)
    for i in range(5):
        s3.put_object(Bucket=seeded_api.settings.bucket, Key=f"incoming/sales/2026/part-{i}.csv", Body=b"order_id\n1\n")
    job_id = seeded_api.call("POST", "/jobs", VALID).body["job_id"]
    # When it is read, Then its inputs are the manifest's count and first five keys
    inputs = seeded_api.call("GET", f"/jobs/{job_id}").body["inputs"]
    assert inputs["count"] == 6 and len(inputs["first"]) == 5
    assert all(k.startswith("incoming/sales/2026/") for k in inputs["first"])
    # Given the manifest is gone, When the job is read, Then inputs is null and the rest is there
    manifest = seeded_api.store.get(job_id).manifest_key
    s3.delete_object(Bucket=seeded_api.settings.bucket, Key=manifest)
    response = seeded_api.call("GET", f"/jobs/{job_id}")
    assert response.status == 200 and response.body["inputs"] is None and response.body["job_id"] == job_id


@pytest.fixture
def priced_api(api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`api` with the walkthrough's m6i prices in its pipelines.yaml."""
    doc = yaml.safe_load(Path(api.settings.pipelines_file).read_text())
    for pipeline in doc["pipelines"]:
        pipeline.setdefault("cluster", {}).update(head_usd_per_hour=0.192, worker_usd_per_hour=0.384)
    priced = tmp_path / "pipelines.yaml"
    priced.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv(ENV_PREFIX + "PIPELINES_FILE", str(priced))
    api_handler.services.cache_clear()
    return api


def test_a_job_shows_its_cluster_and_cost_estimate(priced_api) -> None:
    # Given a job that ran one hour on an EC2 cluster of a head and 4 workers
    api = priced_api
    start = datetime.now(UTC) - timedelta(hours=2)
    job = job_at(api, JobStatus.RUNNING, created=start)
    details = {"backend": "ec2", "cluster_name": f"rl-{job.job_id}", "head_ip": "10.0.1.7", "nodes": 5,
               "config_path": "/x.yaml"}  # fmt: skip
    job = api.store.mark(job, cluster=details, session_logs_key=f"jobs/{job.job_id}/logs/ray-session.tar.gz")
    hour_ago = (start + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    job = api.store.mark(job, phase_times={**job.phase_times, "PROVISIONING": start.isoformat().replace("+00:00", "Z"),
                                           "SUCCEEDED": hour_ago})  # fmt: skip
    # When it is read
    view = api.call("GET", f"/jobs/{job.job_id}").body
    # Then its cluster is the recorded one and its cost is 1 h x (head + 4 x worker)
    assert view["cluster"] == {"backend": "ec2", "name": f"rl-{job.job_id}", "head_ip": "10.0.1.7", "nodes": 5,
                               "dashboard_url": None}  # (EC2: through `raylauncher dashboard`)
    assert view["cost"]["cluster_seconds"] == pytest.approx(3600, abs=1)
    assert view["cost"]["estimate_usd"] == pytest.approx(0.192 + 4 * 0.384, abs=0.001)
    assert view["session_logs_location"] == f"s3://{api.settings.bucket}/jobs/{job.job_id}/logs/ray-session.tar.gz"


def test_without_prices_there_is_no_estimate(api) -> None:
    job = job_at(api, JobStatus.SUCCEEDED)
    view = api.call("GET", f"/jobs/{job.job_id}").body
    assert view["cost"]["estimate_usd"] is None and view["cluster"] is None and view["session_logs_location"] is None


# ------------------------------------------------------------------ GET /jobs?since=


def test_since_keeps_the_jobs_created_at_or_after_it(api) -> None:
    # Given jobs created 3 days, 3 hours and 10 minutes ago
    now = datetime.now(UTC)
    made = {age: job_at(api, JobStatus.QUEUED, created=now - age) for age in
            (timedelta(days=3), timedelta(hours=3), timedelta(minutes=10))}  # fmt: skip

    def listed(since: str) -> list[str]:
        response = api.call("GET", "/jobs", query={"since": since})
        assert response.status == 200, response.body
        return [j["job_id"] for j in response.body["jobs"]]

    # When listed since a duration or a timestamp, Then only the jobs created since then, newest first
    assert listed("1h") == [made[timedelta(minutes=10)].job_id]
    assert listed("30m") == [made[timedelta(minutes=10)].job_id]
    assert listed("2d") == [made[timedelta(minutes=10)].job_id, made[timedelta(hours=3)].job_id]
    stamp = (now - timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M:%S")  # naive: UTC
    assert listed(stamp) == [made[timedelta(minutes=10)].job_id, made[timedelta(hours=3)].job_id]
    assert len(listed("2000-01-01T00:00:00+00:00")) == 3


@pytest.mark.parametrize("since", ["yesterday", "1w", "-1h", "0m", "2026-13-01", "1h; DROP", "9" * 80])
def test_a_bad_since_is_422_naming_since(api, since: str) -> None:
    assert_error(api.call("GET", "/jobs", query={"since": since}), 422, "VALIDATION_ERROR", "since")
