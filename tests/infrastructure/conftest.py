"""Synthesizes the real CDK app (offline, no credentials) once per variant for the whole module."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

from aws_cdk.assertions import Template  # noqa: E402

from cdk.application import build_app, cdk_json_context  # noqa: E402
from cdk.stack import RayLauncherStack  # noqa: E402

PROJECT_DIR = Path(__file__).resolve().parents[2]

#: The walkthrough's case: an existing VPC given by id, no internet (Ray preinstalled on the AMIs).
EXISTING_VPC = {
    "vpc_id": "vpc-0a1b2c3d4e5f60718",
    "cidr": "10.20.0.0/16",
    "availability_zones": ["eu-west-1a", "eu-west-1b"],
    "private_subnet_ids": ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0bbbbbbbbbbbbbbb2"],
    "private_route_table_ids": ["rtb-0aaaaaaaaaaaaaaa1", "rtb-0bbbbbbbbbbbbbbb2"],
}
OFFLINE_AMIS = {"node_ami_id": "ami-0123456789abcdef0", "bastion_ami_id": "ami-0fedcba9876543210"}


@dataclass
class Synthesized:
    stack: RayLauncherStack
    template_json: dict[str, Any]
    outdir: Path

    @property
    def template(self) -> Template:
        return Template.from_json(self.template_json)

    def logical_id(self, construct: Any) -> str:
        return self.stack.resolve(construct.node.default_child.logical_id)

    def resource(self, construct: Any) -> dict[str, Any]:
        """The template's resource of an L2 construct (its default child)."""
        return self.template_json["Resources"][self.logical_id(construct)]

    def resources(self, type_: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template_json["Resources"].items() if v["Type"] == type_}

    def resolve(self, value: Any) -> Any:
        return self.stack.resolve(value)

    def validation_report(self) -> dict[str, Any]:
        return json.loads((self.outdir / "validation-report.json").read_text())


def render(value: Any) -> str:
    """A CloudFormation string (plain, Ref, Fn::Join, Fn::Sub, Fn::GetAtt) with every reference
    shown as the logical id it names (pseudo parameters as plausible values)."""
    if isinstance(value, str):
        return value
    if "Ref" in value:
        return {"AWS::Region": "eu-west-1", "AWS::AccountId": "123456789012", "AWS::Partition": "aws"}.get(
            value["Ref"], value["Ref"])  # fmt: skip
    if "Fn::Join" in value:
        sep, parts = value["Fn::Join"]
        return sep.join(render(p) for p in parts)
    if "Fn::Sub" in value:
        return re.sub(r"\$\{([^}]+)\}", lambda m: render({"Ref": m.group(1)}), value["Fn::Sub"])
    if "Fn::GetAtt" in value:
        return ".".join(value["Fn::GetAtt"])
    raise AssertionError(f"unexpected intrinsic {value}")


def synthesize(tmp: Path, raylauncher_context: dict[str, Any] | None = None) -> Synthesized:
    context = cdk_json_context(PROJECT_DIR)
    if raylauncher_context is not None:
        context["raylauncher"] = raylauncher_context
    app, stack = build_app(PROJECT_DIR, context=context, outdir=str(tmp))
    assembly = app.synth()  # runs cdk-nag: raises on an unacknowledged finding
    template = assembly.get_stack_artifact(stack.artifact_id).template
    return Synthesized(stack, template, tmp)


@pytest.fixture(scope="session")
def default_stack(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    """cdk.json as committed: the stack creates the VPC (private subnets + NAT egress)."""
    return synthesize(tmp_path_factory.mktemp("cdk-default"))


@pytest.fixture(scope="session")
def existing_vpc_stack(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    return synthesize(
        tmp_path_factory.mktemp("cdk-existing-vpc"),
        {"vpc": EXISTING_VPC, "egress": "none", **OFFLINE_AMIS},
    )
