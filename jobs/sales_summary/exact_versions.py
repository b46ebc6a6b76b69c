"""Read exactly the S3 object versions a manifest names, through Ray Data's file readers.

pyarrow's ``S3FileSystem`` has no version parameter: it always reads an object's current
version (a later upload to the same key would be read instead of the one that triggered the
job). ``ExactVersions`` is a pyarrow filesystem handler that reads the manifest's pinned paths
``bucket/key?versionId=V`` with S3 ``GetObject``/``HeadObject`` *with* ``VersionId`` (boto3), and
hands every other path to the plain ``S3FileSystem``. Wrapped in ``pyarrow.fs.PyFileSystem`` it
is what ``ray.data.read_csv(paths, filesystem=...)`` reads through, unchanged.

Only the paths built here from the manifest are pinned: a key that merely contains
``?versionId=`` is never taken for one. A pinned object is read whole into memory by the task
that reads it (the CSV reader streams it anyway, and each file is one read task).

A version never changes, so the size the manifest recorded for it is its size: a pinned path's
file info comes from the manifest (no ``HeadObject``) when the manifest has it, and listing a
directory that holds pinned paths lists those. That is how Ray Data learns its inputs' sizes
before reading: one lookup on the driver instead of a ``HeadObject`` per object in Ray tasks, and
no recursive listing of a trigger prefix that may hold many other objects.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.fs as pafs

VERSION_QUERY = "?versionId="


class Pinned(NamedTuple):
    """One object version of the manifest; ``size`` as the manifest recorded it (None: unknown)."""

    bucket: str
    key: str
    version_id: str
    size: int | None = None


def pinned_path(bucket: str, key: str, version_id: str) -> str:
    """The bucket-relative path standing for one version of ``bucket/key``."""
    return f"{bucket}/{key}{VERSION_QUERY}{version_id}"


class ExactVersions(pafs.FileSystemHandler):
    """A pyarrow filesystem handler: pinned paths read their version, others go to ``fs``.

    ``client_kwargs`` are boto3 S3 client arguments (region, endpoint, keys); the client is
    made where the handler is used (a Ray worker), never pickled.
    """

    def __init__(self, fs: pafs.FileSystem, pinned: dict[str, Pinned], client_kwargs: dict[str, Any]) -> None:
        self._fs = fs
        self._pinned = {path: Pinned(*version) for path, version in pinned.items()}
        self._client_kwargs = dict(client_kwargs)
        self._client: Any = None

    def __reduce__(self) -> tuple[Any, ...]:
        return ExactVersions, (self._fs, self._pinned, self._client_kwargs)

    def _s3(self) -> Any:
        if self._client is None:
            import boto3  # on every node of the cluster (setup_commands)

            self._client = boto3.client("s3", **self._client_kwargs)
        return self._client

    def _version_args(self, path: str) -> dict[str, str]:
        version = self._pinned[path]
        return {"Bucket": version.bucket, "Key": version.key, "VersionId": version.version_id}

    def _read(self, path: str) -> pa.BufferReader:
        body = self._s3().get_object(**self._version_args(path))["Body"]
        try:
            return pa.BufferReader(body.read())
        finally:
            body.close()

    # -- reads: pinned paths by version, the rest through `fs` ---------------------------------
    def get_type_name(self) -> str:
        return "s3-exact-versions"

    def equals(self, other: Any) -> bool:
        return isinstance(other, ExactVersions) and other._pinned == self._pinned and other._fs.equals(self._fs)

    def normalize_path(self, path: str) -> str:
        return path if path in self._pinned else self._fs.normalize_path(path)

    def _pinned_info(self, path: str) -> pafs.FileInfo:
        size = self._pinned[path].size
        if size is not None:
            return pafs.FileInfo(path, pafs.FileType.File, size=size)
        head = self._s3().head_object(**self._version_args(path))
        return pafs.FileInfo(path, pafs.FileType.File, size=head["ContentLength"], mtime=head.get("LastModified"))

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return [self._pinned_info(p) if p in self._pinned else self._fs.get_file_info([p])[0] for p in paths]

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        base = selector.base_dir.rstrip("/") + "/"
        pinned = [
            self._pinned_info(path)
            for path in self._pinned
            if path.startswith(base) and (selector.recursive or "/" not in path[len(base) :])
        ]
        return pinned or self._fs.get_file_info(selector)

    def open_input_stream(self, path: str) -> Any:
        return self._read(path) if path in self._pinned else self._fs.open_input_stream(path)

    def open_input_file(self, path: str) -> Any:
        return self._read(path) if path in self._pinned else self._fs.open_input_file(path)

    # -- everything else: the plain filesystem (a pinned version is never written) --------------
    def create_dir(self, path: str, recursive: bool) -> None:
        self._fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self._fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of every bucket")

    def delete_file(self, path: str) -> None:
        self._fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self._fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self._fs.copy_file(src, dest)

    def open_output_stream(self, path: str, metadata: Any) -> Any:
        return self._fs.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path: str, metadata: Any) -> Any:
        return self._fs.open_append_stream(path, metadata=metadata)
