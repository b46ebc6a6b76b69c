"""Warm clusters and debug holds (raylauncher/warm.py) against moto's DynamoDB: the real job
store, admission and watchdog; the driver with a recording cluster backend and a fake Ray."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from raylauncher import aws
from raylauncher.admission import TOTAL_SLOTS_ID, Launcher, pipeline_slots_id
from raylauncher.bastion import LocalBastion
from raylauncher.clusters.base import ClusterHandle
from raylauncher.config import Settings, load_pipelines, parse_pipelines
from raylauncher.driver import Driver
from raylauncher.local.stack import bootstrap
from raylauncher.model import Job, JobStatus, ReasonCode, iso, utc_now
from raylauncher.store import DynamoJobStore
from raylauncher.teardown import ClusterTeardown
from raylauncher.warm import ClusterRecord, ClusterStatus, cluster_key, profile_of
from raylauncher.watchdog import Watchdog
from raylauncher.wiring import build_store
from tests.conftest import launcher_calls
from tests.doubles import MemoryClusterTokens
from tests.integration.test_admission import slots_used


def pipelines_with(**warm: int):  # noqa: ANN201
    return parse_pipelines({"pipelines": [{
        "name": "probe", "trigger": {"prefix": "in/"}, "entrypoint": {"script": "jobs/probe/main.py"},
        "output_prefix": "out/", "max_concurrent_clusters": 1, "retry": {"backoff_s": 0}, **warm,
    }]})  # fmt: skip


class Backend:
    """Records ups and downs; every cluster is one fake handle per run id."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.expiries: list[str] = []

    def up(self, job: Job, pipeline: Any, timeout_s: float, cancelled: Any) -> ClusterHandle:
        self.calls.append(f"up {job.run_id}")
        return ClusterHandle(name=f"local-{job.run_id}", dashboard_url="http://127.0.0.1:1", python="python",
                             details={"backend": "fake", "cluster_name": f"rl-{job.run_id}"})  # fmt: skip

    def down(self, job: Job) -> int:
        self.calls.append(f"down {job.run_id}")
        return 1

    def extend_expiry(self, job: Job, until: Any) -> None:
        self.expiries.append(job.run_id)

    def lost_nodes(self, job: Job) -> list[str]:
        return []

    def collect_logs(self, job: Job, dest: Path, timeout_s: float) -> None:
        return None


class Ray:
    """A Ray Jobs API whose jobs end at once: FAILED for submission ids in `failing`."""

    def __init__(self, failing: set[str] | None = None) -> None:
        self.failing = failing or set()
        self.submitted: list[str] = []

    def list_jobs(self) -> list[Any]:
        return [SimpleNamespace(submission_id=s) for s in self.submitted]

    def submit_job(self, **kwargs: Any) -> str:
        self.submitted.append(kwargs["submission_id"])
        return str(kwargs["submission_id"])

    def get_job_info(self, job_id: str) -> Any:
        return SimpleNamespace(status="FAILED" if job_id in self.failing else "SUCCEEDED", message="boom")

    def get_job_logs(self, job_id: str) -> str:
        return "log\n"

    def stop_job(self, job_id: str) -> bool:
        return True


class Objects:
    bucket = "data"

    def uri(self, key: str) -> str:
        return f"s3://data/{key}"

    def put_bytes(self, *args: Any) -> None:
        pass

    def get_json(self, key: str) -> Any:
        from raylauncher.errors import StorageError

        raise StorageError("none", "NoSuchKey")


@pytest.fixture
def world(settings: Settings, tmp_path: Path) -> Callable[..., Any]:
    bootstrap(settings, load_pipelines(settings.pipelines_file), queue_name=f"{settings.table}-intake")
    (tmp_path / "jobs" / "probe").mkdir(parents=True)
    (tmp_path / "jobs" / "probe" / "main.py").write_text("print('ok')\n")

    def make(ray: Ray | None = None, **warm: int) -> SimpleNamespace:
        store = build_store(settings)
        pipelines = pipelines_with(**warm)
        launcher = Launcher(store, LocalBastion(settings.launcher_bin, {}), pipelines,
                            aws.client("dynamodb", settings), settings.idempotency_table, 4)  # fmt: skip
        backend = Backend()
        driver = Driver(
            store, Objects(), backend, pipelines, lambda url, headers=None: ray or Ray(), tmp_path,  # type: ignore[arg-type]
            provisioning_timeout_s=5, poll_interval_s=0.01, heartbeat_interval_s=0.2, session_logs_timeout_s=0,
            on_finished=launcher.finished, requeue=launcher.requeue, clusters=store.clusters,
            release_slot_items=launcher.slot_release_items, launch_queued=launcher.launch_queued, lease_s=1,
            warm_poll_s=0.05,
        )  # fmt: skip
        return SimpleNamespace(store=store, launcher=launcher, backend=backend, driver=driver, pipelines=pipelines)

    return make


def eventually(check: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("not reached in time")


def in_thread(target: Callable[[], Any]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def cluster_of(store: DynamoJobStore, job: Job) -> ClusterRecord:
    return store.clusters.get(cluster_key(job.run_id))


def test_two_jobs_within_the_window_share_one_cluster_then_it_is_torn_down_and_the_next_is_cold(
    settings: Settings, world: Callable[..., Any]
) -> None:
    w = world(keep_warm_seconds=2)
    store, launcher = w.store, w.launcher
    # Given a job of a pipeline that keeps its clusters warm for 2 s, launched and run
    first = launcher.try_launch(store.create(Job.new("probe", "api")))
    assert first.slot_held and launcher_calls(settings) == [f"driver start {first.job_id}"]
    holder = in_thread(lambda: w.driver.run(first.job_id))
    # When it succeeds, its cluster stays up WARM, holding the pipeline's one slot
    record = eventually(lambda: store.clusters.live("probe", ClusterStatus.WARM))[0]
    done = store.get(first.job_id)
    assert (done.status, done.kept, done.slot_held, done.cluster_key) == (JobStatus.SUCCEEDED, "warm", False, record.key)
    assert record.slot_held and slots_used(settings, pipeline_slots_id("probe")) == 1
    assert (record.owner, record.jobs_served, record.origin_job_id) == (done.owner, [first.job_id], first.job_id)
    # And the next job of the pipeline is handed to it: no slot, no driver started, no `ray up`
    second = launcher.try_launch(store.create(Job.new("probe", "api")))
    assert (second.status, second.warm, second.cluster_key, second.slot_held) == (JobStatus.LAUNCHING, True, record.key, False)
    assert len(launcher_calls(settings)) == 1 and slots_used(settings, TOTAL_SLOTS_ID) == 1
    ran = eventually(lambda: (j := store.get(second.job_id)).is_terminal and j)
    assert (ran.status, ran.warm, ran.kept) == (JobStatus.SUCCEEDED, True, "warm")
    assert ran.cluster["origin_job_id"] == first.job_id  # type: ignore[index]
    # Then after 2 s idle the holder tears it down once and gives back the slot
    holder.join(timeout=15)
    assert not holder.is_alive()
    assert w.backend.calls == [f"up {first.job_id}", f"down {first.job_id}"]
    gone = cluster_of(store, first)
    assert gone.status == ClusterStatus.TORN_DOWN and not gone.slot_held
    assert gone.jobs_served == [first.job_id, second.job_id]
    assert gone.warm_seconds >= 2 and (gone.cluster_seconds or 0) >= 2
    assert slots_used(settings, pipeline_slots_id("probe")) == 0 and slots_used(settings, TOTAL_SLOTS_ID) == 0
    assert store.get(first.job_id).kept_seconds is not None
    assert (store.get(second.job_id).kept_seconds or 0) >= 2
    # And a job after the window gets a new cluster (a slot and a driver)
    third = launcher.try_launch(store.create(Job.new("probe", "api")))
    assert (third.status, third.warm, third.slot_held) == (JobStatus.LAUNCHING, False, True)
    assert launcher_calls(settings)[-1] == f"driver start {third.job_id}"


def test_defaults_keep_nothing(settings: Settings, world: Callable[..., Any]) -> None:
    w = world()
    job = w.launcher.try_launch(w.store.create(Job.new("probe", "api")))
    done = w.driver.run(job.job_id)
    assert (done.status, done.kept, done.cluster_key, done.warm) == (JobStatus.SUCCEEDED, None, None, False)
    assert w.backend.calls == [f"up {job.job_id}", f"down {job.job_id}"]
    assert w.store.clusters.live() == [] and slots_used(settings, pipeline_slots_id("probe")) == 0


@pytest.mark.parametrize("how", ["release", "time"])
def test_a_failed_jobs_cluster_is_held_then_released_by_command_or_by_time(
    settings: Settings, world: Callable[..., Any], how: str
) -> None:
    ray = Ray()
    w = world(ray, keep_failed_cluster_seconds=2 if how == "time" else 600, keep_warm_seconds=60)
    store = w.store
    job = w.launcher.try_launch(store.create(Job.new("probe", "api")))
    ray.failing.add(job.run_id)
    holder = in_thread(lambda: w.driver.run(job.job_id))
    # Given a job that FAILED for its own reason: its cluster is HELD (not warm: never reused)
    record = eventually(lambda: store.clusters.live("probe", ClusterStatus.HELD))[0]
    failed = store.get(job.job_id)
    assert (failed.status, failed.reason_code, failed.kept) == (JobStatus.FAILED, ReasonCode.RAY_JOB_FAILED, "held")
    # (the expiry is moved right after the keep commits: wait for it, do not race it)
    assert record.held_until and eventually(lambda: w.backend.expiries == [job.run_id])
    queued = w.launcher.try_launch(store.create(Job.new("probe", "api")))
    assert queued.status == JobStatus.QUEUED  # the hold counts against the pipeline's cap of 1
    started = time.monotonic()
    if how == "release":  # When released by command, it goes at once
        store.clusters.request_release(failed)
    holder.join(timeout=60)
    # Then it is torn down, its slot given back and the queued job launched into it: released at
    # once, or when its 2 s ran out (not after the 600 s hold, nor the 60 s warm window; bounds
    # far from both, so a busy machine does not fail it)
    assert not holder.is_alive()
    took = time.monotonic() - started
    assert took < 30
    gone = store.clusters.get(record.key)
    assert gone.status == ClusterStatus.TORN_DOWN and gone.held_seconds > 0
    assert w.backend.calls == [f"up {job.run_id}", f"down {job.run_id}"]
    assert store.get(queued.job_id).status == JobStatus.LAUNCHING


def test_never_reused_after_an_infrastructure_failure_or_a_cancel(settings: Settings, world: Callable[..., Any]) -> None:
    w = world(keep_warm_seconds=60)
    job = w.launcher.try_launch(w.store.create(Job.new("probe", "api")))
    w.store.mark(job, cancel_requested=True)
    done = w.driver.run(job.job_id)
    assert done.status == JobStatus.CANCELLED and done.kept is None
    assert w.backend.calls == [f"up {job.run_id}", f"down {job.run_id}"] and w.store.clusters.live() == []


class RecordingTeardown(ClusterTeardown):
    def __init__(self) -> None:
        super().__init__(MemoryClusterTokens())
        self.torn: list[str] = []

    def _teardown(self, job: Job) -> None:
        self.torn.append(job.run_id)


@pytest.mark.parametrize("status", [ClusterStatus.WARM, ClusterStatus.ASSIGNED, ClusterStatus.HELD,
                                    ClusterStatus.ACTIVE, ClusterStatus.TEARING_DOWN])  # fmt: skip
def test_a_holder_that_died_at_any_step_has_its_cluster_torn_down_by_the_watchdog_within_the_lease(
    settings: Settings, world: Callable[..., Any], status: ClusterStatus
) -> None:
    w = world(keep_warm_seconds=600, keep_failed_cluster_seconds=600)
    store, launcher = w.store, w.launcher
    # Given a kept cluster holding the pipeline's slot whose holder died (no heartbeat since)
    origin = launcher.try_launch(store.create(Job.new("probe", "api")))
    now = utc_now()
    record = store.clusters.create(ClusterRecord(
        key=cluster_key(origin.run_id), name=f"rl-{origin.run_id}", pipeline="probe",
        profile=profile_of(w.pipelines.get("probe")), status=status, owner="driver:dead:1", heartbeat_at=iso(now),
        created_at=iso(now), origin_job_id=origin.job_id, details={"backend": "local", "session_id": 1},
        slot_held=True, last_job=origin.job_id, idle_since=iso(now), idle_until=iso(now + timedelta(seconds=600)),
        held_until=iso(now + timedelta(seconds=600)),
    ))  # fmt: skip
    store.mark(origin, slot_held=False)
    assigned = None
    if status == ClusterStatus.ASSIGNED:  # admission had handed it a job the holder never claimed
        assigned = store.create(Job.new("probe", "api"))
        assigned = store.transition(assigned, JobStatus.LAUNCHING, cluster_key=record.key, warm=True)
        store.clusters.update(record, None, assigned_job=assigned.job_id)
    teardown = RecordingTeardown()
    # When the watchdog sweeps within the lease, nothing happens
    dog = Watchdog(store, launcher, teardown=teardown, lease_s=60, clock=lambda: now + timedelta(seconds=30))
    assert dog.sweep().clusters_torn_down == [] and teardown.torn == []
    # Then one lease later it tears the cluster down from its record, gives back the slot
    later = now + timedelta(seconds=61)
    report = Watchdog(store, launcher, teardown=teardown, lease_s=60, clock=lambda: later).sweep()
    assert report.clusters_torn_down == [record.key] and teardown.torn == [origin.run_id]
    gone = store.clusters.get(record.key)
    assert gone.status == ClusterStatus.TORN_DOWN and gone.owner == "watchdog" and not gone.slot_held
    if assigned is None:
        assert slots_used(settings, pipeline_slots_id("probe")) == 0
    else:  # and the job it had been given is queued again and launched on a new cluster
        again = store.get(assigned.job_id)
        assert (again.status, again.warm, again.slot_held) == (JobStatus.LAUNCHING, False, True)
        assert launcher_calls(settings)[-1] == f"driver start {assigned.job_id}"
    # And a second sweep changes nothing
    assert Watchdog(store, launcher, teardown=teardown, lease_s=60, clock=lambda: later).sweep().clusters_torn_down == []


def test_a_warm_clusters_time_running_out_is_enforced_by_the_watchdog_even_with_a_live_lease(
    settings: Settings, world: Callable[..., Any]
) -> None:
    w = world(keep_warm_seconds=10)
    store = w.store
    origin = w.launcher.try_launch(store.create(Job.new("probe", "api")))
    now = utc_now()
    record = store.clusters.create(ClusterRecord(
        key=cluster_key(origin.run_id), name="c", pipeline="probe", profile="x", status=ClusterStatus.WARM,
        owner="driver:stuck:1", heartbeat_at=iso(now + timedelta(seconds=100)), created_at=iso(now),
        origin_job_id=origin.job_id, slot_held=True, idle_since=iso(now), idle_until=iso(now + timedelta(seconds=10)),
    ))  # fmt: skip
    teardown = RecordingTeardown()
    report = Watchdog(store, w.launcher, teardown=teardown, lease_s=60,
                      clock=lambda: now + timedelta(seconds=100)).sweep()  # fmt: skip
    assert report.clusters_torn_down == [record.key]


def test_the_token_of_a_kept_cluster_is_never_deleted_as_an_orphan(settings: Settings, world: Callable[..., Any]) -> None:
    from raylauncher.cluster_tokens import SsmClusterTokens

    w = world(keep_warm_seconds=600)
    store = w.store
    tokens = SsmClusterTokens(aws.client("ssm", settings))
    # Given a job that ended with its cluster kept warm (its token belongs to that first job; the
    # keep names the cluster on the job in the same transaction)
    origin = store.create(Job.new("probe", "api"))
    tokens.issue(origin)
    origin = store.transition(store.transition(origin, JobStatus.LAUNCHING), JobStatus.CANCELLED,
                              cluster_key=cluster_key(origin.run_id), kept="warm")  # fmt: skip
    now = utc_now()
    record = store.clusters.create(ClusterRecord(
        key=cluster_key(origin.run_id), name="c", pipeline="probe", profile="x", status=ClusterStatus.WARM,
        owner="driver:x:1", heartbeat_at=iso(now), created_at=iso(now), origin_job_id=origin.job_id,
        idle_since=iso(now), idle_until=iso(now + timedelta(seconds=600)),
    ))  # fmt: skip
    # When the watchdog sweeps for orphaned tokens, the token stays
    dog = Watchdog(store, w.launcher, tokens=tokens, token_grace_s=0, lease_s=60, teardown=RecordingTeardown())
    assert dog.sweep().tokens_deleted == []
    assert tokens.read(origin)
    # Then once the cluster is torn down, the token is an orphan and goes
    store.clusters.update(store.clusters.update(record, ClusterStatus.TEARING_DOWN), ClusterStatus.TORN_DOWN)
    assert dog.sweep().tokens_deleted == [f"{origin.job_id}/{origin.run_id}"]


def test_the_reapers_expiry_tag_is_moved_on_the_clusters_instances_only(settings: Settings) -> None:
    from raylauncher.tags import EXPIRES_AT_TAG, RAY_CLUSTER_TAG
    from raylauncher.teardown import Ec2ClusterInstances

    ec2 = aws.client("ec2", settings.model_copy(update={"region": "eu-north-1"}))
    image = ec2.describe_images()["Images"][0]["ImageId"]

    def launch(name: str) -> str:
        tags = [{"Key": RAY_CLUSTER_TAG, "Value": name}, {"Key": EXPIRES_AT_TAG, "Value": "2026-01-01T00:00:00.000Z"}]
        return ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, TagSpecifications=[
            {"ResourceType": "instance", "Tags": tags}])["Instances"][0]["InstanceId"]  # fmt: skip

    ours, other = launch("rl-warm-a"), launch("rl-warm-b")
    until = utc_now() + timedelta(hours=1)
    assert Ec2ClusterInstances(ec2).set_expiry("rl-warm-a", until) == [ours]

    def expiry(instance: str) -> str:
        found = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["Tags"]
        return {t["Key"]: t["Value"] for t in found}[EXPIRES_AT_TAG]

    assert expiry(ours) == iso(until) and expiry(other) == "2026-01-01T00:00:00.000Z"
    ec2.terminate_instances(InstanceIds=[ours, other])


def held_job(store: DynamoJobStore) -> tuple[Job, ClusterRecord]:
    job = store.create(Job.new("sales-summary", "api"))
    job = store.transition(store.transition(job, JobStatus.LAUNCHING), JobStatus.CANCELLED)  # any terminal job
    now = utc_now()
    record = store.clusters.create(ClusterRecord(
        key=cluster_key(job.run_id), name="rl-x", pipeline="sales-summary", profile="x", status=ClusterStatus.HELD,
        owner="driver:x:1", heartbeat_at=iso(now), created_at=iso(now), origin_job_id=job.job_id, last_job=job.job_id,
        jobs_served=[job.job_id], idle_since=iso(now), held_until=iso(now + timedelta(hours=1)),
    ))  # fmt: skip
    return store.mark(job, cluster_key=record.key, kept="held"), record


def test_release_over_the_api_ends_the_hold_and_the_job_shows_its_kept_cluster(api: Any) -> None:
    store = build_store(api.settings)
    job, record = held_job(store)
    # Given a job whose cluster is held: GET shows the hold
    shown = api.call("GET", f"/jobs/{job.job_id}").body
    assert shown["kept"] == "held" and shown["kept_cluster"]["status"] == "HELD"
    assert shown["kept_cluster"]["held_until"] == record.held_until
    # When it is released, Then the record asks its holder to tear it down now
    response = api.call("POST", f"/jobs/{job.job_id}/release")
    assert response.status == 200 and response.body["job_id"] == job.job_id
    after = store.clusters.get(record.key)
    assert after.release_requested and after.deadline() is not None and after.deadline() <= utc_now()
    # And a job with no held cluster is a conflict
    other = store.create(Job.new("sales-summary", "api"))
    assert api.call("POST", f"/jobs/{other.job_id}/release").status == 409
    assert api.call("POST", "/jobs/sales-summary-20260101-000000-00000000/release").status == 404


class FailingTeardown(RecordingTeardown):
    def _teardown(self, job: Job) -> None:
        from raylauncher.errors import TeardownFailed

        self.torn.append(job.run_id)
        raise TeardownFailed("instances still running", 3)


def lapsed_warm_cluster(w: SimpleNamespace, now: Any) -> tuple[Job, ClusterRecord]:
    """A WARM cluster holding the pipeline's slot, its holder's last heartbeat at `now`."""
    origin = w.launcher.try_launch(w.store.create(Job.new("probe", "api")))
    record = w.store.clusters.create(ClusterRecord(
        key=cluster_key(origin.run_id), name=f"rl-{origin.run_id}", pipeline="probe",
        profile=profile_of(w.pipelines.get("probe")), status=ClusterStatus.WARM, owner="driver:h:1",
        heartbeat_at=iso(now), created_at=iso(now), origin_job_id=origin.job_id, slot_held=True,
        last_job=origin.job_id, idle_since=iso(now), idle_until=iso(now + timedelta(seconds=600)),
    ))  # fmt: skip
    w.store.mark(origin, slot_held=False)
    return origin, record


def test_a_holder_that_renewed_its_lease_after_the_watchdog_read_keeps_its_cluster(
    settings: Settings, world: Callable[..., Any]
) -> None:
    w = world(keep_warm_seconds=600)
    now = utc_now() - timedelta(seconds=120)
    # Given a warm cluster whose heartbeat the watchdog read as lapsed
    _, seen = lapsed_warm_cluster(w, now)
    # When its holder renews the lease before the watchdog's takeover is written
    w.store.clusters.renew_lease(seen.key, "driver:h:1")
    teardown = RecordingTeardown()
    dog = Watchdog(w.store, w.launcher, teardown=teardown, lease_s=60)
    # Then the takeover (conditional on the heartbeat it saw) does not apply: nothing torn down
    assert dog.tear_down_cluster(seen, utc_now(), "lease lapsed") is None
    assert teardown.torn == []
    after = w.store.clusters.get(seen.key)
    assert (after.status, after.owner) == (ClusterStatus.WARM, "driver:h:1")
    # And a sweep, which reads the record again, leaves the live holder alone too
    assert dog.sweep().clusters_torn_down == [] and teardown.torn == []


def test_a_kept_cluster_whose_teardown_fails_is_reported_every_sweep_not_counted_as_torn_down(
    settings: Settings, world: Callable[..., Any]
) -> None:
    w = world(keep_warm_seconds=600)
    now = utc_now()
    _, record = lapsed_warm_cluster(w, now)
    teardown = FailingTeardown()
    later = now + timedelta(seconds=61)
    # When the watchdog takes over the lapsed cluster and its teardown fails
    report = Watchdog(w.store, w.launcher, teardown=teardown, lease_s=60, clock=lambda: later).sweep()
    # Then it is reported as a failed teardown (the alarm), not as torn down
    assert report.teardown_failed == [record.key] and report.clusters_torn_down == []
    failed = w.store.clusters.get(record.key)
    assert failed.status == ClusterStatus.TEARDOWN_FAILED and failed.torn_down_at
    # And the next sweep reports it again (no second teardown: the reaper and a person act)
    again = Watchdog(w.store, w.launcher, teardown=teardown, lease_s=60, clock=lambda: later).sweep()
    assert again.teardown_failed == [record.key] and teardown.torn == [record.origin_run_id]


class SilentRay(Ray):
    """A Ray Jobs API that stops answering once `silent` is set (a warm cluster gone bad)."""

    silent = False

    def list_jobs(self) -> list[Any]:
        if self.silent:
            raise ConnectionError("connection refused")
        return super().list_jobs()


def test_a_warm_cluster_that_no_longer_answers_is_torn_down_and_its_job_gets_a_new_cluster(
    settings: Settings, world: Callable[..., Any]
) -> None:
    ray = SilentRay()
    w = world(ray, keep_warm_seconds=60)
    store, launcher = w.store, w.launcher
    # Given a job whose cluster was kept warm
    first = launcher.try_launch(store.create(Job.new("probe", "api")))
    holder = in_thread(lambda: w.driver.run(first.job_id))
    record = eventually(lambda: store.clusters.live("probe", ClusterStatus.WARM))[0]
    # When its Jobs API stops answering and the next job is handed to it
    ray.silent = True
    second = launcher.try_launch(store.create(Job.new("probe", "api")))
    assert second.cluster_key == record.key
    # Then the holder tears the cluster down instead of running the job there, and the job is
    # queued again and launched with a slot of its own (a new cluster, a driver)
    holder.join(timeout=15)
    assert not holder.is_alive()
    assert w.backend.calls == [f"up {first.job_id}", f"down {first.job_id}"]
    assert store.clusters.get(record.key).status == ClusterStatus.TORN_DOWN
    again = store.get(second.job_id)
    assert (again.status, again.warm, again.slot_held, again.cluster_key) == (JobStatus.LAUNCHING, False, True, None)
    assert launcher_calls(settings)[-1] == f"driver start {second.job_id}"


class TaglessBackend(Backend):
    def extend_expiry(self, job: Job, until: Any) -> None:
        self.expiries.append(job.run_id)
        raise RuntimeError("CreateTags: UnauthorizedOperation")


def test_a_cluster_whose_reaper_expiry_cannot_be_moved_is_not_kept(settings: Settings, world: Callable[..., Any]) -> None:
    w = world(keep_warm_seconds=600)
    w.driver._backend = w.backend = TaglessBackend()  # noqa: SLF001 - the one part that fails here
    job = w.launcher.try_launch(w.store.create(Job.new("probe", "api")))
    # When the job succeeds but the cluster's expiry tag cannot be moved forward
    holder = in_thread(lambda: w.driver.run(job.job_id))
    # Then the cluster does not stay up (600 s) past the bound its reaper knows: it goes at once
    holder.join(timeout=15)
    assert not holder.is_alive()
    assert w.store.get(job.job_id).status == JobStatus.SUCCEEDED
    assert w.backend.calls == [f"up {job.run_id}", f"down {job.run_id}"]
    gone = w.store.clusters.get(cluster_key(job.run_id))
    assert gone.status == ClusterStatus.TORN_DOWN and not gone.slot_held
    assert slots_used(settings, pipeline_slots_id("probe")) == 0
