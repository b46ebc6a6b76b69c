"""The API's request and response bodies (pydantic): what docs/openapi.json documents."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from raylauncher.config import NAME_PATTERN, Pipeline
from raylauncher.model import JobStatus, ReasonCode


class SubmitJobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pipeline: str = Field(pattern=NAME_PATTERN, description="a pipeline's name from pipelines.yaml")
    params: dict[str, Any] = Field(
        default_factory=dict, description="the run's params, checked against the pipeline's `params` declaration"
    )


class PhaseTime(BaseModel):
    status: JobStatus
    at: str = Field(description="when the job entered this status (ISO 8601, UTC)")


class AttemptView(BaseModel):
    attempt: int
    run_id: str = Field(description="the attempt's Ray submission id and cluster key: <job>, <job>-a2, …")
    status: JobStatus = Field(description="how the attempt ended")
    reason_code: ReasonCode | None
    reason_message: str | None
    phase_times: dict[str, str] = Field(description="status -> when the attempt entered it")
    cluster_seconds: float = Field(description="seconds the attempt's cluster was up")
    ended_at: str
    log_location: str | None = Field(default=None, description="s3:// URI of the attempt's Ray log, if kept")


class ClusterView(BaseModel):
    backend: str | None = Field(description="`ec2` or `local`")
    name: str | None = Field(description="the cluster's name (EC2: its ray-cluster-name tag)")
    head_ip: str | None = Field(description="the head node's private IP (EC2)")
    nodes: int | None = Field(description="nodes that had joined when the job was submitted, head included")
    dashboard_url: str | None = Field(
        default=None, description="local clusters: the Ray dashboard on 127.0.0.1 (EC2: use `raylauncher dashboard`)"
    )


class KeptClusterView(BaseModel):
    """The cluster a job left up (warm for the pipeline's next job, or held for debugging)."""

    status: str = Field(description="the cluster record's status: ACTIVE, WARM, ASSIGNED, HELD, TEARING_DOWN, TORN_DOWN, "
                        "TEARDOWN_FAILED")
    name: str
    created_at: str
    origin_job_id: str = Field(description="the job whose run brought the cluster up (its Ray token is that run's)")
    origin_attempt: int = 1
    jobs_served: list[str] = Field(description="the jobs that ran on it, in order")
    idle_since: str | None = Field(default=None, description="idle (warm or held) since")
    idle_until: str | None = Field(default=None, description="WARM: torn down after this unless a job arrives")
    held_until: str | None = Field(default=None, description="HELD: torn down after this (or at `jobs release`)")
    torn_down_at: str | None = None
    warm_seconds: float = Field(description="seconds it was up idle, waiting for a job")
    held_seconds: float = Field(description="seconds it was held for debugging")
    cluster_seconds: float | None = Field(default=None, description="created -> torn down")


class CostView(BaseModel):
    cluster_seconds: float = Field(description="seconds clusters of this job were (or are) up, every attempt")
    estimate_usd: float | None = Field(
        description="cluster_seconds/3600 x (head + workers x worker price) from the pipeline's "
        "`cluster.head_usd_per_hour`/`worker_usd_per_hour`; workers = nodes - 1 (min_workers while "
        "unknown); null when a price is not configured"
    )


class JobView(BaseModel):
    job_id: str
    pipeline: str
    trigger: Literal["s3", "api", "schedule"]
    status: JobStatus
    created_at: str
    updated_at: str
    phase_times: list[PhaseTime] = Field(description="the statuses the job went through, in order")
    reason_code: ReasonCode | None = Field(description="why the job did not succeed (null while it may)")
    reason_message: str | None
    cancel_requested: bool
    params: dict[str, Any]
    object_count: int = Field(description="objects in the job's manifest")
    ray_status: str | None = Field(description="Ray's own job status, not ours")
    manifest_location: str | None = Field(description="s3:// URI of the manifest (the objects the job reads)")
    log_location: str | None = Field(description="s3:// URI of the Ray job's log, once kept")
    session_logs_location: str | None = Field(
        default=None, description="s3:// URI of the Ray session logs the driver kept, if any"
    )
    output_location: str | None = Field(description="s3:// URI prefix the job writes its output under")
    summary: dict[str, Any] | None = Field(description="the Ray job's own summary, when it wrote one")
    attempt: int = Field(description="the current (or last) attempt; retries run on a new cluster")
    attempts: list[AttemptView] = Field(description="earlier attempts, oldest first (the last one is the job itself)")
    retry_at: str | None = Field(description="a QUEUED retry is not launched before this time")
    cluster_seconds: float = Field(description="seconds clusters of this job were (or are) up, every attempt")
    cluster: ClusterView | None = Field(default=None, description="the current attempt's cluster, once it was up")
    cost: CostView
    cluster_key: str | None = Field(default=None, description="the kept cluster's record this job ran on or left")
    warm: bool = Field(default=False, description="the job ran on a warm cluster (no `ray up`)")
    kept: Literal["warm", "held"] | None = Field(
        default=None, description="its cluster stayed up after it: warm (for the next job) or held (debugging)"
    )
    kept_seconds: float | None = Field(default=None, description="how long its cluster stayed up idle/held after it")
    queue_position: int | None = Field(
        default=None, description="QUEUED jobs (GET /jobs/{job_id}): 1 = launched next when a cluster slot frees"
    )
    release: str | None = Field(
        default=None, description="the release (content hash of code, jobs, pipelines and settings) it was created under"
    )


class InputsView(BaseModel):
    count: int = Field(description="objects in the job's manifest")
    first: list[str] = Field(description="the first (up to 5) keys of the manifest")


class JobDetail(JobView):
    """GET /jobs/{job_id}: the listing's view and what needs one more read."""

    inputs: InputsView | None = Field(description="the manifest's objects; null when it cannot be read")
    kept_cluster: KeptClusterView | None = Field(
        default=None, description="the warm or held cluster the job ran on or left up, as its record has it"
    )


class JobPage(BaseModel):
    jobs: list[JobView]
    next_token: str | None = Field(description="pass as `next_token` for the next page; null on the last page")


class LogChunk(BaseModel):
    content: str = Field(description="the log's UTF-8 text from `offset` on, at most ~1 MiB (never a split character)")
    next_offset: int = Field(description="pass as `offset` for what follows; equals `offset` when nothing is new")
    complete: bool = Field(description="true once the job is terminal and the log was read to its end")
    log_location: str = Field(description="s3:// URI of the log (the current attempt's)")


class PipelineList(BaseModel):
    pipelines: list[Pipeline] = Field(description="every pipeline of the deployed pipelines.yaml, by name")
    release: str | None = Field(
        default=None, description="the release the API runs: new jobs are stamped with it (content hash of code, "
        "jobs, pipelines and settings)"
    )


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable, e.g. INVALID_PARAMS, JOB_NOT_FOUND")
    message: str = Field(description="what is wrong and what to change")
    field: str | None = Field(
        description="the input at fault: a body path (`pipeline`, `params.input_prefix`), a query, path or "
        "header parameter (`limit`, `job_id`, `Idempotency-Key`), or `body`; null if none is"
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail
