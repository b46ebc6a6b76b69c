"""Least privilege for EC2, the part that needs no cluster: every written reason for a grant the
EC2 stand-in never sees used stands beside a real grant, and no role outside the contract holds
EC2 actions. (The contract itself, each role's calls against its grants both ways, is checked
where the calls are made: tests/e2e/test_ec2_standin.py.)"""

from __future__ import annotations

import pytest

from cdk.cluster_access import EC2_GRANTED_UNSEEN
from cdk.operators import DOCTOR_EC2_READS
from raylauncher.aws import LOCAL_ACCESS_KEY_IDS
from tests.iam_contract import contract_roles, contract_violations, granted_ec2_actions
from tests.infrastructure.conftest import Synthesized

# pytest-xdist: one worker runs these tests (they share the synthesized stacks are made once per worker).
pytestmark = pytest.mark.xdist_group("cdk-synth")


def test_every_written_reason_is_for_an_ec2_action_its_role_is_granted(default_stack: Synthesized) -> None:
    # Given the roles the stand-in tells apart, and the reasons written beside their grants
    roles = contract_roles(default_stack)
    assert set(roles) == set(EC2_GRANTED_UNSEEN) == set(LOCAL_ACCESS_KEY_IDS)
    for role, reasons in EC2_GRANTED_UNSEEN.items():
        granted = granted_ec2_actions(default_stack.template_json, roles[role])
        for action, reason in reasons.items():
            # Then each reason is for an action the role is granted (none is stale) ...
            assert action in granted, f"{role}: a reason is written for {action}, which it is not granted"
            # ... and says why in words
            assert len(reason.split()) >= 8, f"{role}: {action} needs a written reason, not {reason!r}"


def test_no_role_outside_the_contract_is_granted_an_ec2_action(default_stack: Synthesized) -> None:
    # Given every IAM role of the stack but the three whose EC2 calls the stand-in checks
    contract = set(contract_roles(default_stack).values())
    others = sorted(set(default_stack.resources("AWS::IAM::Role")) - contract)
    assert others
    operators = default_stack.logical_id(default_stack.stack.operators.role)
    # Then none of them may call EC2 (their EC2 grants would be checked against nothing), but the
    # operators' doctor, which only reads (Describe*/Get*)
    for logical_id in others:
        allowed = set(DOCTOR_EC2_READS) if logical_id == operators else set()
        assert granted_ec2_actions(default_stack.template_json, logical_id) == allowed, logical_id
    assert all(a.split(":")[1].startswith(("Describe", "Get")) for a in DOCTOR_EC2_READS)


def test_a_violation_names_role_action_and_direction() -> None:
    # Given a role that called what it lacks, and holds what it never called without a reason
    problems = contract_violations(
        "nodes", used={"RunInstances", "ec2:CreateTags"},
        granted={"ec2:runinstances", "ec2:TerminateInstances", "ec2:DeleteTags", "ec2:Describe*"},
        explained={"ec2:TerminateInstances": "scale-down of idle workers above min_workers"},
    )  # fmt: skip
    # Then each problem says which role, which action, which way (actions compare as IAM does)
    assert problems == [
        "nodes: ec2:CreateTags was called but is not granted (used ⊄ granted)",
        "nodes: ec2:DeleteTags is granted but was never called and has no written reason (granted ⊄ used ∪ explained)",
        "nodes: ec2:Describe* is granted (a wildcard: also what nobody called) and has no written reason"
        " (granted ⊄ used ∪ explained)",
    ]
