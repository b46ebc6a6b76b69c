"""Local AWS: moto in server mode on 127.0.0.1, with the same resources the stack deploys.

S3 bucket, intake queue + dead-letter queue, the job table (JOB_TABLE) and the bucket's
S3 -> SQS notifications (queue_notification_configuration) — the very objects the CDK uses.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from dataclasses import dataclass
from typing import Any

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

from raylauncher import aws
from raylauncher.config import PipelinesConfig, Settings
from raylauncher.notifications import queue_notification_configuration
from raylauncher.store import IDEMPOTENCY_TABLE, JOB_TABLE

#: Redeliveries before a message goes to the DLQ (the deployed queue uses the same).
MAX_RECEIVE_COUNT = 3
#: Local visibility timeout: short, so a failed record is retried within seconds.
LOCAL_VISIBILITY_TIMEOUT_S = 2

FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


class _AtomicDynamoDB:
    """WSGI wrapper: one DynamoDB request at a time. moto serves requests on many threads and
    does not make a conditional write atomic, so two racing writers could both "win" — real
    DynamoDB never lets that happen. Other services stay concurrent (SQS long polls)."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB_"):
            return self._app(environ, start_response)
        with self._lock:
            return list(self._app(environ, start_response))


class _LoopbackMotoServer(ThreadedMotoServer):
    def _server_entry(self) -> None:  # moto 5.2's own, with the DynamoDB wrapper around the app
        app = _AtomicDynamoDB(DomainDispatcherApplication(create_backend_app))
        self._server = make_server(self._ip_address, self._port, app, True, request_handler=MotoRequestHandler)
        self._server_ready_event.set()
        self._server.serve_forever()


class MotoServer:
    """moto in server mode, bound to loopback only, on a free port."""

    def __init__(self) -> None:
        self._server = _LoopbackMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        self.endpoint_url = ""

    def start(self) -> MotoServer:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        # moto keeps its accounts in process-wide state: a new server starts from a clean slate.
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST"), timeout=10)
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class LocalResources:
    queue_url: str
    queue_arn: str
    dlq_url: str


def bootstrap(settings: Settings, pipelines: PipelinesConfig, queue_name: str = "raylauncher-intake") -> LocalResources:
    """Create bucket, queues, table and notifications in the (moto) account `settings` points at."""
    s3, sqs, ddb = (aws.client(name, settings) for name in ("s3", "sqs", "dynamodb"))
    create: dict[str, Any] = {"Bucket": settings.bucket}
    if settings.region != "us-east-1":
        create["CreateBucketConfiguration"] = {"LocationConstraint": settings.region}
    s3.create_bucket(**create)
    s3.put_bucket_versioning(Bucket=settings.bucket, VersioningConfiguration={"Status": "Enabled"})

    dlq_url = sqs.create_queue(QueueName=f"{queue_name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    queue_url = sqs.create_queue(
        QueueName=queue_name,
        Attributes={
            "VisibilityTimeout": str(LOCAL_VISIBILITY_TIMEOUT_S),
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": MAX_RECEIVE_COUNT}),
        },
    )["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]

    for schema, name in ((JOB_TABLE, settings.table), (IDEMPOTENCY_TABLE, settings.idempotency_table)):
        ddb.create_table(**schema.create_table_kwargs(name))
        ddb.update_time_to_live(
            TableName=name, TimeToLiveSpecification={"Enabled": True, "AttributeName": schema.ttl_attribute}
        )
    s3.put_bucket_notification_configuration(
        Bucket=settings.bucket,
        NotificationConfiguration=queue_notification_configuration(pipelines, queue_arn),
    )
    return LocalResources(queue_url=queue_url, queue_arn=queue_arn, dlq_url=dlq_url)
