"""How a job attempt ended, and the message that says why (clipped, without terminal codes)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from raylauncher.model import JobStatus, ReasonCode

REASON_LIMIT = 4000  # characters of a reason message kept on the record
RAY_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
#: ANSI escape sequences (colours, cursor moves): Ray's error text arrives with them.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[@-Z\\-_]")


@dataclass(frozen=True)
class Outcome:
    status: JobStatus
    reason_code: ReasonCode | None = None
    message: str | None = None


def plain(text: str) -> str:
    """`text` without terminal escape sequences."""
    return _ANSI.sub("", text)


def clip(text: str, limit: int = REASON_LIMIT) -> str:
    """Keep the head (what failed) and the tail (the last log lines) of a long message,
    without terminal colour codes."""
    text = plain(text)
    if len(text) <= limit:
        return text
    head = limit // 4
    return text[:head] + "\n…\n" + text[-(limit - head - 3) :]


def outcome_of(ray_status: str, message: str | None) -> Outcome:
    if ray_status == "SUCCEEDED":
        return Outcome(JobStatus.SUCCEEDED)
    if ray_status == "STOPPED":
        return Outcome(JobStatus.FAILED, ReasonCode.RAY_JOB_STOPPED, clip(message or "the Ray job was stopped"))
    return Outcome(JobStatus.FAILED, ReasonCode.RAY_JOB_FAILED, clip(message or "the Ray job failed"))
