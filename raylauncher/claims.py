"""Exactly one job per S3 object version, however often S3 or SQS deliver its notification.

Before a job is recorded, each of its objects is *claimed* for it: a conditional put of
`s3#<bucket>#<key>#<version>` into the idempotency table. An object already claimed is a
duplicate delivery and is left out. Claims are written 25 to a transaction (DynamoDB's unit);
a transaction that loses a race is retried item by item to find the duplicates.

If the intake dies between claiming and recording the job, the claims point at a job that does
not exist. Such a claim is never taken for a duplicate: while it is younger than
`stale_after_s` (longer than the intake Lambda's timeout: its owner may still be recording the
job) the claim raises ClaimPending, so the messages are retried (never acknowledged); once
older, it is taken over. The SQS visibility timeout (several Lambda timeouts) makes the usual
redelivery arrive after that.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from raylauncher.aws import error_code
from raylauncher.errors import StorageError
from raylauncher.model import S3ObjectRef

CLAIM_TTL_S = 14 * 24 * 3600  # S3 redelivers within hours; a fortnight leaves a wide margin
TRANSACTION_ITEMS = 25


def claim_id(ref: S3ObjectRef) -> str:
    """One object version. Without a version id (unversioned bucket), etag + sequencer."""
    version = ref.version_id or f"{ref.etag or ''}#{ref.sequencer or ''}"
    return f"s3#{ref.bucket}#{ref.key}#{version}"


class ClaimPending(StorageError):
    """An object is claimed by a job that is not recorded (yet): retry the message later."""


class ObjectClaims(ABC):
    @abstractmethod
    def claim(self, refs: Sequence[S3ObjectRef], job_id: str) -> list[S3ObjectRef]:
        """Claim `refs` for `job_id`; returns those now claimed by it (the rest were already
        another job's). Raises StorageError when the table cannot be written."""

    @abstractmethod
    def release(self, refs: Sequence[S3ObjectRef], job_id: str) -> None:
        """Undo `claim` (the job could not be recorded), so a redelivery can claim them again."""


class DynamoObjectClaims(ObjectClaims):
    def __init__(
        self,
        dynamodb_client: Any,
        table_name: str,
        job_exists: Callable[[str], bool],
        stale_after_s: float = 300,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ddb = dynamodb_client
        self._table = table_name
        self._job_exists = job_exists
        self._stale_after_s = stale_after_s
        self._clock = clock

    def _put(self, ref: S3ObjectRef, job_id: str) -> dict[str, Any]:
        now = int(self._clock())
        return {
            "TableName": self._table,
            "Item": {
                "id": {"S": claim_id(ref)},
                "job_id": {"S": job_id},
                "claimed_at": {"N": str(now)},
                "expiration": {"N": str(now + CLAIM_TTL_S)},
            },
            "ConditionExpression": "attribute_not_exists(id)",
        }

    def claim(self, refs: Sequence[S3ObjectRef], job_id: str) -> list[S3ObjectRef]:
        won: list[S3ObjectRef] = []
        for start in range(0, len(refs), TRANSACTION_ITEMS):
            chunk = refs[start : start + TRANSACTION_ITEMS]
            try:
                self._ddb.transact_write_items(TransactItems=[{"Put": self._put(r, job_id)} for r in chunk])
                won += chunk
            except ClientError as err:
                if error_code(err) != "TransactionCanceledException":
                    raise StorageError("cannot claim objects", error_code(err)) from err
                try:
                    won += [r for r in chunk if self._claim_one(r, job_id)]  # some were duplicates
                except ClaimPending:
                    self.release(won + list(chunk), job_id)  # all or nothing: the messages come back
                    raise
            except BotoCoreError as err:
                raise StorageError("cannot claim objects", error_code(err)) from err
        return won

    def _claim_one(self, ref: S3ObjectRef, job_id: str) -> bool:
        try:
            self._ddb.put_item(**self._put(ref, job_id), ReturnValuesOnConditionCheckFailure="ALL_OLD")
            return True
        except ClientError as err:
            if error_code(err) != "ConditionalCheckFailedException":
                raise StorageError("cannot claim an object", error_code(err)) from err
            old = err.response.get("Item") or {}
        except BotoCoreError as err:
            raise StorageError("cannot claim an object", error_code(err)) from err
        owner = old.get("job_id", {}).get("S", "")
        claimed_at = float(old.get("claimed_at", {}).get("N", "0"))
        if owner == job_id:
            return True
        if self._job_exists(owner):
            return False  # a real duplicate: another job has this object
        if self._clock() - claimed_at < self._stale_after_s:  # its intake may still be recording it
            raise ClaimPending(f"{claim_id(ref)} is claimed by {owner}, not recorded (yet)", "ClaimPending")
        return self._take_over(ref, job_id, owner)

    def _take_over(self, ref: S3ObjectRef, job_id: str, stale_owner: str) -> bool:
        put = self._put(ref, job_id)
        put["ConditionExpression"] = "job_id = :stale"
        put["ExpressionAttributeValues"] = {":stale": {"S": stale_owner}}
        try:
            self._ddb.put_item(**put)
            return True
        except ClientError as err:
            if error_code(err) == "ConditionalCheckFailedException":
                return False  # somebody else took it over first
            raise StorageError("cannot take over a stale claim", error_code(err)) from err

    def release(self, refs: Sequence[S3ObjectRef], job_id: str) -> None:
        for ref in refs:
            try:
                self._ddb.delete_item(
                    TableName=self._table,
                    Key={"id": {"S": claim_id(ref)}},
                    ConditionExpression="job_id = :mine",
                    ExpressionAttributeValues={":mine": {"S": job_id}},
                )
            except (ClientError, BotoCoreError):
                continue  # best effort: a stale claim is taken over later anyway
