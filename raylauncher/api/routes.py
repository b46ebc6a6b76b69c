"""The routes: each validates its input (pydantic, through Powertools), makes one domain call
and shapes the answer. Errors leave as exceptions (raylauncher/api/errors.py answers them)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Annotated

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path, Query

from raylauncher import queries
from raylauncher.api.app import app, caller, json_response, responses, services
from raylauncher.api.models import JobDetail, JobPage, JobView, LogChunk, PipelineList, SubmitJobRequest
from raylauncher.api.views import job_view
from raylauncher.config import NAME_PATTERN, Pipeline
from raylauncher.model import JOB_ID_PATTERN, JobStatus

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,128}$"  # printable ASCII, no spaces

JobIdParam = Annotated[
    str, Path(pattern=JOB_ID_PATTERN.pattern, description="a job id, e.g. sales-summary-20260101-020000-1a2b3c4d")
]


@app.post(
    "/jobs",
    summary="Start a run of a pipeline",
    description="Answers 202 with the new job (QUEUED/LAUNCHING; it never waits for a cluster). "
    "With an `Idempotency-Key` already used with the same body: 200 and that job, no new one "
    "(`Idempotent-Replayed: true`); with another body: 409 IDEMPOTENCY_KEY_REUSED. A pipeline with "
    "`allowed_principals` answers 403 FORBIDDEN to a caller not on it (before any key is used).",
    responses=responses(
        {202: "job accepted", 200: "replayed: the job made with this key"},
        HTTPStatus.FORBIDDEN, HTTPStatus.CONFLICT, HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    ),  # fmt: skip
    tags=["jobs"],
)
def submit_job(
    request: Annotated[SubmitJobRequest, Body()],
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=IDEMPOTENCY_KEY_HEADER,
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="1-128 printable ASCII characters; remembered for 24 h",
        ),
    ] = None,
) -> Response[JobView]:
    s = services()
    # Checked before the idempotency record is written: a refused request never holds a key.
    s.check_submission(request, caller())
    job, replayed = s.submissions.submit(request, idempotency_key, app.lambda_context)
    headers = {"Location": f"/jobs/{job.job_id}"} | ({"Idempotent-Replayed": "true"} if replayed else {})
    status = HTTPStatus.OK if replayed else HTTPStatus.ACCEPTED
    return json_response(status, job_view(job, s.bucket, pipelines=s.pipelines), headers)


@app.get(
    "/jobs",
    summary="List jobs, newest first",
    description="One Query of a job table index per page (never a scan). `since` takes an ISO 8601 "
    "timestamp (UTC if it names no zone) or a duration back from now: `90s`, `30m`, `1h`, `2d`.",
    responses=responses({200: "one page of jobs"}),
    tags=["jobs"],
)
def list_jobs(
    pipeline: Annotated[str | None, Query(pattern=NAME_PATTERN, description="only this pipeline's jobs")] = None,
    status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
    since: Annotated[
        str | None,
        Query(max_length=64, description="only jobs created at or after this time: ISO 8601 or a duration (1h, 30m, 2d)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_PAGE_SIZE, description="jobs per page")] = 20,
    next_token: Annotated[str | None, Query(description="the previous page's next_token")] = None,
) -> JobPage:
    s = services()
    jobs, token = queries.list_jobs(s.store, pipeline, status, limit, next_token, since)
    return JobPage(jobs=[job_view(j, s.bucket, pipelines=s.pipelines) for j in jobs], next_token=token)


@app.get(
    "/jobs/<job_id>",
    summary="A job: status, phase timeline, reason, inputs, cluster, cost, where its manifest, logs and output are",
    responses=responses({200: "the job"}, HTTPStatus.NOT_FOUND),
    tags=["jobs"],
)
def get_job(job_id: JobIdParam) -> JobDetail:
    return services().job_detail(job_id)


@app.get(
    "/jobs/<job_id>/logs",
    summary="The job's Ray log (current attempt), from a byte offset on",
    description="Follow a job: call with `offset=0`, then with each answer's `next_offset`, until "
    "`complete`. While the job runs the driver rewrites the log every ~15 s; before it first did, the "
    "answer is empty (`next_offset` = `offset`).",
    responses=responses({200: "a chunk of the log (at most ~1 MiB)"}, HTTPStatus.NOT_FOUND),
    tags=["jobs"],
)
def get_job_logs(
    job_id: JobIdParam,
    offset: Annotated[int, Query(ge=0, description="byte offset to read from: 0, or the previous next_offset")] = 0,
) -> LogChunk:
    return services().job_log(job_id, offset)


@app.post(
    "/jobs/<job_id>/cancel",
    summary="Cancel a job",
    description="200 when the job is terminal afterwards: cancelled at once (no cluster existed yet) or "
    "already finished (returned as it is). 202 when the driver still has to stop the Ray job and tear the "
    "cluster down (`cancel_requested` is true; poll GET /jobs/{job_id}). 403 FORBIDDEN when the job's pipeline "
    "has `allowed_principals` and the caller is not on it.",
    responses=responses(
        {200: "terminal now", 202: "cancel requested"}, HTTPStatus.FORBIDDEN, HTTPStatus.NOT_FOUND, HTTPStatus.CONFLICT
    ),
    tags=["jobs"],
)
def cancel_job(job_id: JobIdParam) -> Response[JobView]:
    s = services()
    job = s.cancel(job_id, caller())
    status = HTTPStatus.OK if job.is_terminal else HTTPStatus.ACCEPTED
    return json_response(status, job_view(job, s.bucket, pipelines=s.pipelines))


@app.post(
    "/jobs/<job_id>/release",
    summary="End the debug hold of a failed job's cluster",
    description="A job that FAILED for its own reason in a pipeline with `keep_failed_cluster_seconds` keeps its "
    "cluster up for debugging; this ends the hold at once (the cluster is torn down within seconds; `kept_cluster` "
    "in GET /jobs/{job_id} follows it). 409 STATE_CONFLICT when no cluster is held for the job. 403 FORBIDDEN like "
    "a cancel.",
    responses=responses({200: "release requested"}, HTTPStatus.FORBIDDEN, HTTPStatus.NOT_FOUND, HTTPStatus.CONFLICT),
    tags=["jobs"],
)
def release_job(job_id: JobIdParam) -> JobView:
    s = services()
    return job_view(s.release(job_id, caller()), s.bucket, pipelines=s.pipelines)


@app.get(
    "/pipelines",
    summary="The pipelines this deployment runs (its pipelines.yaml)",
    responses=responses({200: "every pipeline"}),
    tags=["pipelines"],
)
def list_pipelines() -> PipelineList:
    return PipelineList(pipelines=sorted(services().pipelines.pipelines, key=lambda p: p.name), release=services().deployed_release)


@app.get(
    "/pipelines/<name>",
    summary="One pipeline's config",
    responses=responses({200: "the pipeline"}, HTTPStatus.NOT_FOUND),
    tags=["pipelines"],
)
def get_pipeline(name: Annotated[str, Path(pattern=NAME_PATTERN, description="a pipeline's name")]) -> Pipeline:
    return services().pipeline(name)
