"""Cancel from outside the driver: at once before any cluster exists, by flag afterwards."""

import pytest

from raylauncher import aws
from raylauncher.config import Settings
from raylauncher.control import request_cancel
from raylauncher.errors import JobNotFound
from raylauncher.model import Job, JobStatus, ReasonCode
from raylauncher.store import JOB_TABLE, DynamoJobStore


@pytest.fixture
def store(settings: Settings) -> DynamoJobStore:
    ddb = aws.client("dynamodb", settings)
    ddb.create_table(**JOB_TABLE.create_table_kwargs(settings.table))
    return DynamoJobStore(ddb, settings.table)


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.LAUNCHING])
def test_before_provisioning_the_job_ends_cancelled_at_once(store: DynamoJobStore, status: JobStatus) -> None:
    job = store.create(Job.new("p-1", "api"))
    if status == JobStatus.LAUNCHING:
        job = store.transition(job, JobStatus.LAUNCHING)
    done = request_cancel(store, job.job_id)
    assert (done.status, done.reason_code, done.cancel_requested) == (JobStatus.CANCELLED, ReasonCode.CANCEL_REQUESTED, True)


def test_a_running_job_gets_the_flag_and_keeps_its_status(store: DynamoJobStore) -> None:
    job = store.create(Job.new("p-1", "api"))
    for step in (JobStatus.LAUNCHING, JobStatus.PROVISIONING, JobStatus.SUBMITTED, JobStatus.RUNNING):
        job = store.transition(job, step)
    done = request_cancel(store, job.job_id)
    # the driver sees the flag, stops the Ray job and tears the cluster down
    assert (done.status, done.version, done.cancel_requested) == (JobStatus.RUNNING, job.version, True)


def test_a_finished_job_is_left_as_it_is(store: DynamoJobStore) -> None:
    job = store.transition(store.create(Job.new("p-1", "api")), JobStatus.FAILED)
    assert request_cancel(store, job.job_id) == store.get(job.job_id)
    with pytest.raises(JobNotFound):
        request_cancel(store, "p-1-20260101-000000-deadbeef")
