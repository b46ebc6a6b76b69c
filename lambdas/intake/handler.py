"""Intake Lambda: an SQS batch of S3 notifications -> one job per pipeline.

Records that cannot be parsed, and records whose job could not be recorded, are reported as
batch item failures: SQS redelivers them (then dead-letters them), nothing is dropped.
"""

import os
from functools import cache

from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from raylauncher.config import Settings
from raylauncher.intake import IntakeMessage, IntakeService, parse_s3_event
from raylauncher.wiring import build_intake_service

logger = Logger()
tracer = Tracer()


@cache
def service() -> IntakeService:
    return build_intake_service(Settings.from_env(os.environ))


def parse_record(record: SQSRecord) -> IntakeMessage:
    return IntakeMessage(record.message_id, parse_s3_event(record.body))


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def handler(event: dict, context: LambdaContext) -> dict:
    processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)
    with processor(records=event["Records"], handler=parse_record):
        parsed = processor.process()
    result = service().start_jobs(msg for status, msg, _ in parsed if status == "success")
    failures = processor.response()["batchItemFailures"]
    failures += [{"itemIdentifier": message_id} for message_id in result.failed_message_ids]
    return {"batchItemFailures": failures}
