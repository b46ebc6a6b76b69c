"""THE mapping of errors to HTTP answers: every error leaves through `error_response`, with one
body for all of them: `{"error": {"code": "...", "message": "...", "field": "..." | null}}` —
machine-readable, never a stack trace. docs/architecture.md ("HTTP API") has the whole table:
400 undecodable input (JSON, page token), 403 a caller not on the pipeline's
`allowed_principals` (POST /jobs, cancel), 404 unknown job, pipeline or route, 409 state or
idempotency conflicts, 415 or 422 well-formed but invalid input (incl. an unknown pipeline in a
submission, a bad `since` or log `offset`), 503 with Retry-After only when a backend fails.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError, ServiceError
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
    ResponseValidationError,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)

from raylauncher import queries
from raylauncher.api.app import DECODED, app, json_response, services
from raylauncher.api.models import ErrorDetail, ErrorResponse
from raylauncher.api.routes import IDEMPOTENCY_KEY_HEADER
from raylauncher.errors import (
    BastionUnavailable,
    IllegalTransition,
    InvalidJobId,
    InvalidParams,
    InvalidQuery,
    JobAlreadyExists,
    JobNotFound,
    NotAllowed,
    PipelineNotFound,
    RayLauncherError,
    StorageError,
    TransitionConflict,
    UnknownPipeline,
)

log = logging.getLogger(__name__)

RETRY_AFTER_S = "5"


def error_response(
    status: HTTPStatus, code: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    return json_response(status, ErrorResponse(error=ErrorDetail(code=code, message=message, field=field)), headers)


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
    known = sorted(p.name for p in services().pipelines.pipelines)
    return error_response(
        HTTPStatus.UNPROCESSABLE_ENTITY, "UNKNOWN_PIPELINE", f"no pipeline named {err.name!r}; known: {known}", "pipeline"
    )


@app.exception_handler(PipelineNotFound)
def _pipeline_not_found(err: PipelineNotFound) -> Response:
    known = sorted(p.name for p in services().pipelines.pipelines)
    return error_response(
        HTTPStatus.NOT_FOUND, "PIPELINE_NOT_FOUND", f"no pipeline named {err.name!r}; known: {known}", "name"
    )


@app.exception_handler(NotAllowed)
def _not_allowed(err: NotAllowed) -> Response:
    # The principal is the caller's own ARN (API Gateway verified it): naming it is no leak.
    log.info("refused: %s may not trigger %s", err.principal, err.pipeline)
    return error_response(HTTPStatus.FORBIDDEN, "FORBIDDEN", str(err), "job_id" if err.job_id else "pipeline")


@app.exception_handler(InvalidParams)
def _invalid_params(err: InvalidParams) -> Response:
    return error_response(HTTPStatus.UNPROCESSABLE_ENTITY, "INVALID_PARAMS", str(err), f"params.{err.field}")


@app.exception_handler(InvalidQuery)
def _invalid_query(err: InvalidQuery) -> Response:
    return error_response(HTTPStatus.UNPROCESSABLE_ENTITY, "VALIDATION_ERROR", str(err), err.field)


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
    if not app.context.get(DECODED) and isinstance(err, (ValueError, RecursionError)):
        return error_response(HTTPStatus.BAD_REQUEST, "MALFORMED_REQUEST", "the request body cannot be decoded", "body")
    log.exception("unexpected error")
    return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "internal error")
