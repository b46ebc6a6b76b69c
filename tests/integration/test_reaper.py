"""The reaper against moto server's EC2: only nodes of our clusters past their expires-at go."""

from datetime import timedelta

from raylauncher import aws
from raylauncher.config import Settings, load_pipelines
from raylauncher.local.stack import bootstrap
from raylauncher.model import Job, JobStatus, iso, new_job_id, utc_now
from raylauncher.reaper import ClusterReaper, Ec2Reaper, ReaperError
from raylauncher.tags import EXPIRES_AT_TAG, RAY_CLUSTER_TAG
from raylauncher.watchdog import Watchdog
from raylauncher.wiring import build_launcher, build_store

AMI = "ami-12c6146b"  # one of moto's built-in images


def launch(ec2, tags: dict[str, str], count: int = 1) -> list[str]:
    made = ec2.run_instances(
        ImageId=AMI, MinCount=count, MaxCount=count,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
    )  # fmt: skip
    return [i["InstanceId"] for i in made["Instances"]]


def states(ec2, ids: list[str]) -> set[str]:
    found = ec2.describe_instances(InstanceIds=ids)["Reservations"]
    return {i["State"]["Name"] for r in found for i in r["Instances"]}


def cluster() -> str:
    return "rl-" + new_job_id("sales-summary", utc_now())


def test_only_nodes_of_our_expired_clusters_are_terminated(settings: Settings) -> None:
    # A region of its own on the shared moto server: moto's SSM SendCommand adds every EC2
    # instance of its region to a command's targets, which other tests check.
    ec2 = aws.client("ec2", settings.model_copy(update={"region": "eu-west-2"}))
    now = utc_now()
    # Given an expired cluster (head + 2 workers), a cluster still within its deadline, a node
    # of ours without a readable expires-at, and someone else's expired instance
    expired = launch(ec2, {RAY_CLUSTER_TAG: cluster(), EXPIRES_AT_TAG: iso(now - timedelta(hours=1))}, count=3)
    running = launch(ec2, {RAY_CLUSTER_TAG: cluster(), EXPIRES_AT_TAG: iso(now + timedelta(hours=1))})
    unreadable = launch(ec2, {RAY_CLUSTER_TAG: cluster(), EXPIRES_AT_TAG: "tomorrow"})
    foreign = launch(ec2, {RAY_CLUSTER_TAG: "someone-elses", EXPIRES_AT_TAG: iso(now - timedelta(hours=1))})
    # When the reaper runs
    reaped = Ec2Reaper(ec2).reap(now)
    # Then exactly the expired cluster's nodes are terminated
    assert sorted(r.instance_id for r in reaped if r.instance_id in expired + running + unreadable + foreign) == sorted(expired)
    assert states(ec2, expired) <= {"shutting-down", "terminated"}
    assert states(ec2, running + unreadable + foreign) == {"running"}
    # And a second run finds nothing more of them to do
    assert not [r for r in Ec2Reaper(ec2).reap(now) if r.instance_id in expired]


class FailingReaper(ClusterReaper):
    def reap(self, now):  # noqa: ANN001, ANN201
        raise ReaperError("reaping expired clusters failed (UnauthorizedOperation)", "UnauthorizedOperation")


def test_a_failing_reaper_is_reported_and_the_rest_of_the_sweep_stands(settings: Settings) -> None:
    bootstrap(settings, load_pipelines(settings.pipelines_file), queue_name=f"{settings.table}-intake")
    store = build_store(settings)
    launcher = build_launcher(settings, store)
    queued = store.create(Job.new("sales-summary", "api"))
    # When the sweep's reaper cannot act
    report = Watchdog(store, launcher, reaper=FailingReaper()).sweep()
    # Then that is reported (the alarm's metric), and the queued job was still launched
    assert report.reaper_failed == ["reaping expired clusters failed (UnauthorizedOperation)"]
    assert report.launched == [queued.job_id]
    assert store.get(queued.job_id).status == JobStatus.LAUNCHING
