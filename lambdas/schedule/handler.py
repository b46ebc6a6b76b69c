"""Schedule Lambda: an EventBridge Scheduler invocation -> one job (once per scheduled time).

The payload is the schedule's Input (raylauncher.schedules.schedule_input); one the stack never
sends is logged and raised, and starts nothing. A firing with no input objects is skipped.
"""

import os
from functools import cache

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from raylauncher.config import Settings
from raylauncher.errors import NoInputObjects
from raylauncher.schedules import InvalidScheduleEvent, ScheduleRunner, parse_schedule_event
from raylauncher.wiring import build_schedule_runner

logger = Logger()
tracer = Tracer()


@cache
def runner() -> ScheduleRunner:
    return build_schedule_runner(Settings.from_env(os.environ))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    try:
        firing = parse_schedule_event(event)
    except InvalidScheduleEvent:
        logger.exception("schedule payload rejected; no job started")
        raise
    try:
        job = runner().fire(firing, context)
    except NoInputObjects as err:  # nothing arrived since: no cluster, and nothing to retry
        logger.info("schedule skipped", extra={"reason": str(err)})
        return {"skipped": str(err)}
    return {"job_id": job.job_id, "status": job.status.value, "trigger": job.trigger}
