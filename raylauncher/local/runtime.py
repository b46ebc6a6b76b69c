"""Local mode: the deployed system on one machine, with the same handler, driver and job.

Only thin adapters differ: moto server instead of AWS, a poller instead of the event source
mapping, a subprocess instead of SSM, and either `ray start` instead of `ray up` (backend
"local") or the real `ray up` / `ray down` against moto's EC2 with network namespaces as
instances (backend "ec2": the EC2 stand-in, raylauncher/local/ec2_standin/).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from raylauncher import PROJECT_DIR, aws
from raylauncher.config import PipelinesConfig, Settings, load_pipelines, pipelines_json
from raylauncher.local.poller import SqsPoller
from raylauncher.local.stack import FAKE_CREDENTIALS, LocalResources, MotoServer, bootstrap
from raylauncher.model import Job
from raylauncher.objects import S3ObjectStore
from raylauncher.releases import release_id
from raylauncher.store import DynamoJobStore
from raylauncher.wiring import build_objects, build_store, local_launcher_bin

#: The intake's SQS batch size (the deployed event source mapping uses the same).
INTAKE_BATCH_SIZE = 1000


@dataclass
class LocalSystem:
    settings: Settings
    pipelines: PipelinesConfig
    resources: LocalResources
    store: DynamoJobStore
    objects: S3ObjectStore
    s3: Any
    sqs: Any
    poller: SqsPoller
    standin: Any = None  # the Ec2StandIn when the backend is "ec2"
    moto: MotoServer | None = None


Backend = Literal["local", "ec2"]
#: `ray up` of a head on the stand-in takes 40-70 s on 2 cores (shared NOTES); leave room.
STANDIN_PROVISIONING_TIMEOUT_S = 600


def local_release(project_dir: Path, pipelines_file: Path) -> str:
    """The local system's release: the checkout's package and jobs, and the pipelines it runs."""
    return release_id(project_dir, ("pyproject.toml", "raylauncher", "jobs"),
                      {"pipelines": Path(pipelines_file).read_text(encoding="utf-8")})  # fmt: skip


def local_settings(endpoint_url: str, state_dir: Path, pipelines_file: Path, project_dir: Path, **changes: Any) -> Settings:
    return Settings(
        release=local_release(project_dir, pipelines_file),
        table="raylauncher-jobs",
        bucket="raylauncher-data",
        event_bus="raylauncher-events",
        pipelines_file=str(pipelines_file),
        region="us-east-1",
        endpoint_url=endpoint_url,
        bastion="local",
        launcher_bin=local_launcher_bin(),
        cluster_backend="local",
        project_dir=str(project_dir),
        state_dir=str(state_dir),
        detach="process",
        poll_interval_s=0.5,
        provisioning_timeout_s=120,
        heartbeat_interval_s=2,  # locally the watchdog sweeps every few seconds (serve)
        driver_lease_s=10,
    ).model_copy(update=changes)


@contextmanager
def local_system(
    state_dir: Path,
    pipelines_file: Path = PROJECT_DIR / "pipelines.yaml",
    project_dir: Path = PROJECT_DIR,
    start_poller: bool = True,
    backend: Backend = "local",
    region: str = "us-east-1",
    **settings_changes: Any,
) -> Iterator[LocalSystem]:
    """moto server + resources + the intake poller (+ the EC2 stand-in for backend "ec2");
    environment restored and everything stopped on exit."""
    if str(PROJECT_DIR) not in sys.path:  # lambdas/ is deployed as code, not installed as a package
        sys.path.insert(0, str(PROJECT_DIR))
    from lambdas.intake import handler as intake  # the deployed handler, unchanged

    saved = dict(os.environ)
    with MotoServer() as moto, ExitStack() as stack:
        settings = local_settings(moto.endpoint_url, state_dir, pipelines_file, project_dir, region=region,
                                  **settings_changes)  # fmt: skip
        standin = None
        if backend == "ec2":
            standin, settings = _start_standin(stack, settings, project_dir, moto)
        os.environ.update(FAKE_CREDENTIALS)
        os.environ.update(settings.to_env())
        os.environ.update({"POWERTOOLS_TRACE_DISABLED": "1", "POWERTOOLS_SERVICE_NAME": "raylauncher-intake"})
        intake.service.cache_clear()  # settings changed: build the service anew
        try:
            pipelines = load_pipelines(settings.pipelines_file)
            resources = bootstrap(settings, pipelines)
            sqs = aws.client("sqs", settings)
            poller = SqsPoller(
                sqs, resources.queue_url, resources.queue_arn, settings.region, intake.handler,
                batch_size=INTAKE_BATCH_SIZE, batching_window_s=max(p.batching_window_s for p in pipelines.pipelines),
            )  # fmt: skip
            system = LocalSystem(
                settings, pipelines, resources, build_store(settings), build_objects(settings),
                aws.client("s3", settings), sqs, poller, standin, moto,
            )  # fmt: skip
            if start_poller:
                poller.start()
            try:
                yield system
            finally:
                poller.stop()
                _end_unfinished(system)
        finally:
            intake.service.cache_clear()
            os.environ.clear()
            os.environ.update(saved)


def _end_unfinished(system: LocalSystem) -> None:
    """No cluster outlives the moto server its driver reports to (see raylauncher.local.shutdown)."""
    if all(j.is_terminal for j in system.store.list_jobs()) and not system.store.clusters.live():
        return  # (kept clusters, raylauncher/warm.py, outlive their jobs: they are stopped too)
    from raylauncher.local.shutdown import stop_unfinished_jobs
    from raylauncher.wiring import build_watchdog

    stop_unfinished_jobs(system, build_watchdog(system.settings), timeout_s=60)


def _start_standin(stack: ExitStack, settings: Settings, project_dir: Path, moto: MotoServer) -> tuple[Any, Settings]:
    """The EC2 stand-in on this moto server, and the settings that point the driver at it:
    the EC2 backend with the stand-in's deployment file, the pipelines sized for one machine."""
    from raylauncher.local.ec2_standin import Ec2StandIn
    from raylauncher.local.ec2_standin.deltas import sized_for_one_machine

    assert settings.endpoint_url
    standin = stack.enter_context(Ec2StandIn(settings.endpoint_url, settings.region, project_dir,
                                             instance_changes=moto.on_instance_change))  # fmt: skip
    sized = Path(settings.state_dir) / "pipelines-ec2-standin.json"
    sized.parent.mkdir(parents=True, exist_ok=True)
    sized.write_text(pipelines_json(sized_for_one_machine(load_pipelines(settings.pipelines_file))), encoding="utf-8")
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"  # the bastion's boto3 never asks an instance metadata service
    return standin, settings.model_copy(update={
        "cluster_backend": "ec2", "ec2_deployment_file": str(standin.deployment_file), "pipelines_file": str(sized),
        "provisioning_timeout_s": STANDIN_PROVISIONING_TIMEOUT_S,
    })  # fmt: skip


def wait_for_jobs(
    store: DynamoJobStore,
    done: Callable[[list[Job]], bool],
    timeout_s: float,
    on_progress: Callable[[list[Job]], None] | None = None,
    interval_s: float = 0.5,
) -> list[Job]:
    """Poll the job table until `done(jobs)` or the timeout; returns the last list seen."""
    deadline = time.monotonic() + timeout_s
    while True:
        jobs = store.list_jobs()
        if on_progress:
            on_progress(jobs)
        if done(jobs) or time.monotonic() > deadline:
            return jobs
        time.sleep(interval_s)
