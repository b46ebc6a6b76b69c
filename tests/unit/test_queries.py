"""Job listing: order, filters, and the opaque page token (an in-memory store, no AWS)."""

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from raylauncher.model import Job, JobStatus
from raylauncher.queries import InvalidPageToken, decode_page_token, encode_page_token, list_jobs
from raylauncher.store import JobStore


class ListOnlyStore(JobStore):
    def __init__(self, jobs: list[Job]) -> None:
        self._jobs = jobs

    def list_jobs(self) -> list[Job]:
        return sorted(self._jobs, key=lambda j: j.created_at, reverse=True)

    def create(self, job: Job) -> Job:
        raise NotImplementedError

    def get(self, job_id: str) -> Job:
        raise NotImplementedError

    def transition(self, job: Job, target: JobStatus, **fields: Any) -> Job:
        raise NotImplementedError

    def mark(self, job: Job, **fields: Any) -> Job:
        raise NotImplementedError

    def renew_lease(self, job_id: str, owner: str) -> None:
        raise NotImplementedError

    def take_over(self, job: Job, owner: str, **fields: Any) -> Job:
        raise NotImplementedError


def jobs_at(times: list[datetime], pipeline: str = "p-1") -> list[Job]:
    return [Job.new(pipeline, "s3", t) for t in times]


def pages(store: JobStore, limit: int, **filters: Any) -> list[list[str]]:
    out, token = [], None
    while True:
        page, token = list_jobs(store, limit=limit, next_token=token, **filters)
        out.append([j.job_id for j in page])
        if token is None:
            return out


def test_pages_cover_every_job_once_newest_first_even_when_times_tie() -> None:
    # Given ten jobs, four of them created in the same millisecond
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    made = jobs_at([t0] * 4 + [t0 + timedelta(seconds=i) for i in range(1, 7)])
    # When they are read three at a time
    got = pages(ListOnlyStore(made), limit=3)
    # Then no job is lost or repeated, and the order is (created_at, job_id) descending
    flat = [i for page in got for i in page]
    expected = [j.job_id for j in sorted(made, key=lambda j: (j.created_at, j.job_id), reverse=True)]
    assert flat == expected and [len(p) for p in got] == [3, 3, 3, 1]


def test_a_job_created_while_paging_does_not_shift_later_pages() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    made = jobs_at([t0 + timedelta(seconds=i) for i in range(5)])
    store = ListOnlyStore(made)
    first, token = list_jobs(store, limit=2)
    made.append(Job.new("p-1", "s3", t0 + timedelta(hours=1)))  # newer than everything
    rest, _ = list_jobs(store, limit=10, next_token=token)
    assert [j.job_id for j in first + rest] == [j.job_id for j in reversed(made[:5])]


def test_filters() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    a = jobs_at([t0, t0 + timedelta(seconds=2)], "p-a")
    b = jobs_at([t0 + timedelta(seconds=1)], "p-b")
    b[0] = b[0].model_copy(update={"status": JobStatus.FAILED})
    store = ListOnlyStore(a + b)
    assert pages(store, 10, pipeline="p-a") == [[a[1].job_id, a[0].job_id]]
    assert pages(store, 10, status=JobStatus.FAILED) == [[b[0].job_id]]
    assert pages(store, 10, pipeline="p-a", status=JobStatus.FAILED) == [[]]


def test_token_round_trip() -> None:
    job = Job.new("p-1", "s3")
    assert decode_page_token(encode_page_token(job)) == (job.created_at, job.job_id)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "!!!",
        "x" * 600,
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        base64.urlsafe_b64encode(b"[1, 2]").decode(),
        base64.urlsafe_b64encode(b'{"created_at": 1, "job_id": "x"}').decode(),
        base64.urlsafe_b64encode(b'{"created_at": "a", "job_id": "b", "more": 1}').decode(),
    ],
)
def test_tokens_that_are_not_ours_are_refused(token: str) -> None:
    with pytest.raises(InvalidPageToken) as err:
        list_jobs(ListOnlyStore([]), next_token=token)
    assert err.value.field == "next_token"


def test_limit_is_bounded() -> None:
    with pytest.raises(ValueError, match="limit"):
        list_jobs(ListOnlyStore([]), limit=0)
