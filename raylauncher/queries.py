"""Read-side queries for the HTTP API: jobs listed newest first, filtered, one page at a time.

The page token is opaque to clients: urlsafe base64 of the JSON position `(created_at, job_id)`
of the last job on the previous page. Jobs are ordered by that pair, newest first, so a job
created while a client pages through never shifts the pages it has not read yet.
"""

from __future__ import annotations

import base64
import binascii
import json

from raylauncher.errors import RayLauncherError
from raylauncher.model import Job, JobStatus
from raylauncher.store import JobStore

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


def list_jobs(
    store: JobStore,
    pipeline: str | None = None,
    status: JobStatus | None = None,
    limit: int = 20,
    next_token: str | None = None,
) -> tuple[list[Job], str | None]:
    """One page of jobs, newest first, and the token of the next page (None on the last page).

    Raises InvalidPageToken for a token this function did not hand out, ValueError for a limit
    outside 1..MAX_PAGE_SIZE (the API validates it first)."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    after = decode_page_token(next_token) if next_token is not None else None
    jobs = sorted(store.list_jobs(), key=lambda j: (j.created_at, j.job_id), reverse=True)
    selected = [
        j
        for j in jobs
        if (pipeline is None or j.pipeline == pipeline)
        and (status is None or j.status == status)
        and (after is None or (j.created_at, j.job_id) < after)
    ]
    page = selected[:limit]
    return page, (encode_page_token(page[-1]) if len(selected) > limit else None)
