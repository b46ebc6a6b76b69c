"""Network: the VPC (imported by id, or created private), its endpoints, and the security groups.

Security groups as the walkthrough has them: the cluster group allows all TCP from itself; the
bastion group reaches it on 22 (the launcher's SSH) and the dashboard / Jobs API port. Nothing
allows ingress from 0.0.0.0/0.
"""

from __future__ import annotations

from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk.config import DeploymentConfig
from cdk.nag import acknowledge

#: Interface endpoints: SSM Run Command (ssm, ssmmessages, ec2messages), the launcher's EC2
#: calls, SQS, STS, CloudWatch Logs, EventBridge, X-Ray for the Lambdas' traces, and CloudFormation
#: (the bastion's install signal).
INTERFACE_ENDPOINTS = {
    "Ssm": ec2.InterfaceVpcEndpointAwsService.SSM,
    "SsmMessages": ec2.InterfaceVpcEndpointAwsService.SSM_MESSAGES,
    "Ec2Messages": ec2.InterfaceVpcEndpointAwsService.EC2_MESSAGES,
    "Ec2": ec2.InterfaceVpcEndpointAwsService.EC2,
    "Sqs": ec2.InterfaceVpcEndpointAwsService.SQS,
    "Sts": ec2.InterfaceVpcEndpointAwsService.STS,
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,
    "Events": ec2.InterfaceVpcEndpointAwsService.EVENTBRIDGE,
    "XRay": ec2.InterfaceVpcEndpointAwsService.XRAY,
    "CloudFormation": ec2.InterfaceVpcEndpointAwsService.CLOUDFORMATION,  # the bastion signals its install
}
SSH_PORT = 22
HTTPS_PORT = 443


class Network(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, config: DeploymentConfig, dashboard_port: int) -> None:
        super().__init__(scope, construct_id)
        if config.vpc:
            existing = config.vpc
            self.vpc: ec2.IVpc = ec2.Vpc.from_vpc_attributes(
                self, "Vpc", vpc_id=existing.vpc_id, vpc_cidr_block=existing.cidr,
                availability_zones=list(existing.availability_zones),
                private_subnet_ids=list(existing.private_subnet_ids),
                private_subnet_route_table_ids=list(existing.private_route_table_ids),
            )  # fmt: skip
            self.private_subnets = ec2.SubnetSelection(subnets=self.vpc.private_subnets)
        else:
            self.vpc, self.private_subnets = self._create_vpc(config)

        self.private_subnet_ids: list[str] = [s.subnet_id for s in self.vpc.select_subnets(
            subnets=self.private_subnets.subnets, subnet_type=self.private_subnets.subnet_type).subnets]  # fmt: skip

        self.cluster_sg = ec2.SecurityGroup(
            self, "ClusterSg", vpc=self.vpc, allow_all_outbound=True,
            description="Ray head and workers: all TCP among themselves; SSH and Jobs API from the bastion",
        )  # fmt: skip
        self.bastion_sg = ec2.SecurityGroup(
            self, "BastionSg", vpc=self.vpc, allow_all_outbound=True,
            description="Bastion: no ingress (SSM only); runs ray up/down and follows jobs",
        )  # fmt: skip
        self.lambda_sg = ec2.SecurityGroup(
            self, "LambdaSg", vpc=self.vpc, allow_all_outbound=False,
            description="Lambdas: no ingress; HTTPS out to the VPC endpoints only",
        )  # fmt: skip
        self.lambda_sg.add_egress_rule(ec2.Peer.any_ipv4(), ec2.Port.tcp(HTTPS_PORT), "AWS APIs through VPC endpoints")
        self.cluster_sg.add_ingress_rule(self.cluster_sg, ec2.Port.all_tcp(), "Ray nodes talk to each other")
        self.cluster_sg.add_ingress_rule(self.bastion_sg, ec2.Port.tcp(SSH_PORT), "ray up/down over SSH")
        self.cluster_sg.add_ingress_rule(self.bastion_sg, ec2.Port.tcp(dashboard_port), "Ray dashboard / Jobs API")

        #: What a first boot needs to reach AWS without internet (the bastion waits for them).
        self.endpoints: list[Construct] = []
        if config.create_vpc_endpoints:
            self._add_endpoints()

    def _create_vpc(self, config: DeploymentConfig) -> tuple[ec2.Vpc, ec2.SubnetSelection]:
        private_type = ec2.SubnetType.PRIVATE_WITH_EGRESS if config.egress == "nat" else ec2.SubnetType.PRIVATE_ISOLATED
        subnets = [ec2.SubnetConfiguration(name="private", subnet_type=private_type, cidr_mask=20)]
        if config.egress == "nat":  # a NAT gateway lives in a public subnet; nothing else goes there
            subnets.insert(0, ec2.SubnetConfiguration(name="nat", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=26))
        vpc = ec2.Vpc(
            self, "Vpc", ip_addresses=ec2.IpAddresses.cidr("10.42.0.0/16"), max_azs=2,
            subnet_configuration=subnets, nat_gateways=1 if config.egress == "nat" else 0,
            # The default group's rules are cleared by a custom-resource Lambda outside the VPC;
            # nothing here uses the default group, so we leave it and keep every Lambda private.
            restrict_default_security_group=False,
            flow_logs={"all": ec2.FlowLogOptions(
                destination=ec2.FlowLogDestination.to_cloud_watch_logs(
                    logs.LogGroup(self, "FlowLogs", retention=logs.RetentionDays[config.log_retention])),
                traffic_type=ec2.FlowLogTrafficType.ALL,
            )},
        )  # fmt: skip
        return vpc, ec2.SubnetSelection(subnet_type=private_type)

    def _add_endpoints(self) -> None:
        for name, service in (("S3", ec2.GatewayVpcEndpointAwsService.S3),
                              ("DynamoDb", ec2.GatewayVpcEndpointAwsService.DYNAMODB)):  # fmt: skip
            self.endpoints.append(self.vpc.add_gateway_endpoint(name, service=service, subnets=[self.private_subnets]))
        endpoint_sg = ec2.SecurityGroup(
            self, "EndpointSg", vpc=self.vpc, allow_all_outbound=False, description="Interface endpoints: HTTPS from the VPC"
        )
        endpoint_sg.add_ingress_rule(ec2.Peer.ipv4(self.vpc.vpc_cidr_block), ec2.Port.tcp(HTTPS_PORT), "HTTPS from the VPC")
        acknowledge(endpoint_sg, "EC23", "ingress is the VPC's own CIDR on 443 only; cdk-nag cannot resolve the CIDR "
                    "token of a created VPC (the infrastructure tests check that no rule is open to 0.0.0.0/0)")
        for name, service in INTERFACE_ENDPOINTS.items():
            endpoint = self.vpc.add_interface_endpoint(
                name, service=service, subnets=self.private_subnets, security_groups=[endpoint_sg], open=False,
                private_dns_enabled=True,
            )  # fmt: skip
            self.endpoints.append(endpoint)
