"""The OpenAPI document of the API, as committed in docs/openapi.json."""

from __future__ import annotations

import json

import raylauncher.api.errors
import raylauncher.api.routes
from raylauncher.api.app import TITLE, VERSION, app


def openapi_json() -> str:
    """The OpenAPI 3.1 document of this API (committed as docs/openapi.json).

    Powertools documents its own bodies for 422 and for response validation (500); every error
    here leaves as an ErrorResponse, so the document says that instead."""
    doc = json.loads(
        app.get_openapi_json_schema(
            title=TITLE,
            version=VERSION,
            description="Start, follow and cancel Ray jobs on ephemeral clusters; read their logs and the "
            'pipelines they run. Every error answers {"error": {"code": ..., "message": ..., "field": ...}}.',
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
