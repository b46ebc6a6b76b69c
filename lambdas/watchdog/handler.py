"""Watchdog Lambda: a scheduled sweep (raylauncher/watchdog.py) — unclaimed launches fail with
a reason, freed slots launch queued jobs, jobs needing a person are reported."""

import os
from functools import cache

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from raylauncher.config import Settings
from raylauncher.watchdog import Watchdog
from raylauncher.wiring import build_watchdog

logger = Logger()
tracer = Tracer()


@cache
def watchdog() -> Watchdog:
    return build_watchdog(Settings.from_env(os.environ))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    report = watchdog().sweep().as_dict()
    logger.info("sweep done", extra={"report": report})
    return report
