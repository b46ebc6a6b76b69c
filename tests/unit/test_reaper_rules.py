"""The reaper's decision (`expired`), pure: a cluster goes once the latest expires-at of its
nodes has passed, all its nodes together; clusters are decided independently."""

from datetime import UTC, datetime, timedelta
from typing import Any

from raylauncher.model import iso
from raylauncher.reaper import expired
from raylauncher.tags import EXPIRES_AT_TAG, RAY_CLUSTER_TAG

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def node(instance_id: str, cluster: str, expires_at: str | None) -> dict[str, Any]:
    tags = [{"Key": RAY_CLUSTER_TAG, "Value": cluster}]
    if expires_at is not None:
        tags.append({"Key": EXPIRES_AT_TAG, "Value": expires_at})
    return {"InstanceId": instance_id, "Tags": tags}


def at(minutes: int) -> str:
    return iso(NOW + timedelta(minutes=minutes))


def test_a_reused_warm_clusters_worker_with_the_first_up_s_passed_tag_is_not_reaped() -> None:
    # Given a warm cluster reused: its head's expires-at moved forward by CreateTags, and a
    # worker the autoscaler started afterwards with the first `ray up`'s (passed) expires-at
    instances = [node("i-head", "rl-a", at(+30)), node("i-worker", "rl-a", at(-10))]
    # When the reaper decides
    reaped = expired(instances, NOW)
    # Then nothing is reaped: the cluster is in time as long as one of its nodes is
    assert reaped == []


def test_a_cluster_whose_every_tag_has_passed_is_reaped_whole() -> None:
    # Given a cluster whose head and worker both carry passed expires-at tags
    instances = [node("i-head", "rl-a", at(-5)), node("i-worker", "rl-a", at(-60))]
    # When the reaper decides
    reaped = expired(instances, NOW)
    # Then both go, each reported with the cluster's expiry (the latest of its tags)
    assert sorted(r.instance_id for r in reaped) == ["i-head", "i-worker"]
    assert {(r.cluster, r.expired_at) for r in reaped} == {("rl-a", at(-5))}


def test_clusters_are_decided_independently() -> None:
    # Given an expired cluster, a live one with a stale worker tag, and another live one
    instances = [
        node("i-a-head", "rl-a", at(-5)), node("i-a-worker", "rl-a", at(-5)),
        node("i-b-head", "rl-b", at(+30)), node("i-b-worker", "rl-b", at(-5)),
        node("i-c-head", "rl-c", at(+1)),
    ]  # fmt: skip
    # When the reaper decides
    reaped = expired(instances, NOW)
    # Then only the expired cluster's nodes go
    assert sorted(r.instance_id for r in reaped) == ["i-a-head", "i-a-worker"]


def test_a_node_without_a_readable_tag_is_left_alone_and_does_not_keep_its_cluster() -> None:
    # Given an expired cluster with one node whose expires-at is missing or unreadable, and a
    # cluster none of whose tags is readable
    instances = [
        node("i-head", "rl-a", at(-5)), node("i-worker", "rl-a", "tomorrow"), node("i-extra", "rl-a", None),
        node("i-only", "rl-b", "soon"),
    ]  # fmt: skip
    # When the reaper decides
    reaped = expired(instances, NOW)
    # Then the readable, passed node goes; the unreadable ones (and their cluster) stay
    assert [r.instance_id for r in reaped] == ["i-head"]


def test_instances_not_of_our_clusters_are_never_reaped() -> None:
    # Given someone else's instance with a passed expires-at, and an untagged one
    instances = [node("i-foreign", "someone-elses", at(-60)), {"InstanceId": "i-bare"}]
    # When the reaper decides, Then neither goes
    assert expired(instances, NOW) == []
