"""Builds the services from Settings: the one place that picks adapters (AWS or local)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from raylauncher import aws
from raylauncher.admission import Launcher
from raylauncher.bastion import Bastion, LocalBastion, SsmBastion
from raylauncher.config import Settings, load_ec2_deployment, load_pipelines
from raylauncher.claims import DynamoObjectClaims
from raylauncher.errors import ConfigError, JobNotFound
from raylauncher.events import PUBLISH_CLIENT_CONFIG, EventBridgeJobEvents, JobEvents, NullJobEvents
from raylauncher.intake import IntakeService
from raylauncher.objects import S3ObjectStore
from raylauncher.store import DynamoJobStore

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    from raylauncher.api import ApiServices
    from raylauncher.cluster_tokens import ClusterTokens
    from raylauncher.schedules import ScheduleRunner
    from raylauncher.watchdog import Watchdog


def build_job_events(settings: Settings) -> JobEvents:
    """State-change events on the settings' bus; none without one."""
    if not settings.event_bus:
        return NullJobEvents()
    return EventBridgeJobEvents(aws.client("events", settings, PUBLISH_CLIENT_CONFIG), settings.event_bus)


def build_store(settings: Settings) -> DynamoJobStore:
    return DynamoJobStore(aws.client("dynamodb", settings), settings.table, build_job_events(settings))


def build_objects(settings: Settings) -> S3ObjectStore:
    return S3ObjectStore(aws.client("s3", settings), settings.bucket)


def build_bastion(settings: Settings) -> Bastion:
    if settings.bastion == "local":
        # The local "bastion" is this machine: the command runs with the same settings we have.
        env = {**os.environ, **settings.to_env()}
        return LocalBastion(settings.launcher_bin, env)
    assert settings.bastion_instance_id  # checked by Settings
    return SsmBastion(
        aws.client("ssm", settings), settings.bastion_instance_id, settings.launcher_bin, settings.bucket,
        log_group=settings.ssm_log_group,
    )  # fmt: skip


def build_claims(settings: Settings, store: DynamoJobStore) -> DynamoObjectClaims:
    def job_exists(job_id: str) -> bool:
        try:
            store.get(job_id)
        except JobNotFound:
            return False
        return True

    return DynamoObjectClaims(aws.client("dynamodb", settings), settings.idempotency_table, job_exists,
                              stale_after_s=settings.claim_stale_after_s)  # fmt: skip


def build_launcher(settings: Settings, store: DynamoJobStore, bastion: Bastion | None = None) -> Launcher:
    """Admission control + the bastion (and the pipelines, read once: the other services built
    with this launcher take them from it). The driver passes the bastion's own local start."""
    return Launcher(
        store, bastion or build_bastion(settings), load_pipelines(settings.pipelines_file),
        aws.client("dynamodb", settings), settings.idempotency_table, settings.max_clusters_total,
    )  # fmt: skip


def build_intake_service(
    settings: Settings, store: DynamoJobStore | None = None, launcher: Launcher | None = None
) -> IntakeService:
    store = store or build_store(settings)
    launcher = launcher or build_launcher(settings, store)
    return IntakeService(launcher.pipelines, store, build_objects(settings), launcher, claims=build_claims(settings, store),
                         release=settings.release)  # fmt: skip


def build_driver(settings: Settings):  # noqa: ANN201 - imports Ray: only on the bastion
    """The driver with its cluster backend. Imports Ray, so never on a Lambda's import path."""
    from ray.job_submission import JobSubmissionClient

    from raylauncher.clusters.base import ClusterBackend
    from raylauncher.driver import Driver

    if settings.cluster_backend == "local":
        from raylauncher.clusters.local import LocalRayBackend

        job_env = {k: v for k, v in settings.to_env().items() if k.startswith("AWS_")}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            if os.environ.get(key):
                job_env[key] = os.environ[key]
        backend: ClusterBackend = LocalRayBackend(Path(settings.state_dir) / "clusters", os.environ, job_env,
                                                  build_cluster_tokens(settings))  # fmt: skip
    else:
        from raylauncher.clusters.ec2 import Ec2RayBackend
        from raylauncher.teardown import Ec2ClusterInstances

        if not settings.ec2_deployment_file:
            raise ConfigError("RAYLAUNCHER_EC2_DEPLOYMENT_FILE is required when the cluster backend is 'ec2'")
        backend = Ec2RayBackend(
            load_ec2_deployment(settings.ec2_deployment_file),
            Path(settings.state_dir) / "clusters",
            {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
            build_cluster_tokens(settings),
            ray_bin=str(Path(sys.executable).with_name("ray")),
            dashboard_port=settings.dashboard_port,
            teardown_timeout_s=settings.teardown_timeout_s,
            down_attempts=settings.down_attempts,
            instances=Ec2ClusterInstances(aws.client("ec2", settings)),
        )
    store = build_store(settings)
    # On the bastion, "run the driver" for the next queued job is a local detached start.
    launcher = build_launcher(settings, store, LocalBastion(settings.launcher_bin, {**os.environ, **settings.to_env()}))
    return Driver(
        store=store,
        on_finished=launcher.finished,
        objects=build_objects(settings),
        backend=backend,
        pipelines=launcher.pipelines,
        jobs_client=lambda address, headers: JobSubmissionClient(address, headers=headers),
        project_dir=Path(settings.project_dir),
        provisioning_timeout_s=settings.provisioning_timeout_s,
        poll_interval_s=settings.poll_interval_s,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        log_flush_interval_s=settings.log_flush_interval_s,
        session_logs_timeout_s=settings.session_logs_timeout_s,
        requeue=launcher.requeue,
        clusters=store.clusters,
        release_slot_items=launcher.slot_release_items,
        launch_queued=launcher.launch_queued,
        lease_s=settings.driver_lease_s,
    )


def build_cluster_tokens(settings: Settings, local_role: str | None = None) -> ClusterTokens:
    """Where clusters' Ray tokens live: SSM SecureString parameters (moto's SSM locally)."""
    from raylauncher.cluster_tokens import SsmClusterTokens

    return SsmClusterTokens(aws.client("ssm", settings, local_role=local_role))


def local_launcher_bin() -> str:
    """The `raylauncher` console script of this environment (what the local bastion runs)."""
    return str(Path(sys.executable).with_name("raylauncher"))


def build_idempotency_layer(settings: Settings) -> DynamoDBPersistenceLayer:
    """Powertools idempotency on the idempotency table. One per idempotent function: Powertools
    configures a layer once, for the first function that uses it."""
    from aws_lambda_powertools.utilities.idempotency import DynamoDBPersistenceLayer

    return DynamoDBPersistenceLayer(table_name=settings.idempotency_table, boto3_client=aws.client("dynamodb", settings))


def build_api_services(settings: Settings) -> ApiServices:
    """What the HTTP API's routes use (imported here, not at the top: the intake Lambda does not
    need Powertools' event handler)."""
    from raylauncher.api import ApiServices, Submissions

    store = build_store(settings)
    launcher = build_launcher(settings, store)
    intake = build_intake_service(settings, store, launcher)
    submissions = Submissions(intake, store, build_idempotency_layer(settings))
    return ApiServices(launcher.pipelines, store, settings.bucket, submissions, launcher.finished,
                       objects=build_objects(settings), deployed_release=settings.release)  # fmt: skip


def build_schedule_runner(settings: Settings) -> ScheduleRunner:
    from raylauncher.schedules import ScheduleRunner

    store = build_store(settings)
    launcher = build_launcher(settings, store)
    return ScheduleRunner(
        build_intake_service(settings, store, launcher), launcher.pipelines, build_idempotency_layer(settings)
    )


def build_watchdog(settings: Settings) -> Watchdog:
    from raylauncher.reaper import Ec2Reaper
    from raylauncher.teardown import ClusterTeardown, Ec2TagTeardown, LocalProcessTeardown
    from raylauncher.watchdog import Watchdog

    store = build_store(settings)
    # EC2 clusters get a reaper; local clusters are processes (see raylauncher.local.leftovers).
    # In local mode its AWS calls are signed as the watchdog's role (see aws.LOCAL_ACCESS_KEY_IDS).
    ec2 = aws.client("ec2", settings, local_role="watchdog") if settings.cluster_backend == "ec2" else None
    reaper = Ec2Reaper(ec2) if ec2 else None
    tokens = build_cluster_tokens(settings, local_role="watchdog")
    teardown: ClusterTeardown = Ec2TagTeardown(ec2, tokens) if ec2 else LocalProcessTeardown(tokens)
    return Watchdog(store, build_launcher(settings, store), reaper=reaper, teardown=teardown,
                    lease_s=settings.driver_lease_s, tokens=tokens)  # fmt: skip
