"""The rules of `raylauncher doctor --stack` that need no AWS: vCPU demand per quota, the
install state and the VPC endpoints."""

from __future__ import annotations

from typing import Any

import pytest

from raylauncher.cli.stack_checks import (
    VPC_ENDPOINT_SERVICES,
    ebs_encryption_check,
    endpoint_check,
    install_check,
    quota_family,
    spot_role_check,
    vcpu_checks,
    vcpu_demand,
)

VCPUS = {"m6i.xlarge": 4, "m6i.2xlarge": 8, "g5.xlarge": 4, "c7g.large": 2}


def pipeline(name: str, head: str, worker: str, min_w: int, max_w: int, concurrency: int = 1,
             spot: bool = False) -> dict[str, Any]:  # fmt: skip
    return {"name": name, "max_concurrent_clusters": concurrency,
            "cluster": {"head_instance_type": head, "worker_instance_type": worker, "min_workers": min_w,
                        "max_workers": max_w, "spot_workers": spot}}  # fmt: skip


@pytest.mark.parametrize(("instance_type", "family"), [
    ("m6i.2xlarge", "standard"), ("c7gn.large", "standard"), ("im4gn.large", "standard"), ("t3.medium", "standard"),
    ("g5.xlarge", "g"), ("vt1.3xlarge", "g"), ("p4d.24xlarge", "p"), ("inf2.xlarge", "inf"), ("x2idn.16xlarge", "x"),
    ("trn1.2xlarge", None), ("mac2.metal", None),
])  # fmt: skip
def test_instance_types_map_to_their_vcpu_quota_family(instance_type: str, family: str | None) -> None:
    assert quota_family(instance_type) == family


def test_demand_counts_one_cluster_at_min_workers_and_all_clusters_at_max() -> None:
    # Given the walkthrough's pipeline (2 clusters at once) and a GPU pipeline with spot CPU workers
    pipelines = [
        pipeline("sales", "m6i.xlarge", "m6i.2xlarge", 4, 8, concurrency=2),
        pipeline("infer", "g5.xlarge", "c7g.large", 1, 3, spot=True),
    ]
    # When the demand per quota is computed
    demand = vcpu_demand(pipelines, VCPUS)
    # Then heads are on-demand, spot workers count against the spot quota of their family
    standard = demand[("standard", "on-demand")]
    assert (standard.one, standard.one_by, standard.all) == (4 + 4 * 8, "sales", 2 * (4 + 8 * 8))
    assert (demand[("g", "on-demand")].one, demand[("g", "on-demand")].all) == (4, 4)
    assert (demand[("standard", "spot")].one, demand[("standard", "spot")].all) == (2, 6)


def test_a_quota_below_one_cluster_fails_below_all_clusters_warns_and_unreadable_warns() -> None:
    demand = vcpu_demand([pipeline("sales", "m6i.xlarge", "m6i.2xlarge", 4, 8, concurrency=2)], VCPUS)
    outcomes = {q: vcpu_checks(demand, lambda code, q=q: q)[0] for q in (32.0, 100.0, 136.0)}
    assert [outcomes[q].outcome for q in (32.0, 100.0, 136.0)] == ["fail", "warn", "ok"]
    assert "L-1216C47A" in outcomes[32.0].detail and "36" in outcomes[32.0].detail
    assert vcpu_checks(demand, lambda code: None)[0].outcome == "warn"


def test_install_state_and_endpoints() -> None:
    assert install_check("CREATE_COMPLETE", "i-1").outcome == "ok"
    assert install_check("CREATE_IN_PROGRESS", "i-1").outcome == "warn"
    assert install_check("CREATE_FAILED", "i-1").outcome == "fail"
    assert install_check(None, "i-1").outcome == "warn"
    everything = [f"com.amazonaws.eu-west-1.{s}" for s in VPC_ENDPOINT_SERVICES]
    assert endpoint_check("eu-west-1", "vpc-1", everything).outcome == "ok"
    missing_sts = endpoint_check("eu-west-1", "vpc-1", [e for e in everything if not e.endswith(".sts")])
    assert missing_sts.outcome == "fail" and "sts" in missing_sts.detail
    # with a default route (a NAT, or the user's own) the service may still be reached: a warning
    routed = endpoint_check("eu-west-1", "vpc-1", everything[:-1], has_default_route=True)
    assert routed.outcome == "warn" and "cloudformation" in routed.detail
    # endpoints of another region do not count
    assert endpoint_check("eu-west-2", "vpc-1", everything).outcome == "fail"


def test_spot_role_and_ebs_encryption_by_default() -> None:
    assert spot_role_check(False, False) is None  # no pipeline uses spot: no line
    missing = spot_role_check(True, False)
    assert missing is not None and missing.outcome == "fail" and "create-service-linked-role" in missing.detail
    assert ebs_encryption_check(False, None).outcome == "ok"
    assert ebs_encryption_check(True, "arn:aws:kms:eu-west-1:123456789012:alias/aws/ebs").outcome == "ok"
    custom = ebs_encryption_check(True, "arn:aws:kms:eu-west-1:123456789012:alias/ebs-cmk")
    assert custom.outcome == "fail" and "kms:CreateGrant" in custom.detail
    # a key id does not tell whether AWS manages the key: a warning, not a verdict
    assert ebs_encryption_check(True, "arn:aws:kms:eu-west-1:123456789012:key/1234abcd").outcome == "warn"


def test_the_quota_reader_falls_back_to_the_default_when_no_value_was_applied() -> None:
    import boto3
    from botocore.stub import Stubber

    from raylauncher.cli.stack_checks import _quota_reader

    client = boto3.client("service-quotas", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x")
    stub = Stubber(client)
    quota = {"ServiceCode": "ec2", "QuotaCode": "L-1216C47A"}
    stub.add_client_error("get_service_quota", "NoSuchResourceException", expected_params=quota)
    stub.add_response("get_aws_default_service_quota", {"Quota": {"Value": 5.0}}, expected_params=quota)
    stub.add_client_error("get_service_quota", "AccessDeniedException", expected_params=quota)
    stub.add_client_error("get_aws_default_service_quota", "AccessDeniedException", expected_params=quota)
    with stub:
        read = _quota_reader(client)
        assert read("L-1216C47A") == 5.0  # a new account: no applied value, AWS's default
        assert read("L-1216C47A") is None  # not allowed to read: unknown, never a guess
