"""Storage: the data bucket (inputs, manifests, logs, outputs), its access-log bucket, and the
job and idempotency tables — built from the very schema objects the local bootstrap uses."""

from __future__ import annotations

from aws_cdk import Aws, Duration, RemovalPolicy, Stack
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from cdk.nag import acknowledge
from raylauncher.store import IDEMPOTENCY_TABLE, JOB_TABLE, TableSchema

#: Everything a job keeps (manifest, SSM output, driver and Ray logs) lives under this prefix.
JOB_PREFIX = "jobs/"
BUCKET_NAME_PREFIX = "raylauncher-data"
#: How cdk-nag prints the bucket's ARN (built from its name, see Storage).
NAG_BUCKET_ARN = f"arn:<AWS::Partition>:s3:::{BUCKET_NAME_PREFIX}-<AWS::AccountId>-<AWS::Region>"


def _table(scope: Construct, construct_id: str, schema: TableSchema) -> dynamodb.Table:
    assert schema.billing_mode == "PAY_PER_REQUEST", "the stack deploys on-demand tables only"
    table = dynamodb.Table(
        scope, construct_id,
        partition_key=dynamodb.Attribute(name=schema.partition_key, type=dynamodb.AttributeType.STRING),
        billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
        time_to_live_attribute=schema.ttl_attribute,
        point_in_time_recovery_specification=dynamodb.PointInTimeRecoverySpecification(
            point_in_time_recovery_enabled=True),
        encryption=dynamodb.TableEncryption.AWS_MANAGED,
        removal_policy=RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
    )  # fmt: skip
    for index in schema.indexes:  # GET /jobs, the queue and the watchdog read these, never a scan
        table.add_global_secondary_index(
            index_name=index.name,
            partition_key=dynamodb.Attribute(name=index.partition_key, type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name=index.sort_key, type=dynamodb.AttributeType.STRING),
            projection_type=dynamodb.ProjectionType.ALL,
        )
    return table


class Storage(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, logs_expire_days: int) -> None:
        super().__init__(scope, construct_id)
        self.job_table = _table(self, "JobTable", JOB_TABLE)
        # Every grant on the job table (table.grant_*) covers its indexes as `<table arn>/index/*`:
        # acknowledged stack-wide, next to the indexes, for whichever role is granted the table.
        acknowledge(
            Stack.of(self), "IAM5[Resource::<StorageJobTable716FAD52.Arn>/index/*]",
            "the job table's own indexes (by_created, by_status, by_pipeline, holding_slot): Query of those only",
        )  # fmt: skip
        self.idempotency_table = _table(self, "IdempotencyTable", IDEMPOTENCY_TABLE)

        self.access_logs = s3.Bucket(
            self, "AccessLogs", block_public_access=s3.BlockPublicAccess.BLOCK_ALL, enforce_ssl=True,
            encryption=s3.BucketEncryption.S3_MANAGED, object_ownership=s3.ObjectOwnership.BUCKET_OWNER_PREFERRED,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(365))], removal_policy=RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
        )  # fmt: skip
        # A name known before the bucket exists: the intake queue's policy names the bucket
        # without referring to it, so the bucket's notification can depend on that policy.
        self.bucket_name = f"{BUCKET_NAME_PREFIX}-{Aws.ACCOUNT_ID}-{Aws.REGION}"
        self.bucket_arn = f"arn:{Aws.PARTITION}:s3:::{self.bucket_name}"
        self.bucket = s3.Bucket(
            self, "Data", bucket_name=self.bucket_name,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL, enforce_ssl=True, versioned=True,
            encryption=s3.BucketEncryption.S3_MANAGED, object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.access_logs, server_access_logs_prefix="data/",
            lifecycle_rules=[
                s3.LifecycleRule(id="job-records", prefix=JOB_PREFIX, expiration=Duration.days(logs_expire_days),
                                 noncurrent_version_expiration=Duration.days(7)),
                s3.LifecycleRule(id="old-versions", noncurrent_version_expiration=Duration.days(30),
                                 abort_incomplete_multipart_upload_after=Duration.days(7)),
            ],
            removal_policy=RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE,
        )  # fmt: skip

    # Explicit, prefix-scoped S3 permissions (the grant_* helpers add s3:GetBucket*, s3:List* ...).
    def _objects(self, prefixes: list[str]) -> list[str]:
        return [f"{self.bucket_arn}/{p}*" for p in prefixes]

    def _acknowledge_prefixes(self, grantee: iam.IGrantable, prefixes: list[str]) -> None:
        for prefix in prefixes:
            acknowledge(
                grantee, f"IAM5[Resource::{NAG_BUCKET_ARN}/{prefix}*]",
                f"objects under {prefix} only: keys are not known in advance (one per input file, job or output)",
            )  # fmt: skip

    def allow_list(self, grantee: iam.IRole, prefixes: list[str]) -> None:
        grantee.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:ListBucket"], resources=[self.bucket_arn],
            conditions={"StringLike": {"s3:prefix": [f"{p}*" for p in prefixes]}},
        ))  # fmt: skip

    def allow_missing_keys(self, grantee: iam.IRole) -> None:
        """S3 answers a GET/HEAD of a key that does not exist yet with 404 only to a caller allowed
        s3:ListBucket in that request's context, which carries no s3:prefix; others get 403.
        Ray Data and pyarrow look at an output path before writing it and fail on 403; the API's
        "no log yet" is a 404. This grant applies only to requests without s3:prefix (a listing
        with a prefix is still bound by `allow_list`)."""
        grantee.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:ListBucket"], resources=[self.bucket_arn], conditions={"Null": {"s3:prefix": "true"}},
        ))  # fmt: skip

    def allow_read(self, grantee: iam.IRole, prefixes: list[str]) -> None:
        self.allow_list(grantee, prefixes)
        self.allow_missing_keys(grantee)
        grantee.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:GetObject", "s3:GetObjectVersion"], resources=self._objects(prefixes)))  # fmt: skip
        self._acknowledge_prefixes(grantee, prefixes)

    def allow_write(self, grantee: iam.IRole, prefixes: list[str]) -> None:
        grantee.add_to_principal_policy(iam.PolicyStatement(
            actions=["s3:PutObject", "s3:AbortMultipartUpload"], resources=self._objects(prefixes)))  # fmt: skip
        self._acknowledge_prefixes(grantee, prefixes)
