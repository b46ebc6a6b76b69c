"""The operator role: what `raylauncher --stack` needs (call the API, forward the dashboard
through the bastion, read the stack's outputs, ask whether the bastion is online) and nothing
more; its ARN is a stack output."""

from __future__ import annotations

from typing import Any

import pytest

from raylauncher.cli.arguments import PORT_FORWARDING_DOCUMENT
from raylauncher.cli.targets import STACK_OUTPUTS
from tests.infrastructure.conftest import Synthesized, render

# pytest-xdist: one worker runs these tests (they share the synthesized stacks are made once per worker).
pytestmark = pytest.mark.xdist_group("cdk-synth")


def operator_statements(s: Synthesized) -> dict[str, dict[str, Any]]:
    role_id = s.logical_id(s.stack.operators.role)
    policies = [p for p in s.resources("AWS::IAM::Policy").values() if {"Ref": role_id} in p["Properties"]["Roles"]]
    assert len(policies) == 1, "the operator role has exactly one policy"
    return {st["Sid"]: st for st in policies[0]["Properties"]["PolicyDocument"]["Statement"]}


def test_the_stack_outputs_what_the_cli_reads(default_stack: Synthesized) -> None:
    s = default_stack
    # Given the synthesized stack
    outputs = s.template_json["Outputs"]
    # Then every output the CLI reads is there, the operator role's ARN among them
    assert set(STACK_OUTPUTS) <= set(outputs)
    assert outputs["OperatorRoleArn"]["Value"] == {"Fn::GetAtt": [s.logical_id(s.stack.operators.role), "Arn"]}


def test_operators_of_this_account_assume_the_role_and_it_has_no_managed_policy(default_stack: Synthesized) -> None:
    role = default_stack.resource(default_stack.stack.operators.role)["Properties"]
    # Then only principals of this account (allowed by their own policies) can assume it
    (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Action"] == "sts:AssumeRole"
    assert render(trust["Principal"]["AWS"]) == "arn:aws:iam::123456789012:root"
    assert "ManagedPolicyArns" not in role


def test_the_role_grants_exactly_what_the_cli_needs(default_stack: Synthesized) -> None:
    s = default_stack
    statements = operator_statements(s)
    api_id, stage_id = s.logical_id(s.stack.api.api), s.logical_id(s.stack.api.api.deployment_stage)
    bastion_id = s.logical_id(s.stack.bastion.instance)
    # Then: the API of this stack's stage, every method (the CLI uses them all)
    api = statements.pop("CallTheApi")
    assert api["Action"] == "execute-api:Invoke"
    assert render(api["Resource"]) == f"arn:aws:execute-api:eu-west-1:123456789012:{api_id}/{stage_id}/*/*"
    # and SSM sessions only to the bastion, only with the port-forwarding document, checked
    start = statements.pop("ForwardTheDashboardThroughTheBastion")
    assert start["Action"] == "ssm:StartSession"
    assert sorted(render(r) for r in start["Resource"]) == sorted([
        f"arn:aws:ec2:eu-west-1:123456789012:instance/{bastion_id}",
        f"arn:aws:ssm:eu-west-1::document/{PORT_FORWARDING_DOCUMENT}",
    ])  # fmt: skip
    assert start["Condition"] == {"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}}
    # and ending or resuming only the caller's own sessions
    own = statements.pop("EndOrResumeOwnSessions")
    assert sorted(own["Action"]) == ["ssm:ResumeSession", "ssm:TerminateSession"]
    assert own["Condition"] == {"StringLike": {"ssm:resourceTag/aws:ssmmessages:session-id": ["${aws:userid}"]}}
    # and this stack's outputs, and whether the bastion is online (doctor)
    outputs = statements.pop("ReadThisStacksOutputs")
    assert (outputs["Action"], outputs["Resource"]) == ("cloudformation:DescribeStacks", {"Ref": "AWS::StackId"})
    resources = statements.pop("DoctorReadsThisStacksResources")
    assert (resources["Action"], resources["Resource"]) == ("cloudformation:ListStackResources", {"Ref": "AWS::StackId"})
    capacity = statements.pop("DoctorReadsTheAccountsCapacity")
    assert sorted(capacity["Action"]) == [
        "ec2:DescribeInstanceTypes", "ec2:DescribeInstances", "ec2:DescribeRouteTables", "ec2:DescribeVpcEndpoints",
        "ec2:GetEbsDefaultKmsKeyId",
        "ec2:GetEbsEncryptionByDefault", "servicequotas:GetAWSDefaultServiceQuota", "servicequotas:GetServiceQuota",
        "ssm:DescribeInstanceInformation",
    ]  # fmt: skip
    assert capacity["Resource"] == "*"
    spot = statements.pop("DoctorLooksForTheSpotRole")
    assert spot["Action"] == "iam:GetRole"
    assert render(spot["Resource"]).endswith(":role/aws-service-role/spot.amazonaws.com/AWSServiceRoleForEC2Spot")
    # and nothing else
    assert statements == {}
