"""Job events: the EventBridge bus every job state change is published on (raylauncher/events.py;
the bus name reaches the Lambdas and the bastion as `RAYLAUNCHER_EVENT_BUS`), and a rule with
`EVENT_PATTERN` — the pattern the local bootstrap puts on the moto bus — invoking the job
metrics Lambda. Other consumers add rules of their own on the bus (docs/events.md)."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from cdk.functions import LambdaFactory
from raylauncher.events import EVENT_PATTERN


class JobEvents(Construct):
    """Created before the Lambdas (they need the bus name); `add_metrics` once the factory exists."""

    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.bus = events.EventBus(self, "Bus", description="raylauncher: one event per job state change")
        self.metrics_function: lambda_.Function | None = None
        self.metrics_rule: events.Rule | None = None

    def allow_publishing(self, grantee: iam.IGrantable) -> None:
        """events:PutEvents on this bus only."""
        self.bus.grant_put_events_to(grantee)

    def add_metrics(self, functions: LambdaFactory) -> lambda_.Function:
        """The job metrics Lambda, invoked for every state change on the bus."""
        fn = functions.function(self, "MetricsHandler", handler_package="job_metrics", timeout=Duration.seconds(10),
                                memory_mb=256, description="job state change -> CloudWatch metrics (EMF)")  # fmt: skip
        self.metrics_rule = events.Rule(
            self, "StateChangesToMetrics", event_bus=self.bus, description="every job state change -> job metrics",
            event_pattern=events.EventPattern(source=EVENT_PATTERN["source"], detail_type=EVENT_PATTERN["detail-type"]),
            targets=[targets.LambdaFunction(fn, retry_attempts=20, max_event_age=Duration.hours(6))],
        )  # fmt: skip
        self.metrics_function = fn
        return fn
