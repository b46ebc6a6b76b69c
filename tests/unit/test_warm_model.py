"""The warm/held cluster rules that need no AWS: when a cluster is kept, its state table, and
which run a job's cluster belongs to."""

from __future__ import annotations

import pytest

from raylauncher.config import parse_pipelines
from raylauncher.model import Job, JobStatus, ReasonCode
from raylauncher.warm import CLUSTER_TRANSITIONS, ClusterStatus, keep_mode, origin_of, profile_of


def pipeline(**warm: int):  # noqa: ANN201
    return parse_pipelines({"pipelines": [{"name": "probe", "trigger": {"prefix": "in/"},
                                           "entrypoint": {"script": "jobs/x/main.py"}, "output_prefix": "out/", **warm}]}).get("probe")  # fmt: skip


@pytest.mark.parametrize(("warm", "held", "status", "reason", "kept"), [
    (0, 0, JobStatus.SUCCEEDED, None, None),  # the defaults: today's behaviour
    (60, 0, JobStatus.SUCCEEDED, None, "warm"),
    (60, 0, JobStatus.FAILED, ReasonCode.RAY_JOB_FAILED, "warm"),
    (60, 600, JobStatus.FAILED, ReasonCode.RAY_JOB_FAILED, "held"),
    (0, 600, JobStatus.FAILED, ReasonCode.RAY_JOB_FAILED, "held"),
    (0, 600, JobStatus.SUCCEEDED, None, None),
    (60, 600, JobStatus.TIMED_OUT, ReasonCode.RUN_TIMEOUT, None),  # a deadline
    (60, 600, JobStatus.CANCELLED, ReasonCode.CANCEL_REQUESTED, None),
    (60, 600, JobStatus.FAILED, ReasonCode.NODE_LOST, None),  # infrastructure
    (60, 600, JobStatus.FAILED, ReasonCode.DRIVER_TERMINATED, None),
    (60, 600, JobStatus.FAILED, ReasonCode.SUBMIT_FAILED, None),
    (60, 600, JobStatus.TEARDOWN_FAILED, ReasonCode.TEARDOWN_FAILED, None),
    (60, 600, JobStatus.FAILED, ReasonCode.RAY_JOB_STOPPED, None),
])  # fmt: skip
def test_a_cluster_is_kept_only_after_a_success_or_the_jobs_own_failure(warm, held, status, reason, kept) -> None:
    assert keep_mode(pipeline(keep_warm_seconds=warm, keep_failed_cluster_seconds=held), status, reason) == kept


def test_the_cluster_state_table_ends_only_through_tearing_down_and_a_held_cluster_is_never_reused() -> None:
    finals = {s for s, nxt in CLUSTER_TRANSITIONS.items() if not nxt}
    assert finals == {ClusterStatus.TORN_DOWN, ClusterStatus.TEARDOWN_FAILED}
    assert all(ClusterStatus.TEARING_DOWN in nxt for s, nxt in CLUSTER_TRANSITIONS.items() if s not in finals
               and s != ClusterStatus.TEARING_DOWN)  # fmt: skip
    assert CLUSTER_TRANSITIONS[ClusterStatus.HELD] == {ClusterStatus.TEARING_DOWN}
    assert ClusterStatus.ASSIGNED not in CLUSTER_TRANSITIONS[ClusterStatus.HELD]


def test_a_job_on_a_kept_cluster_is_torn_down_and_revoked_through_the_clusters_first_run() -> None:
    first = Job.new("probe", "api").model_copy(update={"attempt": 2})
    later = Job.new("probe", "api").model_copy(update={"cluster": {"origin_job_id": first.job_id, "origin_attempt": 2}})
    origin = origin_of(later)
    assert (origin.job_id, origin.run_id) == (first.job_id, f"{first.job_id}-a2")
    assert origin_of(first) is first  # a job on its own cluster


def test_a_changed_cluster_profile_is_another_profile() -> None:
    a, b = pipeline(), parse_pipelines({"pipelines": [{"name": "probe", "trigger": {"prefix": "in/"}, "entrypoint": {
        "script": "jobs/x/main.py"}, "output_prefix": "out/", "cluster": {"min_workers": 1}}]}).get("probe")  # fmt: skip
    assert profile_of(a) == profile_of(pipeline(keep_warm_seconds=5)) != profile_of(b)


def test_jobs_show_says_whether_the_job_ran_warm_and_how_long_its_cluster_stayed_up() -> None:
    from raylauncher.cli.render import kept_line

    job = {"job_id": "probe-1", "kept": "held", "kept_seconds": 75.0,
           "kept_cluster": {"status": "HELD", "jobs_served": ["probe-1"], "held_until": "2026-11-28T12:00:00.000Z",
                            "warm_seconds": 0, "held_seconds": 75}}  # fmt: skip
    line = kept_line(job)
    assert line and "held 1m15s after the job" in line and "raylauncher jobs release probe-1" in line
    assert kept_line({"job_id": "probe-2"}) is None


def test_the_idle_cost_of_a_kept_cluster_becomes_a_metric_of_its_pipeline() -> None:
    from raylauncher.events import state_change
    from raylauncher.job_metrics import state_change_metrics

    job = Job.new("probe", "api").model_copy(update={"status": JobStatus.SUCCEEDED, "kept": "warm"})
    noted = job.model_copy(update={"kept_seconds": 42.5})
    change = state_change(job, noted)
    assert (change.kept, change.kept_seconds, change.from_, change.to) == ("warm", 42.5, JobStatus.SUCCEEDED,
                                                                           JobStatus.SUCCEEDED)  # fmt: skip
    points = state_change_metrics(change)
    assert [(p.name, p.value, p.dimensions) for p in points] == [("WarmIdleSeconds", 42.5, {"pipeline": "probe"})]
