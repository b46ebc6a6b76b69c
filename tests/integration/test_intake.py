"""Intake from a real S3 -> SQS notification (moto server), through the deployed Lambda handler."""

import json
import time
from datetime import timedelta

import pytest

from lambdas.intake import handler as intake_handler
from raylauncher import aws
from raylauncher.config import Settings
from raylauncher.intake import compare_sequencers
from raylauncher.local.poller import SqsPoller
from raylauncher.local.stack import MAX_RECEIVE_COUNT, LocalResources
from raylauncher.model import JobStatus, ReasonCode, iso, parse_iso, utc_now
from raylauncher.store import DynamoJobStore
from raylauncher.wiring import build_launcher, build_objects, build_store
from tests.conftest import launcher_calls
from tests.integration.fault_rows import intake_row


def poller(settings: Settings, resources: LocalResources) -> SqsPoller:
    sqs = aws.client("sqs", settings)
    return SqsPoller(sqs, resources.queue_url, resources.queue_arn, settings.region, intake_handler.handler)


def drain(p: SqsPoller, rounds: int = 4) -> None:
    for _ in range(rounds):
        p.poll_once(wait_s=0)


def queue_depth(settings: Settings, url: str) -> int:
    attrs = aws.client("sqs", settings).get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])


def manifests(store: DynamoJobStore, settings: Settings) -> dict[str, list[str]]:
    objects = build_objects(settings)
    return {j.job_id: [o["key"] for o in objects.get_json(j.manifest_key)["objects"]] for j in store.list_jobs()}


def test_files_dropped_under_the_prefix_start_a_job(settings: Settings, intake_env: LocalResources) -> None:
    # Given files with awkward names land under the trigger prefix, and one that does not match
    s3 = aws.client("s3", settings)
    keys = ["incoming/sales/daily report.csv", "incoming/sales/a+b.csv", "incoming/sales/région 日本.csv"]
    for key in keys:
        s3.put_object(Bucket=settings.bucket, Key=key, Body=b"order_id,region\n1,x\n")
    s3.put_object(Bucket=settings.bucket, Key="incoming/sales/readme.txt", Body=b"not a csv")
    # When the queue is polled into the deployed intake handler (the TestEvent included)
    drain(poller(settings, intake_env))
    # Then every matching object is in exactly one manifest, decoded exactly as stored
    store = build_store(settings)
    listed = [k for ks in manifests(store, settings).values() for k in ks]
    assert sorted(listed) == sorted(keys)
    # and each job was handed to the bastion with its id as the only argument
    jobs = store.list_jobs()
    assert all(j.status == JobStatus.LAUNCHING and j.trigger == "s3" for j in jobs)
    assert {j.release for j in jobs} == {settings.release} != {None}  # the deployment's release on each
    assert sorted(launcher_calls(settings)) == sorted(f"driver start {j.job_id}" for j in jobs)
    # and nothing is left on the queue
    assert queue_depth(settings, intake_env.queue_url) == 0


def test_a_poisoned_record_is_retried_then_dead_lettered_not_lost(settings: Settings, intake_env: LocalResources) -> None:
    # Given a garbage message next to a real notification
    sqs = aws.client("sqs", settings)
    sqs.send_message(QueueUrl=intake_env.queue_url, MessageBody="{not an s3 event")
    aws.client("s3", settings).put_object(Bucket=settings.bucket, Key="incoming/sales/good.csv", Body=b"x")
    p = poller(settings, intake_env)
    # When the batch is handled
    drain(p, rounds=2)
    # Then the good record made its job, and the poisoned one is still on the queue (not deleted)
    store = build_store(settings)
    assert [ks for ks in manifests(store, settings).values()] == [["incoming/sales/good.csv"]]
    assert queue_depth(settings, intake_env.queue_url) == 1
    # When it keeps failing past maxReceiveCount, Then it lands in the dead-letter queue, intact
    deadline = time.monotonic() + 30
    while queue_depth(settings, intake_env.dlq_url) == 0 and time.monotonic() < deadline:
        time.sleep(1)
        p.poll_once(wait_s=0)
    dead = sqs.receive_message(QueueUrl=intake_env.dlq_url, AttributeNames=["All"])["Messages"]
    assert [m["Body"] for m in dead] == ["{not an s3 event"]
    assert int(dead[0]["Attributes"]["ApproximateReceiveCount"]) >= MAX_RECEIVE_COUNT
    assert len(store.list_jobs()) == 1  # retries of the poison never made jobs


def test_when_the_job_cannot_be_recorded_the_message_is_kept(
    settings: Settings, intake_env: LocalResources
) -> None:
    # Given the job table is gone (the store fails)
    aws.client("dynamodb", settings).delete_table(TableName=settings.table)
    aws.client("s3", settings).put_object(Bucket=settings.bucket, Key="incoming/sales/kept.csv", Body=b"x")
    # When the batch is handled
    drain(poller(settings, intake_env), rounds=1)
    # Then the record was reported failed, so the queue still holds it for a retry
    assert queue_depth(settings, intake_env.queue_url) == 1
    assert launcher_calls(settings) == []


def test_a_bastion_that_cannot_be_reached_is_retried_then_fails_the_job_with_a_reason(
    settings: Settings, intake_env: LocalResources, monkeypatch: pytest.MonkeyPatch, fault_row
) -> None:
    # Given a bastion whose command fails
    broken = settings.model_copy(update={"launcher_bin": "/nonexistent/raylauncher"})
    monkeypatch.setenv("RAYLAUNCHER_LAUNCHER_BIN", broken.launcher_bin)
    intake_handler.service.cache_clear()
    put = aws.client("s3", settings).put_object(Bucket=settings.bucket, Key="incoming/sales/x.csv", Body=b"x")
    # When the file is taken in
    drain(poller(settings, intake_env), rounds=2)
    # Then the first attempt is recorded LAUNCH_FAILED with the bastion's words and the job waits
    # QUEUED for its second attempt (an infrastructure failure; the pipeline allows 2 attempts)
    store = build_store(settings)
    (job,) = store.list_jobs()
    assert (job.status, job.attempt, job.slot_held) == (JobStatus.QUEUED, 2, False)
    (first,) = job.attempts
    assert first["reason_code"] == ReasonCode.LAUNCH_FAILED and "/nonexistent/raylauncher" in first["reason_message"]
    assert job.retry_at and parse_iso(job.retry_at) > utc_now()
    # And it is not launched again before its backoff has passed
    assert build_launcher(broken, store).launch_queued() == []
    # When the backoff has passed and queued jobs are launched (the watchdog's sweep does it)
    store.mark(job, retry_at=iso(utc_now() - timedelta(seconds=1)))
    build_launcher(broken, store).launch_queued()
    # Then the last attempt fails too and the job ends FAILED(LAUNCH_FAILED): no attempt left
    job = store.get(job.job_id)
    assert (job.status, job.reason_code, job.attempt, len(job.attempts)) == (JobStatus.FAILED, ReasonCode.LAUNCH_FAILED, 2, 1)
    assert "/nonexistent/raylauncher" in (job.reason_message or "")
    # And the input is kept in its manifest (the message is consumed: the job record is the trace)
    assert manifests(build_store(settings), settings)[job.job_id] == ["incoming/sales/x.csv"]
    assert queue_depth(settings, intake_env.queue_url) == 0
    row = intake_row(settings, "bastion unreachable (local bastion command fails on every launch)",
                     [f"incoming/sales/x.csv@{put['VersionId']}"], failed_jobs_keep_inputs=True)  # fmt: skip
    assert (row.terminal_state, row.attempts, row.objects_lost, row.objects_processed_twice) == ("FAILED", 2, 0, 0)
    fault_row(row)


def test_handler_reports_only_the_failed_item(settings: Settings, intake_env: LocalResources) -> None:
    # Given a hand-made Lambda event: one poison record, one S3 test event
    event = {
        "Records": [
            {"messageId": "m-poison", "receiptHandle": "r1", "body": "[]", "attributes": {},
             "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs",
             "eventSourceARN": intake_env.queue_arn, "awsRegion": "us-east-1"},
            {"messageId": "m-test", "receiptHandle": "r2",
             "body": json.dumps({"Event": "s3:TestEvent"}), "attributes": {}, "messageAttributes": {},
             "md5OfBody": "", "eventSource": "aws:sqs", "eventSourceARN": intake_env.queue_arn,
             "awsRegion": "us-east-1"},
        ]
    }  # fmt: skip
    from raylauncher.local.poller import LocalLambdaContext

    # When the handler runs, Then only the poison is reported, and no job was made
    assert intake_handler.handler(event, LocalLambdaContext()) == {"batchItemFailures": [{"itemIdentifier": "m-poison"}]}
    assert build_store(settings).list_jobs() == []


def sqs_record(queue_arn: str, message_id: str, bucket: str, key: str, sequencer: str, version: str | None = None) -> dict:
    """One SQS record carrying an S3 ObjectCreated notification, as the Lambda receives it."""
    obj = {"key": key, "size": 1, "eTag": f"etag-{sequencer}", "sequencer": sequencer}
    if version is not None:
        obj["versionId"] = version
    body = {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": obj}}]}
    return {"messageId": message_id, "receiptHandle": message_id, "body": json.dumps(body), "attributes": {},
            "messageAttributes": {}, "md5OfBody": "", "eventSource": "aws:sqs", "eventSourceARN": queue_arn,
            "awsRegion": "us-east-1"}  # fmt: skip


def test_an_unversioned_key_written_twice_in_one_batch_is_read_once_and_the_older_is_recorded(
    settings: Settings, intake_env: LocalResources, fault_row
) -> None:
    # Given two notifications without version ids for one key, the newer one first (out of order,
    # its sequencer shorter: "1A" is after "0F" once padded) and one for another key, in one batch
    from raylauncher.local.poller import LocalLambdaContext

    def record(message_id: str, key: str, sequencer: str) -> dict:
        return sqs_record(intake_env.queue_arn, message_id, settings.bucket, key, sequencer)

    event = {"Records": [record("m1", "incoming/sales/a.csv", "1A"), record("m2", "incoming/sales/a.csv", "00F"),
                         record("m3", "incoming/sales/b.csv", "01")]}  # fmt: skip
    # When the batch is handled
    assert intake_handler.handler(event, LocalLambdaContext()) == {"batchItemFailures": []}
    # Then one job reads each key once, the overwritten one at its latest write
    (job,) = build_store(settings).list_jobs()
    manifest = build_objects(settings).get_json(job.manifest_key)
    assert [(o["key"], o["sequencer"]) for o in manifest["objects"]] == [("incoming/sales/a.csv", "1A"), ("incoming/sales/b.csv", "01")]
    # and the older write of a.csv, acknowledged with the batch, is recorded as superseded by it
    assert [(o["key"], o["sequencer"], o["superseded_by"]["sequencer"]) for o in manifest["superseded"]] == [
        ("incoming/sales/a.csv", "00F", "1A")
    ]
    assert job.object_count == 2
    row = intake_row(settings, "out-of-order notifications: an unversioned key's newer write first, in one batch",
                     ["incoming/sales/a.csv@1A", "incoming/sales/a.csv@00F", "incoming/sales/b.csv@01"])  # fmt: skip
    assert (row.objects_lost, row.objects_processed_twice) == (0, 0)
    fault_row(row)


def test_two_versions_of_one_key_in_one_batch_are_both_read(
    settings: Settings, intake_env: LocalResources, fault_row
) -> None:
    # Given notifications of two versions of one key in one batch, the newer first
    from raylauncher.local.poller import LocalLambdaContext

    event = {"Records": [sqs_record(intake_env.queue_arn, "m1", settings.bucket, "incoming/sales/a.csv", "02", "v2"),
                         sqs_record(intake_env.queue_arn, "m2", settings.bucket, "incoming/sales/a.csv", "01", "v1")]}  # fmt: skip
    # When the batch is handled
    assert intake_handler.handler(event, LocalLambdaContext()) == {"batchItemFailures": []}
    # Then one job names both versions, each to be read as it was written; nothing is superseded
    (job,) = build_store(settings).list_jobs()
    manifest = build_objects(settings).get_json(job.manifest_key)
    assert sorted((o["key"], o["version_id"]) for o in manifest["objects"]) == [
        ("incoming/sales/a.csv", "v1"), ("incoming/sales/a.csv", "v2")
    ]  # fmt: skip
    assert "superseded" not in manifest and job.object_count == 2
    row = intake_row(settings, "two versions of one key in one batch, the newer first",
                     ["incoming/sales/a.csv@v1", "incoming/sales/a.csv@v2"])  # fmt: skip
    assert (row.objects_lost, row.objects_processed_twice) == (0, 0)
    fault_row(row)


def test_identical_bytes_uploaded_twice_locally_are_two_versions_in_the_job(
    settings: Settings, intake_env: LocalResources
) -> None:
    # Given the same bytes uploaded twice to one key of the (versioned) local bucket
    s3 = aws.client("s3", settings)
    written = [
        s3.put_object(Bucket=settings.bucket, Key="incoming/sales/same.csv", Body=b"order_id\n1\n")["VersionId"]
        for _ in range(2)
    ]
    # When the local notifications are polled into the intake handler, in one batch
    drain(poller(settings, intake_env))
    # Then one job names both versions S3 reported, with their sequencers in write order
    (job,) = build_store(settings).list_jobs()
    objects = build_objects(settings).get_json(job.manifest_key)["objects"]
    assert sorted(o["version_id"] for o in objects) == sorted(written)
    by_version = {o["version_id"]: o["sequencer"] for o in objects}
    assert compare_sequencers(by_version[written[0]], by_version[written[1]]) == -1
    assert queue_depth(settings, intake_env.queue_url) == 0
