"""The deployment's own settings, read from `cdk.json` context and validated once, at synth.

A bad value stops `cdk synth` with the path of the bad field (e.g. `context.vpc.private_subnet_ids`),
as a bad pipeline config does (`pipelines.0.trigger.prefix`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raylauncher.config import PipelinesConfig, aws_ids, load_pipelines
from raylauncher.errors import ConfigError

LogRetention = Literal[
    "ONE_WEEK", "TWO_WEEKS", "ONE_MONTH", "TWO_MONTHS", "THREE_MONTHS", "SIX_MONTHS", "ONE_YEAR", "TWO_YEARS", "FIVE_YEARS",
]  # fmt: skip

#: The context key in cdk.json that holds a DeploymentConfig.
CONTEXT_KEY = "raylauncher"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExistingVpc(_Strict):
    """The walkthrough's case: a VPC you already have, with private subnets holding the bastion.

    Everything is given by id: synth never calls AWS (no lookups, no credentials)."""

    vpc_id: str = Field(pattern=r"^vpc-[0-9a-f]{8,17}$")
    cidr: str = Field(pattern=r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$", description="the VPC's CIDR (endpoint ingress)")
    availability_zones: tuple[str, ...] = Field(min_length=1)
    private_subnet_ids: tuple[str, ...] = Field(min_length=1)
    private_route_table_ids: tuple[str, ...] = Field(min_length=1, description="for the S3/DynamoDB gateway endpoints")

    _subnets = field_validator("private_subnet_ids")(aws_ids("subnet"))
    _route_tables = field_validator("private_route_table_ids")(aws_ids("rtb"))

    @model_validator(mode="after")
    def _one_route_table_per_subnet(self) -> ExistingVpc:
        if len(self.private_route_table_ids) != len(self.private_subnet_ids):
            raise ValueError("private_route_table_ids: give one route table per private subnet, in the same order")
        if len(self.availability_zones) != len(self.private_subnet_ids):
            raise ValueError("availability_zones: give one availability zone per private subnet, in the same order")
        return self


class DeploymentConfig(_Strict):
    """What `cdk.json` says under `context.raylauncher`."""

    pipelines_file: str = "pipelines.yaml"
    #: None: the stack creates a VPC (private isolated subnets, plus NAT if egress is "nat").
    vpc: ExistingVpc | None = None
    #: How cluster nodes and the bastion get Ray: "nat" installs the pinned Ray from PyPI through
    #: a NAT gateway (created VPC) or your VPC's own route; "none" means no internet at all, so
    #: node_ami_id and bastion_ami_id must be images with Python, the pinned Ray and boto3 preinstalled.
    egress: Literal["nat", "none"] = "nat"
    node_ami_id: str | None = Field(default=None, pattern=r"^ami-[0-9a-f]{8,17}$")
    #: node_ami_id was baked with the pinned Ray and boto3 first on the SSH user's PATH (the
    #: stock-image setup commands run once: docs/deploy.md, "Bake a node image"): nodes then
    #: only check the versions at boot instead of installing (bench: node bootstrap seconds).
    node_ami_has_ray: bool = False
    bastion_ami_id: str | None = Field(default=None, pattern=r"^ami-[0-9a-f]{8,17}$")
    node_ssh_user: str = Field(default="ubuntu", pattern=r"^[a-z_][a-z0-9_-]{0,31}$")
    bastion_instance_type: str = Field(default="t3.medium", pattern=r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
    create_vpc_endpoints: bool = Field(default=True, description="false if your VPC already has them")
    max_clusters_total: int = Field(default=10, ge=1, le=1000)
    watchdog_rate_minutes: int = Field(default=1, ge=1, le=60)  # lost drivers: taken over within lease + this
    log_retention: LogRetention = Field(default="ONE_MONTH", description="CloudWatch Logs retention (CDK RetentionDays name)")
    logs_expire_days: int = Field(default=90, ge=1, description="job logs and manifests under jobs/")
    api_throttle_rate: float = Field(default=20, gt=0)
    api_throttle_burst: int = Field(default=40, ge=1)

    @model_validator(mode="after")
    def _offline_needs_images(self) -> DeploymentConfig:
        if self.egress == "none" and not (self.node_ami_id and self.bastion_ami_id):
            raise ValueError("egress: 'none' needs node_ami_id and bastion_ami_id (images with the pinned Ray)")
        return self

    @model_validator(mode="after")
    def _baked_needs_an_image(self) -> DeploymentConfig:
        if self.node_ami_has_ray and not self.node_ami_id:
            raise ValueError("node_ami_has_ray needs node_ami_id (the baked image)")
        return self

    @property
    def ray_preinstalled(self) -> bool:
        """The bastion's image brings the pinned Ray (no egress: nothing to download)."""
        return self.egress == "none"

    @property
    def nodes_have_ray(self) -> bool:
        """The node image brings the pinned Ray: without egress, or baked (node_ami_has_ray)."""
        return self.egress == "none" or self.node_ami_has_ray


def _describe(err: ValidationError) -> str:
    lines = [f"invalid deployment config in cdk.json (context.{CONTEXT_KEY}):"]
    for e in err.errors():
        path = ".".join(["context", CONTEXT_KEY, *(str(p) for p in e["loc"])])
        lines.append(f"  {path}: {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def parse_deployment(context: Mapping[str, Any] | None) -> DeploymentConfig:
    try:
        return DeploymentConfig.model_validate(dict(context or {}))
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def load_deployment(context: Mapping[str, Any] | None, project_dir: Path) -> tuple[DeploymentConfig, PipelinesConfig]:
    """The deployment config and the pipelines it names, both validated (ConfigError names the field)."""
    deployment = parse_deployment(context)
    path = Path(deployment.pipelines_file)
    return deployment, load_pipelines(path if path.is_absolute() else project_dir / path)
