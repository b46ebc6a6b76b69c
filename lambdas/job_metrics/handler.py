"""Job metrics Lambda: each "Ray Job State Change" event on the bus (an EventBridge rule) ->
CloudWatch metrics as EMF log lines (raylauncher/job_metrics.py decides which; the stack alarms
on DriverLost, TeardownFailed and RetriesExhausted)."""

from aws_lambda_powertools import Logger, single_metric
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from raylauncher.events import JobStateChange
from raylauncher.job_metrics import state_change_metrics
from raylauncher.model import parse_iso

logger = Logger()


@logger.inject_lambda_context
def handler(event: dict, context: LambdaContext) -> dict:
    change = JobStateChange.model_validate(event["detail"])  # a bad event raises: EventBridge retries, then logs it
    points = state_change_metrics(change)
    for point in points:
        with single_metric(name=point.name, unit=MetricUnit(point.unit), value=point.value,
                           default_dimensions={"service": logger.service, **point.dimensions}) as metric:  # fmt: skip
            metric.set_timestamp(parse_iso(change.time))  # when it happened, not when delivered
    return {"job_id": change.job_id, "to": change.to.value, "metrics": [p.name for p in points]}
