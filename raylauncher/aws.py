"""boto3 clients built from Settings, and the one helper that reads a ClientError's code."""

from __future__ import annotations

from typing import Any

import boto3
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from raylauncher.config import Settings

_RETRIES = Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=30)


#: botocore's service models, read from disk once per process and shared by every client
#: (reading them is most of what making a client costs: a Lambda cold start makes several).
_MODELS = botocore.loaders.create_loader()


def client(service: str, settings: Settings, config: Config | None = None) -> Any:
    """A boto3 client for `service`; in local mode it talks to the moto server on 127.0.0.1.
    Each client has its own session: credentials are resolved when it is made, as before.
    `config` overrides the default retries and timeouts (e.g. for best-effort calls)."""
    core = botocore.session.get_session()
    core.register_component("data_loader", _MODELS)
    return boto3.session.Session(botocore_session=core).client(
        service, region_name=settings.region, endpoint_url=settings.endpoint_url,
        config=_RETRIES.merge(config) if config else _RETRIES,
    )


def error_code(err: ClientError | BotoCoreError) -> str:
    """The AWS error code of a ClientError; for a BotoCoreError (no answer: connection,
    timeout, credentials) the exception's class name."""
    if isinstance(err, ClientError):
        return str(err.response.get("Error", {}).get("Code", ""))
    return type(err).__name__
