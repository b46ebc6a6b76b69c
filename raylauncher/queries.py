"""Read-side queries for the HTTP API: jobs listed newest first, filtered, one page at a time.

The page token is opaque to clients: urlsafe base64 of the JSON position `(created_at, job_id)`
of the last job on the previous page. Jobs are ordered by that pair, newest first, so a job
created while a client pages through never shifts the pages it has not read yet. A page is
one Query of a job table index (by_created, by_status or by_pipeline: store.JOB_TABLE), the
position becoming the sort key's upper bound: never a scan.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from datetime import UTC, datetime, timedelta

from raylauncher.errors import InvalidQuery, RayLauncherError
from raylauncher.model import Job, JobStatus, iso, parse_iso, utc_now
from raylauncher.store import JobQuery, JobStore, created_key

MAX_PAGE_SIZE = 100
MAX_TOKEN_LENGTH = 512


class InvalidPageToken(RayLauncherError):
    """`next_token` is not a token this API handed out (the client must start from page one)."""

    field = "next_token"

    def __init__(self, reason: str) -> None:
        super().__init__(f"next_token: {reason}; pass the next_token of the previous page unchanged")
        self.reason = reason


def encode_page_token(job: Job) -> str:
    raw = json.dumps({"created_at": job.created_at, "job_id": job.job_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[str, str]:
    """The `(created_at, job_id)` position in `token`; InvalidPageToken if it is not ours."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidPageToken("empty or too long")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        doc = json.loads(raw.decode())
    except (binascii.Error, ValueError):  # bad base64, not UTF-8, not JSON (all ValueErrors)
        raise InvalidPageToken("not a page token") from None
    if not isinstance(doc, dict) or set(doc) != {"created_at", "job_id"}:
        raise InvalidPageToken("not a page token")
    created_at, job_id = doc["created_at"], doc["job_id"]
    if not isinstance(created_at, str) or not isinstance(job_id, str):
        raise InvalidPageToken("not a page token")
    return created_at, job_id


_DURATION = re.compile(r"^([1-9][0-9]{0,5})([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(value: str, now: datetime | None = None) -> str:
    """`since` as the timestamp it means (ISO 8601 UTC, as jobs store theirs): an ISO 8601
    timestamp (a naive one is UTC) or a duration back from now: `90s`, `30m`, `1h`, `2d`.
    Raises InvalidQuery naming `since` otherwise."""
    match = _DURATION.fullmatch(value.strip())
    if match:
        return iso((now or utc_now()) - timedelta(seconds=int(match.group(1)) * _UNIT_S[match.group(2)]))
    try:
        stamp = parse_iso(value.strip())
    except ValueError:
        raise InvalidQuery(
            "since", f"since: {value[:64]!r} is neither an ISO 8601 timestamp (2026-01-01T00:00:00Z) "
            "nor a duration (30m, 1h, 2d)",
        ) from None  # fmt: skip
    return iso(stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC))


def list_jobs(
    store: JobStore,
    pipeline: str | None = None,
    status: JobStatus | None = None,
    limit: int = 20,
    next_token: str | None = None,
    since: str | None = None,
) -> tuple[list[Job], str | None]:
    """One page of jobs, newest first, and the token of the next page (None on the last page).
    `since`: only jobs created at or after it (see parse_since).

    Raises InvalidPageToken for a token this function did not hand out, InvalidQuery for a bad
    `since`, ValueError for a limit outside 1..MAX_PAGE_SIZE (the API validates it first)."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    before = created_key(*decode_page_token(next_token)) if next_token is not None else None
    created_from = parse_since(since) if since is not None else None
    query = JobQuery(status=status, pipeline=pipeline, created_from=created_from, created_before=before)
    selected = store.find(query, limit + 1)
    page = selected[:limit]
    return page, (encode_page_token(page[-1]) if len(selected) > limit else None)
