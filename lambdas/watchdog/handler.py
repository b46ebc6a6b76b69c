"""Watchdog Lambda: a scheduled sweep (raylauncher/watchdog.py) — unclaimed launches fail with
a reason, freed slots launch queued jobs, jobs needing a person are counted as metrics (the
stack alarms on them)."""

import os
from functools import cache

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from raylauncher.config import Settings
from raylauncher.watchdog import METRICS, Watchdog
from raylauncher.wiring import build_watchdog

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@cache
def watchdog() -> Watchdog:
    return build_watchdog(Settings.from_env(os.environ))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
def handler(event: dict, context: LambdaContext) -> dict:
    report = watchdog().sweep().as_dict()
    for field, metric in METRICS.items():
        metrics.add_metric(name=metric, unit=MetricUnit.Count, value=len(report[field]))
    logger.info("sweep done", extra={"report": report})
    return report
