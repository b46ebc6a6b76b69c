"""The API and schedule Lambdas, configured as the stack would configure them, on moto server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import urlencode

import pytest

from lambdas.api import handler as api_handler
from lambdas.schedule import handler as schedule_handler
from raylauncher import aws
from raylauncher.config import Settings, load_pipelines
from raylauncher.local.http_api import to_rest_event
from raylauncher.local.poller import LocalLambdaContext
from raylauncher.local.stack import LocalResources, bootstrap
from raylauncher.store import DynamoJobStore
from raylauncher.wiring import build_store


@dataclass
class ApiResponse:
    status: int
    headers: dict[str, str]
    body: Any  # the decoded JSON body

    @property
    def error(self) -> dict[str, Any]:
        return self.body["error"]


@dataclass
class ApiClient:
    """Calls the deployed API handler with REST API proxy events (built like the local server)."""

    settings: Settings

    @cached_property
    def store(self) -> DynamoJobStore:
        return build_store(self.settings)

    def event(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        raw = body if isinstance(body, str | bytes) or body is None else json.dumps(body)
        data = raw.encode() if isinstance(raw, str) else (raw or b"")
        target = path + ("?" + urlencode(query) if query else "")
        sent = {"Content-Type": "application/json"} if data else {}
        return to_rest_event(method, target, list({**sent, **(headers or {})}.items()), data)

    def send(self, event: dict[str, Any]) -> ApiResponse:
        result = api_handler.handler(event, LocalLambdaContext(aws_request_id=str(uuid.uuid4())))
        headers = {k: v[-1] for k, v in (result.get("multiValueHeaders") or {}).items()}
        headers |= result.get("headers") or {}
        return ApiResponse(int(result["statusCode"]), headers, json.loads(result["body"]) if result.get("body") else None)

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> ApiResponse:
        return self.send(self.event(method, path, body, **kwargs))


@pytest.fixture
def api(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiClient]:
    """Bucket, queues, job table and idempotency table as the stack creates them; the API and
    schedule handlers configured through their environment (local bastion = recorder)."""
    bootstrap(settings, load_pipelines(settings.pipelines_file), queue_name=f"{settings.table}-intake")
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    api_handler.services.cache_clear()
    schedule_handler.runner.cache_clear()
    yield ApiClient(settings)
    api_handler.services.cache_clear()
    schedule_handler.runner.cache_clear()


#: Inputs `seeded_api` puts in the bucket: API calls and schedules run over what is there, and
#: a prefix with nothing under it is refused (422) before a cluster is started for nothing.
SEEDED_INPUTS = ("incoming/sales/2026/seed.csv", "incoming/sales/2025/seed.csv")


@pytest.fixture
def seeded_api(api: ApiClient) -> ApiClient:
    """`api`, with one input CSV under each prefix the tests submit over."""
    s3 = aws.client("s3", api.settings)
    for key in SEEDED_INPUTS:
        s3.put_object(Bucket=api.settings.bucket, Key=key, Body=b"order_id\n1\n")
    return api


@pytest.fixture
def intake_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalResources]:
    """Resources created as the stack would, and the intake handler configured through its environment."""
    from lambdas.intake import handler as intake_handler

    resources = bootstrap(settings, load_pipelines(settings.pipelines_file), queue_name=f"{settings.table}-intake")
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    intake_handler.service.cache_clear()
    yield resources
    intake_handler.service.cache_clear()
