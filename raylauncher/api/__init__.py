"""The HTTP API (API Gateway REST API, Lambda proxy integration): submit, list, inspect, follow
the log of and cancel jobs; read the pipelines.

- models.py    the request and response bodies (what docs/openapi.json documents)
- app.py       the resolver, the services' way in (`app.context["services"]`), shared helpers
- routes.py    the routes: validate, one domain call, shape the answer
- errors.py    THE mapping of errors to HTTP answers (one body for all)
- services.py  submissions (Idempotency-Key) and the reads behind the routes
- views.py     a job record as the API shows it
- openapi.py   the OpenAPI document (`python -m raylauncher.api` prints it)

Status codes: POST /jobs 202 (200 when an Idempotency-Key replays, 409 when reused with another
body); POST /jobs/{job_id}/cancel 200 when the job is terminal afterwards, 202 when the driver
still has to stop it. Both answer 403 to a caller not on the pipeline's `allowed_principals`
(raylauncher/authz.py; reads are governed by IAM alone). Errors: see errors.py.
"""

from raylauncher.api import errors as _errors
from raylauncher.api import routes as _routes
from raylauncher.api.app import TITLE, VERSION, app
from raylauncher.api.errors import error_response
from raylauncher.api.models import (
    AttemptView,
    ClusterView,
    CostView,
    ErrorDetail,
    ErrorResponse,
    InputsView,
    JobDetail,
    JobPage,
    JobView,
    LogChunk,
    PhaseTime,
    PipelineList,
    SubmitJobRequest,
)
from raylauncher.api.openapi import openapi_json
from raylauncher.api.routes import IDEMPOTENCY_KEY_HEADER, IDEMPOTENCY_KEY_PATTERN
from raylauncher.api.services import IDEMPOTENCY_EXPIRES_S, MAX_LOG_CHUNK_BYTES, ApiServices, Submissions
from raylauncher.api.views import job_view

__all__ = [
    "IDEMPOTENCY_EXPIRES_S",
    "IDEMPOTENCY_KEY_HEADER",
    "IDEMPOTENCY_KEY_PATTERN",
    "MAX_LOG_CHUNK_BYTES",
    "TITLE",
    "VERSION",
    "ApiServices",
    "AttemptView",
    "ClusterView",
    "CostView",
    "ErrorDetail",
    "ErrorResponse",
    "InputsView",
    "JobDetail",
    "JobPage",
    "JobView",
    "LogChunk",
    "PhaseTime",
    "PipelineList",
    "Submissions",
    "SubmitJobRequest",
    "app",
    "error_response",
    "job_view",
    "openapi_json",
]  # fmt: skip
