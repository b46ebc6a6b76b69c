"""cdk-nag acknowledgments: every accepted AwsSolutions finding goes through `acknowledge`, which
refuses one without a written reason. The constructs call it next to what they accept."""

from __future__ import annotations

from aws_cdk import Acknowledgment, Validations
from constructs import IConstruct

PACK = "AwsSolutions"


def acknowledge(scope: IConstruct, rule: str, reason: str) -> None:
    """Accept `rule` (e.g. "IAM4[Policy::...]", "L1") for `scope` and everything below it."""
    if len(reason.strip()) < 20:
        raise ValueError(f"{PACK}-{rule} at {scope.node.path}: a suppression needs a written reason")
    Validations.of(scope).acknowledge(Acknowledgment(id=f"{PACK}::{PACK}-{rule}", reason=reason))
