"""The one helper that creates every Lambda, so runtime, layer, network, logging and tracing
cannot drift between them.

Code: our staged package only. Powertools (with pydantic and the X-Ray SDK: the layer carries
all its extras) comes from the official Powertools layer, whose ARN is read at deploy time from
the public SSM parameter — no bundling, no Docker. boto3 comes with the runtime.
"""

from __future__ import annotations

from pathlib import Path

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from cdk.nag import acknowledge
from raylauncher.watchdog import METRICS_NAMESPACE

RUNTIME = lambda_.Runtime.PYTHON_3_12
ARCHITECTURE = lambda_.Architecture.ARM_64
POWERTOOLS_LAYER_PARAMETER = "/aws/service/powertools/python/arm64/python3.12/latest"


_MANAGED = "IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/{}]"
LAMBDA_ACKNOWLEDGED = {
    _MANAGED.format("AWSLambdaBasicExecutionRole"): "the AWS-maintained minimum for writing the function's own logs",
    _MANAGED.format("AWSLambdaVPCAccessExecutionRole"): "the AWS-maintained minimum for a function in a VPC (its ENIs)",
    "IAM5[Resource::*]": "actions with no resource scoping: X-Ray PutTraceSegments/PutTelemetryRecords (active tracing); the watchdog also ec2:DescribeInstances, ssm:GetCommandInvocation (read-only: a command's status and output) and ssm:DescribeParameters (names and dates of parameters, never values: to find orphaned Ray tokens)",
    "L1": "Python 3.12 on purpose: the Powertools layer is resolved from its python3.12 SSM parameter; "
          "RUNTIME and POWERTOOLS_LAYER_PARAMETER move together",
}  # fmt: skip


def service_name(handler_package: str) -> str:
    """Powertools' service name (log field, metric dimension) of a function."""
    return f"raylauncher-{handler_package}"


class LambdaFactory(Construct):
    """Holds what every function shares; `function(...)` makes one."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        code_dir: Path,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        security_group: ec2.ISecurityGroup,
        environment: dict[str, str],
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        self._code = lambda_.Code.from_asset(str(code_dir))
        layer_arn = ssm.StringParameter.value_for_string_parameter(self, POWERTOOLS_LAYER_PARAMETER)
        self._layer = lambda_.LayerVersion.from_layer_version_arn(self, "Powertools", layer_arn)
        self._vpc, self._subnets, self._sg = vpc, subnets, security_group
        self._environment = dict(environment)
        self._log_retention = log_retention

    def function(
        self, scope: Construct, construct_id: str, *, handler_package: str, description: str,
        timeout: Duration = Duration.seconds(30), memory_mb: int = 512,
    ) -> lambda_.Function:  # fmt: skip
        """A function running `lambdas/<handler_package>/handler.py:handler`."""
        log_group = logs.LogGroup(scope, f"{construct_id}Logs", retention=self._log_retention,
                                  removal_policy=RemovalPolicy.DESTROY)  # fmt: skip
        fn = lambda_.Function(
            scope, construct_id,
            description=description,
            runtime=RUNTIME, architecture=ARCHITECTURE,
            code=self._code, handler=f"lambdas.{handler_package}.handler.handler", layers=[self._layer],
            vpc=self._vpc, vpc_subnets=self._subnets, security_groups=[self._sg],
            environment={**self._environment, "POWERTOOLS_SERVICE_NAME": service_name(handler_package),
                         "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE},
            timeout=timeout, memory_size=memory_mb,
            tracing=lambda_.Tracing.ACTIVE,
            logging_format=lambda_.LoggingFormat.JSON, log_group=log_group,
        )  # fmt: skip
        for rule, reason in LAMBDA_ACKNOWLEDGED.items():
            acknowledge(fn, rule, reason)
        return fn
