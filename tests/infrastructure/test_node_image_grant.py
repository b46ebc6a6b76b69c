"""The node image IAM grants and the image the bastion's launcher uses must not drift apart.

The default node image is Canonical's Ubuntu, resolved from its public SSM parameter by
CloudFormation at every deploy; the bastion keeps the image id its installer wrote at first boot.
A RunInstances grant on the one image id resolved at the last deploy would deny every `ray up`
after Canonical publishes a new image (UnauthorizedOperation). Evaluated with tests/iam_eval.py,
one resource at a time as IAM authorizes RunInstances."""

from __future__ import annotations

import pytest

from cdk.stack import CANONICAL_OWNER
from tests.iam_contract import contract_roles, stack_documents
from tests.iam_eval import ALLOWED, IMPLICIT_DENY, evaluate
from tests.infrastructure.conftest import OFFLINE_AMIS, Synthesized, render

pytestmark = pytest.mark.xdist_group("cdk-synth")

REGION = "eu-west-1"  # what render() shows for AWS::Region


def image(ami: str) -> str:
    return f"arn:aws:ec2:{REGION}::image/{ami}"


@pytest.mark.parametrize("launcher", ["bastion", "nodes"])  # `ray up`, and the head's autoscaler
def test_any_later_canonical_image_may_be_launched_but_no_one_elses(default_stack: Synthesized, launcher: str) -> None:
    documents = stack_documents(default_stack.template_json, contract_roles(default_stack)[launcher])

    def run(ami: str, owner: str) -> str:
        return evaluate(documents, "ec2:RunInstances", image(ami), {"ec2:Owner": owner}, render)

    # Given the image Canonical publishes after this deploy (an id nobody knew at synth)
    # Then launching it is allowed; an image of another owner is not
    assert run("ami-0f00dbeefcafe1234", CANONICAL_OWNER) == ALLOWED
    assert run("ami-0f00dbeefcafe1234", "123456789012") == IMPLICIT_DENY
    assert run("ami-0f00dbeefcafe1234", "amazon") == IMPLICIT_DENY


@pytest.mark.parametrize("launcher", ["bastion", "nodes"])
def test_a_pinned_node_image_is_the_only_one(existing_vpc_stack: Synthesized, launcher: str) -> None:
    documents = stack_documents(existing_vpc_stack.template_json, contract_roles(existing_vpc_stack)[launcher])
    pinned = OFFLINE_AMIS["node_ami_id"]
    # Given `node_ami_id` in the context: the bastion launches exactly that image
    assert evaluate(documents, "ec2:RunInstances", image(pinned), {"ec2:Owner": "123456789012"}, render) == ALLOWED
    # Then no other image, Canonical's included
    other = evaluate(documents, "ec2:RunInstances", image("ami-0f00dbeefcafe1234"), {"ec2:Owner": CANONICAL_OWNER}, render)
    assert other == IMPLICIT_DENY
