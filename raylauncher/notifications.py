"""The bucket's S3 -> SQS notification config: one filter per pipeline trigger.

The local bootstrap applies exactly this object; the CDK stack deploys the same filters.
"""

from __future__ import annotations

from typing import Any

from raylauncher.config import PipelinesConfig


def notification_filters(pipelines: PipelinesConfig) -> list[dict[str, str]]:
    """(prefix, suffix) per pipeline, in config order."""
    return [{"prefix": p.trigger.prefix, "suffix": p.trigger.suffix} for p in pipelines.pipelines]


def queue_notification_configuration(pipelines: PipelinesConfig, queue_arn: str) -> dict[str, Any]:
    """The `NotificationConfiguration` for `put_bucket_notification_configuration`."""
    configs = []
    for pipeline, flt in zip(pipelines.pipelines, notification_filters(pipelines), strict=True):
        rules = [{"Name": "prefix", "Value": flt["prefix"]}]
        if flt["suffix"]:
            rules.append({"Name": "suffix", "Value": flt["suffix"]})
        configs.append(
            {
                "Id": f"raylauncher-{pipeline.name}",
                "QueueArn": queue_arn,
                "Events": ["s3:ObjectCreated:*"],
                "Filter": {"Key": {"FilterRules": rules}},
            }
        )
    return {"QueueConfigurations": configs}
