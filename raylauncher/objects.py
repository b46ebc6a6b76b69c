"""The object store port (the data bucket) and its S3 adapter."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from raylauncher.aws import error_code
from raylauncher.errors import StorageError


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

    def put_json(self, key: str, value: Any) -> None:
        self.put_bytes(key, json.dumps(value, indent=1, ensure_ascii=False).encode(), "application/json")

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


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
