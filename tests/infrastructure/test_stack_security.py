"""The synthesized stack: nothing public, least privilege, every Lambda private (assertions on
the real CloudFormation template)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aws_cdk.assertions import Match

from cdk.functions import POWERTOOLS_LAYER_PARAMETER
from raylauncher.bastion import SSM_DOCUMENT
from tests.infrastructure.conftest import EXISTING_VPC, Synthesized, render

# pytest-xdist: one worker runs these tests (they share the synthesized stacks are made once per worker).
pytestmark = pytest.mark.xdist_group("cdk-synth")

OPEN = {"0.0.0.0/0", "::/0"}


def ingress_rules(s: Synthesized) -> list[dict[str, Any]]:
    rules = [r["Properties"] for r in s.resources("AWS::EC2::SecurityGroupIngress").values()]
    for group in s.resources("AWS::EC2::SecurityGroup").values():
        rules += [{**r, "GroupId": "inline"} for r in group["Properties"].get("SecurityGroupIngress", [])]
    return rules


def statements(s: Synthesized) -> list[dict[str, Any]]:
    found = []
    for policy in s.resources("AWS::IAM::Policy").values():
        found += policy["Properties"]["PolicyDocument"]["Statement"]
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_no_security_group_admits_the_internet(default_stack: Synthesized, existing_vpc_stack: Synthesized) -> None:
    for s in (default_stack, existing_vpc_stack):
        # Given every ingress rule of the stack, inline or separate
        rules = ingress_rules(s)
        assert rules
        # Then none is open to 0.0.0.0/0 or ::/0
        assert not [r for r in rules if {str(r.get("CidrIp")), str(r.get("CidrIpv6"))} & OPEN]


def test_cluster_and_bastion_security_groups_are_the_walkthroughs(default_stack: Synthesized) -> None:
    s = default_stack
    cluster = {"Fn::GetAtt": [s.logical_id(s.stack.network.cluster_sg), "GroupId"]}
    bastion = {"Fn::GetAtt": [s.logical_id(s.stack.network.bastion_sg), "GroupId"]}
    to_cluster = [r for r in ingress_rules(s) if r.get("GroupId") == cluster]
    # Then the cluster group admits exactly: all TCP from itself, 22 and 8265 from the bastion
    got = sorted((r["SourceSecurityGroupId"] == cluster, r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in to_cluster)
    assert got == [(False, "tcp", 22, 22), (False, "tcp", 8265, 8265), (True, "tcp", 0, 65535)]
    assert all(r["SourceSecurityGroupId"] in (cluster, bastion) for r in to_cluster)
    # And nothing may reach the bastion (SSM only)
    assert [r for r in ingress_rules(s) if r.get("GroupId") == bastion] == []


def test_every_lambda_runs_python_312_in_the_private_subnets_with_the_powertools_layer(
    default_stack: Synthesized, existing_vpc_stack: Synthesized
) -> None:
    # Created VPC: the private subnets are the PRIVATE_WITH_EGRESS ones
    s = default_stack
    functions = s.resources("AWS::Lambda::Function")
    assert len(functions) == 5  # intake, api, schedule, watchdog, job metrics: no custom-resource Lambda outside the VPC
    private = sorted(s.resolve(s.stack.network.private_subnet_ids), key=str)
    layer_param = next(k for k, v in s.template_json["Parameters"].items()
                       if v.get("Default") == POWERTOOLS_LAYER_PARAMETER)  # fmt: skip
    for fn in functions.values():
        props = fn["Properties"]
        assert props["Runtime"] == "python3.12" and props["TracingConfig"] == {"Mode": "Active"}
        assert sorted(props["VpcConfig"]["SubnetIds"], key=str) == private
        assert props["Layers"] == [{"Ref": layer_param}]
        assert props["LoggingConfig"]["LogFormat"] == "JSON"
    assert all("private" in str(ref) for ref in private)
    # Existing VPC: exactly the subnet ids from cdk.json
    for fn in existing_vpc_stack.resources("AWS::Lambda::Function").values():
        assert fn["Properties"]["VpcConfig"]["SubnetIds"] == EXISTING_VPC["private_subnet_ids"]


def test_send_command_only_on_the_bastion_and_the_run_shell_script_document(default_stack: Synthesized) -> None:
    s = default_stack
    bastion = {"Ref": s.logical_id(s.stack.bastion.instance)}
    sends = [st for st in statements(s) if "ssm:SendCommand" in as_list(st["Action"])]
    assert len(sends) == 4  # one per Lambda role
    for st in sends:
        resources = [str(r) for r in as_list(st["Resource"])]
        assert len(resources) == 2
        assert any(str(bastion) in r and ":instance/" in r for r in resources)
        assert any(f":document/{SSM_DOCUMENT}" in r for r in resources)
        assert "*" not in as_list(st["Resource"])


def test_pass_role_only_for_the_node_role_and_only_to_ec2(default_stack: Synthesized) -> None:
    s = default_stack
    node_role = {"Fn::GetAtt": [s.logical_id(s.stack.nodes.role), "Arn"]}
    passes = [st for st in statements(s) if any(a.startswith("iam:PassRole") or a == "iam:*" for a in as_list(st["Action"]))]
    assert len(passes) == 2  # the bastion (ray up: the head) and the nodes (the autoscaler: workers)
    for st in passes:
        assert st["Resource"] == node_role
        assert st["Condition"] == {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    # And no statement anywhere allows every action
    assert not [st for st in statements(s) if "*" in as_list(st["Action"])]


def test_terminate_and_run_instances_are_scoped_by_the_cluster_tag(default_stack: Synthesized) -> None:
    s = default_stack
    terminates = [st for st in statements(s) if "ec2:TerminateInstances" in as_list(st["Action"])]
    assert terminates and all(st["Condition"] == {"StringLike": {"aws:ResourceTag/ray-cluster-name": "rl-*"}}
                              for st in terminates)  # fmt: skip
    # the instances and volumes RunInstances creates: only with our tag (the image it uses is
    # scoped by its own statement: tests/infrastructure/test_node_image_grant.py)
    creates = [st for st in statements(s) if as_list(st["Action"]) == ["ec2:RunInstances"]
               and any(render(r).endswith(":instance/*") for r in as_list(st["Resource"]))]  # fmt: skip
    assert creates and all(st["Condition"] == {"StringLike": {"aws:RequestTag/ray-cluster-name": "rl-*"}}
                           for st in creates)  # fmt: skip


def test_data_bucket_is_private_encrypted_versioned_and_tls_only(default_stack: Synthesized) -> None:
    s = default_stack
    bucket_id = s.logical_id(s.stack.storage.bucket)
    props = s.template_json["Resources"][bucket_id]["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "AES256"}
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    assert "LoggingConfiguration" in props
    rules = {r["Id"]: r for r in props["LifecycleConfiguration"]["Rules"]}
    assert rules["job-records"]["Prefix"] == "jobs/" and rules["job-records"]["ExpirationInDays"] > 0
    s.template.has_resource_properties("AWS::S3::BucketPolicy", {
        "Bucket": {"Ref": bucket_id},
        "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Effect": "Deny", "Action": "s3:*", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})])},
    })  # fmt: skip


def test_bastion_is_private_ssm_managed_imdsv2_and_encrypted(default_stack: Synthesized) -> None:
    s = default_stack
    instance = s.resource(s.stack.bastion.instance)["Properties"]
    assert "KeyName" not in instance
    [nic] = instance["NetworkInterfaces"]
    assert nic["SubnetId"] in s.resolve(s.stack.network.private_subnet_ids) and nic["AssociatePublicIpAddress"] is False
    assert all(d["Ebs"]["Encrypted"] is True for d in instance["BlockDeviceMappings"])
    # IMDSv2: CDK puts it on a launch template the instance uses
    template_id = instance["LaunchTemplate"]["LaunchTemplateName"]
    templates = [t for t in s.resources("AWS::EC2::LaunchTemplate").values()
                 if t["Properties"]["LaunchTemplateName"] == template_id]  # fmt: skip
    assert templates[0]["Properties"]["LaunchTemplateData"]["MetadataOptions"]["HttpTokens"] == "required"
    role = s.resource(s.stack.bastion.role)["Properties"]
    assert {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":iam::aws:policy/AmazonSSMManagedInstanceCore"]]} in role[
        "ManagedPolicyArns"]


def test_every_api_method_uses_iam_authorization_and_a_request_validator(default_stack: Synthesized) -> None:
    s = default_stack
    methods = s.resources("AWS::ApiGateway::Method")
    spec = json.loads((Path(__file__).resolve().parents[2] / "docs" / "openapi.json").read_text())
    operations = [m for path in spec["paths"].values() for m in path if m in ("get", "post", "put", "patch", "delete")]
    assert len(methods) == len(operations) == 8  # jobs: list, submit, show, logs, cancel, release; pipelines: list, show
    for method in methods.values():
        assert method["Properties"]["AuthorizationType"] == "AWS_IAM"
        assert "RequestValidatorId" in method["Properties"]
    stage = next(iter(s.resources("AWS::ApiGateway::Stage").values()))["Properties"]
    assert "DestinationArn" in stage["AccessLogSetting"]
    throttling = stage["MethodSettings"][0]
    assert throttling["ThrottlingRateLimit"] > 0 and throttling["ThrottlingBurstLimit"] > 0
    assert stage["TracingEnabled"] is True


def service_suffix(name: Any) -> str:
    """`com.amazonaws.<region>.ssm` (a plain string or CloudFormation's Fn::Join) -> `ssm`."""
    last = name if isinstance(name, str) else name["Fn::Join"][1][-1]
    return str(last).rsplit(".", 1)[-1]


def test_vpc_endpoints_let_lambdas_and_bastion_work_without_internet(
    default_stack: Synthesized, existing_vpc_stack: Synthesized
) -> None:
    for s in (default_stack, existing_vpc_stack):
        endpoints = s.resources("AWS::EC2::VPCEndpoint").values()
        by_type: dict[str, set[str]] = {}
        for e in endpoints:
            kind = e["Properties"].get("VpcEndpointType", "Gateway")
            by_type.setdefault(kind, set()).add(service_suffix(e["Properties"]["ServiceName"]))
        assert by_type["Gateway"] == {"s3", "dynamodb"}
        assert {"ssm", "ssmmessages", "ec2messages", "ec2", "sqs", "sts", "logs", "events"} <= by_type["Interface"]
    # The existing VPC's gateway endpoints go on its private route tables
    gateway = next(e for e in existing_vpc_stack.resources("AWS::EC2::VPCEndpoint").values()
                   if service_suffix(e["Properties"]["ServiceName"]) == "s3")  # fmt: skip
    assert sorted(gateway["Properties"]["RouteTableIds"]) == sorted(EXISTING_VPC["private_route_table_ids"])


def test_what_needs_a_person_pages_the_alerts_topic(default_stack: Synthesized) -> None:
    from cdk.alerts import WATCHDOG_ALARMS
    from raylauncher.watchdog import METRICS, METRICS_NAMESPACE

    s = default_stack
    topic = {"Ref": s.logical_id(s.stack.alerts.topic)}
    alarms = {a["Properties"].get("MetricName"): a["Properties"] for a in s.resources("AWS::CloudWatch::Alarm").values()}
    # Then each watchdog finding and the intake DLQ has an alarm that notifies the topic
    for field in WATCHDOG_ALARMS:
        alarm = alarms[METRICS[field]]
        assert alarm["Namespace"] == METRICS_NAMESPACE and alarm["Threshold"] == 1
        assert alarm["Dimensions"] == [{"Name": "service", "Value": "raylauncher-watchdog"}]
        assert alarm["AlarmActions"] == [topic]
    assert alarms["ApproximateNumberOfMessagesVisible"]["AlarmActions"] == [topic]
    assert alarms["Errors"]["AlarmActions"] == [topic]  # a sweep that fails publishes nothing: its errors page
    not_running = alarms["Invocations"]  # and a watchdog that never runs pages as well
    assert (not_running["ComparisonOperator"], not_running["TreatMissingData"]) == ("LessThanThreshold", "breaching")
    assert not_running["AlarmActions"] == [topic]
    # And CloudWatch may publish to the topic and use its key (the AWS-managed SNS key would refuse it)
    [policy] = s.resources("AWS::SNS::TopicPolicy").values()
    allowed = [st for st in policy["Properties"]["PolicyDocument"]["Statement"] if st["Effect"] == "Allow"]
    assert [(st["Principal"], st["Action"]) for st in allowed] == [({"Service": "cloudwatch.amazonaws.com"}, "sns:Publish")]
    [key] = s.resources("AWS::KMS::Key").values()
    assert key["Properties"]["EnableKeyRotation"] is True
    assert any(st.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}
               for st in key["Properties"]["KeyPolicy"]["Statement"])  # fmt: skip
    # And the watchdog publishes into that namespace under that service name
    [watchdog] = [f for f in s.resources("AWS::Lambda::Function").values()
                  if f["Properties"]["Handler"] == "lambdas.watchdog.handler.handler"]  # fmt: skip
    env = watchdog["Properties"]["Environment"]["Variables"]
    assert (env["POWERTOOLS_METRICS_NAMESPACE"], env["POWERTOOLS_SERVICE_NAME"]) == (METRICS_NAMESPACE, "raylauncher-watchdog")
    assert "AlertsTopicArn" in s.template_json["Outputs"]


def test_egress_is_the_context_switch_it_claims(
    default_stack: Synthesized, existing_vpc_stack: Synthesized, tmp_path_factory
) -> None:
    from tests.infrastructure.conftest import OFFLINE_AMIS, synthesize

    def count(s: Synthesized, kind: str) -> int:
        return len(s.resources(kind))

    # Created VPC, egress "nat": one NAT gateway (in the only public subnets), private subnets route to it
    assert count(default_stack, "AWS::EC2::NatGateway") == 1 and count(default_stack, "AWS::EC2::InternetGateway") == 1
    # Created VPC, egress "none": no way out at all; the images must bring Ray
    isolated = synthesize(tmp_path_factory.mktemp("cdk-isolated"), {"egress": "none", **OFFLINE_AMIS})
    assert count(isolated, "AWS::EC2::NatGateway") == 0 and count(isolated, "AWS::EC2::InternetGateway") == 0
    assert all(r["Properties"]["MapPublicIpOnLaunch"] is False for r in isolated.resources("AWS::EC2::Subnet").values())
    # Existing VPC, egress "nat": the stack creates no gateway (the VPC's own routes are used)
    existing_nat = synthesize(tmp_path_factory.mktemp("cdk-existing-nat"), {"vpc": EXISTING_VPC, "egress": "nat"})
    assert count(existing_nat, "AWS::EC2::NatGateway") == 0 and count(existing_nat, "AWS::EC2::VPC") == 0
    assert count(existing_vpc_stack, "AWS::EC2::NatGateway") == 0
