"""`jobs list` on a big table answers from the job table's indexes: Query, never Scan."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from lambdas.api import handler as api_handler
from raylauncher import aws
from raylauncher.model import Job, JobStatus
from raylauncher.store import job_item

JOBS = 10_000


def count_dynamodb_calls(client: Any) -> Counter[str]:
    """Every DynamoDB operation `client` sends from now on, by name (botocore's event hooks)."""
    calls: Counter[str] = Counter()
    client.meta.events.register("before-call.dynamodb.*", lambda model, **_: calls.update([model.name]))
    return calls


def test_listing_ten_thousand_jobs_is_one_query_per_page(api) -> None:
    # Given 10,000 jobs of two pipelines, one a minute, every 7th FAILED (batch writes: setup only)
    start = datetime(2025, 1, 1, tzinfo=UTC)
    jobs = []
    for i in range(JOBS):
        job = Job.new("sales-summary" if i % 2 else "other-pipeline", "s3", start + timedelta(minutes=i))
        jobs.append(job.model_copy(update={"status": JobStatus.FAILED}) if i % 7 == 0 else job)
    ddb = aws.client("dynamodb", api.settings)
    for at in range(0, JOBS, 25):
        batch = [{"PutRequest": {"Item": job_item(j)}} for j in jobs[at : at + 25]]
        assert not ddb.batch_write_item(RequestItems={api.settings.table: batch}).get("UnprocessedItems")
    calls = count_dynamodb_calls(api_handler.services().store._ddb)  # the client the API handler's store uses

    newest = sorted(jobs, key=lambda j: (j.created_at, j.job_id), reverse=True)
    for query, expected in (
        ({}, newest),
        ({"status": "FAILED"}, [j for j in newest if j.status == JobStatus.FAILED]),
        ({"pipeline": "other-pipeline"}, [j for j in newest if j.pipeline == "other-pipeline"]),
        ({"pipeline": "sales-summary", "status": "FAILED"},
         [j for j in newest if j.pipeline == "sales-summary" and j.status == JobStatus.FAILED]),
        ({"since": "2025-01-07T20:00:00Z"}, [j for j in newest if j.created_at >= "2025-01-07T20:00:00"]),
    ):  # fmt: skip
        calls.clear()
        # When one page of 50 is listed (and then the next one)
        first = api.call("GET", "/jobs", query={**query, "limit": "50"})
        second = api.call("GET", "/jobs", query={**query, "limit": "50", "next_token": first.body["next_token"]})
        # Then each page holds the next 50 newest jobs
        assert first.status == second.status == 200, (first.body, second.body)
        got = [j["job_id"] for j in first.body["jobs"] + second.body["jobs"]]
        assert got == [j.job_id for j in expected[:100]], query
        # And they came from Queries of an index: no Scan; one request per page (a few when a
        # filter is left over: status and pipeline together)
        assert calls["Scan"] == 0 and set(calls) == {"Query"}, (query, calls)
        assert calls["Query"] == 2 if len(query) < 2 else calls["Query"] <= 4, (query, calls)
