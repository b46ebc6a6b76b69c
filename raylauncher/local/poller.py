"""What the Lambda event source mapping does, locally: long-poll SQS, hand the batch to the
very same intake handler, delete only the records it did not report as failed."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
#: While a batch is gathered and handled its messages stay invisible (Lambda: the queue's
#: visibility timeout, at least six times the function's timeout).
IN_FLIGHT_VISIBILITY_S = 300
#: Locally, a failed record is offered again after this long (the queue's timeout on AWS).
RETRY_DELAY_S = 2


@dataclass(frozen=True)
class LocalLambdaContext:
    """The attributes Powertools reads from a Lambda context."""

    function_name: str = "raylauncher-intake-local"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:raylauncher-intake-local"
    aws_request_id: str = ""

    @staticmethod
    def get_remaining_time_in_millis() -> int:
        return 300_000


def to_lambda_event(messages: list[dict[str, Any]], queue_arn: str, region: str) -> dict[str, Any]:
    """SQS ReceiveMessage output -> the event a Lambda SQS trigger delivers."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": m.get("Attributes", {}),
                "messageAttributes": m.get("MessageAttributes", {}),
                "md5OfBody": m.get("MD5OfBody", ""),
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for m in messages
        ]
    }


class SqsPoller:
    def __init__(
        self,
        sqs_client: Any,
        queue_url: str,
        queue_arn: str,
        region: str,
        handler: Handler,
        batch_size: int = 10,
        batching_window_s: float = 0,
    ) -> None:
        self._sqs = sqs_client
        self._queue_url = queue_url
        self._queue_arn = queue_arn
        self._region = region
        self._handler = handler
        self._batch_size = batch_size  # like the event source mapping's BatchSize (up to 10,000)
        self._window_s = batching_window_s  # like MaximumBatchingWindowInSeconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll_once(self, wait_s: int = 1) -> int:
        """Receive one batch (up to batch_size messages, gathered for at most the batching
        window), run the handler, delete what succeeded. Returns records handled."""
        messages: list[dict[str, Any]] = []
        window_ends: float | None = None
        while len(messages) < self._batch_size:
            remaining = 0.0 if window_ends is None else window_ends - time.monotonic()
            got = self._sqs.receive_message(
                QueueUrl=self._queue_url,
                MaxNumberOfMessages=min(10, self._batch_size - len(messages)),  # SQS gives 10 at most
                WaitTimeSeconds=wait_s if not messages else int(max(0.0, min(1.0, remaining))),
                VisibilityTimeout=IN_FLIGHT_VISIBILITY_S,  # gathering + handling must not outlast it
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            ).get("Messages", [])
            messages += got
            if not messages:
                return 0
            if window_ends is None:  # like Lambda: the window opens with the first record
                window_ends = time.monotonic() + self._window_s
            if time.monotonic() >= window_ends:
                break
        event = to_lambda_event(messages, self._queue_arn, self._region)
        try:
            result = self._handler(event, LocalLambdaContext(aws_request_id=str(uuid.uuid4())))
            failed = {f["itemIdentifier"] for f in result.get("batchItemFailures", [])}
        except Exception:  # noqa: BLE001 - like Lambda: a raising handler fails the whole batch
            log.exception("intake handler failed; the whole batch will be redelivered")
            failed = {m["MessageId"] for m in messages}
        retry = [m for m in messages if m["MessageId"] in failed]
        for first in range(0, len(retry), 10):  # failed records come back after the retry delay
            self._sqs.change_message_visibility_batch(
                QueueUrl=self._queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": RETRY_DELAY_S}
                         for i, m in enumerate(retry[first : first + 10])],
            )  # fmt: skip
        done = [m for m in messages if m["MessageId"] not in failed]
        for first in range(0, len(done), 10):  # DeleteMessageBatch takes 10 at most
            self._sqs.delete_message_batch(
                QueueUrl=self._queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done[first : first + 10])],
            )
        return len(messages)

    def start(self) -> SqsPoller:
        self._thread = threading.Thread(target=self._loop, name="sqs-poller", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - keep polling, like the event source mapping
                log.exception("poll failed")
                self._stop.wait(1)
