"""What API Gateway does, locally: HTTP on 127.0.0.1 in, a REST API proxy event (payload 1.0)
to the very same API Lambda handler, its answer back out.

Like a REST API with a `/{proxy+}` resource and no binary media types: `path` stays
percent-encoded, path and query parameters are decoded, the body is text. The handler runs one
request at a time (one Lambda instance): Powertools keeps the current event on the app.

Like IAM authorization, it says who called in `requestContext.identity` (`userArn`, `accessKey`,
`accountId`, `caller`, `user`), when given `identities` (`raylauncher/local/identities.py`): the access key id of
the SigV4 `Authorization` header, resolved to its principal by moto server's STS. Unlike API
Gateway it checks no signature (moto checks none either) and lets unsigned requests through
without an identity: a development stand-in, on 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote

from raylauncher.local.poller import LocalLambdaContext

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]

#: API Gateway refuses larger payloads (413) before any Lambda runs.
MAX_BODY_BYTES = 10 * 1024 * 1024
STAGE = "local"


def to_rest_event(
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes,
    source_ip: str = "127.0.0.1",
    request_id: str | None = None,
    identity: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One HTTP request as the proxy event an API Gateway REST API hands its Lambda; `identity`:
    what IAM authorization adds to `requestContext.identity` (see StsIdentities)."""
    raw_path, _, raw_query = target.partition("?")
    path = raw_path or "/"
    multi_headers: dict[str, list[str]] = {}
    for name, value in headers:
        multi_headers.setdefault(name, []).append(value)
    multi_query: dict[str, list[str]] = {}
    for name, value in parse_qsl(raw_query, keep_blank_values=True):
        multi_query.setdefault(name, []).append(value)
    request_id = request_id or str(uuid.uuid4())
    proxy = unquote(path.lstrip("/"))
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": {k: v[-1] for k, v in multi_headers.items()} or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": {"proxy": proxy} if proxy else None,
        "stageVariables": None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "httpMethod": method,
            "path": f"/{STAGE}{path}",
            "protocol": "HTTP/1.1",
            "requestId": request_id,
            "requestTimeEpoch": int(time.time() * 1000),
            "resourcePath": "/{proxy+}",
            "stage": STAGE,
            "identity": {
                "sourceIp": source_ip,
                "userAgent": multi_headers.get("User-Agent", [None])[-1],
                **(identity or {}),
            },
        },
        # No binary media types configured: API Gateway hands the body over as text.
        "body": body.decode("utf-8", errors="replace") if body else None,
        "isBase64Encoded": False,
    }


class _RequestHandler(BaseHTTPRequestHandler):
    server: LocalApiServer._Server
    protocol_version = "HTTP/1.1"

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self._write(413, {"Content-Type": ["application/json"]},
                        b'{"error":{"code":"PAYLOAD_TOO_LARGE","message":"at most 10 MiB","field":"body"}}')  # fmt: skip
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        headers = list(self.headers.items())
        identities = self.server.identities
        event = to_rest_event(self.command, self.path, headers, body, self.client_address[0],
                              identity=identities(headers) if identities else None)  # fmt: skip
        context = LocalLambdaContext(function_name="raylauncher-api-local", aws_request_id=event["requestContext"]["requestId"])
        try:
            with self.server.handler_lock:
                result = self.server.lambda_handler(event, context)
        except Exception:  # noqa: BLE001 - like API Gateway when its Lambda fails: a bare 502
            log.exception("the API handler raised")
            self._write(502, {"Content-Type": ["application/json"]}, b'{"message": "Internal server error"}')
            return
        headers = {k: [v] for k, v in (result.get("headers") or {}).items()}
        for name, values in (result.get("multiValueHeaders") or {}).items():
            headers[name] = list(values)
        payload = result.get("body") or ""
        data = base64.b64decode(payload) if result.get("isBase64Encoded") else payload.encode()
        self._write(int(result["statusCode"]), headers, data)

    def _write(self, status: int, headers: dict[str, list[str]], data: bytes) -> None:
        self.send_response(status)
        for name, values in headers.items():
            if name.lower() != "content-length":
                for value in values:
                    self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _dispatch

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.info("%s %s", self.address_string(), format % args)


class LocalApiServer:
    """The API on http://127.0.0.1:<port> (0: a free port), in a background thread."""

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        lambda_handler: Handler
        handler_lock: threading.Lock
        identities: Callable[[list[tuple[str, str]]], dict[str, str]] | None

    def __init__(
        self,
        lambda_handler: Handler,
        port: int = 0,
        identities: Callable[[list[tuple[str, str]]], dict[str, str]] | None = None,
    ) -> None:
        """`identities`: who signed a request (`StsIdentities` on the local moto server); None:
        no request has an identity (pipelines with `allowed_principals` then refuse every call)."""
        self._server = self._Server(("127.0.0.1", port), _RequestHandler)
        self._server.lambda_handler = lambda_handler
        self._server.identities = identities
        self._server.handler_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LocalApiServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> LocalApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
