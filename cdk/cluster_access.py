"""Who may launch Ray nodes, and what the nodes may do.

`ray up` on the bastion launches the head; the head's autoscaler launches the workers. Both
therefore get `launcher_statements`: DescribeInstances (IAM has no resource scoping for it),
RunInstances only into our private subnets and cluster security group and only with the
`ray-cluster-name` tag of one of our clusters, tag/terminate only instances carrying that tag,
and PassRole only for the node role, only to EC2. The bastion also gets `ray_up_statements`:
what `ray up` alone asks while it resolves the cluster config (the head's autoscaler gets a
config resolved already), and key pairs only under Ray's own name.

Least privilege, checked where it runs: each EC2 action granted here is one the EC2 stand-in
sees that role call (moto's call log: tests/e2e/test_ec2_standin.py holds the grants against it
both ways), or one in EC2_GRANTED_UNSEEN, with the reason it must stay. Left out on purpose,
because Ray 2.60 never calls them with our cluster config: DescribeImages and
DescribeInstanceStatus (only with a CloudWatch config), DescribeAvailabilityZones, DeleteTags,
Stop/StartInstances (cache_stopped_nodes is false: nodes are terminated, never stopped).

Each cluster's Ray auth token (raylauncher.cluster_tokens) is an SSM SecureString parameter under
TOKEN_PATH: `allow_tokens` grants a role exactly the Parameter Store actions TOKEN_ACTIONS lists
for it, on that path only. No KMS grant goes with them: the parameters use the AWS-managed
`aws/ssm` key, whose key policy already lets every principal of the account decrypt through
Parameter Store (docs/security.md, "Ray tokens").
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Aws
from aws_cdk import aws_iam as iam
from constructs import Construct

from cdk.nag import acknowledge
from cdk.storage import JOB_PREFIX, Storage

from raylauncher.cluster_tokens import TOKEN_PATH
from raylauncher.tags import CLUSTER_NAME_PREFIX, RAY_CLUSTER_TAG
from raylauncher.config import PipelinesConfig

#: Ray names the key pairs it creates `ray-autoscaler_<region>`, then `ray-autoscaler_<n>_<region>`.
RAY_KEY_PAIR_PREFIX = "ray-autoscaler"
#: What `ray up` (and `ray get-head-ip`, `ray down`: the same config bootstrap) asks before it
#: launches: the instance types' vCPUs (asked even with explicit resources), the configured
#: subnets and security group. The key pair actions are RAY_KEY_PAIR_ACTIONS.
RAY_UP_DESCRIBE_ACTIONS = ["ec2:DescribeInstanceTypes", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups"]
#: Granted to the bastion although the stand-in never sees them called, and why.
RAY_KEY_PAIR_ACTIONS = {
    "ec2:DescribeKeyPairs": "`ray up` looks up its key pair (ray-autoscaler_<region>) because the cluster config of "
                            "a deployment names no SSH key; the stand-in names its own key (deltas.config_overrides), "
                            "so Ray skips the lookup there",
    "ec2:CreateKeyPair": "`ray up` creates that key pair the first time the region has none; the stand-in names its "
                         "own key, so Ray never creates one there",
}  # fmt: skip
#: Granted to the nodes although the stand-in never sees the head's autoscaler call it, and why.
AUTOSCALER_TERMINATE = (
    "the head's autoscaler terminates workers idle longer than idle_timeout_minutes above min_workers (a "
    "pipeline with max_workers > min_workers) and workers whose setup failed; the stand-in's clusters run "
    "min_workers = max_workers and set up cleanly, so there only `ray down` (the bastion) terminates"
)
#: EC2 actions a role is granted that the EC2 stand-in never sees it call, each with the reason
#: it must stay (roles named as in raylauncher.aws.LOCAL_ACCESS_KEY_IDS; the watchdog's grant is
#: in cdk/stack.py). Every other EC2 action granted to these roles is one the stand-in sees that
#: role call; tests/infrastructure/test_least_privilege.py checks each reason stands beside a grant.
EC2_GRANTED_UNSEEN: dict[str, dict[str, str]] = {
    "bastion": RAY_KEY_PAIR_ACTIONS,
    "nodes": {"ec2:TerminateInstances": AUTOSCALER_TERMINATE},
    "watchdog": {},
}


#: How cdk-nag prints `ec2_arn("")` in finding ids.
NAG_EC2_ARN = "arn:<AWS::Partition>:ec2:<AWS::Region>:<AWS::AccountId>:"
_NEW_RESOURCE = ("does not exist before RunInstances creates it; the statement's condition requires our "
                 f"{RAY_CLUSTER_TAG} tag (or acts only on instances carrying it)")  # fmt: skip
LAUNCHER_WILDCARDS = {
    "IAM5[Resource::*]": "EC2 Describe* actions support no resource-level permissions (AWS service authorization reference)",
    f"IAM5[Resource::{NAG_EC2_ARN}instance/*]": "an instance " + _NEW_RESOURCE,
    f"IAM5[Resource::{NAG_EC2_ARN}volume/*]": "a root volume " + _NEW_RESOURCE,
    f"IAM5[Resource::{NAG_EC2_ARN}network-interface/*]": "the node's network interface is created by RunInstances in our subnets and security group",
    f"IAM5[Resource::{NAG_EC2_ARN}key-pair/{RAY_KEY_PAIR_PREFIX}*]": "Ray creates and uses key pairs named ray-autoscaler_<n>_<region> only",
    f"IAM5[Resource::{NAG_EC2_ARN}spot-instances-request/*]": "a spot request is created by RunInstances itself (spot workers), in the same call as the tagged instance",
}  # fmt: skip
#: cdk-nag's id of the owner-scoped image grant (`image_statement(owner=...)`), and why.
OWNERS_IMAGES_WILDCARD = (
    "IAM5[Resource::arn:<AWS::Partition>:ec2:<AWS::Region>::image/*]",
    "the node image is the newest of the default image's publisher (re-resolved at each deploy, while the "
    "bastion keeps the id it installed): the ec2:Owner condition admits that publisher's images only",
)


#: Parameter Store actions on the Ray token parameters, per role (named as in EC2_GRANTED_UNSEEN):
#: the driver on the bastion makes (PutParameter), reads, and deletes each attempt's token at
#: teardown, and `raylauncher cluster-token JOB`, run there, reads a job's tokens (GetParametersByPath);
#: each node reads its cluster's token in its Ray start command; the watchdog deletes the token
#: of a cluster it tore down for a lost driver. No other role of the stack may touch them
#: (tests/infrastructure/test_token_parameters.py).
TOKEN_ACTIONS: dict[str, list[str]] = {
    "bastion": ["ssm:PutParameter", "ssm:GetParameter", "ssm:GetParametersByPath", "ssm:DeleteParameter"],
    "nodes": ["ssm:GetParameter"],
    "watchdog": ["ssm:DeleteParameter"],
}
#: How cdk-nag prints `token_parameters_arn()` in finding ids.
NAG_TOKEN_PARAMETERS_ARN = f"arn:<AWS::Partition>:ssm:<AWS::Region>:<AWS::AccountId>:parameter{TOKEN_PATH}*"
TOKEN_WILDCARD_REASON = (
    f"the Ray token parameters of every cluster, named {TOKEN_PATH}<job id>/<run id> when the driver starts "
    "a cluster: the path is the only scope known in advance"
)


def token_parameters_arn() -> str:
    """Every Ray token parameter of this account and region (TOKEN_PATH, and nothing else)."""
    return f"arn:{Aws.PARTITION}:ssm:{Aws.REGION}:{Aws.ACCOUNT_ID}:parameter{TOKEN_PATH}*"


def allow_tokens(grantee: iam.IGrantable, scope: Construct, role: str) -> None:
    """Give `grantee` the TOKEN_ACTIONS of `role` on the token parameters only, and acknowledge
    the path wildcard on `scope` (the construct the role belongs to)."""
    grantee.grant_principal.add_to_principal_policy(iam.PolicyStatement(
        sid="RayTokenParameters", actions=TOKEN_ACTIONS[role], resources=[token_parameters_arn()]))  # fmt: skip
    acknowledge(scope, f"IAM5[Resource::{NAG_TOKEN_PARAMETERS_ARN}]", TOKEN_WILDCARD_REASON)


def ec2_arn(resource: str, *, account: bool = True) -> str:
    return f"arn:{Aws.PARTITION}:ec2:{Aws.REGION}:{Aws.ACCOUNT_ID if account else ''}:{resource}"


def image_statement(*, image_id: str | None = None, owner: str | None = None) -> iam.PolicyStatement:
    """RunInstances of the node image: the one pinned image (`node_ami_id`), or any image of the
    account that publishes the default one (CloudFormation re-resolves a public SSM parameter at
    every deploy while the bastion keeps the id it installed: a grant on one resolved id would
    deny every `ray up` once a newer image is published). In a statement of its own: `ec2:Owner`
    is a key of the image resource only, and would match no other resource of the call."""
    if (image_id is None) == (owner is None):
        raise ValueError("give the node image's id or its owner, not both")
    if image_id is not None:
        return iam.PolicyStatement(sid="RunOurImage", actions=["ec2:RunInstances"],
                                   resources=[ec2_arn(f"image/{image_id}", account=False)])  # fmt: skip
    return iam.PolicyStatement(
        sid="RunOwnersImages", actions=["ec2:RunInstances"], resources=[ec2_arn("image/*", account=False)],
        conditions={"StringEquals": {"ec2:Owner": owner}},
    )  # fmt: skip


def launcher_statements(
    *, node_role: iam.IRole, subnet_ids: Sequence[str], cluster_sg_id: str, image: iam.PolicyStatement
) -> list[iam.PolicyStatement]:
    ours = f"{CLUSTER_NAME_PREFIX}*"
    return [
        image,
        iam.PolicyStatement(sid="DescribeClusterNodes", actions=["ec2:DescribeInstances"], resources=["*"]),
        iam.PolicyStatement(
            sid="RunTaggedNodes", actions=["ec2:RunInstances"],
            resources=[ec2_arn("instance/*"), ec2_arn("volume/*")],
            conditions={"StringLike": {f"aws:RequestTag/{RAY_CLUSTER_TAG}": ours}},
        ),  # fmt: skip
        iam.PolicyStatement(
            sid="RunInOurNetwork", actions=["ec2:RunInstances"],
            resources=[*(ec2_arn(f"subnet/{s}") for s in subnet_ids), ec2_arn(f"security-group/{cluster_sg_id}"),
                       ec2_arn("network-interface/*"), ec2_arn(f"key-pair/{RAY_KEY_PAIR_PREFIX}*"),
                       ec2_arn("spot-instances-request/*")],  # spot_workers: the request RunInstances makes
        ),  # fmt: skip
        iam.PolicyStatement(
            sid="TagAtLaunch", actions=["ec2:CreateTags"], resources=[ec2_arn("instance/*"), ec2_arn("volume/*")],
            conditions={"StringEquals": {"ec2:CreateAction": "RunInstances"}},
        ),  # fmt: skip
        iam.PolicyStatement(
            sid="ManageOurNodes",
            # (no stop/start: clusters run with cache_stopped_nodes false, nodes are terminated;
            # no DeleteTags: Ray only sets tags)
            actions=["ec2:CreateTags", "ec2:TerminateInstances"],
            resources=[ec2_arn("instance/*")],
            conditions={"StringLike": {f"aws:ResourceTag/{RAY_CLUSTER_TAG}": ours}},
        ),  # fmt: skip
        iam.PolicyStatement(
            sid="PassNodeRoleToEc2", actions=["iam:PassRole"], resources=[node_role.role_arn],
            conditions={"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
        ),  # fmt: skip
    ]


def ray_up_statements() -> list[iam.PolicyStatement]:
    """What `ray up` on the bastion asks besides `launcher_statements` (the head's autoscaler
    works from the config `ray up` resolved, so the nodes need none of it)."""
    return [
        iam.PolicyStatement(
            sid="DescribeForRayUp", actions=[*RAY_UP_DESCRIBE_ACTIONS, "ec2:DescribeKeyPairs"], resources=["*"]
        ),
        iam.PolicyStatement(
            sid="RayKeyPairs", actions=["ec2:CreateKeyPair"], resources=[ec2_arn(f"key-pair/{RAY_KEY_PAIR_PREFIX}*")]
        ),
    ]


class NodeRole(Construct):
    """The role of head and workers: read the pipelines' inputs and the job's manifest, write the
    pipelines' outputs; the head also launches and stops its workers (`launcher_statements`)."""

    def __init__(self, scope: Construct, construct_id: str, *, storage: Storage, pipelines: PipelinesConfig) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
                             description="Ray head and worker nodes of raylauncher clusters")  # fmt: skip
        self.profile = iam.InstanceProfile(self, "Profile", role=self.role)
        outputs = sorted({p.output_prefix for p in pipelines.pipelines})
        storage.allow_read(self.role, [*sorted({p.trigger.prefix for p in pipelines.pipelines}), JOB_PREFIX, *outputs])
        storage.allow_write(self.role, outputs)
        allow_tokens(self.role, self, "nodes")  # each node reads its cluster's token when it starts Ray

    def allow_launching(self, statements: list[iam.PolicyStatement]) -> None:
        allow_launching(self.role, statements)


def allow_launching(role: iam.IRole, statements: list[iam.PolicyStatement]) -> None:
    """Give `role` the launcher statements, acknowledging the wildcards they need and why."""
    for statement in statements:
        role.add_to_principal_policy(statement)
    for rule, reason in LAUNCHER_WILDCARDS.items():
        acknowledge(role, rule, reason)
    if any(statement.sid == "RunOwnersImages" for statement in statements):
        acknowledge(role, *OWNERS_IMAGES_WILDCARD)
