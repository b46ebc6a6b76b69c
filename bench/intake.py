"""Intake benchmark: a burst of S3 notifications through the real intake handler, on moto server.

    .venv/bin/python bench/intake.py [--objects 10000] [--duplicates 0.05] [--batch-size 1000]

One real upload gives a real S3 -> SQS notification body (moto server); the burst clones it for
N distinct keys (distinct etag and sequencer, as S3 would send). A share of them is delivered
twice (at-least-once). The notifications are handed to the deployed handler in Lambda SQS
events of --batch-size records — what the event source mapping does with a batching window.
SQS itself is not in the timed path: moto's SQS server costs O(queue depth) per call (measured
here: 500 sends take 3 s on an empty queue, 18 s at a depth of 1,500), which would measure moto,
not us. Prints events/s, DynamoDB requests per event, jobs created, launches requested, and
objects missing or doubled across all manifests (both must be 0). The bastion is a no-op
command: no driver or Ray cluster is started. Written to bench/results/intake.json. Figures
only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from urllib.parse import quote_plus
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "bench")]

from lambdas.intake import handler as intake_handler  # noqa: E402
from raylauncher import aws  # noqa: E402
from raylauncher.config import load_pipelines  # noqa: E402
from raylauncher.local.poller import LocalLambdaContext, to_lambda_event  # noqa: E402
from raylauncher.local.runtime import local_settings  # noqa: E402
from raylauncher.local.stack import FAKE_CREDENTIALS, MotoServer, bootstrap  # noqa: E402
from raylauncher.wiring import build_objects, build_store  # noqa: E402
from record import write_result  # noqa: E402

DYNAMODB_CALLS = {"n": 0}


def counting_client(service: str, settings: Any) -> Any:
    """raylauncher.aws.client, counting every DynamoDB call the intake makes."""
    made = ORIGINAL_CLIENT(service, settings)
    if service == "dynamodb":
        made.meta.events.register("before-call.dynamodb", lambda **_: DYNAMODB_CALLS.__setitem__("n", DYNAMODB_CALLS["n"] + 1))
    return made


ORIGINAL_CLIENT = aws.client


def clone(template: str, key: str, n: int) -> str:
    """The template notification for another object (its own key, etag and sequencer)."""
    doc = json.loads(template)
    obj = doc["Records"][0]["s3"]["object"]
    obj.update({"key": quote_plus(key, safe="/"), "eTag": f"{n:032x}", "sequencer": f"{n:016X}"})
    obj.pop("versionId", None)
    return json.dumps(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--duplicates", type=float, default=0.05, help="share of notifications delivered twice")
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="bench-intake-"))
    noop = state / "noop-launcher"
    noop.write_text("#!/usr/bin/env bash\nexit 0\n")
    noop.chmod(0o755)
    with MotoServer() as moto:
        settings = local_settings(moto.endpoint_url, state, REPO_ROOT / "pipelines.yaml", REPO_ROOT)
        # No event bus: moto's SQS slows down as a queue fills (each event would cost more than the intake).
        settings = settings.model_copy(update={"launcher_bin": str(noop), "event_bus": None})
        os.environ.update({**FAKE_CREDENTIALS, **settings.to_env(), "POWERTOOLS_TRACE_DISABLED": "1"})
        os.environ["POWERTOOLS_LOG_LEVEL"] = "WARNING"
        pipelines = load_pipelines(settings.pipelines_file)
        resources = bootstrap(settings, pipelines)
        s3, sqs = aws.client("s3", settings), aws.client("sqs", settings)
        sqs.purge_queue(QueueUrl=resources.queue_url)  # the s3:TestEvent
        prefix = pipelines.pipelines[0].trigger.prefix
        s3.put_object(Bucket=settings.bucket, Key=f"{prefix}template.csv", Body=b"order_id\n1\n")
        template = next(
            m["Body"] for m in sqs.receive_message(QueueUrl=resources.queue_url, MaxNumberOfMessages=10)["Messages"]
            if "ObjectCreated" in m["Body"]
        )
        keys = [f"{prefix}burst/part-{i:06d}.csv" for i in range(args.objects)]
        bodies = [clone(template, key, i) for i, key in enumerate(keys)]
        duplicates = bodies[: int(args.objects * args.duplicates)]
        deliveries = bodies + duplicates  # the redeliveries arrive in later batches

        aws.client = counting_client  # type: ignore[assignment]  # count from here on
        intake_handler.service.cache_clear()
        started = time.monotonic()
        for first in range(0, len(deliveries), args.batch_size):
            batch = deliveries[first : first + args.batch_size]
            event = to_lambda_event(
                [{"MessageId": f"m{first + i}", "ReceiptHandle": "r", "Body": b} for i, b in enumerate(batch)],
                resources.queue_arn, settings.region,
            )  # fmt: skip
            failures = intake_handler.handler(event, LocalLambdaContext())["batchItemFailures"]
            assert not failures, failures
        intake_s = time.monotonic() - started
        events = len(deliveries)
        aws.client = ORIGINAL_CLIENT  # type: ignore[assignment]

        jobs = build_store(settings).list_jobs()
        objects = build_objects(settings)
        listed = [o["key"] for j in jobs for o in objects.get_json(j.manifest_key)["objects"]]
        missing = len(set(keys) - set(listed))
        doubled = len(listed) - len(set(listed))
        launching = sum(1 for j in jobs if j.status == "LAUNCHING")  # none finishes here: all still hold slots
        queued = sum(1 for j in jobs if j.status == "QUEUED")

    print(f"notifications handled     {events} ({len(duplicates)} of them redeliveries)")
    print(f"intake time               {intake_s:.2f}s")
    print(f"events/s                  {events / intake_s:,.0f}")
    print(f"DynamoDB requests         {DYNAMODB_CALLS['n']} ({DYNAMODB_CALLS['n'] / events:.3f} per event)")
    print(f"jobs created              {len(jobs)} (max_objects_per_job={pipelines.pipelines[0].max_objects_per_job}, "
          f"batch size {args.batch_size})")  # fmt: skip
    print(f"max concurrent clusters   {launching} (caps: {pipelines.pipelines[0].max_concurrent_clusters} per pipeline, "
          f"{settings.max_clusters_total} in total; {queued} job(s) QUEUED for a slot)")  # fmt: skip
    print(f"objects missing / doubled {missing} / {doubled}")
    write_result("intake", {
        "figures": {
            "notifications": events, "redeliveries": len(duplicates), "intake_s": round(intake_s, 2),
            "events_per_s": round(events / intake_s), "dynamodb_requests": DYNAMODB_CALLS["n"],
            "dynamodb_requests_per_event": round(DYNAMODB_CALLS["n"] / events, 3), "jobs_created": len(jobs),
            "max_concurrent_clusters": launching, "jobs_queued": queued, "objects_missing": missing,
            "objects_doubled": doubled,
        },
        "params": {"objects": args.objects, "duplicates": args.duplicates, "batch_size": args.batch_size,
                   "max_objects_per_job": pipelines.pipelines[0].max_objects_per_job},
    })  # fmt: skip


if __name__ == "__main__":
    main()
