"""S3 event decoding: keys as S3 encodes them, test events, poison messages, sequencers, manifests."""

import json

import pytest

from raylauncher.errors import PoisonMessage
from raylauncher.intake import (
    S3ObjectRef,
    batch_entries,
    compare_sequencers,
    decode_key,
    manifest_document,
    newest,
    parse_s3_event,
)
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


def test_manifest_records_superseded_notifications() -> None:
    # Given an unversioned key written twice: the later write is read, the earlier superseded
    job = Job.new("sales-summary", "s3")
    old = S3ObjectRef("data", "incoming/a.csv", 5, "e1", None, "0A")
    new = S3ObjectRef("data", "incoming/a.csv", 6, "e2", None, "0B")
    # When the manifest is written, Then the superseded notification is on it, pointing at the read one
    doc = manifest_document(job, "data", [new], [(old, new)])
    assert doc["objects"] == [{"key": "incoming/a.csv", "size": 6, "etag": "e2", "version_id": None, "sequencer": "0B"}]
    assert doc["superseded"] == [
        {"key": "incoming/a.csv", "size": 5, "etag": "e1", "version_id": None, "sequencer": "0A",
         "superseded_by": {"etag": "e2", "sequencer": "0B"}}
    ]  # fmt: skip


def test_a_version_id_is_kept_and_the_null_version_is_no_version() -> None:
    # Given records of a versioned bucket, and of an object written while versioning was suspended
    def body(version: str) -> str:
        return json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "data"},
                           "object": {"key": "k.csv", "size": 1, "versionId": version}}}]})  # fmt: skip

    # Then a real version id is kept, and "null" (overwritten in place) is no version
    assert parse_s3_event(body("3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"))[0].version_id == "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"
    assert parse_s3_event(body("null"))[0].version_id is None


@pytest.mark.parametrize(
    ("a", "b", "order"),
    [
        ("9", "10", -1),  # padded: "09" < "10" (plain string comparison would say "9" > "10")
        ("0055AED6DCD90281E5", "55AED6DCD90281E6", -1),
        ("55AED6DCD90281E5", "0055AED6DCD90281E5", 0),  # leading zeros change nothing
        ("00ff", "FE", 1),  # hex digits, either case
        ("1", "1", 0),
    ],
)
def test_sequencers_compare_as_aws_documents(a: str, b: str, order: int) -> None:
    # Given two sequencers of one key, When compared (shorter left-padded with zeros)
    # Then the order is as documented, and symmetric
    assert compare_sequencers(a, b) == order
    assert compare_sequencers(b, a) == -order


def test_the_newest_notification_wins_whatever_the_arrival_order() -> None:
    # Given notifications of one key arriving out of order (the newest first, a shorter sequencer)
    newer = S3ObjectRef("data", "a.csv", etag="e2", sequencer="100")
    older = S3ObjectRef("data", "a.csv", etag="e1", sequencer="0FF")
    # Then the newest by sequencer wins; without sequencers, the later arrival does
    assert newest([newer, older]) is newer
    assert newest([older, newer]) is newer
    first, second = S3ObjectRef("data", "a.csv", etag="e1"), S3ObjectRef("data", "a.csv", etag="e2")
    assert newest([first, second]) is second


def test_versions_are_entries_of_their_own_unversioned_writes_of_a_key_share_one() -> None:
    # Given a batch: two versions of a.csv, two unversioned writes of b.csv, and c.csv
    a1 = S3ObjectRef("data", "a.csv", version_id="v1", sequencer="01")
    a2 = S3ObjectRef("data", "a.csv", version_id="v2", sequencer="02")
    b1 = S3ObjectRef("data", "b.csv", etag="e1", sequencer="01")
    b2 = S3ObjectRef("data", "b.csv", etag="e2", sequencer="02")
    c = S3ObjectRef("data", "c.csv", etag="e3")
    # When grouped into manifest entries, Then each version is read, b.csv is read once
    assert batch_entries([a1, b1, a2, b2, c]) == [[a1], [b1, b2], [a2], [c]]
