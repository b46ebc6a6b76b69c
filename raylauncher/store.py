"""The job store: a port, its DynamoDB adapter, and the table schema (defined once, here).

Every status change is a conditional update on (status, version): two writers racing on one
job can never both win.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from raylauncher.aws import error_code
from raylauncher.errors import JobAlreadyExists, JobNotFound, StorageError, TransactionRefused, TransitionConflict
from raylauncher.events import JobEvents, NullJobEvents
from raylauncher.model import TERMINAL, Job, JobStatus, check_transition, iso, utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TableSchema:
    """The job table, as the local bootstrap creates it and the CDK stack deploys it."""

    partition_key: str = "job_id"
    ttl_attribute: str = "expires_at"
    billing_mode: str = "PAY_PER_REQUEST"

    def create_table_kwargs(self, table_name: str) -> dict[str, Any]:
        return {
            "TableName": table_name,
            "AttributeDefinitions": [{"AttributeName": self.partition_key, "AttributeType": "S"}],
            "KeySchema": [{"AttributeName": self.partition_key, "KeyType": "HASH"}],
            "BillingMode": self.billing_mode,
        }


JOB_TABLE = TableSchema()
#: Idempotency records: Powertools' (API Idempotency-Key, schedule runs) and our S3 object
#: claims. Powertools expects a string key `id` and a TTL attribute `expiration`.
IDEMPOTENCY_TABLE = TableSchema(partition_key="id", ttl_attribute="expiration")


class JobStore(ABC):
    """Port: where jobs live."""

    @abstractmethod
    def create(self, job: Job) -> Job:
        """Store a new job; JobAlreadyExists if the id is taken."""

    @abstractmethod
    def get(self, job_id: str) -> Job:
        """The job; JobNotFound if there is none."""

    @abstractmethod
    def list_jobs(self) -> list[Job]:
        """Every job, newest first. A full scan: fine locally; the API adds an index for AWS."""

    @abstractmethod
    def transition(self, job: Job, target: JobStatus, **fields: Any) -> Job:
        """Move `job` to `target` iff it is still at `job.status`/`job.version`.

        Raises IllegalTransition (the table forbids it) or TransitionConflict (somebody else
        changed the job first). `fields` are set alongside (None removes an attribute).
        """

    @abstractmethod
    def mark(self, job: Job, **fields: Any) -> Job:
        """Set fields without changing status or version, iff the job is still at `job.status`
        (TransitionConflict otherwise)."""

    @abstractmethod
    def renew_lease(self, job_id: str, owner: str) -> None:
        """Heartbeat of the job's owner: iff `owner` still owns the job and it is not terminal.
        Raises TransitionConflict when it does not (the watchdog took the job over)."""

    @abstractmethod
    def take_over(self, job: Job, owner: str, **fields: Any) -> Job:
        """Make `owner` the job's owner iff it is still at `job.status`/`job.version` (the version
        is bumped, so the previous owner's next conditional write fails). TransitionConflict
        otherwise."""

    def heartbeat(self, job: Job, **fields: Any) -> Job:
        """Record liveness (and e.g. Ray's status) without changing status."""
        return self.mark(job, heartbeat_at=iso(utc_now()), **fields)


_ser = TypeSerializer()
_deser = TypeDeserializer()


def _to_dynamo(value: Any) -> dict[str, Any]:
    # DynamoDB wants Decimal, never float; a JSON round trip turns every float into one.
    return _ser.serialize(json.loads(json.dumps(value), parse_float=Decimal))


def _from_dynamo(item: dict[str, Any]) -> dict[str, Any]:
    plain = {k: _deser.deserialize(v) for k, v in item.items()}
    return json.loads(json.dumps(plain, default=_decimal_to_number))


def _decimal_to_number(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(type(value))


class DynamoJobStore(JobStore):
    """The DynamoDB adapter. Translates ClientError codes into domain exceptions. Every job it
    records, every transition and every takeover it writes is announced to `events`
    (best-effort, after the write)."""

    def __init__(self, dynamodb_client: Any, table_name: str, events: JobEvents | None = None) -> None:
        self._ddb = dynamodb_client
        self._table = table_name
        self._events = events or NullJobEvents()

    @property
    def table_name(self) -> str:
        return self._table

    def create(self, job: Job) -> Job:
        item = {k: _to_dynamo(v) for k, v in job.model_dump(mode="json").items() if v is not None}
        try:
            self._ddb.put_item(
                TableName=self._table,
                Item=item,
                ConditionExpression="attribute_not_exists(job_id)",
            )
        except (ClientError, BotoCoreError) as err:
            if error_code(err) == "ConditionalCheckFailedException":
                raise JobAlreadyExists(job.job_id) from None
            raise StorageError(f"cannot create job {job.job_id}", error_code(err)) from err
        self._events.job_changed(None, job)
        return job

    def get(self, job_id: str) -> Job:
        try:
            resp = self._ddb.get_item(TableName=self._table, Key={"job_id": {"S": job_id}}, ConsistentRead=True)
        except (ClientError, BotoCoreError) as err:
            raise StorageError(f"cannot read job {job_id}", error_code(err)) from err
        if "Item" not in resp:
            raise JobNotFound(job_id)
        return Job.model_validate(_from_dynamo(resp["Item"]))

    def list_jobs(self) -> list[Job]:
        jobs = []
        try:
            for page in self._ddb.get_paginator("scan").paginate(TableName=self._table, ConsistentRead=True):
                jobs += [Job.model_validate(_from_dynamo(item)) for item in page.get("Items", [])]
        except (ClientError, BotoCoreError) as err:
            raise StorageError("cannot list jobs", error_code(err)) from err
        return sorted(jobs, key=lambda j: j.created_at, reverse=True)

    def transition_params(self, job: Job, target: JobStatus, **fields: Any) -> dict[str, Any]:
        """The conditional UpdateItem of a transition, for use inside a transaction too."""
        check_transition(job.status, target)
        names = {"#status": "status", "#version": "version", "#phase": target.value}
        values = {
            ":from": _to_dynamo(job.status.value),
            ":expected_version": _to_dynamo(job.version),
            ":to": _to_dynamo(target.value),
            ":next_version": _to_dynamo(job.version + 1),
            ":now": _to_dynamo(iso(utc_now())),
        }
        sets = ["#status = :to", "#version = :next_version", "updated_at = :now", "phase_times.#phase = :now"]
        return self._update_params(job, fields, names, values, sets, "#status = :from AND #version = :expected_version")

    def transition(self, job: Job, target: JobStatus, **fields: Any) -> Job:
        moved = self._update(job, self.transition_params(job, target, **fields))
        self._events.job_changed(job, moved)
        return moved

    def transact(self, job: Job, job_update: dict[str, Any], others: list[dict[str, Any]]) -> Job:
        """Apply `job_update` (from transition_params) together with `others` (TransactItems),
        all or nothing. Raises TransitionConflict if the job's condition failed, or
        TransactionRefused with the failed items' indexes in `others`."""
        try:
            self._ddb.transact_write_items(TransactItems=[{"Update": job_update}, *others])
        except (ClientError, BotoCoreError) as err:
            if error_code(err) != "TransactionCanceledException":
                raise StorageError(f"cannot update job {job.job_id}", error_code(err)) from err
            reasons = [r.get("Code", "None") for r in err.response.get("CancellationReasons", [])]  # type: ignore[union-attr]
            if reasons and reasons[0] == "ConditionalCheckFailed":
                raise TransitionConflict(job.job_id, job.status.value, None) from None
            raise TransactionRefused([i - 1 for i, code in enumerate(reasons) if i and code != "None"]) from None
        moved = self.get(job.job_id)
        if moved.version == job.version + 1:  # else somebody moved it on since: theirs is the event to send
            self._events.job_changed(job, moved)
        else:
            log.warning("job %s: changed again before its transition could be announced", job.job_id)
        return moved

    def mark(self, job: Job, **fields: Any) -> Job:
        names = {"#status": "status"}
        values = {":from": _to_dynamo(job.status.value), ":now": _to_dynamo(iso(utc_now()))}
        return self._update(job, self._update_params(job, fields, names, values, ["updated_at = :now"], "#status = :from"))

    def renew_lease(self, job_id: str, owner: str) -> None:
        terminal = [s.value for s in JobStatus if s in TERMINAL]
        names = {"#owner": "owner", "#status": "status"}
        values = {":owner": _to_dynamo(owner), ":now": _to_dynamo(iso(utc_now()))}
        values.update({f":t{i}": _to_dynamo(v) for i, v in enumerate(terminal)})
        condition = "#owner = :owner AND NOT #status IN (" + ", ".join(f":t{i}" for i in range(len(terminal))) + ")"
        try:
            self._ddb.update_item(
                TableName=self._table, Key={"job_id": {"S": job_id}}, UpdateExpression="SET heartbeat_at = :now",
                ConditionExpression=condition, ExpressionAttributeNames=names, ExpressionAttributeValues=values,
            )  # fmt: skip
        except (ClientError, BotoCoreError) as err:
            if error_code(err) == "ConditionalCheckFailedException":
                raise TransitionConflict(job_id, "owned by " + owner, None) from None
            raise StorageError(f"cannot renew the lease of job {job_id}", error_code(err)) from err

    def take_over(self, job: Job, owner: str, **fields: Any) -> Job:
        names = {"#status": "status", "#version": "version"}
        values = {
            ":from": _to_dynamo(job.status.value),
            ":expected_version": _to_dynamo(job.version),
            ":next_version": _to_dynamo(job.version + 1),
            ":now": _to_dynamo(iso(utc_now())),
        }
        sets = ["#version = :next_version", "updated_at = :now", "heartbeat_at = :now"]
        fields = {**fields, "owner": owner}
        condition = "#status = :from AND #version = :expected_version"
        taken = self._update(job, self._update_params(job, fields, names, values, sets, condition))
        self._events.job_changed(job, taken)  # same status, new owner: a lost driver is news too
        return taken

    def _update_params(
        self,
        job: Job,
        fields: dict[str, Any],
        names: dict[str, str],
        values: dict[str, Any],
        sets: list[str],
        condition: str,
    ) -> dict[str, Any]:
        removes = []
        for i, (name, value) in enumerate(sorted(fields.items())):
            if name not in Job.model_fields:
                raise ValueError(f"unknown job field {name!r}")
            names[f"#f{i}"] = name
            if value is None:
                removes.append(f"#f{i}")
            else:
                plain = value.value if hasattr(value, "value") else value
                values[f":f{i}"] = _to_dynamo(plain)
                sets.append(f"#f{i} = :f{i}")
        expression = "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else "")
        return {
            "TableName": self._table,
            "Key": {"job_id": {"S": job.job_id}},
            "UpdateExpression": expression,
            "ConditionExpression": condition,
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }

    def _update(self, job: Job, params: dict[str, Any]) -> Job:
        try:
            resp = self._ddb.update_item(
                **params, ReturnValues="ALL_NEW", ReturnValuesOnConditionCheckFailure="ALL_OLD"
            )
        except (ClientError, BotoCoreError) as err:
            if error_code(err) == "ConditionalCheckFailedException":
                old = err.response.get("Item") or {}  # type: ignore[union-attr]
                actual = _deser.deserialize(old["status"]) if "status" in old else None
                raise TransitionConflict(job.job_id, job.status.value, actual) from None
            raise StorageError(f"cannot update job {job.job_id}", error_code(err)) from err
        return Job.model_validate(_from_dynamo(resp["Attributes"]))
