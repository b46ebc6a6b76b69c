"""Fault-table rows of intake scenarios, measured from the jobs and manifests on moto."""

from __future__ import annotations

from raylauncher.config import Settings
from raylauncher.model import JobStatus
from raylauncher.wiring import build_objects, build_store
from tests.faults import FaultRow, input_accounting, manifest_inputs

#: Nothing runs in these scenarios: a job's inputs count as processed once the job exists and
#: is not FAILED/CANCELLED.
INTAKE_ONLY = "(intake only: inputs of a recorded, not failed job count as processed)"
#: A job that failed to launch keeps its inputs in its manifest, with the reason on the job.
KEPT_BY_FAILED = "(intake only: inputs kept in the failed job's manifest count as not lost)"


def intake_row(settings: Settings, scenario: str, uploaded: list[str], failed_jobs_keep_inputs: bool = False) -> FaultRow:
    """The row of an intake scenario: the jobs' states and reasons, their most attempts, and
    the uploaded writes (key@version) lost or processed twice over the recorded jobs."""
    objects = build_objects(settings)
    jobs = build_store(settings).list_jobs()
    manifests = {j.job_id: manifest_inputs(objects.get_json(j.manifest_key)) for j in jobs}
    ended_badly = set() if failed_jobs_keep_inputs else {JobStatus.FAILED, JobStatus.CANCELLED}
    lost, twice = input_accounting(uploaded, manifests, {j.job_id for j in jobs if j.status not in ended_badly})
    return FaultRow(
        scenario=f"{scenario} {KEPT_BY_FAILED if failed_jobs_keep_inputs else INTAKE_ONLY}", backend="moto",
        terminal_state="/".join(sorted({j.status.value for j in jobs})) or "(no job)",
        reason="/".join(sorted({j.reason_code.value for j in jobs if j.reason_code})),
        attempts=max((j.attempt for j in jobs), default=0), cluster_seconds_after_fault=None, clusters_left=0,
        objects_lost=lost, objects_processed_twice=twice,
    )  # fmt: skip
