"""The HTTP API (API Gateway REST API, Lambda proxy integration): submit, list, inspect, cancel.

Each route validates its input (pydantic, through Powertools), makes one domain call and shapes
the answer. Every error leaves through `error_response`, with one body for all of them:
`{"error": {"code": "...", "message": "...", "field": "..." | null}}` — machine-readable,
never a stack trace. Status codes (docs/architecture.md, "HTTP API", has the whole table):

- POST /jobs: 202 and the new job; with an `Idempotency-Key` seen before and the same body,
  200 and that same job as it is now (header `Idempotent-Replayed: true`), no second job;
  the same key with another body: 409.
- POST /jobs/{job_id}/cancel: 200 when the job is terminal afterwards (cancelled at once
  before any cluster existed, or already finished: returned as it is); 202 when the driver
  still has to stop it (`cancel_requested` is set).
- Bad input is 400 (undecodable: JSON, page token), 404 (unknown job or route), 409 (state
  or idempotency conflicts), 415 or 422 (well-formed but invalid, incl. unknown pipeline);
  503 (with Retry-After) only when a backend (DynamoDB, S3, SSM) fails.

The services come in through `app.context["services"]` (an `ApiServices`), which the Lambda
handler appends before each `app.resolve`: this module never reads the environment.
"""

import json
import logging
from dataclasses import dataclass, field
from http import HTTPStatus
from collections.abc import Callable
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from aws_lambda_powertools.event_handler.exceptions import NotFoundError, ServiceError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
    ResponseValidationError,
)
from aws_lambda_powertools.event_handler.openapi.params import Body, Header, Path, Query
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
from pydantic import BaseModel, ConfigDict, Field

from raylauncher import control, queries
from raylauncher.admission import queue_position
from raylauncher.config import NAME_PATTERN, PipelinesConfig
from raylauncher.errors import (
    BastionUnavailable,
    IllegalTransition,
    InvalidJobId,
    InvalidParams,
    JobAlreadyExists,
    JobNotFound,
    RayLauncherError,
    StorageError,
    TransitionConflict,
    UnknownPipeline,
)
from raylauncher.intake import IntakeService
from raylauncher.model import JOB_ID_PATTERN, Job, JobStatus, ReasonCode
from raylauncher.store import JobStore

log = logging.getLogger(__name__)

TITLE, VERSION = "raylauncher", "0.1.0"
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]{1,128}$"  # printable ASCII, no spaces
#: How long an Idempotency-Key is remembered (the idempotency table's TTL does the rest).
IDEMPOTENCY_EXPIRES_S = 24 * 3600
RETRY_AFTER_S = "5"


# ---------------------------------------------------------------- request and response models


class SubmitJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(pattern=NAME_PATTERN, description="a pipeline's name from pipelines.yaml")
    params: dict[str, Any] = Field(
        default_factory=dict, description="the run's params, checked against the pipeline's `params` declaration"
    )


class PhaseTime(BaseModel):
    status: JobStatus
    at: str = Field(description="when the job entered this status (ISO 8601, UTC)")


class AttemptView(BaseModel):
    attempt: int
    run_id: str = Field(description="the attempt's Ray submission id and cluster key: <job>, <job>-a2, …")
    status: JobStatus = Field(description="how the attempt ended")
    reason_code: ReasonCode | None
    reason_message: str | None
    phase_times: dict[str, str] = Field(description="status -> when the attempt entered it")
    cluster_seconds: float = Field(description="seconds the attempt's cluster was up")
    ended_at: str
    log_location: str | None = Field(default=None, description="s3:// URI of the attempt's Ray log, if kept")


class JobView(BaseModel):
    job_id: str
    pipeline: str
    trigger: Literal["s3", "api", "schedule"]
    status: JobStatus
    created_at: str
    updated_at: str
    phase_times: list[PhaseTime] = Field(description="the statuses the job went through, in order")
    reason_code: ReasonCode | None = Field(description="why the job did not succeed (null while it may)")
    reason_message: str | None
    cancel_requested: bool
    params: dict[str, Any]
    object_count: int = Field(description="objects in the job's manifest")
    ray_status: str | None = Field(description="Ray's own job status, not ours")
    manifest_location: str | None = Field(description="s3:// URI of the manifest (the objects the job reads)")
    log_location: str | None = Field(description="s3:// URI of the Ray job's log, once kept")
    output_location: str | None = Field(description="s3:// URI prefix the job writes its output under")
    summary: dict[str, Any] | None = Field(description="the Ray job's own summary, when it wrote one")
    attempt: int = Field(description="the current (or last) attempt; retries run on a new cluster")
    attempts: list[AttemptView] = Field(description="earlier attempts, oldest first (the last one is the job itself)")
    retry_at: str | None = Field(description="a QUEUED retry is not launched before this time")
    cluster_seconds: float = Field(description="seconds clusters of this job were (or are) up, every attempt")
    queue_position: int | None = Field(
        default=None, description="QUEUED jobs (GET /jobs/{job_id}): 1 = launched next when a cluster slot frees"
    )


class JobPage(BaseModel):
    jobs: list[JobView]
    next_token: str | None = Field(description="pass as `next_token` for the next page; null on the last page")


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. INVALID_PARAMS, JOB_NOT_FOUND")
    message: str = Field(description="what is wrong and what to change")
    field: str | None = Field(
        description="the input at fault: a body path (`pipeline`, `params.input_prefix`), a query, path or "
        "header parameter (`limit`, `job_id`, `Idempotency-Key`), or `body`; null if none is"
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail


# ---------------------------------------------------------------- services


@dataclass
class Submissions:
    """POST /jobs. With an Idempotency-Key: at most one job per key (Powertools idempotency on
    the idempotency table, key `api-jobs#<md5 of the key>`); the body is checked against the one
    stored with the key. Give it a persistence layer of its own: Powertools configures a layer
    once, for the first function that uses it."""

    intake: IntakeService
    store: JobStore
    persistence_store: BasePersistenceLayer
    config: IdempotencyConfig = field(init=False)

    def __post_init__(self) -> None:
        self.config = IdempotencyConfig(
            event_key_jmespath="key",
            payload_validation_jmespath="request",
            expires_after_seconds=IDEMPOTENCY_EXPIRES_S,
            response_hook=lambda response, _record: {**response, "replayed": True},
        )
        self._submit_once = idempotent_function(
            self._submit,
            data_keyword_argument="submission",
            persistence_store=self.persistence_store,
            config=self.config,
            key_prefix="api-jobs",
        )

    def submit(self, request: SubmitJobRequest, idempotency_key: str | None, lambda_context: Any) -> tuple[Job, bool]:
        """The job for this request and whether it was made by an earlier request with the same
        key (then it is read again: its status now). Raises UnknownPipeline, InvalidParams,
        IdempotencyValidationError (key reused with another body), IdempotencyAlreadyInProgressError."""
        if idempotency_key is None:
            return self.intake.submit(request.pipeline, request.params, trigger="api"), False
        if lambda_context is not None:  # lets a request that died mid-way release its key
            self.config.register_lambda_context(lambda_context)
        submission = {"key": idempotency_key, "request": request.model_dump(mode="json")}
        result = self._submit_once(submission=submission)
        if result.get("replayed"):
            return self.store.get(result["job_id"]), True
        return Job.model_validate(result), False

    def _submit(self, submission: dict[str, Any]) -> dict[str, Any]:
        request = submission["request"]
        return self.intake.submit(request["pipeline"], request["params"], trigger="api").model_dump(mode="json")


@dataclass
class ApiServices:
    """What the routes need; built once per Lambda instance (lambdas/api/handler.py)."""

    pipelines: PipelinesConfig
    store: JobStore
    bucket: str
    submissions: Submissions
    on_finished: Callable[[Job], object] = lambda job: None  # gives back a cancelled job's cluster slot


# ---------------------------------------------------------------- the app


def _strict_json(text: str) -> Any:
    """json.loads without NaN/Infinity and without lone surrogates (JSON can escape them, UTF-8
    cannot carry them to S3 or DynamoDB). Every undecodable body (also: too deep, too long a
    number) becomes a JSONDecodeError, which the API answers with 400 naming `body`."""

    def reject(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        value = json.loads(text, parse_constant=reject)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # UnicodeEncodeError: a lone surrogate
        return value
    except json.JSONDecodeError:
        raise
    except (ValueError, RecursionError) as err:  # UnicodeEncodeError is a ValueError
        raise json.JSONDecodeError(f"not decodable as JSON ({type(err).__name__})", text, 0) from None


app = APIGatewayRestResolver(
    enable_validation=True,
    json_body_deserializer=_strict_json,
    # A response that does not match its model is our bug: 500, never a 422 blaming the client.
    response_validation_error_http_code=HTTPStatus.INTERNAL_SERVER_ERROR,
)

_DECODED = "request_decoded"


def _mark_decoded(app: APIGatewayRestResolver, next_middleware: Any) -> Response:
    # Runs after Powertools decoded and validated the request (its validation runs first).
    app.append_context(**{_DECODED: True})
    return next_middleware(app)


app.use(middlewares=[_mark_decoded])


def _services() -> ApiServices:
    return app.context["services"]


_ERROR_DESCRIPTIONS = {
    HTTPStatus.BAD_REQUEST: "undecodable input (JSON body, page token); `field` names it",
    HTTPStatus.NOT_FOUND: "no such job (or route)",
    HTTPStatus.CONFLICT: "state or Idempotency-Key conflict",
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: "the body is not JSON",
    HTTPStatus.UNPROCESSABLE_ENTITY: "invalid input; `field` names it",
    HTTPStatus.SERVICE_UNAVAILABLE: "a backend failed; retry after Retry-After",
}
_ALWAYS = (HTTPStatus.BAD_REQUEST, HTTPStatus.UNPROCESSABLE_ENTITY, HTTPStatus.SERVICE_UNAVAILABLE)


def _responses(ok: dict[int, str], *errors: HTTPStatus) -> dict[int, dict[str, Any]]:
    """OpenAPI responses of a route: its success codes and its error bodies."""
    out: dict[int, dict[str, Any]] = {code: {"description": text} for code, text in ok.items()}
    for status in {*errors, *_ALWAYS}:
        out[status.value] = {
            "description": _ERROR_DESCRIPTIONS[status],
            "content": {"application/json": {"model": ErrorResponse}},
        }
    return dict(sorted(out.items()))


def job_view(job: Job, bucket: str, queue_position: int | None = None) -> JobView:
    def uri(key: str | None) -> str | None:
        return f"s3://{bucket}/{key}" if key else None

    order = list(JobStatus)
    phases = sorted(job.phase_times.items(), key=lambda kv: (kv[1], order.index(JobStatus(kv[0]))))
    shared = (set(JobView.model_fields) & set(Job.model_fields)) - {"phase_times", "attempts"}
    attempts = [
        AttemptView(**{k: v for k, v in a.items() if k in AttemptView.model_fields}, log_location=uri(a.get("logs_key")))
        for a in job.attempts
    ]
    return JobView(
        **{name: getattr(job, name) for name in shared},
        phase_times=[PhaseTime(status=JobStatus(s), at=at) for s, at in phases],
        attempts=attempts,
        cluster_seconds=round(job.cluster_seconds(), 3),
        manifest_location=uri(job.manifest_key),
        log_location=uri(job.logs_key),
        output_location=uri(job.output_prefix),
        queue_position=queue_position,
    )


def _json(status: int, body: BaseModel, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=int(status),
        content_type=content_types.APPLICATION_JSON,
        body=body.model_dump(mode="json"),
        headers=headers,
    )


@app.post(
    "/jobs",
    summary="Start a run of a pipeline",
    description="Answers 202 with the new job (QUEUED/LAUNCHING; it never waits for a cluster). "
    "With an `Idempotency-Key` already used with the same body: 200 and that job, no new one "
    "(`Idempotent-Replayed: true`); with another body: 409 IDEMPOTENCY_KEY_REUSED.",
    responses=_responses(
        {202: "job accepted", 200: "replayed: the job made with this key"},
        HTTPStatus.CONFLICT, HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
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
    services = _services()
    # Checked before the idempotency record is written: a refused request never holds a key.
    services.pipelines.get(request.pipeline).validate_params(request.params)
    job, replayed = services.submissions.submit(request, idempotency_key, app.lambda_context)
    headers = {"Location": f"/jobs/{job.job_id}"} | ({"Idempotent-Replayed": "true"} if replayed else {})
    status = HTTPStatus.OK if replayed else HTTPStatus.ACCEPTED
    return _json(status, job_view(job, services.bucket), headers)


@app.get(
    "/jobs",
    summary="List jobs, newest first",
    responses=_responses({200: "one page of jobs"}),
    tags=["jobs"],
)
def list_jobs(
    pipeline: Annotated[str | None, Query(pattern=NAME_PATTERN, description="only this pipeline's jobs")] = None,
    status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=queries.MAX_PAGE_SIZE, description="jobs per page")] = 20,
    next_token: Annotated[str | None, Query(description="the previous page's next_token")] = None,
) -> JobPage:
    services = _services()
    jobs, token = queries.list_jobs(services.store, pipeline, status, limit, next_token)
    return JobPage(jobs=[job_view(j, services.bucket) for j in jobs], next_token=token)


JobIdParam = Annotated[
    str, Path(pattern=JOB_ID_PATTERN.pattern, description="a job id, e.g. sales-summary-20260101-020000-1a2b3c4d")
]


@app.get(
    "/jobs/<job_id>",
    summary="A job: status, phase timeline, reason, where its manifest, logs and output are",
    responses=_responses({200: "the job"}, HTTPStatus.NOT_FOUND),
    tags=["jobs"],
)
def get_job(job_id: JobIdParam) -> JobView:
    services = _services()
    job = services.store.get(job_id)
    position = queue_position(job, services.store)
    return job_view(job, services.bucket, position)


@app.post(
    "/jobs/<job_id>/cancel",
    summary="Cancel a job",
    description="200 when the job is terminal afterwards: cancelled at once (no cluster existed yet) or "
    "already finished (returned as it is). 202 when the driver still has to stop the Ray job and tear the "
    "cluster down (`cancel_requested` is true; poll GET /jobs/{job_id}).",
    responses=_responses({200: "terminal now", 202: "cancel requested"}, HTTPStatus.NOT_FOUND, HTTPStatus.CONFLICT),
    tags=["jobs"],
)
def cancel_job(job_id: JobIdParam) -> Response[JobView]:
    services = _services()
    job = control.request_cancel(services.store, job_id, on_finished=services.on_finished)
    return _json(HTTPStatus.OK if job.is_terminal else HTTPStatus.ACCEPTED, job_view(job, services.bucket))


# ---------------------------------------------------------------- errors: the one mapping


def error_response(
    status: HTTPStatus, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    return _json(status, ErrorResponse(error=ErrorDetail(code=code, message=message, field=field)), headers)


def _field_of(loc: tuple[Any, ...]) -> str:
    """A validation error's location as the client wrote it: `params.x`, `limit`, `body`."""
    where = [str(part) for part in loc]
    if where[:1] == ["body"] and (len(where) == 1 or where[1].isdigit()):
        return "body"  # the whole body (or a JSON error's position in it)
    if where[:1] == ["header"] and len(where) > 1:  # Powertools matches headers in lower case
        return "-".join(word.capitalize() for word in where[1].split("-"))
    return ".".join(where[1:]) or where[0]


@app.exception_handler(RequestValidationError)
def _invalid_request(err: RequestValidationError) -> Response:
    errors = list(err.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(HTTPStatus.BAD_REQUEST, "MALFORMED_JSON", "the body is not valid JSON", "body")
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
    described = "; ".join(f"{_field_of(tuple(e['loc']))}: {e.get('msg', e.get('type'))}" for e in errors[:5])
    return error_response(HTTPStatus.UNPROCESSABLE_ENTITY, "VALIDATION_ERROR", described, _field_of(tuple(first["loc"])))


@app.exception_handler(RequestUnsupportedContentType)
def _unsupported_media(err: RequestUnsupportedContentType) -> Response:
    return error_response(
        HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE", "send the body as application/json", "body"
    )


@app.not_found
def _route_not_found(err: NotFoundError) -> Response:
    event = app.current_event
    return error_response(
        HTTPStatus.NOT_FOUND, "ROUTE_NOT_FOUND",
        f"no route {event.http_method} {event.path[:200]}; see docs/openapi.json",
    )  # fmt: skip


@app.exception_handler(ServiceError)
def _powertools_http_error(err: ServiceError) -> Response:
    # Powertools' own HTTP errors (none is raised by our routes), in our shape.
    status = HTTPStatus(err.status_code)
    return error_response(status, status.name, status.phrase)


@app.exception_handler(UnknownPipeline)
def _unknown_pipeline(err: UnknownPipeline) -> Response:
    known = sorted(p.name for p in _services().pipelines.pipelines)
    return error_response(
        HTTPStatus.UNPROCESSABLE_ENTITY, "UNKNOWN_PIPELINE", f"no pipeline named {err.name!r}; known: {known}", "pipeline"
    )


@app.exception_handler(InvalidParams)
def _invalid_params(err: InvalidParams) -> Response:
    return error_response(HTTPStatus.UNPROCESSABLE_ENTITY, "INVALID_PARAMS", str(err), f"params.{err.field}")


@app.exception_handler(InvalidJobId)
def _invalid_job_id(err: InvalidJobId) -> Response:
    return error_response(HTTPStatus.UNPROCESSABLE_ENTITY, "INVALID_JOB_ID", str(err), "job_id")


@app.exception_handler(queries.InvalidPageToken)
def _invalid_token(err: queries.InvalidPageToken) -> Response:
    return error_response(HTTPStatus.BAD_REQUEST, "INVALID_PAGE_TOKEN", str(err), err.field)


@app.exception_handler(JobNotFound)
def _job_not_found(err: JobNotFound) -> Response:
    return error_response(HTTPStatus.NOT_FOUND, "JOB_NOT_FOUND", f"no job {err.job_id}", "job_id")


@app.exception_handler([TransitionConflict, IllegalTransition])
def _state_conflict(err: RayLauncherError) -> Response:
    return error_response(HTTPStatus.CONFLICT, "STATE_CONFLICT", f"{err}; read the job again and retry", "job_id")


@app.exception_handler(JobAlreadyExists)
def _job_exists(err: JobAlreadyExists) -> Response:
    return error_response(HTTPStatus.CONFLICT, "JOB_ALREADY_EXISTS", str(err), "job_id")


@app.exception_handler(IdempotencyValidationError)
def _key_reused(err: IdempotencyValidationError) -> Response:
    return error_response(
        HTTPStatus.CONFLICT, "IDEMPOTENCY_KEY_REUSED",
        "this Idempotency-Key was used with a different body; use a new key for a new job",
        IDEMPOTENCY_KEY_HEADER,
    )  # fmt: skip


@app.exception_handler(IdempotencyAlreadyInProgressError)
def _key_in_progress(err: IdempotencyAlreadyInProgressError) -> Response:
    return error_response(
        HTTPStatus.CONFLICT, "IDEMPOTENCY_IN_PROGRESS",
        "a request with this Idempotency-Key is still being handled; retry shortly",
        IDEMPOTENCY_KEY_HEADER, {"Retry-After": "1"},
    )  # fmt: skip


@app.exception_handler([StorageError, BastionUnavailable, IdempotencyPersistenceLayerError])
def _backend_unavailable(err: Exception) -> Response:
    log.error("backend unavailable: %s", err)
    return error_response(
        HTTPStatus.SERVICE_UNAVAILABLE, "BACKEND_UNAVAILABLE", "a backend did not answer; retry later",
        headers={"Retry-After": RETRY_AFTER_S},
    )  # fmt: skip


@app.exception_handler(ResponseValidationError)
def _bad_response(err: ResponseValidationError) -> Response:
    log.error("response does not match its model: %s", err.errors())
    return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "internal error")


@app.exception_handler(Exception)
def _unexpected(err: Exception) -> Response:
    # Before `_mark_decoded` ran, Powertools was still decoding the request (base64, UTF-8,
    # multipart): a ValueError there is the request's fault. Anywhere else it is ours.
    if not app.context.get(_DECODED) and isinstance(err, (ValueError, RecursionError)):
        return error_response(HTTPStatus.BAD_REQUEST, "MALFORMED_REQUEST", "the request body cannot be decoded", "body")
    log.exception("unexpected error")
    return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "internal error")


def openapi_json() -> str:
    """The OpenAPI 3.1 document of this API (committed as docs/openapi.json).

    Powertools documents its own bodies for 422 and for response validation (500); every error
    here leaves as an ErrorResponse, so the document says that instead."""
    doc = json.loads(
        app.get_openapi_json_schema(
            title=TITLE,
            version=VERSION,
            description="Start, follow and cancel Ray jobs on ephemeral clusters. Every error answers "
            '{"error": {"code": ..., "message": ..., "field": ...}}.',
        )
    )
    error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for operations in doc["paths"].values():
        for operation in operations.values():
            responses = operation["responses"]
            responses["422"]["content"] = error_body
            responses["500"] = {"description": "internal error (a bug; logged)", "content": error_body}
            operation["responses"] = dict(sorted(responses.items()))
    for unused in ("HTTPValidationError", "ValidationError", "ResponseValidationError"):
        doc["components"]["schemas"].pop(unused, None)
    return json.dumps(doc, indent=2, ensure_ascii=False)


if __name__ == "__main__":
    print(openapi_json())
