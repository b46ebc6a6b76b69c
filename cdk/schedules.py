"""EventBridge Scheduler: one schedule per pipeline schedule in the config (its Input is
`raylauncher.schedules.schedule_input`, the payload the schedule Lambda parses), and the
watchdog's sweep every few minutes."""

from __future__ import annotations

from aws_cdk import Aws, Duration, Stack, TimeZone
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as targets
from constructs import Construct

from cdk.nag import acknowledge

from raylauncher.config import PipelinesConfig
from raylauncher.schedules import schedule_input


class Schedules(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        pipelines: PipelinesConfig,
        schedule_function: lambda_.IFunction,
        watchdog_function: lambda_.IFunction,
        watchdog_rate_minutes: int,
    ) -> None:
        super().__init__(scope, construct_id)
        # One role for all schedules, assumable only by EventBridge Scheduler of this account; each
        # LambdaInvoke target grants it lambda:InvokeFunction on its function (and its versions).
        self.role = iam.Role(self, "InvokeRole", assumed_by=iam.ServicePrincipal(
            "scheduler.amazonaws.com", conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}}))  # fmt: skip
        for fn in (schedule_function, watchdog_function):
            logical_id = Stack.of(self).resolve((fn.node.default_child).logical_id)
            acknowledge(self.role, f"IAM5[Resource::<{logical_id}.Arn>:*]",
                        "invoke on this function and its versions only (CDK's Lambda grant for Scheduler targets)")
        self.pipeline_schedules: dict[tuple[str, str], scheduler.Schedule] = {}
        for pipeline in pipelines.pipelines:
            for schedule in pipeline.schedules:
                self.pipeline_schedules[(pipeline.name, schedule.name)] = scheduler.Schedule(
                    self, f"{pipeline.name}-{schedule.name}",
                    description=f"pipeline {pipeline.name}: schedule {schedule.name}",
                    schedule=scheduler.ScheduleExpression.expression(schedule.expression, TimeZone.of(schedule.timezone)),
                    target=targets.LambdaInvoke(
                        schedule_function, role=self.role, retry_attempts=5, max_event_age=Duration.hours(24),
                        input=scheduler.ScheduleTargetInput.from_object(schedule_input(pipeline.name, schedule.name)),
                    ),
                )  # fmt: skip
        self.watchdog = scheduler.Schedule(
            self, "watchdog", description="raylauncher watchdog sweep",
            schedule=scheduler.ScheduleExpression.rate(Duration.minutes(watchdog_rate_minutes)),
            target=targets.LambdaInvoke(watchdog_function, role=self.role, retry_attempts=0),
        )  # fmt: skip
