"""docs/openapi.json is what the API code generates (so the committed contract never drifts)."""

from pathlib import Path

from raylauncher.api import openapi_json

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_committed_openapi_document_matches_the_code() -> None:
    # Given the committed document, When the API generates its own, Then they are the same
    assert DOC.read_text(encoding="utf-8") == openapi_json() + "\n", (
        "docs/openapi.json is stale: run `python -m raylauncher.api > docs/openapi.json`"
    )


def test_every_operation_documents_the_error_body() -> None:
    import json

    doc = json.loads(DOC.read_text(encoding="utf-8"))
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for code, response in operation["responses"].items():
                if int(code) >= 400:
                    assert response["content"]["application/json"]["schema"] == error_ref, (method, path, code)
    assert set(doc["paths"]) == {
        "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/jobs/{job_id}/release", "/jobs/{job_id}/logs", "/pipelines",
        "/pipelines/{name}",
    }  # fmt: skip
    assert (doc["info"]["title"], doc["info"]["version"]) == ("raylauncher", "0.1.0")
