"""Alerts: what needs a person reaches one. Alarms on the watchdog's metrics (a teardown that
failed — a cluster may still cost money —, drivers gone silent, launches no driver took), on
the job metrics made of state-change events (a driver lost, a teardown failed, retries
exhausted: within minutes of the event) and on the intake dead-letter queue (notifications
that could not become jobs) notify one SNS topic; subscribe to it (e-mail, chat, pager) after
the deploy."""

from __future__ import annotations

from aws_cdk import Aws, Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from raylauncher.job_metrics import JOB_ALARMS
from raylauncher.watchdog import METRICS, METRICS_NAMESPACE

#: SweepReport field -> why it pages someone.
WATCHDOG_ALARMS = {
    "teardown_failed": "a job's (or a kept warm/held) cluster could not be verified gone: check its instances (tag ray-cluster-name)",
    "silent_drivers": "a running job's driver stopped sending heartbeats: check the bastion",
    "failed_unclaimed": "launched jobs were failed because no driver started: check the bastion and SSM",
    "reaped": "nodes of a cluster past its expires-at were terminated: find out why its teardown did not happen",
    "reaper_failed": "the reaper could not list or terminate expired cluster nodes: they may still cost money",
}


class Alerts(Construct):
    def __init__(
        self, scope: Construct, construct_id: str, *, dead_letters: sqs.IQueue, watchdog: lambda_.IFunction,
        watchdog_service: str, period_minutes: int, job_metrics: lambda_.IFunction, job_metrics_service: str,
    ) -> None:  # fmt: skip
        super().__init__(scope, construct_id)
        # CloudWatch cannot publish to a topic encrypted with the AWS-managed aws/sns key (its
        # policy cannot be extended): a key of our own lets the alarms encrypt what they send.
        cloudwatch_principal = iam.ServicePrincipal("cloudwatch.amazonaws.com")
        self.key = kms.Key(self, "TopicKey", enable_key_rotation=True, description="raylauncher alerts topic")
        self.key.grant(cloudwatch_principal, "kms:Decrypt", "kms:GenerateDataKey*")
        self.topic = sns.Topic(self, "Topic", display_name="raylauncher alerts", enforce_ssl=True, master_key=self.key)
        self.topic.add_to_resource_policy(iam.PolicyStatement(
            sid="CloudWatchAlarmsOfThisAccount", principals=[cloudwatch_principal], actions=["sns:Publish"],
            resources=[self.topic.topic_arn],
            conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                        "ArnLike": {"aws:SourceArn": f"arn:{Aws.PARTITION}:cloudwatch:{Aws.REGION}:{Aws.ACCOUNT_ID}:alarm:*"}},
        ))  # fmt: skip
        notify = actions.SnsAction(self.topic)
        # The watchdog publishes every count on every sweep (zeros included); a period of two
        # sweeps always holds one, and a missing point (a late sweep) keeps the alarm as it is.
        period = Duration.minutes(2 * period_minutes)
        self.alarms: dict[str, cloudwatch.Alarm] = {}
        for field, why in WATCHDOG_ALARMS.items():
            metric = cloudwatch.Metric(
                namespace=METRICS_NAMESPACE, metric_name=METRICS[field], dimensions_map={"service": watchdog_service},
                statistic="Maximum", period=period,
            )  # fmt: skip
            self.alarms[field] = self._alarm(METRICS[field], metric, why, cloudwatch.TreatMissingData.IGNORE)
        # A sweep that fails publishes nothing: its own errors page instead.
        self.alarms["watchdog_errors"] = self._alarm(
            "WatchdogErrors", watchdog.metric_errors(period=period, statistic="Sum"),
            "the watchdog sweep itself failed (nothing above is being checked): see its logs",
            cloudwatch.TreatMissingData.NOT_BREACHING,
        )  # fmt: skip
        # ... and a watchdog that is not invoked at all (schedule disabled, throttled) pages too.
        silent = cloudwatch.Alarm(
            self, "WatchdogNotRunning", metric=watchdog.metric_invocations(period=period, statistic="Sum"),
            threshold=1, evaluation_periods=1, comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
            alarm_description="the watchdog did not run: lost launches, freed slots and expired clusters are unchecked",
        )  # fmt: skip
        self.alarms["watchdog_not_running"] = silent
        # Job metrics come only with events: no data means nothing happened.
        event_period = Duration.minutes(5)
        for name, why in JOB_ALARMS.items():
            metric = cloudwatch.Metric(
                namespace=METRICS_NAMESPACE, metric_name=name, dimensions_map={"service": job_metrics_service},
                statistic="Sum", period=event_period,
            )  # fmt: skip
            self.alarms[name] = self._alarm(f"Job{name}", metric, why, cloudwatch.TreatMissingData.NOT_BREACHING)
        self.alarms["job_metrics_errors"] = self._alarm(
            "JobMetricsErrors", job_metrics.metric_errors(period=event_period, statistic="Sum"),
            "the job metrics Lambda failed: the job alarms above may miss events; see its logs",
            cloudwatch.TreatMissingData.NOT_BREACHING,
        )  # fmt: skip
        self.alarms["dead_letters"] = self._alarm(
            "IntakeDeadLetters",
            dead_letters.metric_approximate_number_of_messages_visible(period=Duration.minutes(5), statistic="Maximum"),
            "S3 notifications the intake could not turn into jobs: inspect the DLQ, then redrive",
            cloudwatch.TreatMissingData.NOT_BREACHING,
        )  # fmt: skip
        for alarm in self.alarms.values():
            alarm.add_alarm_action(notify)

    def _alarm(
        self, name: str, metric: cloudwatch.IMetric, why: str, missing: cloudwatch.TreatMissingData
    ) -> cloudwatch.Alarm:
        return metric.create_alarm(
            self, name, alarm_description=why, threshold=1, evaluation_periods=1, treat_missing_data=missing,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        )  # fmt: skip
