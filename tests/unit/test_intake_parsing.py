"""S3 event decoding: keys as S3 encodes them, test events, poison messages, manifests."""

import json

import pytest

from raylauncher.errors import PoisonMessage
from raylauncher.intake import S3ObjectRef, decode_key, manifest_document, parse_s3_event
from raylauncher.model import Job


def s3_event(*keys: str, event_name: str = "ObjectCreated:Put") -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventName": event_name,
                    "s3": {
                        "bucket": {"name": "data"},
                        "object": {"key": k, "size": 10, "eTag": "abc", "sequencer": "0055AED6DCD90281E5"},
                    },
                }
                for k in keys
            ]
        }
    )


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("incoming/daily+report.csv", "incoming/daily report.csv"),  # '+' is a space
        ("incoming/a%2Bb.csv", "incoming/a+b.csv"),  # '%2B' is a real plus
        ("incoming%2Fdaily+report.csv", "incoming/daily report.csv"),  # moto encodes '/' too
        ("incoming/r%C3%A9gion-sud.csv", "incoming/région-sud.csv"),  # unicode, UTF-8 percent-encoded
        ("incoming/%E6%97%A5%E6%9C%AC.csv", "incoming/日本.csv"),
        ("incoming/100%25.csv", "incoming/100%.csv"),
        ("incoming/plain.csv", "incoming/plain.csv"),
    ],
)
def test_keys_decode_the_way_s3_encodes_them(encoded: str, decoded: str) -> None:
    assert decode_key(encoded) == decoded


def test_event_records_become_object_refs() -> None:
    # Given an S3 notification with two created objects
    refs = parse_s3_event(s3_event("incoming/a+b.csv", "incoming/c%2Bd.csv"))
    # Then both come out decoded, with size, etag and sequencer
    assert refs == (
        S3ObjectRef("data", "incoming/a b.csv", 10, "abc", None, "0055AED6DCD90281E5"),
        S3ObjectRef("data", "incoming/c+d.csv", 10, "abc", None, "0055AED6DCD90281E5"),
    )


def test_s3_test_event_and_removals_carry_no_objects() -> None:
    # Given S3's TestEvent (sent when notifications are configured) and a removal event
    assert parse_s3_event(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})) == ()
    assert parse_s3_event(s3_event("incoming/x.csv", event_name="ObjectRemoved:Delete")) == ()


@pytest.mark.parametrize(
    "body",
    ["not json", "[1, 2]", json.dumps({"hello": "world"}), json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]})],
)
def test_garbage_is_a_poison_message(body: str) -> None:
    # Given a body that is not an S3 event, Then it is poison (reported failed, never dropped)
    with pytest.raises(PoisonMessage):
        parse_s3_event(body)


def test_manifest_lists_exact_objects() -> None:
    job = Job.new("sales-summary", "s3")
    refs = [S3ObjectRef("data", "incoming/日本 1.csv", 5, "e1", "v1", "s1")]
    doc = manifest_document(job, "data", refs)
    assert doc == {
        "job_id": job.job_id,
        "pipeline": "sales-summary",
        "bucket": "data",
        "params": {},
        "objects": [{"key": "incoming/日本 1.csv", "size": 5, "etag": "e1", "version_id": "v1", "sequencer": "s1"}],
    }
