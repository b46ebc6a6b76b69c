"""The state machine: every allowed and every forbidden transition, and job ids."""

from datetime import UTC, datetime
from itertools import product

import pytest

from raylauncher.errors import IllegalTransition, InvalidJobId
from raylauncher.model import (
    OUTCOMES,
    TERMINAL,
    TRANSITIONS,
    Job,
    JobStatus,
    check_transition,
    is_valid_job_id,
    job_prefix,
    new_job_id,
)

S = JobStatus
ALLOWED = {
    (S.QUEUED, S.LAUNCHING), (S.QUEUED, S.CANCELLED), (S.QUEUED, S.FAILED),
    (S.LAUNCHING, S.PROVISIONING), (S.LAUNCHING, S.CANCELLED), (S.LAUNCHING, S.FAILED),
    (S.PROVISIONING, S.SUBMITTED), (S.PROVISIONING, S.TEARING_DOWN),
    (S.SUBMITTED, S.RUNNING), (S.SUBMITTED, S.TEARING_DOWN),
    (S.RUNNING, S.TEARING_DOWN),
    (S.TEARING_DOWN, S.SUCCEEDED), (S.TEARING_DOWN, S.FAILED), (S.TEARING_DOWN, S.CANCELLED),
    (S.TEARING_DOWN, S.TIMED_OUT), (S.TEARING_DOWN, S.TEARDOWN_FAILED),
    # retries: back to QUEUED once no cluster exists (never launched / verified torn down)
    (S.LAUNCHING, S.QUEUED), (S.TEARING_DOWN, S.QUEUED),
}  # fmt: skip
ALL_PAIRS = list(product(JobStatus, JobStatus))


@pytest.mark.parametrize(("current", "target"), sorted(ALLOWED))
def test_allowed_transition_passes(current: JobStatus, target: JobStatus) -> None:
    # Given a job in `current`, When it moves to `target`, Then the table allows it
    check_transition(current, target)


@pytest.mark.parametrize(("current", "target"), [p for p in ALL_PAIRS if p not in ALLOWED])
def test_forbidden_transition_raises(current: JobStatus, target: JobStatus) -> None:
    # Given a job in `current`, When it is asked to move to `target`, Then the table refuses
    with pytest.raises(IllegalTransition) as err:
        check_transition(current, target)
    assert (err.value.current, err.value.target) == (current.value, target.value)


def test_table_is_exactly_the_documented_one() -> None:
    # Given the transition table, Then it lists exactly the allowed pairs above
    assert {(a, b) for a, nxt in TRANSITIONS.items() for b in nxt} == ALLOWED


def test_a_cluster_can_only_be_left_through_teardown() -> None:
    # Given any state in which a cluster may exist, Then its only exits lead to TEARING_DOWN
    # (or, before a cluster exists, to SUBMITTED/RUNNING which themselves only exit there)
    for state in (S.PROVISIONING, S.SUBMITTED, S.RUNNING):
        assert TRANSITIONS[state] <= {S.SUBMITTED, S.RUNNING, S.TEARING_DOWN}


def test_terminal_states_and_outcomes() -> None:
    assert TERMINAL == {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.TIMED_OUT, S.TEARDOWN_FAILED}
    assert OUTCOMES == {S.SUCCEEDED, S.FAILED, S.CANCELLED, S.TIMED_OUT}


def test_new_job_is_queued_with_a_shell_safe_id() -> None:
    # Given a pipeline name and a time, When a job is made
    job = Job.new("sales-summary", "s3", datetime(2026, 11, 25, 8, 30, 0, tzinfo=UTC))
    # Then it is QUEUED at version 0, its id carries the pipeline and time and is valid
    assert job.status == S.QUEUED and job.version == 0
    assert job.job_id.startswith("sales-summary-20261125-083000-")
    assert is_valid_job_id(job.job_id)
    assert job.phase_times == {"QUEUED": "2026-11-25T08:30:00.000Z"}
    assert job_prefix(job.job_id) == f"jobs/{job.job_id}/"


def test_two_job_ids_at_the_same_second_differ() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert new_job_id("p-1", now) != new_job_id("p-1", now)


@pytest.mark.parametrize(
    "value",
    ["", "a", "Upper-case-1", "x; rm -rf /", "job id", "job$(id)", "job`id`", "-leading", "trailing-", "a" * 70, "é-job"],
)
def test_unsafe_job_ids_are_rejected(value: str) -> None:
    # Given a value that is not a job id, Then it can never reach a shell
    assert not is_valid_job_id(value)
    with pytest.raises(InvalidJobId):
        job_prefix(value)
