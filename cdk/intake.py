"""Intake: the SQS queue (+ DLQ) the bucket notifies, and the intake Lambda that drains it.

The bucket's notification configuration is `raylauncher.notifications.queue_notification_configuration`
— the very object the local bootstrap puts on the moto bucket — rewritten into CloudFormation's
property names. Set on the bucket itself (no custom-resource Lambda outside the VPC).
"""

from __future__ import annotations

from typing import Any

from aws_cdk import Aws, Duration
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from cdk.functions import LambdaFactory
from raylauncher.config import PipelinesConfig
from raylauncher.notifications import queue_notification_configuration

INTAKE_TIMEOUT = Duration.seconds(120)
#: SQS allows up to 10,000 messages per batch with a batching window (and 6 MB per invocation).
MAX_SQS_BATCH = 10_000
MAX_RECEIVES = 3


def cloudformation_notification(api_config: dict[str, Any]) -> dict[str, Any]:
    """PutBucketNotificationConfiguration's shape -> AWS::S3::Bucket NotificationConfiguration."""
    return {"QueueConfigurations": [
        {"Event": event, "Queue": c["QueueArn"], "Filter": {"S3Key": {"Rules": c["Filter"]["Key"]["FilterRules"]}}}
        for c in api_config["QueueConfigurations"] for event in c["Events"]
    ]}  # fmt: skip


class Intake(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        bucket: s3.Bucket,
        bucket_arn: str,
        pipelines: PipelinesConfig,
        functions: LambdaFactory,
    ) -> None:
        super().__init__(scope, construct_id)
        window_s = max(p.batching_window_s for p in pipelines.pipelines)
        self.dlq = sqs.Queue(self, "DeadLetters", encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True,
                             retention_period=Duration.days(14))  # fmt: skip
        self.queue = sqs.Queue(
            self, "Queue", encryption=sqs.QueueEncryption.SQS_MANAGED, enforce_ssl=True,
            # AWS's advice for Lambda event sources: six times the function timeout plus the window.
            visibility_timeout=Duration.seconds(6 * INTAKE_TIMEOUT.to_seconds() + window_s),
            dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=MAX_RECEIVES, queue=self.dlq),
        )  # fmt: skip
        self.queue.add_to_resource_policy(iam.PolicyStatement(
            sid="BucketNotifications", principals=[iam.ServicePrincipal("s3.amazonaws.com")],
            actions=["sqs:SendMessage"], resources=[self.queue.queue_arn],
            conditions={"ArnEquals": {"aws:SourceArn": bucket_arn}, "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}},
        ))  # fmt: skip
        self.notification = queue_notification_configuration(pipelines, self.queue.queue_arn)
        cfn_bucket = bucket.node.default_child
        assert isinstance(cfn_bucket, s3.CfnBucket)
        cfn_bucket.add_property_override("NotificationConfiguration", cloudformation_notification(self.notification))
        # S3 checks that it may send to the queue when the configuration is put.
        cfn_bucket.node.add_dependency(self.queue.node.find_child("Policy"))

        self.function = functions.function(
            self, "Handler", handler_package="intake", timeout=INTAKE_TIMEOUT,
            description="S3 notifications (SQS batch) -> one job per pipeline and burst",
        )  # fmt: skip
        self.function.add_event_source(sources.SqsEventSource(
            self.queue, report_batch_item_failures=True,
            # Without a batching window Lambda takes at most 10 messages per batch.
            batch_size=min(MAX_SQS_BATCH if window_s else 10, max(p.max_objects_per_job for p in pipelines.pipelines)),
            max_batching_window=Duration.seconds(window_s) if window_s else None,
        ))  # fmt: skip
