"""Local AWS: moto in server mode on 127.0.0.1, with the same resources the stack deploys.

S3 bucket, intake queue + dead-letter queue, the job table (JOB_TABLE) and the bucket's
S3 -> SQS notifications (queue_notification_configuration) — the very objects the CDK uses —
and, with an event bus set, the bus with a rule (EVENT_PATTERN) delivering job state-change
events to an SQS queue, where local mode and tests read them (on AWS a Lambda turns them into
metrics).
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import moto.dynamodb.models as moto_dynamodb
import moto.s3.notifications as moto_s3_notifications
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.dynamo_type import DynamoType, Item
from moto.dynamodb.models.table import Table
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

from raylauncher import aws
from raylauncher.aws import local_credentials
from raylauncher.config import PipelinesConfig, Settings
from raylauncher.events import EVENT_PATTERN
from raylauncher.local.call_log import ACCOUNT, CREDENTIAL, AwsRequest, describe, ec2_requests
from raylauncher.notifications import queue_notification_configuration
from raylauncher.store import IDEMPOTENCY_TABLE, JOB_TABLE

log = logging.getLogger(__name__)

#: Redeliveries before a message goes to the DLQ (the deployed queue uses the same).
MAX_RECEIVE_COUNT = 3
#: Local visibility timeout: short, so a failed record is retried within seconds.
LOCAL_VISIBILITY_TIMEOUT_S = 2

#: Local mode's process credentials: the bastion role's (the driver and the `ray up`/`ray down` it
#: runs sign with them); the nodes and the watchdog sign as their own roles (aws.LOCAL_ACCESS_KEY_IDS).
FAKE_CREDENTIALS = local_credentials("bastion")


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




class _CallLog:
    """WSGI wrapper that counts EC2 API calls by (caller address, access key id, action): what
    the launcher really asked of EC2, for the IAM contract test and the stand-in's bench.
    EC2 speaks the query protocol, so the action is a form field of the (buffered) body."""

    #: Actions after which instances start or end: listeners (the EC2 stand-in) are told at once.
    INSTANCE_CHANGES = frozenset({"RunInstances", "TerminateInstances", "StopInstances", "StartInstances", "RebootInstances"})

    def __init__(self, app: Any) -> None:
        self._app = app
        self.ec2_calls: Counter[tuple[str, str, str]] = Counter()
        self.instance_listeners: list[Callable[[], None]] = []
        #: S3 and SSM requests as IAM would judge them (call_log.py), kept only when asked.
        self.record_requests = False
        self.requests: list[AwsRequest] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        match = CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))  # (key id, region, service)
        if match and self.record_requests and match.group(3) in ("s3", "ssm"):
            return self._recorded(environ, start_response, match.group(3))
        if match and match.group(3) == "ec2":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            query = urllib.parse.parse_qs(body.decode(errors="replace")) | urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
            action = (query.get("Action") or ["?"])[0]
            self.ec2_calls[(environ.get("REMOTE_ADDR", ""), match.group(1), action)] += 1
            if self.record_requests:  # judged on the resources as they are before the call
                pending = [AwsRequest(environ.get("REMOTE_ADDR", ""), match.group(1), a, r, c)
                           for a, r, c in ec2_requests(action, query, match.group(2), _MotoEc2Facts())]  # fmt: skip
                start_response = self._recording(start_response, pending)
            if action in self.INSTANCE_CHANGES:
                response = self._app(environ, start_response)  # served: moto has made the change
                for listener in list(self.instance_listeners):
                    try:
                        listener()
                    except Exception:  # noqa: BLE001 - the call was served: it must not fail (and be retried) now
                        log.exception("moto call log: an instance listener failed")
                return response
        return self._app(environ, start_response)

    def _recorded(self, environ: dict[str, Any], start_response: Any, service: str) -> Any:
        body = b""
        if service == "ssm":  # JSON: the parameter's name is in the body
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
        request = describe(environ, body)
        if request is None:
            return self._app(environ, start_response)
        return self._app(environ, self._recording(start_response, [request]))

    def _recording(self, start_response: Any, requests: list[AwsRequest]) -> Any:
        """A start_response that records `requests` with the status moto answers."""

        def recording_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            code = int(status.split()[0])
            self.requests.extend(dataclasses.replace(r, status=code) for r in requests)
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        return recording_start_response


class _MotoEc2Facts:
    """What IAM would know of EC2 resources at decision time, read from moto's backends (the
    server runs in this process)."""

    def tags(self, region: str, resource_id: str) -> dict[str, str]:
        from moto.ec2.models import ec2_backends

        backend = ec2_backends[ACCOUNT][region]
        return {t["key"]: t["value"] for t in backend.describe_tags(filters={"resource-id": [resource_id]})}

    def image_owner(self, region: str, image_id: str) -> str | None:
        from moto.ec2.models import ec2_backends

        try:
            return str(ec2_backends[ACCOUNT][region].describe_images(ami_ids=[image_id])[0].owner_id)
        except Exception:  # noqa: BLE001 - an unknown image: no owner to tell
            return None

    def profile_role_arn(self, profile_arn: str) -> str | None:
        from moto.iam.models import iam_backends

        try:
            profile = iam_backends[ACCOUNT]["global"].get_instance_profile_by_arn(profile_arn)
            return str(profile.roles[0].arn) if profile.roles else None
        except Exception:  # noqa: BLE001
            return None


def _deepcopy_all_but_tables(x: Any, memo: dict[int, Any] | None = None) -> Any:
    return x if isinstance(x, Table) else copy.deepcopy(x, memo)


_moto_transact_write_items = DynamoDBBackend.transact_write_items


def _transact_write_items(backend: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
    """moto's TransactWriteItems, rolled back item by item instead of table by table.

    moto 5.2 applies a transaction's writes one by one and, to undo them when one fails,
    first deep-copies every table the transaction names -- once per item, so a 25-item claim
    costs 25 copies of the whole idempotency table. That is quadratic in the table's size
    (0.67 GB RSS for 1,000 objects, 4.4 GB for 3,000: 10,000 were OOM-killed). Here only the
    items the transaction writes are copied, and put back if moto raises. Same outcome: all or
    nothing (our tables have no streams, which a table copy would also have rolled back).
    """
    saved: list[tuple[Table, DynamoType, DynamoType | None, Item | None]] = []
    for entry in transact_items:
        op_type, op = next(iter(entry.items()))
        table = backend.tables.get(op.get("TableName", ""))
        attrs = op.get("Item") if op_type == "Put" else op.get("Key")
        if op_type == "ConditionCheck" or table is None or not isinstance(attrs, dict):
            continue  # writes nothing (a malformed entry fails before any write)
        if table.hash_key_attr not in attrs or (table.range_key_attr and table.range_key_attr not in attrs):
            continue
        hash_key = DynamoType(attrs[table.hash_key_attr])
        range_key = DynamoType(attrs[table.range_key_attr]) if table.range_key_attr else None
        saved.append((table, hash_key, range_key, copy.deepcopy(table.get_item(hash_key, range_key))))
    try:
        _moto_transact_write_items(backend, transact_items)
    except Exception:
        for table, hash_key, range_key, old in reversed(saved):
            items = table.items[hash_key] if range_key is not None else table.items
            key = range_key if range_key is not None else hash_key
            if old is None:
                items.pop(key, None)
            else:
                items[key] = old
        raise


def _roll_back_transactions_by_item() -> None:
    """Install `_transact_write_items` (process-wide, idempotent). moto's own rollback then
    swaps each table for itself: inside moto's DynamoDB models a table "copy" is the table."""
    moto_dynamodb.copy = SimpleNamespace(deepcopy=_deepcopy_all_but_tables)  # type: ignore[attr-defined]
    DynamoDBBackend.transact_write_items = _transact_write_items  # type: ignore[method-assign]


_moto_get_s3_event = moto_s3_notifications._get_s3_event
_sequencer_lock = threading.Lock()
_last_sequencer = 0


def _next_sequencer() -> str:
    """A hex string that grows with every call in this process (nanoseconds, kept strictly
    increasing): written without leading zeros, so lengths may differ as AWS's do."""
    global _last_sequencer
    with _sequencer_lock:
        _last_sequencer = max(_last_sequencer + 1, time.time_ns())
        return f"{_last_sequencer:X}"


def _get_s3_event_with_version(event_name: str, bucket: Any, key: Any, notification_id: str) -> dict[str, Any]:
    """moto's S3 event record, with what AWS puts in it and moto leaves out: the object's
    `versionId` (in a versioned bucket; AWS leaves it out otherwise) and a `sequencer`. moto
    builds the event right after it stored the write, so the sequencer orders writes of one key
    as moto applied them (two racing writes of one key could be numbered in the other order)."""
    event = _moto_get_s3_event(event_name, bucket, key, notification_id)
    for record in event["Records"]:
        obj = record["s3"]["object"]
        if getattr(bucket, "is_versioned", False) and key.version_id not in (None, "null"):
            obj["versionId"] = key.version_id
        obj["sequencer"] = _next_sequencer()
    return event


def _faithful_s3_notifications() -> None:
    """Install `_get_s3_event_with_version` (process-wide, idempotent): local notifications then
    carry versionId and sequencer like AWS's, so the intake takes the same path locally — a
    re-upload of identical bytes is a new version, hence new work, not a duplicate."""
    moto_s3_notifications._get_s3_event = _get_s3_event_with_version  # type: ignore[assignment]


class _LoopbackMotoServer(ThreadedMotoServer):
    call_log: _CallLog

    def _server_entry(self) -> None:  # moto 5.2's own, with the DynamoDB and call-log wrappers
        app = self.call_log = _CallLog(_AtomicDynamoDB(DomainDispatcherApplication(create_backend_app)))
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
        _roll_back_transactions_by_item()
        _faithful_s3_notifications()
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        # moto keeps its accounts in process-wide state: a new server starts from a clean slate.
        urllib.request.urlopen(urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST"), timeout=10)
        return self

    def stop(self) -> None:
        self._server.stop()

    def on_instance_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener` after every call that starts or ends instances; returns the unsubscribe."""
        listeners = self._server.call_log.instance_listeners
        listeners.append(listener)
        return lambda: listeners.remove(listener) if listener in listeners else None

    def record_requests(self) -> list[AwsRequest]:
        """From now on keep every S3 and SSM request (call_log.py); returns the live list."""
        self._server.call_log.record_requests = True
        return self._server.call_log.requests

    @property
    def ec2_calls(self) -> Counter[tuple[str, str, str]]:
        """EC2 actions served so far, by (caller address, access key id, action)."""
        return self._server.call_log.ec2_calls

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class LocalResources:
    queue_url: str
    queue_arn: str
    dlq_url: str
    events_queue_url: str | None = None  # job state-change events, when the settings name a bus


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
    events_queue_url = _bootstrap_event_bus(settings) if settings.event_bus else None
    return LocalResources(queue_url=queue_url, queue_arn=queue_arn, dlq_url=dlq_url, events_queue_url=events_queue_url)


def _bootstrap_event_bus(settings: Settings) -> str:
    """The bus, and a rule sending every job state-change event on it to an SQS queue (its URL)."""
    assert settings.event_bus
    events, sqs = aws.client("events", settings), aws.client("sqs", settings)
    events.create_event_bus(Name=settings.event_bus)
    queue_url = sqs.create_queue(QueueName=f"{settings.event_bus}-job-events")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(Name="job-state-changes", EventBusName=settings.event_bus, EventPattern=json.dumps(EVENT_PATTERN))
    events.put_targets(Rule="job-state-changes", EventBusName=settings.event_bus,
                       Targets=[{"Id": "job-events-queue", "Arn": queue_arn}])  # fmt: skip
    return queue_url
