"""boto3 clients built from Settings, and the one helper that reads a ClientError's code."""

from __future__ import annotations

import os
import threading
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

#: Local mode only: the access key id each role signs its calls with on the moto server (which
#: accepts any key), so that the server's call log tells the roles apart and the IAM contract test
#: can hold each role's EC2 calls against what the stack grants that role. The bastion's (the
#: driver, `ray up`/`ray down`) are the local processes' own credentials (raylauncher.local);
#: the nodes' are in their login environment (the EC2 stand-in); the watchdog's clients ask for
#: theirs (`client(..., local_role="watchdog")`). On AWS credentials come from the roles.
LOCAL_ACCESS_KEY_IDS = {"bastion": "local-bastion-role", "nodes": "local-node-role", "watchdog": "local-watchdog-role"}
LOCAL_SECRET_ACCESS_KEY = "testing"


def local_credentials(role: str) -> dict[str, str]:
    """The environment variables that make boto3 sign as `role` on the moto server."""
    return {"AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY_IDS[role], "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_ACCESS_KEY}


#: A session is made once per credential environment (making one is about half of what a client
#: costs): every AWS_* variable, and when the shared credentials and config files last changed, so
#: a change of either still takes effect for the clients made after it.
def _credential_environment() -> tuple[object, ...]:
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))
    files = (os.environ.get("AWS_SHARED_CREDENTIALS_FILE", "~/.aws/credentials"), os.environ.get("AWS_CONFIG_FILE", "~/.aws/config"))
    stamps = []
    for name in files:
        try:
            stamps.append(os.stat(os.path.expanduser(name)).st_mtime_ns)
        except OSError:
            stamps.append(None)
    return env, tuple(stamps)


_SESSIONS: dict[tuple[object, ...], boto3.session.Session] = {}
_SESSIONS_LOCK = threading.Lock()  # a boto3 session is not safe to make clients from in parallel


def client(service: str, settings: Settings, config: Config | None = None, *, local_role: str | None = None) -> Any:
    """A boto3 client for `service`; in local mode it talks to the moto server on 127.0.0.1.
    Every call makes a new client (its own event hooks: a test may register on one), from a
    session shared by the calls that see the same credential environment.
    `config` overrides the default retries and timeouts (e.g. for best-effort calls).
    `local_role`: in local mode only, sign as that role (LOCAL_ACCESS_KEY_IDS); ignored on AWS."""
    keys: dict[str, str] = {}
    if local_role and settings.endpoint_url:
        keys = {"aws_access_key_id": LOCAL_ACCESS_KEY_IDS[local_role], "aws_secret_access_key": LOCAL_SECRET_ACCESS_KEY}
    env = _credential_environment()
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(env)
        if session is None:
            core = botocore.session.get_session()
            core.register_component("data_loader", _MODELS)
            session = _SESSIONS[env] = boto3.session.Session(botocore_session=core)
        return session.client(
            service, region_name=settings.region, endpoint_url=settings.endpoint_url,
            config=_RETRIES.merge(config) if config else _RETRIES, **keys,
        )  # fmt: skip


def error_code(err: ClientError | BotoCoreError) -> str:
    """The AWS error code of a ClientError; for a BotoCoreError (no answer: connection,
    timeout, credentials) the exception's class name."""
    if isinstance(err, ClientError):
        return str(err.response.get("Error", {}).get("Code", ""))
    return type(err).__name__
