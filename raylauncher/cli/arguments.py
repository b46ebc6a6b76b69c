"""Argument types and defaults of the operator commands. Light on purpose: building the parser
imports this, not the commands, so `raylauncher driver …` on the bastion never loads the
terminal UI (rich is the `cli` extra, which the bastion does not install)."""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

#: Seconds between polls while waiting for a job or following its log.
POLL_INTERVAL_S = 2.0
RAY_DASHBOARD_PORT = 8265
PORT_FORWARDING_DOCUMENT = "AWS-StartPortForwardingSessionToRemoteHost"
_RELATIVE = re.compile(r"^(\d+)([mhd])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days"}


def since_value(value: str) -> str:
    """argparse type for --since: `30m`, `1h`, `2d` or an ISO 8601 time (kept as given: the API reads it)."""
    if _RELATIVE.match(value):
        return value
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: use 30m, 1h, 2d or an ISO time like 2026-01-01T00:00:00Z") from None
    return value


def since_time(value: str, now: datetime | None = None) -> datetime:
    """The moment a --since value names."""
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(value)
    if match:
        return now - timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def param_value(value: str) -> tuple[str, Any]:
    """argparse type for --param: `k=v` (a string) or `k:=JSON` (a number, boolean, …)."""
    key, sep, raw = value.partition("=")
    if not sep or not key.rstrip(":"):
        raise argparse.ArgumentTypeError(f"{value!r}: write --param key=value (or key:=JSON)")
    if not key.endswith(":"):
        return key, raw
    try:
        return key[:-1], json.loads(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: the part after := must be JSON") from None


def positive(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: a whole number of at least 1")
    return int(value)


#: A job's attempts are numbered 1 to 999 (the run id's `-a<n>` suffix, model.RUN_ID_PATTERN).
MAX_ATTEMPT = 999


def attempt_number(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= MAX_ATTEMPT:
        raise argparse.ArgumentTypeError(f"{value!r}: an attempt number from 1 to {MAX_ATTEMPT}")
    return int(value)
