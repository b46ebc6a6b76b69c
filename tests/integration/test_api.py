"""The HTTP API through the deployed Lambda handler (REST API proxy events), on moto server."""

import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest

from lambdas.api import handler as api_handler
from raylauncher import aws
from raylauncher.config import load_pipelines
from raylauncher.local.http_api import LocalApiServer
from raylauncher.model import Job, JobStatus, ReasonCode
from tests.conftest import launcher_calls

PIPELINE = "sales-summary"
VALID = {"pipeline": PIPELINE, "params": {"input_prefix": "incoming/sales/2026/"}}


def assert_error(response, status: int, code: str, field: str | None) -> None:
    assert response.status == status, response.body
    assert set(response.body) == {"error"} and set(response.error) == {"code", "message", "field"}
    assert (response.error["code"], response.error["field"]) == (code, field), response.error
    assert response.error["message"] and "Traceback" not in response.error["message"]


def job_at(api, status: JobStatus, pipeline: str = PIPELINE, created: datetime | None = None) -> Job:
    """A job recorded directly in the store and walked to `status` (no driver involved)."""
    store = api.store
    job = store.create(Job.new(pipeline, "api", created))
    path = {
        JobStatus.QUEUED: [],
        JobStatus.LAUNCHING: [JobStatus.LAUNCHING],
        JobStatus.RUNNING: [JobStatus.LAUNCHING, JobStatus.PROVISIONING, JobStatus.SUBMITTED, JobStatus.RUNNING],
        JobStatus.SUCCEEDED: [JobStatus.LAUNCHING, JobStatus.PROVISIONING, JobStatus.SUBMITTED, JobStatus.RUNNING,
                              JobStatus.TEARING_DOWN, JobStatus.SUCCEEDED],
        JobStatus.FAILED: [JobStatus.FAILED],
    }[status]  # fmt: skip
    for step in path:
        job = store.transition(job, step)
    return job


# ------------------------------------------------------------------ POST /jobs


def test_post_jobs_starts_a_job_over_the_objects_under_the_prefix(api) -> None:
    # Given two CSVs under the prefix the request names, and one elsewhere
    s3 = aws.client("s3", api.settings)
    for key in ("incoming/sales/2026/a.csv", "incoming/sales/2026/b c.csv", "incoming/sales/2025/old.csv"):
        s3.put_object(Bucket=api.settings.bucket, Key=key, Body=b"order_id\n1\n")
    # When a job is submitted
    response = api.call("POST", "/jobs", VALID)
    # Then it is accepted (202), recorded with trigger "api", its params and the deployment's release, and launched
    assert response.status == 202
    view = response.body
    assert (view["pipeline"], view["trigger"], view["status"]) == (PIPELINE, "api", "LAUNCHING")
    assert view["release"] == api.settings.release is not None
    assert view["params"] == VALID["params"] and view["object_count"] == 2
    assert response.headers["Location"] == f"/jobs/{view['job_id']}"
    bucket = api.settings.bucket
    assert view["manifest_location"] == f"s3://{bucket}/jobs/{view['job_id']}/manifest.json"
    assert view["output_location"] == f"s3://{bucket}/outputs/sales-summary/{view['job_id']}/"
    assert [p["status"] for p in view["phase_times"]] == ["QUEUED", "LAUNCHING"]
    assert [j.job_id for j in api.store.list_jobs()] == [view["job_id"]]
    assert launcher_calls(api.settings) == [f"driver start {view['job_id']}"]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=f"jobs/{view['job_id']}/manifest.json")["Body"].read())
    assert sorted(o["key"] for o in manifest["objects"]) == ["incoming/sales/2026/a.csv", "incoming/sales/2026/b c.csv"]


def test_a_prefix_with_no_input_is_refused_before_anything_starts(api) -> None:
    # Given objects only elsewhere, and one under the prefix that the trigger's suffix excludes
    s3 = aws.client("s3", api.settings)
    for key in ("incoming/sales/2025/old.csv", "incoming/sales/2026/readme.txt"):
        s3.put_object(Bucket=api.settings.bucket, Key=key, Body=b"x")
    # When a job is submitted over incoming/sales/2026/
    response = api.call("POST", "/jobs", VALID)
    # Then it is refused naming the param: no job, no manifest, no driver, no cluster
    assert response.status == 422
    assert (response.error["code"], response.error["field"]) == ("INVALID_PARAMS", "params.input_prefix")
    assert "no input objects ending in '.csv' under 'incoming/sales/2026/'" in response.error["message"]
    assert api.store.list_jobs() == [] and launcher_calls(api.settings) == []
    listed = s3.list_objects_v2(Bucket=api.settings.bucket, Prefix="jobs/")
    assert listed.get("KeyCount", 0) == 0


def test_the_same_idempotency_key_twice_makes_one_job(seeded_api) -> None:
    # Given a job submitted with an Idempotency-Key
    first = seeded_api.call("POST", "/jobs", VALID, headers={"Idempotency-Key": "nightly-2026-01-01"})
    assert first.status == 202 and "Idempotent-Replayed" not in first.headers
    # When the same request is sent again (a client retry; header name in another case)
    again = seeded_api.call("POST", "/jobs", VALID, headers={"idempotency-key": "nightly-2026-01-01"})
    # Then it answers 200 with the same job, marked as a replay, and no second job exists
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.body["job_id"] == first.body["job_id"]
    assert len(seeded_api.store.list_jobs()) == 1
    assert len(launcher_calls(seeded_api.settings)) == 1


def test_the_same_key_with_another_body_is_a_conflict(seeded_api) -> None:
    # Given a key already used
    first = seeded_api.call("POST", "/jobs", VALID, headers={"Idempotency-Key": "k-1"})
    assert first.status == 202
    # When it comes back with a different body
    other = {"pipeline": PIPELINE, "params": {"input_prefix": "incoming/sales/2025/"}}
    response = seeded_api.call("POST", "/jobs", other, headers={"Idempotency-Key": "k-1"})
    # Then 409 names the header, and still only one job exists
    assert_error(response, 409, "IDEMPOTENCY_KEY_REUSED", "Idempotency-Key")
    assert len(seeded_api.store.list_jobs()) == 1


def test_a_refused_request_does_not_use_up_its_key(seeded_api) -> None:
    # Given a request refused for its params, with a key
    refused = seeded_api.call("POST", "/jobs", {"pipeline": PIPELINE, "params": {"colour": "red"}}, headers={"Idempotency-Key": "k-2"})
    assert_error(refused, 422, "INVALID_PARAMS", "params.colour")
    # When the corrected request uses the same key, Then it starts a job
    assert seeded_api.call("POST", "/jobs", VALID, headers={"Idempotency-Key": "k-2"}).status == 202
    assert len(seeded_api.store.list_jobs()) == 1


def test_without_a_key_every_request_is_a_new_job(seeded_api) -> None:
    ids = {seeded_api.call("POST", "/jobs", VALID).body["job_id"] for _ in range(2)}
    assert len(ids) == 2 and len(seeded_api.store.list_jobs()) == 2


@pytest.mark.parametrize(
    ("body", "headers", "status", "code", "field"),
    [
        ({"pipeline": "no-such-pipeline"}, {}, 422, "UNKNOWN_PIPELINE", "pipeline"),
        ({"pipeline": "Sales Summary!"}, {}, 422, "VALIDATION_ERROR", "pipeline"),
        ({"params": {}}, {}, 422, "VALIDATION_ERROR", "pipeline"),
        ({"pipeline": PIPELINE, "params": {"input_prefix": 7}}, {}, 422, "INVALID_PARAMS", "params.input_prefix"),
        ({"pipeline": PIPELINE, "params": {"input_prefix": "outputs/x/"}}, {}, 422, "INVALID_PARAMS", "params.input_prefix"),
        ({"pipeline": PIPELINE, "params": {"colour": "red"}}, {}, 422, "INVALID_PARAMS", "params.colour"),
        ({"pipeline": PIPELINE, "params": []}, {}, 422, "VALIDATION_ERROR", "params"),
        ({"pipeline": PIPELINE, "priority": 1}, {}, 422, "VALIDATION_ERROR", "priority"),
        ('{"pipeline": "sales-summary",', {}, 400, "MALFORMED_JSON", "body"),
        ('{"pipeline": "sales-summary", "params": {"n": NaN}}', {}, 400, "MALFORMED_JSON", "body"),
        ("[" * 100_000, {}, 400, "MALFORMED_JSON", "body"),
        ('{"pipeline": "sales-summary", "params": {"input_prefix": "incoming/sales/\\udc80"}}', {}, 400,
         "MALFORMED_JSON", "body"),  # a lone surrogate: valid JSON escape, not valid Unicode text
        ("[1, 2]", {}, 422, "VALIDATION_ERROR", "body"),
        (None, {}, 422, "VALIDATION_ERROR", "body"),
        (json.dumps(VALID), {"Content-Type": "text/plain"}, 415, "UNSUPPORTED_MEDIA_TYPE", "body"),
        ("x", {"Content-Type": "multipart/form-data"}, 400, "MALFORMED_REQUEST", "body"),
        (VALID, {"Idempotency-Key": "has spaces"}, 422, "VALIDATION_ERROR", "Idempotency-Key"),
        (VALID, {"Idempotency-Key": "k" * 129}, 422, "VALIDATION_ERROR", "Idempotency-Key"),
    ],
)
def test_bad_submissions_name_the_field_and_start_nothing(api, body, headers, status, code, field) -> None:
    response = api.call("POST", "/jobs", body, headers=headers)
    assert_error(response, status, code, field)
    assert api.store.list_jobs() == [] and launcher_calls(api.settings) == []


# ------------------------------------------------------------------ GET /jobs/{job_id}


def test_get_job_shows_timeline_reason_and_locations(api) -> None:
    # Given a job that ran and failed, with its Ray log kept
    job = job_at(api, JobStatus.RUNNING)
    logs_key = f"jobs/{job.job_id}/logs/ray-job.log"
    job = api.store.transition(
        job, JobStatus.TEARING_DOWN, pending_outcome=JobStatus.FAILED, reason_code=ReasonCode.RAY_JOB_FAILED,
        reason_message="ZeroDivisionError in main.py", logs_key=logs_key, output_prefix=f"outputs/sales-summary/{job.job_id}/",
    )  # fmt: skip
    api.store.transition(job, JobStatus.FAILED)
    # When it is read
    response = api.call("GET", f"/jobs/{job.job_id}")
    # Then the record comes with its phases in order, its reason and where things are
    assert response.status == 200
    view = response.body
    assert [p["status"] for p in view["phase_times"]] == [
        "QUEUED", "LAUNCHING", "PROVISIONING", "SUBMITTED", "RUNNING", "TEARING_DOWN", "FAILED",
    ]  # fmt: skip
    assert [p["at"] for p in view["phase_times"]] == sorted(p["at"] for p in view["phase_times"])
    assert (view["reason_code"], view["reason_message"]) == ("RAY_JOB_FAILED", "ZeroDivisionError in main.py")
    bucket = api.settings.bucket
    assert view["log_location"] == f"s3://{bucket}/{logs_key}"
    assert view["output_location"] == f"s3://{bucket}/outputs/sales-summary/{job.job_id}/"
    assert view["manifest_location"] is None  # recorded without one, directly in the store


@pytest.mark.parametrize(
    ("path", "status", "code", "field"),
    [
        ("/jobs/sales-summary-20260101-000000-deadbeef", 404, "JOB_NOT_FOUND", "job_id"),
        ("/jobs/NOT_A_JOB", 422, "VALIDATION_ERROR", "job_id"),
        ("/jobs/..%2F..%2Fetc%2Fpasswd", 422, "VALIDATION_ERROR", "job_id"),
        ("/jobs/" + "a" * 200, 422, "VALIDATION_ERROR", "job_id"),
        ("/jobs/../../etc/passwd", 404, "ROUTE_NOT_FOUND", None),
        ("/jobs/a-b-c/metrics", 404, "ROUTE_NOT_FOUND", None),
        ("/jobs/a-b-c/logs", 404, "JOB_NOT_FOUND", "job_id"),
        ("/", 404, "ROUTE_NOT_FOUND", None),
    ],
)
def test_get_job_errors(api, path, status, code, field) -> None:
    assert_error(api.call("GET", path), status, code, field)


def test_an_unknown_method_is_a_route_not_found(api) -> None:
    assert_error(api.call("DELETE", "/jobs"), 404, "ROUTE_NOT_FOUND", None)


# ------------------------------------------------------------------ POST /jobs/{job_id}/cancel


def test_cancel_of_a_launching_job_ends_it_cancelled(seeded_api) -> None:
    # Given a job just submitted through the API (LAUNCHING: no cluster yet)
    job_id = seeded_api.call("POST", "/jobs", VALID).body["job_id"]
    # When it is cancelled
    response = seeded_api.call("POST", f"/jobs/{job_id}/cancel")
    # Then it is CANCELLED at once (200: terminal)
    assert response.status == 200
    assert (response.body["status"], response.body["reason_code"]) == ("CANCELLED", "CANCEL_REQUESTED")
    assert seeded_api.store.get(job_id).status == JobStatus.CANCELLED


def test_cancel_of_a_queued_job_ends_it_cancelled(api) -> None:
    job = job_at(api, JobStatus.QUEUED)
    response = api.call("POST", f"/jobs/{job.job_id}/cancel")
    assert (response.status, response.body["status"], response.body["cancel_requested"]) == (200, "CANCELLED", True)


def test_cancel_of_a_running_job_is_accepted_for_its_driver(api) -> None:
    job = job_at(api, JobStatus.RUNNING)
    response = api.call("POST", f"/jobs/{job.job_id}/cancel")
    # 202: the driver sees the flag, stops the Ray job and tears the cluster down
    assert (response.status, response.body["status"], response.body["cancel_requested"]) == (202, "RUNNING", True)


def test_cancel_of_a_finished_job_returns_it_unchanged(api) -> None:
    job = job_at(api, JobStatus.SUCCEEDED)
    response = api.call("POST", f"/jobs/{job.job_id}/cancel")
    assert (response.status, response.body["status"], response.body["cancel_requested"]) == (200, "SUCCEEDED", False)


def test_cancel_errors(api) -> None:
    assert_error(api.call("POST", "/jobs/sales-summary-20260101-000000-deadbeef/cancel"), 404, "JOB_NOT_FOUND", "job_id")
    assert_error(api.call("POST", "/jobs/Bad_Id/cancel"), 422, "VALIDATION_ERROR", "job_id")


# ------------------------------------------------------------------ GET /jobs


def test_list_jobs_filters_and_pages_newest_first(api) -> None:
    # Given seven jobs of two pipelines, created a minute apart, some failed
    start = datetime(2026, 1, 1, tzinfo=UTC)
    made = []
    for i in range(7):
        status = JobStatus.FAILED if i % 3 == 0 else JobStatus.QUEUED
        made.append(job_at(api, status, PIPELINE if i % 2 == 0 else "other-pipeline", start + timedelta(minutes=i)))
    newest_first = [j.job_id for j in reversed(made)]

    def all_pages(**query: str) -> list[str]:
        ids, token, pages = [], None, 0
        while True:
            response = api.call("GET", "/jobs", query={**query, "limit": "2", **({"next_token": token} if token else {})})
            assert response.status == 200, response.body
            ids += [j["job_id"] for j in response.body["jobs"]]
            token, pages = response.body["next_token"], pages + 1
            if token is None:
                return ids
            assert pages < 10

    # When they are listed two at a time, Then every job comes once, newest first
    assert all_pages() == newest_first
    # and the filters keep only what they name
    assert all_pages(pipeline=PIPELINE) == [j.job_id for j in reversed(made) if j.pipeline == PIPELINE]
    assert all_pages(status="FAILED") == [j.job_id for j in reversed(made) if j.status == JobStatus.FAILED]
    assert all_pages(pipeline="other-pipeline", status="QUEUED") == [
        j.job_id for j in reversed(made) if j.pipeline == "other-pipeline" and j.status == JobStatus.QUEUED
    ]
    # and a page is complete: the view of each job is GET /jobs/{id}'s, without the manifest's inputs
    first = api.call("GET", "/jobs", query={"limit": "1"}).body["jobs"][0]
    detail = api.call("GET", f"/jobs/{first['job_id']}").body
    assert first == {k: v for k, v in detail.items() if k not in ("inputs", "kept_cluster")}


@pytest.mark.parametrize(
    ("query", "status", "code", "field"),
    [
        ({"next_token": "not-a-token"}, 400, "INVALID_PAGE_TOKEN", "next_token"),
        ({"next_token": "eyJhIjogMX0"}, 400, "INVALID_PAGE_TOKEN", "next_token"),  # base64 JSON, not ours
        ({"limit": "0"}, 422, "VALIDATION_ERROR", "limit"),
        ({"limit": "101"}, 422, "VALIDATION_ERROR", "limit"),
        ({"limit": "ten"}, 422, "VALIDATION_ERROR", "limit"),
        ({"status": "DONE"}, 422, "VALIDATION_ERROR", "status"),
        ({"pipeline": "../etc"}, 422, "VALIDATION_ERROR", "pipeline"),
    ],
)
def test_list_jobs_errors_name_the_parameter(api, query, status, code, field) -> None:
    assert_error(api.call("GET", "/jobs", query=query), status, code, field)


# ------------------------------------------------------------------ outages, local server


def test_a_backend_outage_is_503_with_a_retry_hint(api) -> None:
    # Given the job table is gone (DynamoDB answers with an error)
    aws.client("dynamodb", api.settings).delete_table(TableName=api.settings.table)
    # When jobs are listed, Then 503 with Retry-After, in the error shape
    response = api.call("GET", "/jobs")
    assert_error(response, 503, "BACKEND_UNAVAILABLE", None)
    assert int(response.headers["Retry-After"]) > 0


def test_the_local_http_server_serves_the_same_handler(seeded_api) -> None:
    # Given the local API server on 127.0.0.1
    with LocalApiServer(api_handler.handler) as server:
        assert server.base_url.startswith("http://127.0.0.1:")
        # When a job is submitted over HTTP
        request = urllib.request.Request(
            f"{server.base_url}/jobs",
            data=json.dumps(VALID).encode(),
            headers={"Content-Type": "application/json", "Idempotency-Key": "over-http"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=30) as reply:
            status, headers, created = reply.status, reply.headers, json.loads(reply.read())
        # Then the handler's answer comes back as it is
        assert status == 202 and headers["Content-Type"] == "application/json"
        assert headers["Location"] == f"/jobs/{created['job_id']}"
        with urllib.request.urlopen(f"{server.base_url}/jobs/{created['job_id']}?unused=%C3%A9", timeout=30) as reply:
            assert json.loads(reply.read())["job_id"] == created["job_id"]
        # and errors keep their status and body
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"{server.base_url}/jobs/No%20Such", timeout=30)
        assert err.value.code == 422
        assert json.loads(err.value.read())["error"]["field"] == "job_id"
    assert [j.job_id for j in seeded_api.store.list_jobs()] == [created["job_id"]]



def test_only_matching_objects_count_and_a_refused_empty_prefix_keeps_its_key(api) -> None:
    # Given more non-matching keys under the prefix than a job may hold, a folder marker, and no CSV
    s3 = aws.client("s3", api.settings)
    cap = load_pipelines(api.settings.pipelines_file).get(PIPELINE).max_objects_per_job
    assert cap >= 2
    for i in range(3):
        s3.put_object(Bucket=api.settings.bucket, Key=f"incoming/sales/2026/_part{i}.txt", Body=b"x")
    s3.put_object(Bucket=api.settings.bucket, Key="incoming/sales/2026/folder.csv/", Body=b"")
    key = {"Idempotency-Key": "empty-then-filled"}
    # When a job is submitted with a key
    refused = api.call("POST", "/jobs", VALID, headers=key)
    # Then it is refused (422), and the key is not used up by the refusal
    assert (refused.status, refused.error["field"]) == (422, "params.input_prefix")
    # When a CSV arrives after the non-matching keys and the same request is retried
    s3.put_object(Bucket=api.settings.bucket, Key="incoming/sales/2026/z.csv", Body=b"order_id\n1\n")
    accepted = api.call("POST", "/jobs", VALID, headers=key)
    # Then the job runs over exactly that CSV
    assert accepted.status == 202 and accepted.body["object_count"] == 1
