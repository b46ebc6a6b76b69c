"""The CLI's HTTP client for the raylauncher API: JSON in and out, SigV4-signed (service
`execute-api`, botocore's signer) with the caller's credentials: always for a deployed stack;
for the local API when the process has credentials (it names the caller by them, for a
pipeline's allowed_principals), plain otherwise. The CLI reads and changes jobs only through
this client: the same API everyone else uses."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from raylauncher.cli.targets import Target

TIMEOUT_S = 35  # API Gateway answers within 29 s
USER_AGENT = "raylauncher-cli/0.1"


class ApiError(Exception):
    """The API refused (4xx/5xx with its error body) or could not be reached (status 0)."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}" + (f" (field: {field})" if field else ""))
        self.status, self.code, self.message, self.field = status, code, message, field


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: Any


def sign(method: str, url: str, headers: dict[str, str], body: bytes, credentials: Any, region: str) -> dict[str, str]:
    """The headers to send: `headers` plus SigV4 for API Gateway (execute-api) over exactly this request."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    request = AWSRequest(method=method, url=url, data=body, headers=headers)
    SigV4Auth(credentials.get_frozen_credentials() if hasattr(credentials, "get_frozen_credentials") else credentials,
              "execute-api", region).add_auth(request)  # fmt: skip
    return dict(request.headers.items())


class ApiClient:
    def __init__(self, target: Target, timeout_s: float = TIMEOUT_S) -> None:
        self.target, self.timeout_s = target, timeout_s

    def url(self, path: str, query: dict[str, Any] | None = None) -> str:
        query = {k: v for k, v in (query or {}).items() if v is not None}
        return self.target.api_url + path + ("?" + urlencode(query, quote_via=quote) if query else "")

    def request(self, method: str, path: str, *, query: dict[str, Any] | None = None, body: Any = None,
                headers: dict[str, str] | None = None) -> Response:  # fmt: skip
        """One call; raises ApiError for every answer that is not 2xx, and when nothing answers."""
        url = self.url(path, query)
        data = json.dumps(body).encode() if body is not None else b""
        sent = {"Accept": "application/json", "User-Agent": USER_AGENT, **(headers or {})}
        if body is not None:
            sent["Content-Type"] = "application/json"
        if self.target.credentials is not None:
            sent = sign(method, url, sent, data, self.target.credentials, self.target.region)
        req = urllib.request.Request(url, data=data if body is not None else None, headers=sent, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 - the target's own URL
                return Response(resp.status, dict(resp.headers.items()), _decode(resp.read()))
        except urllib.error.HTTPError as err:
            raise _api_error(err.code, _decode(err.read())) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            reason = getattr(err, "reason", err)
            raise ApiError(0, "UNREACHABLE", f"cannot reach the API at {self.target.api_url}: {reason}") from None

    # ---- the API's operations (docs/openapi.json)

    def submit(self, pipeline: str, params: dict[str, Any], idempotency_key: str | None = None) -> Response:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.request("POST", "/jobs", body={"pipeline": pipeline, "params": params}, headers=headers)

    def list_jobs(self, *, status: str | None = None, pipeline: str | None = None, since: str | None = None,
                  limit: int = 20, next_token: str | None = None) -> dict[str, Any]:  # fmt: skip
        query = {"status": status, "pipeline": pipeline, "since": since, "limit": limit, "next_token": next_token}
        return self.request("GET", "/jobs", query=query).body

    def job(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/jobs/{quote(job_id)}").body

    def logs(self, job_id: str, offset: int = 0) -> dict[str, Any]:
        return self.request("GET", f"/jobs/{quote(job_id)}/logs", query={"offset": offset}).body

    def cancel(self, job_id: str) -> Response:
        return self.request("POST", f"/jobs/{quote(job_id)}/cancel")

    def release(self, job_id: str) -> Response:
        return self.request("POST", f"/jobs/{quote(job_id)}/release")

    def pipelines(self) -> Any:
        return self.request("GET", "/pipelines").body

    def pipeline(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/pipelines/{quote(name)}").body


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"raw": raw.decode("utf-8", errors="replace")}


def _api_error(status: int, body: Any) -> ApiError:
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return ApiError(status, str(error.get("code")), str(error.get("message")), error.get("field"))
    # API Gateway's own refusals before our Lambda (e.g. {"message": "Missing Authentication Token"})
    message = body.get("message") or body.get("Message") or body.get("raw") if isinstance(body, dict) else None
    return ApiError(status, f"HTTP_{status}", str(message or "no error body"))
