"""The object store port (the data bucket) and its S3 adapter."""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from raylauncher.aws import error_code
from raylauncher.errors import StorageError


@dataclass(frozen=True)
class ObjectSlice:
    """Bytes of an object from some offset on, and the object's whole size then."""

    data: bytes
    size: int


class ObjectStore(ABC):
    """Port: the data bucket, addressed by bucket-relative keys."""

    bucket: str

    @abstractmethod
    def put_bytes(self, key: str, body: bytes, content_type: str) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...

    @abstractmethod
    def list_objects(self, prefix: str, limit: int, suffix: str = "") -> list[dict[str, Any]]:
        """Up to `limit` objects under `prefix` whose key ends with `suffix` (folder markers,
        keys ending in '/', are never objects): dicts with key, size, etag."""

    def read_range(self, key: str, offset: int, max_bytes: int) -> ObjectSlice | None:
        """At most `max_bytes` of the object from byte `offset` on (nothing when `offset` is at
        or past its end), or None when there is no such object. StorageError otherwise."""
        try:
            body = self.get_bytes(key)
        except StorageError:
            return None
        return ObjectSlice(body[offset : offset + max_bytes], len(body))

    def put_json(self, key: str, value: Any) -> None:
        self.put_bytes(key, json.dumps(value, indent=1, ensure_ascii=False).encode(), "application/json")

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_RANGE_TOTAL = re.compile(r"/(\d+)$")


class S3ObjectStore(ObjectStore):
    def __init__(self, s3_client: Any, bucket: str) -> None:
        self._s3 = s3_client
        self.bucket = bucket

    def put_bytes(self, key: str, body: bytes, content_type: str) -> None:
        try:
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)
        except (ClientError, BotoCoreError) as err:
            raise StorageError(f"cannot write s3://{self.bucket}/{key}", error_code(err)) from err

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except (ClientError, BotoCoreError) as err:
            raise StorageError(f"cannot read s3://{self.bucket}/{key}", error_code(err)) from err

    def read_range(self, key: str, offset: int, max_bytes: int) -> ObjectSlice | None:
        try:
            resp = self._s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={offset}-{offset + max_bytes - 1}")
            data = resp["Body"].read()
        except (ClientError, BotoCoreError) as err:
            code = error_code(err)
            if code in _MISSING:
                return None
            if code != "InvalidRange":  # 416: offset at or past the end
                raise StorageError(f"cannot read s3://{self.bucket}/{key}", code) from err
            return self._empty_slice(key)
        total = _RANGE_TOTAL.search(resp.get("ContentRange") or "")
        # No Content-Range: the store sent the whole object (S3 does so for a range of an empty one).
        size = int(total.group(1)) if total else offset + len(data)
        if not total and offset:
            data = data[offset : offset + max_bytes]
        return ObjectSlice(data, size)

    def _empty_slice(self, key: str) -> ObjectSlice | None:
        try:
            size = int(self._s3.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except (ClientError, BotoCoreError) as err:
            if error_code(err) in _MISSING:
                return None  # deleted between the two calls
            raise StorageError(f"cannot read s3://{self.bucket}/{key}", error_code(err)) from err
        return ObjectSlice(b"", size)

    def list_objects(self, prefix: str, limit: int, suffix: str = "") -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        try:
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    if obj["Key"].endswith("/") or not obj["Key"].endswith(suffix):
                        continue
                    found.append({"key": obj["Key"], "size": obj["Size"], "etag": obj.get("ETag", "").strip('"')})
                    if len(found) >= limit:
                        return found
        except (ClientError, BotoCoreError) as err:
            raise StorageError(f"cannot list s3://{self.bucket}/{prefix}", error_code(err)) from err
        return found
