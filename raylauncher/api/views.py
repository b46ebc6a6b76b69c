"""Jobs as the API shows them: the stored record turned into its view (no I/O here)."""

from __future__ import annotations

from typing import Any

from raylauncher.api.models import AttemptView, ClusterView, CostView, JobView, PhaseTime
from raylauncher.config import ClusterProfile, PipelinesConfig
from raylauncher.errors import UnknownPipeline
from raylauncher.model import Job, JobStatus


def s3_uri(bucket: str, key: str | None) -> str | None:
    return f"s3://{bucket}/{key}" if key else None


def cluster_view(details: dict[str, Any] | None) -> ClusterView | None:
    """What the cluster backends record (clusters/ec2.py, clusters/local.py), as the API shows it."""
    if not details:
        return None
    nodes = details.get("nodes")
    return ClusterView(
        backend=details.get("backend"),
        name=details.get("cluster_name"),
        head_ip=details.get("head_ip"),
        nodes=nodes if isinstance(nodes, int) and not isinstance(nodes, bool) else None,
        dashboard_url=details.get("dashboard_url") if details.get("backend") == "local" else None,
    )


def estimate_usd(cluster_seconds: float, profile: ClusterProfile, nodes: int | None) -> float | None:
    """cluster_seconds/3600 x (head + workers x worker), workers = nodes - 1 (min_workers while
    the node count is unknown); None when a price the formula needs is not configured."""
    workers = max(nodes - 1, 0) if nodes is not None else profile.min_workers
    head, worker = profile.head_usd_per_hour, profile.worker_usd_per_hour
    if head is None or (worker is None and workers > 0):
        return None
    return round(cluster_seconds / 3600 * (head + workers * (worker or 0.0)), 4)


def cost_view(job: Job, cluster_seconds: float, cluster: ClusterView | None, pipelines: PipelinesConfig) -> CostView:
    try:
        profile = pipelines.get(job.pipeline).cluster
    except UnknownPipeline:  # a pipeline removed from the config since: no price to apply
        return CostView(cluster_seconds=cluster_seconds, estimate_usd=None)
    return CostView(
        cluster_seconds=cluster_seconds,
        estimate_usd=estimate_usd(cluster_seconds, profile, cluster.nodes if cluster else None),
    )


def job_view(job: Job, bucket: str, queue_position: int | None = None, pipelines: PipelinesConfig | None = None) -> JobView:
    """The job as GET /jobs lists it. `pipelines` gives the cost estimate its prices (without
    it, `cost.estimate_usd` is null)."""
    order = list(JobStatus)
    phases = sorted(job.phase_times.items(), key=lambda kv: (kv[1], order.index(JobStatus(kv[0]))))
    shared = (set(JobView.model_fields) & set(Job.model_fields)) - {"phase_times", "attempts", "cluster"}
    attempts = [
        AttemptView(
            **{k: v for k, v in a.items() if k in AttemptView.model_fields},
            log_location=s3_uri(bucket, a.get("logs_key")),
        )
        for a in job.attempts
    ]
    cluster_seconds = round(job.cluster_seconds(), 3)
    cluster = cluster_view(job.cluster)
    cost = (
        cost_view(job, cluster_seconds, cluster, pipelines)
        if pipelines is not None
        else CostView(cluster_seconds=cluster_seconds, estimate_usd=None)
    )
    return JobView(
        **{name: getattr(job, name) for name in shared},
        phase_times=[PhaseTime(status=JobStatus(s), at=at) for s, at in phases],
        attempts=attempts,
        cluster_seconds=cluster_seconds,
        cluster=cluster,
        cost=cost,
        manifest_location=s3_uri(bucket, job.manifest_key),
        log_location=s3_uri(bucket, job.logs_key),
        session_logs_location=s3_uri(bucket, job.session_logs_key),
        output_location=s3_uri(bucket, job.output_prefix),
        queue_position=queue_position,
    )
