"""Unit tests of the sales-summary job's exact-version filesystem: what it answers without S3."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs" / "sales_summary"))

from exact_versions import ExactVersions, Pinned, pinned_path  # noqa: E402

# Any S3 request made with these would fail: nothing listens on port 9.
NO_S3 = {"region_name": "us-east-1", "endpoint_url": "http://127.0.0.1:9"}


class CountingS3:
    """Stands in for the boto3 client: answers HeadObject, counts the calls."""

    def __init__(self, size: int) -> None:
        self.size, self.heads = size, []

    def head_object(self, **kwargs: Any) -> dict[str, Any]:
        self.heads.append(kwargs)
        return {"ContentLength": self.size}


def versions_fs(plain: pafs.FileSystem, pinned: dict[str, Pinned], s3: Any = None) -> pafs.FileSystem:
    handler = ExactVersions(plain, pinned, NO_S3)
    if s3 is not None:
        handler._client = s3  # noqa: SLF001 - the client is otherwise made on first use
    return pafs.PyFileSystem(handler)


def test_pinned_sizes_come_from_the_manifest_without_asking_s3(tmp_path: Path) -> None:
    # Given two pinned versions whose sizes the manifest recorded
    a = pinned_path("bkt", "in/a.csv", "v1")
    b = pinned_path("bkt", "in/a.csv", "v2")
    fs = versions_fs(pafs.LocalFileSystem(), {a: Pinned("bkt", "in/a.csv", "v1", 10), b: Pinned("bkt", "in/a.csv", "v2", 0)})

    # When their file infos are asked for
    infos = fs.get_file_info([a, b])

    # Then they are files of the recorded sizes (an S3 call would have failed)
    assert [(i.path, i.type, i.size) for i in infos] == [(a, pafs.FileType.File, 10), (b, pafs.FileType.File, 0)]


def test_a_pinned_version_without_a_recorded_size_is_asked_of_s3_by_version() -> None:
    # Given a pinned version the manifest recorded no size for
    path = pinned_path("bkt", "in/a.csv", "v1")
    s3 = CountingS3(size=123)
    fs = versions_fs(pafs.LocalFileSystem(), {path: Pinned("bkt", "in/a.csv", "v1")}, s3)

    # When its file info is asked for
    (info,) = fs.get_file_info([path])

    # Then S3 was asked about that exact version
    assert info.size == 123
    assert s3.heads == [{"Bucket": "bkt", "Key": "in/a.csv", "VersionId": "v1"}]


def test_listing_a_directory_that_holds_pinned_paths_lists_those(tmp_path: Path) -> None:
    # Given pinned versions under bkt/in/ (one of them a level deeper) and one elsewhere
    pinned = {
        pinned_path("bkt", key, "v"): Pinned("bkt", key, "v", size)
        for key, size in (("in/a.csv", 1), ("in/day=2/b.csv", 2), ("other/c.csv", 3))
    }
    fs = versions_fs(pafs.LocalFileSystem(), pinned)

    # When bkt/in is listed, recursively and not
    recursive = fs.get_file_info(pafs.FileSelector("bkt/in", recursive=True))
    direct = fs.get_file_info(pafs.FileSelector("bkt/in/", recursive=False))

    # Then the pinned paths under it are listed with their sizes, nothing is listed from S3
    assert sorted((i.path, i.size) for i in recursive) == [
        ("bkt/in/a.csv?versionId=v", 1),
        ("bkt/in/day=2/b.csv?versionId=v", 2),
    ]
    assert [(i.path, i.size) for i in direct] == [("bkt/in/a.csv?versionId=v", 1)]


def test_other_paths_and_listings_go_to_the_plain_filesystem(tmp_path: Path) -> None:
    # Given a plain filesystem holding a file, and a pinned version elsewhere
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.csv").write_text("a\n1\n")
    pinned = {pinned_path("bkt", "in/a.csv", "v"): Pinned("bkt", "in/a.csv", "v", 1)}
    fs = versions_fs(pafs.LocalFileSystem(), pinned)

    # When that file and its directory are looked up
    (info,) = fs.get_file_info([str(tmp_path / "data" / "x.csv")])
    listed = fs.get_file_info(pafs.FileSelector(str(tmp_path / "data")))

    # Then the plain filesystem answers
    assert (info.type, info.size) == (pafs.FileType.File, 4)
    assert [i.path for i in listed] == [str(tmp_path / "data" / "x.csv")]


def test_a_key_that_merely_looks_pinned_is_read_as_a_plain_key(tmp_path: Path) -> None:
    # Given a plain file whose name contains "?versionId=", not named by the manifest
    odd = tmp_path / "b.csv?versionId=x"
    odd.write_text("a\n1\n")
    pinned = {pinned_path("bkt", "in/a.csv", "v"): Pinned("bkt", "in/a.csv", "v", 1)}
    fs = versions_fs(pafs.LocalFileSystem(), pinned)

    # When it is read
    with fs.open_input_stream(str(odd)) as stream:
        content = stream.read()

    # Then the plain filesystem read it (a version read would have gone to S3 and failed)
    assert content == b"a\n1\n"
