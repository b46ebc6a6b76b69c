"""Per-pipeline authorization of the HTTP API's mutations: may this caller start a run of the
pipeline (POST /jobs), or cancel a job of it (POST /jobs/{job_id}/cancel)?

Pure: the caller comes in parsed (the API reads it from the request context, where API
Gateway's IAM authorization put the signer's ARN); nothing here reads a request or calls AWS.

- `allowed_principals` None (the default): every caller IAM lets call the API may (the stack's
  API is AWS_IAM-authorized: execute-api:Invoke decides). No identity is needed.
- A list: the caller's ARN must match one of its patterns (case-sensitive; `*` is any run of
  characters, `/` included, `?` one character). A request without an identity is refused.
- Empty: nobody over HTTP. S3 and schedule triggers never pass through here.

A role session `arn:aws:sts::ACCT:assumed-role/ROLE/SESSION` also matches the role's ARN
`arn:aws:iam::ACCT:role/ROLE`. The session ARN does not carry the role's path, so a pattern for
a role with a path must not spell it: `arn:aws:iam::ACCT:role/*ROLE`, or the session form
`arn:aws:sts::ACCT:assumed-role/ROLE/*`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

from raylauncher.errors import NotAllowed

if TYPE_CHECKING:
    from raylauncher.config import Pipeline

_ASSUMED_ROLE = re.compile(r"^arn:(?P<partition>aws[a-z-]*):sts::(?P<account>\d{12}):assumed-role/(?P<role>[^/]+)/[^/]+$")


@dataclass(frozen=True)
class Caller:
    """Who made a request: the IAM principal ARN API Gateway's IAM authorization verified
    (`requestContext.identity.userArn`), or None when the request carried no identity."""

    arn: str | None = None

    def names(self) -> tuple[str, ...]:
        """The ARNs a pattern may match for this caller: its own, and for a role session the role's."""
        if not self.arn:
            return ()
        session = _ASSUMED_ROLE.match(self.arn)
        if session is None:
            return (self.arn,)
        return self.arn, f"arn:{session['partition']}:iam::{session['account']}:role/{session['role']}"


@lru_cache(maxsize=1024)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL)


def matches(pattern: str, caller: Caller) -> bool:
    """Whether `pattern` (wildcards `*` and `?` only, case-sensitive) names the caller."""
    return any(_compiled(pattern).fullmatch(name) for name in caller.names())


def may_trigger(pipeline: Pipeline, caller: Caller) -> bool:
    allowed = pipeline.allowed_principals
    if allowed is None:
        return True
    return any(matches(pattern, caller) for pattern in allowed)


def authorize_trigger(pipeline: Pipeline, caller: Caller, job_id: str | None = None) -> None:
    """Raises NotAllowed unless `caller` may start a run of `pipeline` (with `job_id`: cancel
    that job of it; the same list governs both)."""
    if not may_trigger(pipeline, caller):
        raise NotAllowed(pipeline.name, caller.arn, job_id)
