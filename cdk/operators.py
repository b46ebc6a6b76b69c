"""The operator role: exactly what `raylauncher` (submit, jobs, dashboard, doctor) needs against
this stack, for people in this account to assume (`aws sts assume-role`, or a profile with
`role_arn`). Call the API (SigV4), open the Ray dashboard of a running job through the bastion
(SSM port forwarding to a remote host: no SSH key, no open port), read this stack's outputs and
ask SSM whether the bastion is online."""

from __future__ import annotations

from aws_cdk import Aws, Stack, Token
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from constructs import Construct

from cdk.nag import acknowledge
from raylauncher.cli.arguments import PORT_FORWARDING_DOCUMENT  # the document `raylauncher dashboard` starts



#: What `raylauncher doctor --stack` reads of EC2 (raylauncher/cli/stack_checks.py): the bastion
#: instance, the instance types' vCPUs, the VPC's endpoints and routes, the EBS encryption
#: defaults. Read-only; the only EC2 actions a role outside the launch contract holds.
DOCTOR_EC2_READS = ("ec2:DescribeInstances", "ec2:DescribeInstanceTypes", "ec2:DescribeVpcEndpoints",
                    "ec2:DescribeRouteTables", "ec2:GetEbsEncryptionByDefault", "ec2:GetEbsDefaultKmsKeyId")

class Operators(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, api: apigw.RestApi, bastion: ec2.Instance) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.role = iam.Role(
            self, "Role", assumed_by=iam.AccountRootPrincipal(),
            description="raylauncher operators: the CLI (submit, jobs, dashboard, doctor) against this stack",
        )  # fmt: skip
        api_arn = api.arn_for_execute_api(method="*", path="/*", stage=api.deployment_stage.stage_name)
        bastion_arn = f"arn:{Aws.PARTITION}:ec2:{Aws.REGION}:{Aws.ACCOUNT_ID}:instance/{bastion.instance_id}"
        document_arn = f"arn:{Aws.PARTITION}:ssm:{Aws.REGION}::document/{PORT_FORWARDING_DOCUMENT}"
        statements = [
            iam.PolicyStatement(sid="CallTheApi", actions=["execute-api:Invoke"], resources=[api_arn]),
            # Only the port-forwarding document, only to the bastion; the access check makes a
            # session without that document (a shell) fail instead of falling back to the default.
            iam.PolicyStatement(
                sid="ForwardTheDashboardThroughTheBastion", actions=["ssm:StartSession"],
                resources=[bastion_arn, document_arn],
                conditions={"BoolIfExists": {"ssm:SessionDocumentAccessCheck": "true"}},
            ),
            # Sessions are tagged with the caller's user id: end or resume only one's own.
            iam.PolicyStatement(
                sid="EndOrResumeOwnSessions", actions=["ssm:TerminateSession", "ssm:ResumeSession"],
                resources=[f"arn:{Aws.PARTITION}:ssm:{Aws.REGION}:{Aws.ACCOUNT_ID}:session/*"],
                conditions={"StringLike": {"ssm:resourceTag/aws:ssmmessages:session-id": ["${aws:userid}"]}},
            ),
            iam.PolicyStatement(sid="ReadThisStacksOutputs", actions=["cloudformation:DescribeStacks"],
                                resources=[stack.stack_id]),
            # doctor: is the bastion's install signalled (its resource's status in this stack)
            iam.PolicyStatement(sid="DoctorReadsThisStacksResources", actions=["cloudformation:ListStackResources"],
                                resources=[stack.stack_id]),
            # doctor: bastion online, instance types' vCPUs, the VPC's endpoints, the vCPU quotas.
            # None of these actions has resource-level permissions; all only read.
            iam.PolicyStatement(sid="DoctorReadsTheAccountsCapacity", actions=[
                "ssm:DescribeInstanceInformation", *DOCTOR_EC2_READS,
                "servicequotas:GetServiceQuota", "servicequotas:GetAWSDefaultServiceQuota",
            ], resources=["*"]),
            # doctor: spot workers need EC2's Spot service-linked role
            iam.PolicyStatement(sid="DoctorLooksForTheSpotRole", actions=["iam:GetRole"], resources=[
                f"arn:{Aws.PARTITION}:iam::{Aws.ACCOUNT_ID}:role/aws-service-role/spot.amazonaws.com/AWSServiceRoleForEC2Spot"]),
        ]  # fmt: skip
        self.policy = iam.Policy(self, "Policy", statements=statements)
        self.policy.attach_to_role(self.role)
        api_id = stack.resolve(api.node.default_child.logical_id)  # type: ignore[union-attr]
        stage_id = stack.resolve(api.deployment_stage.node.default_child.logical_id)  # type: ignore[union-attr]
        # The CDK CLI may pin the stack to an account and region: the API ARN then names them.
        account = "<AWS::AccountId>" if Token.is_unresolved(stack.account) else stack.account
        region = "<AWS::Region>" if Token.is_unresolved(stack.region) else stack.region
        why = {
            f"IAM5[Resource::arn:<AWS::Partition>:execute-api:{region}:{account}:<{api_id}>/<{stage_id}>/*/*]":
                "every method and path of this one API's stage: the operator CLI uses all of them (docs/openapi.json)",
            "IAM5[Resource::arn:<AWS::Partition>:ssm:<AWS::Region>:<AWS::AccountId>:session/*]":
                "session ids are made by SSM at StartSession; the condition limits it to sessions tagged with the "
                "caller's own user id",
            "IAM5[Resource::*]": "read-only Describe/Get actions without resource-level permissions: `raylauncher "
                                 "doctor` asks whether the bastion is online, the instance types' vCPUs, the VPC's "
                                 "endpoints, the EBS encryption defaults and the EC2 vCPU quotas",
        }  # fmt: skip
        for rule, reason in why.items():
            acknowledge(self.policy, rule, reason)
