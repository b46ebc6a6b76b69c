"""What API Gateway with IAM authorization does before the Lambda runs, locally: recompute the
request's SigV4 signature with botocore over what actually arrived (method, path with the
stage, query, the signed headers, the body) using the caller's secret, and refuse with 403
what is unsigned, signed with another secret, or changed after signing."""

from __future__ import annotations

import hmac
import json
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from raylauncher.local.http_api import Handler

_AUTH = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request, "
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), Signature=(?P<signature>[0-9a-f]{64})$"
)
MAX_SKEW_S = 300


class SigV4Gateway:
    """Wraps the API Lambda handler: only correctly signed requests reach it. `refused` counts
    the refusals; `accepted` the requests let through (method, path)."""

    def __init__(self, handler: Handler, credentials: Credentials, region: str, stage: str = "v1") -> None:
        self.handler, self.credentials, self.region, self.stage = handler, credentials, region, stage
        self.accepted: list[tuple[str, str]] = []
        self.refused: list[str] = []

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        why = self.check(event)
        if why:
            self.refused.append(why)
            # API Gateway's own 403 body for a bad signature (no Lambda ran)
            return {"statusCode": 403, "headers": {"Content-Type": "application/json"},
                    "body": json.dumps({"message": why})}  # fmt: skip
        prefix = f"/{self.stage}"
        path = event["path"][len(prefix):] or "/"
        self.accepted.append((event["httpMethod"], path))
        inner = {**event, "path": path, "pathParameters": {"proxy": path.lstrip("/")} if path != "/" else None}
        return self.handler(inner, context)

    def check(self, event: dict[str, Any]) -> str | None:
        headers = {k.lower(): v[-1] for k, v in (event.get("multiValueHeaders") or {}).items()}
        match = _AUTH.match(headers.get("authorization", ""))
        if not match:
            return "Missing Authentication Token"
        if not event["path"].startswith(f"/{self.stage}/"):
            return f"not under the stage /{self.stage}"
        if (match["key"], match["region"], match["service"]) != (self.credentials.access_key, self.region, "execute-api"):
            return "The security token included in the request is invalid."
        amz_date = headers.get("x-amz-date", "")
        try:
            sent_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            return "no valid X-Amz-Date"
        if abs((datetime.now(UTC) - sent_at).total_seconds()) > MAX_SKEW_S or amz_date[:8] != match["date"]:
            return "Signature expired"
        signed = match["signed"].split(";")
        if "host" not in signed or any(name not in headers for name in signed):
            return "a signed header is missing"
        query = event.get("multiValueQueryStringParameters") or {}
        url = f"http://{headers['host']}{event['path']}"
        if query:
            url += "?" + urlencode([(k, v) for k, vs in query.items() for v in vs], quote_via=quote)
        body = (event.get("body") or "").encode()
        request = AWSRequest(method=event["httpMethod"], url=url, data=body,
                             headers={name: headers[name] for name in signed})  # fmt: skip
        request.context["timestamp"] = amz_date
        auth = SigV4Auth(self.credentials, "execute-api", self.region)
        expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
        if not hmac.compare_digest(expected, match["signature"]):
            return "The request signature we calculated does not match the signature you provided."
        return None
