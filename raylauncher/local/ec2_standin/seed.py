"""moto's EC2 seeded like a deployment: moto's default VPC deleted (no config can ever pick it
and send traffic out of the machine), a VPC with two private subnets inside the bridge's /24,
a security group, the stand-in's key pair, an AMI id and the node instance profile."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from raylauncher.config import Ec2Deployment

KEY_NAME = "raylauncher-standin"
PROFILE_NAME = "raylauncher-ray-node"


def delete_default_vpcs(ec2: Any) -> None:
    for vpc in ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]:
        vpc_filter = [{"Name": "vpc-id", "Values": [vpc["VpcId"]]}]
        for subnet in ec2.describe_subnets(Filters=vpc_filter)["Subnets"]:
            ec2.delete_subnet(SubnetId=subnet["SubnetId"])
        for igw in ec2.describe_internet_gateways(Filters=[{"Name": "attachment.vpc-id", "Values": [vpc["VpcId"]]}])[
            "InternetGateways"
        ]:
            ec2.detach_internet_gateway(InternetGatewayId=igw["InternetGatewayId"], VpcId=vpc["VpcId"])
            ec2.delete_internet_gateway(InternetGatewayId=igw["InternetGatewayId"])
        ec2.delete_vpc(VpcId=vpc["VpcId"])


def seed(
    ec2: Any, iam: Any, region: str, subnet: ipaddress.IPv4Network, public_key: str, overrides: dict[str, Any]
) -> Ec2Deployment:
    """Create the deployment's resources in moto; returns what a stack would write on the bastion."""
    delete_default_vpcs(ec2)
    vpc_id = ec2.create_vpc(CidrBlock=str(subnet))["Vpc"]["VpcId"]
    subnet_ids = [
        ec2.create_subnet(VpcId=vpc_id, CidrBlock=str(half), AvailabilityZone=f"{region}{zone}")["Subnet"]["SubnetId"]
        for half, zone in zip(subnet.subnets(prefixlen_diff=1), "ab", strict=True)
    ]
    group_id = ec2.create_security_group(GroupName="raylauncher-cluster", Description="Ray cluster nodes",
                                         VpcId=vpc_id)["GroupId"]  # fmt: skip
    ec2.import_key_pair(KeyName=KEY_NAME, PublicKeyMaterial=public_key.encode())
    ami_id = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
    iam.create_role(RoleName=PROFILE_NAME, AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
    }))  # fmt: skip
    profile = iam.create_instance_profile(InstanceProfileName=PROFILE_NAME)["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=PROFILE_NAME, RoleName=PROFILE_NAME)
    from raylauncher.local.ec2_standin.deltas import SSH_USER

    return Ec2Deployment(
        region=region,
        subnet_ids=tuple(subnet_ids),
        security_group_ids=(group_id,),
        node_instance_profile_arn=profile["Arn"],
        ami_id=ami_id,
        ssh_user=SSH_USER,
        ray_preinstalled=True,
        cluster_config_overrides=overrides,
    )
