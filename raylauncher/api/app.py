"""The resolver every route and error handler registers on, and what they share.

The services come in through `app.context["services"]` (an `ApiServices`), which the Lambda
handler appends before each `app.resolve`: this package never reads the environment.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import APIGatewayRestResolver, Response, content_types
from pydantic import BaseModel

from raylauncher.api.models import ErrorResponse
from raylauncher.authz import Caller

if TYPE_CHECKING:
    from raylauncher.api.services import ApiServices

TITLE, VERSION = "raylauncher", "0.1.0"


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

DECODED = "request_decoded"


def _mark_decoded(app: APIGatewayRestResolver, next_middleware: Any) -> Response:
    # Runs after Powertools decoded and validated the request (its validation runs first).
    app.append_context(**{DECODED: True})
    return next_middleware(app)


app.use(middlewares=[_mark_decoded])


def services() -> ApiServices:
    return app.context["services"]


def caller() -> Caller:
    """Who sent the current request: the ARN API Gateway's IAM authorization verified
    (`requestContext.identity.userArn`; locally raylauncher/local/http_api.py fills it the same
    way), or none for a request that carried no identity."""
    try:
        return Caller(app.current_event.request_context.identity.user_arn or None)
    except (KeyError, TypeError):  # an event without an identity block: no identity
        return Caller(None)


_ERROR_DESCRIPTIONS = {
    HTTPStatus.BAD_REQUEST: "undecodable input (JSON body, page token); `field` names it",
    HTTPStatus.FORBIDDEN: "the caller is not on the pipeline's `allowed_principals`",
    HTTPStatus.NOT_FOUND: "no such job, pipeline or route",
    HTTPStatus.CONFLICT: "state or Idempotency-Key conflict",
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: "the body is not JSON",
    HTTPStatus.UNPROCESSABLE_ENTITY: "invalid input; `field` names it",
    HTTPStatus.SERVICE_UNAVAILABLE: "a backend failed; retry after Retry-After",
}
_ALWAYS = (HTTPStatus.BAD_REQUEST, HTTPStatus.UNPROCESSABLE_ENTITY, HTTPStatus.SERVICE_UNAVAILABLE)


def responses(ok: dict[int, str], *errors: HTTPStatus) -> dict[int, dict[str, Any]]:
    """OpenAPI responses of a route: its success codes and its error bodies."""
    out: dict[int, dict[str, Any]] = {code: {"description": text} for code, text in ok.items()}
    for status in {*errors, *_ALWAYS}:
        out[status.value] = {
            "description": _ERROR_DESCRIPTIONS[status],
            "content": {"application/json": {"model": ErrorResponse}},
        }
    return dict(sorted(out.items()))


def json_response(status: int, body: BaseModel, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status_code=int(status),
        content_type=content_types.APPLICATION_JSON,
        body=body.model_dump(mode="json"),
        headers=headers,
    )
