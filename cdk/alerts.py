"""Alerts: what needs a person reaches one. Alarms on the watchdog's metrics (a teardown that
failed — a cluster may still cost money —, drivers gone silent, launches no driver took) and
on the intake dead-letter queue (notifications that could not become jobs) notify one SNS
topic; subscribe to it (e-mail, chat, pager) after the deploy."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from raylauncher.watchdog import METRICS, METRICS_NAMESPACE

#: SweepReport field -> why it pages someone.
WATCHDOG_ALARMS = {
    "teardown_failed": "a job's cluster could not be verified gone: check its instances (tag ray-cluster-name)",
    "silent_drivers": "a running job's driver stopped sending heartbeats: check the bastion",
    "failed_unclaimed": "launched jobs were failed because no driver started: check the bastion and SSM",
    "reaped": "nodes of a cluster past its expires-at were terminated: find out why its teardown did not happen",
    "reaper_failed": "the reaper could not list or terminate expired cluster nodes: they may still cost money",
}


class Alerts(Construct):
    def __init__(
        self, scope: Construct, construct_id: str, *, dead_letters: sqs.IQueue, watchdog_service: str, period_minutes: int
    ) -> None:
        super().__init__(scope, construct_id)
        self.topic = sns.Topic(
            self, "Topic", display_name="raylauncher alerts", enforce_ssl=True,
            master_key=kms.Alias.from_alias_name(self, "SnsKey", "alias/aws/sns"),
        )  # fmt: skip
        notify = actions.SnsAction(self.topic)
        self.alarms: dict[str, cloudwatch.Alarm] = {}
        for field, why in WATCHDOG_ALARMS.items():
            metric = cloudwatch.Metric(
                namespace=METRICS_NAMESPACE, metric_name=METRICS[field], dimensions_map={"service": watchdog_service},
                statistic="Maximum", period=Duration.minutes(period_minutes),
            )  # fmt: skip
            self.alarms[field] = metric.create_alarm(
                self, METRICS[field], alarm_description=why, threshold=1, evaluation_periods=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            )  # fmt: skip
        self.alarms["dead_letters"] = dead_letters.metric_approximate_number_of_messages_visible(
            period=Duration.minutes(5), statistic="Maximum"
        ).create_alarm(
            self, "IntakeDeadLetters", threshold=1, evaluation_periods=1,
            alarm_description="S3 notifications the intake could not turn into jobs: inspect the DLQ, then redrive",
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
        )  # fmt: skip
        for alarm in self.alarms.values():
            alarm.add_alarm_action(notify)
