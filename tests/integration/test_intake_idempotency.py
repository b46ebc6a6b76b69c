"""At-least-once delivery, exactly-once jobs: one job per S3 object version (moto server)."""

import json
import time
from pathlib import Path

import pytest

from lambdas.intake import handler as intake_handler
from raylauncher import aws
from raylauncher.claims import DynamoObjectClaims
from raylauncher.config import Settings
from raylauncher.local.poller import SqsPoller
from raylauncher.local.stack import LocalResources
from raylauncher.store import DynamoJobStore
from raylauncher.wiring import build_objects, build_store
from tests.integration.fault_rows import intake_row


def received_bodies(settings: Settings, resources: LocalResources) -> list[str]:
    """Take the pending notifications off the queue (as S3 put them there), without handling them."""
    sqs = aws.client("sqs", settings)
    bodies = []
    while msgs := sqs.receive_message(QueueUrl=resources.queue_url, MaxNumberOfMessages=10).get("Messages", []):
        for m in msgs:
            bodies.append(m["Body"])
            sqs.delete_message(QueueUrl=resources.queue_url, ReceiptHandle=m["ReceiptHandle"])
    return [b for b in bodies if "ObjectCreated" in b]


def deliver(settings: Settings, resources: LocalResources, bodies: list[str]) -> None:
    sqs = aws.client("sqs", settings)
    for body in bodies:
        sqs.send_message(QueueUrl=resources.queue_url, MessageBody=body)
    poller = SqsPoller(sqs, resources.queue_url, resources.queue_arn, settings.region, intake_handler.handler)
    for _ in range(3):
        poller.poll_once(wait_s=0)


def manifest_objects(settings: Settings) -> list[list[tuple[str, str | None]]]:
    """Per job: (key, version_id) of each object its manifest names."""
    objects = build_objects(settings)
    return [
        [(o["key"], o["version_id"]) for o in objects.get_json(j.manifest_key)["objects"]]
        for j in build_store(settings).list_jobs()
    ]


def manifest_keys(settings: Settings) -> list[list[str]]:
    objects = build_objects(settings)
    return [[o["key"] for o in objects.get_json(j.manifest_key)["objects"]] for j in build_store(settings).list_jobs()]


def test_a_duplicate_notification_makes_one_job(settings: Settings, intake_env: LocalResources, fault_row) -> None:
    # Given one upload whose notification S3 delivers twice (in one batch and again later)
    put = aws.client("s3", settings).put_object(Bucket=settings.bucket, Key="incoming/sales/once.csv", Body=b"a")
    (body,) = received_bodies(settings, intake_env)
    # When both deliveries and a later redelivery are handled
    deliver(settings, intake_env, [body, body])
    deliver(settings, intake_env, [body])
    # Then exactly one job holds the object, at the version S3 reported
    ((entry,),) = manifest_objects(settings)
    assert entry == ("incoming/sales/once.csv", put["VersionId"])
    row = intake_row(settings, "duplicate S3 notification (3 deliveries, 2 batches)",
                     [f"incoming/sales/once.csv@{put['VersionId']}"])  # fmt: skip
    assert (row.objects_lost, row.objects_processed_twice) == (0, 0)
    fault_row(row)


def test_a_new_version_of_the_same_key_is_new_work(settings: Settings, intake_env: LocalResources) -> None:
    # Given a key uploaded twice (two versions in a versioned bucket)
    s3 = aws.client("s3", settings)
    s3.put_object(Bucket=settings.bucket, Key="incoming/sales/daily.csv", Body=b"v1")
    deliver(settings, intake_env, received_bodies(settings, intake_env))
    s3.put_object(Bucket=settings.bucket, Key="incoming/sales/daily.csv", Body=b"v2")
    deliver(settings, intake_env, received_bodies(settings, intake_env))
    # Then each version made its own job
    assert manifest_keys(settings) == [["incoming/sales/daily.csv"], ["incoming/sales/daily.csv"]]


def test_a_re_upload_of_identical_bytes_is_a_new_version_and_a_new_job(
    settings: Settings, intake_env: LocalResources, fault_row
) -> None:
    # Given a key uploaded, taken in, then uploaded again with the very same bytes (same ETag)
    s3 = aws.client("s3", settings)
    first = s3.put_object(Bucket=settings.bucket, Key="incoming/sales/same.csv", Body=b"same")
    first_bodies = received_bodies(settings, intake_env)
    deliver(settings, intake_env, first_bodies)
    second = s3.put_object(Bucket=settings.bucket, Key="incoming/sales/same.csv", Body=b"same")
    assert first["ETag"] == second["ETag"]
    # When its notification is handled, and the first one is delivered once more
    deliver(settings, intake_env, received_bodies(settings, intake_env))
    deliver(settings, intake_env, first_bodies)
    # Then each version made exactly one job, naming that version
    assert sorted(manifest_objects(settings)) == sorted(
        [[("incoming/sales/same.csv", first["VersionId"])], [("incoming/sales/same.csv", second["VersionId"])]]
    )
    row = intake_row(settings, "two versions of one key (identical bytes), the first redelivered after the second",
                     [f"incoming/sales/same.csv@{v['VersionId']}" for v in (first, second)])  # fmt: skip
    assert (row.objects_lost, row.objects_processed_twice) == (0, 0)
    fault_row(row)


def test_a_superseded_notification_delivered_again_makes_no_job(
    settings: Settings, intake_env: LocalResources, fault_row
) -> None:
    # Given an unversioned key written twice, both notifications handled in one batch (the
    # older recorded as superseded)
    def body(etag: str, sequencer: str) -> str:
        return json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": settings.bucket},
                           "object": {"key": "incoming/sales/u.csv", "size": 1, "eTag": etag, "sequencer": sequencer}}}]})  # fmt: skip

    older, newer = body("e1", "0A"), body("e2", "0B")
    deliver(settings, intake_env, [older, newer])
    # When the older notification is delivered again, alone
    deliver(settings, intake_env, [older])
    # Then it made no second job: the first job covers it
    (job,) = build_store(settings).list_jobs()
    manifest = build_objects(settings).get_json(job.manifest_key)
    assert [(o["etag"], o["sequencer"]) for o in manifest["objects"]] == [("e2", "0B")]
    assert [(o["etag"], o["sequencer"]) for o in manifest["superseded"]] == [("e1", "0A")]
    row = intake_row(settings, "unversioned key overwritten; the older notification redelivered alone, after",
                     ["incoming/sales/u.csv@0A", "incoming/sales/u.csv@0B"])  # fmt: skip
    assert (row.objects_lost, row.objects_processed_twice) == (0, 0)
    fault_row(row)


def four_objects_per_job(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The intake with a pipeline of at most 4 objects per job; a claim whose job was never
    recorded is retried, then taken over once 2 s old (300 s on AWS)."""
    pipelines = tmp_path / "pipelines.yaml"
    source = Path(settings.pipelines_file).read_text()
    pipelines.write_text(source.replace("max_objects_per_job: 1000", "max_objects_per_job: 4"))
    monkeypatch.setenv("RAYLAUNCHER_PIPELINES_FILE", str(pipelines))
    monkeypatch.setenv("RAYLAUNCHER_CLAIM_STALE_AFTER_S", "2")
    intake_handler.service.cache_clear()


def test_a_burst_is_split_by_max_objects_per_job_and_every_object_lands_once(
    settings: Settings, intake_env: LocalResources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a pipeline that takes at most 4 objects per job, and 10 uploads delivered together,
    # some of them twice
    four_objects_per_job(settings, tmp_path, monkeypatch)
    s3 = aws.client("s3", settings)
    for i in range(10):
        s3.put_object(Bucket=settings.bucket, Key=f"incoming/sales/part-{i}.csv", Body=b"x")
    bodies = received_bodies(settings, intake_env)
    # When they are handled in one batch (the poller takes up to 10 a batch)
    deliver(settings, intake_env, bodies[:10])
    deliver(settings, intake_env, bodies[:3])  # redelivered
    # Then ceil(10 / 4) = 3 jobs hold every object exactly once
    manifests = manifest_keys(settings)
    keys = sorted(k for m in manifests for k in m)
    assert keys == sorted(f"incoming/sales/part-{i}.csv" for i in range(10))
    assert len(manifests) == 3 and max(len(m) for m in manifests) <= 4


class LambdaCrashed(Exception):  # noqa: N818 - not one of ours: the runtime killing the handler
    """The intake Lambda dying mid-batch (a timeout, out of memory): nothing of ours catches it."""


@pytest.mark.parametrize("crash_at", [
    "claiming the 2nd job's objects",
    "recording the 2nd job",
])  # fmt: skip
def test_the_intake_crashing_mid_batch_then_redelivered_puts_every_object_in_exactly_one_job(
    settings: Settings, intake_env: LocalResources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    crash_at: str, fault_row,
) -> None:  # fmt: skip
    # Given a pipeline that takes at most 4 objects per job, 10 uploads in one batch, and an
    # intake that dies after its first job was recorded: before claiming the second job's
    # objects, or after claiming them, while recording the job
    four_objects_per_job(settings, tmp_path, monkeypatch)
    s3 = aws.client("s3", settings)
    uploaded = [
        f"incoming/sales/part-{i}.csv@" + s3.put_object(Bucket=settings.bucket, Key=f"incoming/sales/part-{i}.csv", Body=b"x")["VersionId"]
        for i in range(10)
    ]  # fmt: skip
    calls = {"n": 0}
    patched, method = (DynamoObjectClaims, "claim") if crash_at.startswith("claiming") else (DynamoJobStore, "create")
    original = getattr(patched, method)

    def crashing(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 2:
            raise LambdaCrashed(f"killed while {crash_at}")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(patched, method, crashing)
    sqs = aws.client("sqs", settings)
    poller = SqsPoller(sqs, intake_env.queue_url, intake_env.queue_arn, settings.region, intake_handler.handler)
    # When the batch is handled, the handler dies mid-batch
    assert poller.poll_once(wait_s=0) == 10
    jobs_after_crash = build_store(settings).list_jobs()
    assert calls["n"] == 2 and len(jobs_after_crash) == 1  # one job was recorded before the crash
    # and SQS redelivers the whole batch (the poller, like Lambda, fails it all) to a healthy intake
    monkeypatch.setattr(patched, method, original)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (queue_depth := _depth(settings, intake_env.queue_url)):
        poller.poll_once(wait_s=1)
    # Then the queue is empty, and every object is in exactly one job
    assert queue_depth == 0
    row = intake_row(settings, f"intake Lambda crashes mid-batch ({crash_at}), the batch redelivered", uploaded)
    assert (row.objects_lost, row.objects_processed_twice) == (0, 0), row
    manifests = manifest_keys(settings)
    assert sorted(k for m in manifests for k in m) == sorted(f"incoming/sales/part-{i}.csv" for i in range(10))
    fault_row(row)


def _depth(settings: Settings, url: str) -> int:
    attrs = aws.client("sqs", settings).get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])
