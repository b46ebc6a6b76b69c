"""The HTTP API: API Gateway REST API (IAM authorization, request validation, throttling, access
logs) in front of the API Lambda. Its resources and methods are read from `docs/openapi.json`,
the document the Powertools resolver generates (a test keeps the two in sync), so the gateway
can never route a path the Lambda does not serve. Gateway-made errors (auth, validation,
throttling) use the API's own error body: `{"error": {"code", "message", "field"}}`.
"""

from __future__ import annotations

import re
from typing import Any

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_logs as logs
from constructs import Construct

from cdk.functions import LambdaFactory
from cdk.nag import acknowledge
from raylauncher.config import NAME_PATTERN

_PATH_PARAM = re.compile(r"\{([a-z_]+)\}")
#: What the gateway checks before the Lambda runs (the Lambda checks everything again, in full).
JOB_REQUEST_SCHEMA = apigw.JsonSchema(
    schema=apigw.JsonSchemaVersion.DRAFT4, type=apigw.JsonSchemaType.OBJECT, required=["pipeline"],
    properties={
        "pipeline": apigw.JsonSchema(type=apigw.JsonSchemaType.STRING, pattern=NAME_PATTERN),
        "params": apigw.JsonSchema(type=apigw.JsonSchemaType.OBJECT),
    },
)  # fmt: skip
#: (path, method) -> the schema the gateway checks its JSON body against.
BODY_SCHEMAS = {("/jobs", "post"): JOB_REQUEST_SCHEMA}
_ERROR_BODY = '{"error": {"code": "$context.error.responseType", "message": %s, "field": null}}'
GATEWAY_ERRORS = {
    apigw.ResponseType.BAD_REQUEST_BODY: _ERROR_BODY % '"$util.escapeJavaScript($context.error.validationErrorString)"',
    apigw.ResponseType.BAD_REQUEST_PARAMETERS: _ERROR_BODY % '"$util.escapeJavaScript($context.error.validationErrorString)"',
    apigw.ResponseType.DEFAULT_4_XX: _ERROR_BODY % "$context.error.messageString",
    apigw.ResponseType.DEFAULT_5_XX: _ERROR_BODY % "$context.error.messageString",
}  # fmt: skip


class HttpApi(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        openapi: dict[str, Any],
        functions: LambdaFactory,
        throttle_rate: float,
        throttle_burst: int,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        self.function = functions.function(
            self, "Handler", handler_package="api", timeout=Duration.seconds(29),
            description="HTTP API: submit, list, show and cancel jobs",
        )  # fmt: skip
        access_logs = logs.LogGroup(self, "AccessLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY)
        self.api = apigw.RestApi(
            self, "Api", description="raylauncher jobs API",
            endpoint_types=[apigw.EndpointType.REGIONAL], cloud_watch_role=True,
            default_method_options=apigw.MethodOptions(authorization_type=apigw.AuthorizationType.IAM),
            deploy_options=apigw.StageOptions(
                stage_name="v1", tracing_enabled=True, metrics_enabled=True,
                logging_level=apigw.MethodLoggingLevel.ERROR, data_trace_enabled=False,
                throttling_rate_limit=throttle_rate, throttling_burst_limit=throttle_burst,
                access_log_destination=apigw.LogGroupLogDestination(access_logs),
                access_log_format=apigw.AccessLogFormat.json_with_standard_fields(
                    caller=True, http_method=True, ip=True, protocol=True, request_time=True,
                    resource_path=True, response_length=True, status=True, user=True),
            ),
        )  # fmt: skip
        acknowledge(self.api, "IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonAPIGatewayPushToCloudWatchLogs]",
                    "API Gateway's account-level logging role: the AWS-maintained policy is what the service expects")
        acknowledge(self.api, "COG4", "callers sign requests with SigV4: every method uses AWS_IAM authorization, "
                    "the service's users are IAM principals, not a Cognito user pool")
        acknowledge(self.api, "APIG3", "a regional API behind IAM authorization with stage throttling; attach a "
                    "WAF web ACL if it is ever opened to unauthenticated callers")
        for response_type, template in GATEWAY_ERRORS.items():
            self.api.add_gateway_response(
                f"Gateway{response_type.response_type}", type=response_type,
                templates={"application/json": template},
            )  # fmt: skip
        validator = self.api.add_request_validator("Validator", validate_request_body=True,
                                                   validate_request_parameters=True)  # fmt: skip
        integration = apigw.LambdaIntegration(self.function, proxy=True)
        for path, operations in sorted(openapi["paths"].items()):
            resource = self.api.root.resource_for_path(path)
            params = {f"method.request.path.{name}": True for name in _PATH_PARAM.findall(path)}
            for method, operation in sorted(operations.items()):
                models = None
                if "requestBody" in operation:
                    if (path, method) not in BODY_SCHEMAS:
                        raise ValueError(f"{method.upper()} {path} takes a body: add its schema to BODY_SCHEMAS")
                    name = re.sub(r"[^A-Za-z0-9]", "", f"{method}{path.title()}Body")
                    models = {"application/json": self.api.add_model(
                        name, content_type="application/json", schema=BODY_SCHEMAS[(path, method)])}
                resource.add_method(method.upper(), integration, request_validator=validator,
                                    request_parameters=params or None, request_models=models)  # fmt: skip
