"""Secrets hygiene, checked locally: no Ray token may appear anywhere the product writes.

A `TokenWitness` learns every cluster token as it is stored — moto (in this process) serves
the SSM PutParameter of each token parameter, and the witness wraps moto's backend to keep the
value. `scan_moto` then reads everything the local AWS holds — every DynamoDB item (job
records, claims, idempotency records), every version of every S3 object (job logs, session-log
tarballs, manifests, outputs; archives are opened), every SQS message (job events, intake),
every SSM parameter outside the token path and every SSM command (what the bastion was told to
run) — and `scan_files` every file under a directory (driver and launcher logs, cluster.yaml
files, state), looking for any token. The test session (tests/conftest.py) and the demo run it.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import tarfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

from raylauncher.cluster_tokens import TOKEN_PATH

log = logging.getLogger(__name__)

#: Files larger than this are read in part only (their first and last MiB): outputs of
#: large-data benchmarks are no place for a token, and reading them whole would be slow.
MAX_FILE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Finding:
    where: str
    token_hint: str  # the token's first 6 characters: enough to tell which, never the token

    def __str__(self) -> str:
        return f"token {self.token_hint}… found in {self.where}"


class TokenWitness:
    """Every value stored under TOKEN_PATH in this process's moto SSM, from `install()` on."""

    _lock = threading.Lock()
    _installed: TokenWitness | None = None

    def __init__(self) -> None:
        self.tokens: set[str] = set()

    @classmethod
    def install(cls) -> TokenWitness:
        """The process's witness (wrapping moto's SSM backend once)."""
        with cls._lock:
            if cls._installed is None:
                from moto.ssm.models import SimpleSystemManagerBackend

                witness = cls()
                original = SimpleSystemManagerBackend.put_parameter

                def put_parameter(self: Any, name: str, description: str, value: str, *args: Any, **kwargs: Any) -> Any:
                    if name.startswith(TOKEN_PATH) and value:
                        witness.tokens.add(value)
                    return original(self, name, description, value, *args, **kwargs)

                SimpleSystemManagerBackend.put_parameter = put_parameter  # type: ignore[method-assign]
                cls._installed = witness
            return cls._installed


def find(tokens: Iterable[str], haystack: Iterable[tuple[str, bytes]]) -> list[Finding]:
    needles = [(t, t.encode()) for t in tokens if t]
    found = []
    for where, data in haystack:
        for token, needle in needles:
            if needle in data:
                found.append(Finding(where, token[:6]))
    return found


def _expanded(where: str, data: bytes) -> Iterator[tuple[str, bytes]]:
    """The bytes, and what is inside when they are a (gzipped) tar or gzip archive."""
    yield where, data
    if data[:2] == b"\x1f\x8b":
        try:
            inner = gzip.decompress(data)
        except (OSError, EOFError):
            return
        try:
            with tarfile.open(fileobj=io.BytesIO(inner)) as tar:
                for member in tar.getmembers():
                    extracted = tar.extractfile(member) if member.isfile() else None
                    if extracted is not None:
                        yield f"{where}!{member.name}", extracted.read()
        except tarfile.TarError:
            yield f"{where}!(gunzipped)", inner


def _regions_in_use() -> dict[str, set[str]]:
    """Regions moto has state for, per service (moto keeps its backends in this process)."""
    from moto.dynamodb.models import dynamodb_backends
    from moto.sqs.models import sqs_backends
    from moto.ssm.models import ssm_backends

    regions: dict[str, set[str]] = {}
    for service, backends in (("dynamodb", dynamodb_backends), ("sqs", sqs_backends), ("ssm", ssm_backends)):
        regions[service] = {region for account in backends.values() for region in account}
    return regions


def scan_moto(endpoint_url: str, tokens: Iterable[str]) -> tuple[list[Finding], int]:
    """(findings, number of items read) over everything the moto server at `endpoint_url` holds."""
    haystack = list(_moto_haystack(endpoint_url))
    return find(tokens, haystack), len(haystack)


def _client(service: str, endpoint_url: str, region: str) -> Any:
    return boto3.client(service, region_name=region, endpoint_url=endpoint_url,
                        aws_access_key_id="secrets-scan", aws_secret_access_key="testing")  # fmt: skip


def _moto_haystack(endpoint_url: str) -> Iterator[tuple[str, bytes]]:
    regions = _regions_in_use()
    for region in sorted(regions["dynamodb"]):
        ddb = _client("dynamodb", endpoint_url, region)
        for table in ddb.list_tables()["TableNames"]:
            for page in ddb.get_paginator("scan").paginate(TableName=table):
                for i, item in enumerate(page["Items"]):
                    yield f"dynamodb:{region}/{table}#{i}", json.dumps(item, ensure_ascii=False).encode()
    s3 = _client("s3", endpoint_url, "us-east-1")
    for bucket in s3.list_buckets()["Buckets"]:
        name = bucket["Name"]
        for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
            for version in page.get("Versions", []):
                body = s3.get_object(Bucket=name, Key=version["Key"], VersionId=version["VersionId"])["Body"].read()
                yield from _expanded(f"s3://{name}/{version['Key']}?versionId={version['VersionId']}", body)
    for region in sorted(regions["sqs"]):
        sqs = _client("sqs", endpoint_url, region)
        for url in sqs.list_queues().get("QueueUrls", []):
            # Read without deleting; each message becomes visible again after the timeout.
            seen: set[str] = set()
            while True:
                batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=30,
                                            WaitTimeSeconds=0).get("Messages", [])  # fmt: skip
                fresh = [m for m in batch if m["MessageId"] not in seen]
                if not fresh:
                    break
                for message in fresh:
                    seen.add(message["MessageId"])
                    yield f"sqs:{url}#{message['MessageId']}", message["Body"].encode()
    for region in sorted(regions["ssm"]):
        ssm = _client("ssm", endpoint_url, region)
        for page in ssm.get_paginator("describe_parameters").paginate():
            for meta in page["Parameters"]:
                if not meta["Name"].startswith(TOKEN_PATH):  # the token store itself
                    value = ssm.get_parameter(Name=meta["Name"], WithDecryption=True)["Parameter"]["Value"]
                    yield f"ssm-parameter:{region}:{meta['Name']}", value.encode()
        for page in ssm.get_paginator("list_commands").paginate():
            for command in page["Commands"]:
                yield f"ssm-command:{region}:{command['CommandId']}", json.dumps(command, default=str).encode()


def scan_files(root: Path, tokens: Iterable[str]) -> tuple[list[Finding], int]:
    """(findings, number of files read) over every regular file under `root` (archives opened)."""
    tokens = list(tokens)
    findings: list[Finding] = []
    count = 0
    for path in sorted(root.rglob("*")) if root.is_dir() else []:
        if path.is_symlink() or not path.is_file():
            continue
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                if size <= MAX_FILE_BYTES:
                    data = f.read()
                else:
                    head = f.read(1 << 20)
                    f.seek(-(1 << 20), io.SEEK_END)
                    data = head + f.read()
        except OSError:
            continue  # vanished meanwhile (a cluster's temp dir being removed)
        count += 1
        findings += find(tokens, _expanded(str(path), data))
    return findings, count
