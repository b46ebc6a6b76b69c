"""API Lambda: API Gateway REST API (proxy integration) -> raylauncher/api.py's routes."""

import os
from functools import cache

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from raylauncher.api import ApiServices, app
from raylauncher.config import Settings
from raylauncher.wiring import build_api_services

logger = Logger()
tracer = Tracer()


@cache
def services() -> ApiServices:
    return build_api_services(Settings.from_env(os.environ))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST)
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    app.append_context(services=services())
    return app.resolve(event, context)
