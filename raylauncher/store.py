"""The job store: a port, its DynamoDB adapter, and the table schema (defined once, here).

Every status change is a conditional update on (status, version): two writers racing on one
job can never both win.
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from itertools import islice
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import BotoCoreError, ClientError

from raylauncher.aws import error_code
from raylauncher.errors import JobAlreadyExists, JobNotFound, StorageError, TransactionRefused, TransitionConflict
from raylauncher.events import JobEvents, NullJobEvents
from raylauncher.model import TERMINAL, Job, JobStatus, check_transition, iso, utc_now

if TYPE_CHECKING:
    from raylauncher.cluster_records import ClusterRecords

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexSchema:
    """A global secondary index (string keys, every attribute projected)."""

    name: str
    partition_key: str
    sort_key: str


@dataclass(frozen=True)
class TableSchema:
    """A table, as the local bootstrap creates it and the CDK stack deploys it."""

    partition_key: str = "job_id"
    ttl_attribute: str = "expires_at"
    billing_mode: str = "PAY_PER_REQUEST"
    indexes: tuple[IndexSchema, ...] = ()

    def attribute_names(self) -> list[str]:
        """Key attributes, table key first, then each index's in order (CDK's order too)."""
        names = [self.partition_key]
        for index in self.indexes:
            names += [n for n in (index.partition_key, index.sort_key) if n not in names]
        return names

    def create_table_kwargs(self, table_name: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "TableName": table_name,
            "AttributeDefinitions": [{"AttributeName": n, "AttributeType": "S"} for n in self.attribute_names()],
            "KeySchema": [{"AttributeName": self.partition_key, "KeyType": "HASH"}],
            "BillingMode": self.billing_mode,
        }
        if self.indexes:
            kwargs["GlobalSecondaryIndexes"] = [
                {
                    "IndexName": i.name,
                    "KeySchema": [
                        {"AttributeName": i.partition_key, "KeyType": "HASH"},
                        {"AttributeName": i.sort_key, "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
                for i in self.indexes
            ]
        return kwargs


#: Index attributes of a job item, kept by DynamoJobStore on every write (never Job fields):
#: `kind` is the same for every job (one partition of all jobs), `created_key` orders jobs
#: by creation (`<created_at>#<job_id>`: unique, and sorts like the page token's position),
#: `slot_pool` is present only while the job holds a cluster slot (a sparse index: the
#: watchdog finds slot holders without reading the history).
KIND, KIND_JOB = "kind", "job"
CREATED_KEY = "created_key"
SLOT_POOL, SLOT_POOL_HELD = "slot_pool", "held"
BY_CREATED = IndexSchema("by_created", KIND, CREATED_KEY)
BY_STATUS = IndexSchema("by_status", "status", CREATED_KEY)
BY_PIPELINE = IndexSchema("by_pipeline", "pipeline", CREATED_KEY)
HOLDING_SLOT = IndexSchema("holding_slot", SLOT_POOL, CREATED_KEY)

JOB_TABLE = TableSchema(indexes=(BY_CREATED, BY_STATUS, BY_PIPELINE, HOLDING_SLOT))
#: Idempotency records: Powertools' (API Idempotency-Key, schedule runs) and our S3 object
#: claims. Powertools expects a string key `id` and a TTL attribute `expiration`.
IDEMPOTENCY_TABLE = TableSchema(partition_key="id", ttl_attribute="expiration")


def created_key(created_at: str, job_id: str) -> str:
    return f"{created_at}#{job_id}"


@dataclass(frozen=True)
class JobQuery:
    """Which jobs, in creation order (`created_key`). `created_from` is inclusive, `created_before`
    exclusive: both are `created_key` values or bare timestamps (a timestamp `t` as `created_from`
    takes every job created at or after `t`)."""

    status: JobStatus | None = None
    pipeline: str | None = None
    created_from: str | None = None
    created_before: str | None = None
    holding_slot: bool = False  # only jobs holding a cluster slot
    oldest_first: bool = False

    def matches(self, job: Job) -> bool:
        key = created_key(job.created_at, job.job_id)
        return (
            (self.status is None or job.status == self.status)
            and (self.pipeline is None or job.pipeline == self.pipeline)
            and (self.created_from is None or key >= self.created_from)
            and (self.created_before is None or key < self.created_before)
            and (not self.holding_slot or job.slot_held)
        )


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
        """Every job, newest first. A full scan: for tests and local tools, never on a request
        path (use `iter_jobs`)."""

    def iter_jobs(self, query: JobQuery) -> Iterator[Job]:
        """The jobs `query` selects, in creation order, read lazily. This default filters
        `list_jobs`; the DynamoDB adapter reads an index instead."""
        jobs = sorted((j for j in self.list_jobs() if query.matches(j)), key=lambda j: (j.created_at, j.job_id))
        return iter(jobs if query.oldest_first else jobs[::-1])

    def find(self, query: JobQuery, limit: int) -> list[Job]:
        """The first `limit` jobs of `iter_jobs(query)`."""
        return list(islice(self.iter_jobs(query), limit))

    def count(self, query: JobQuery) -> int:
        """How many jobs `query` selects."""
        return sum(1 for _ in self.iter_jobs(query))

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


def job_item(job: Job) -> dict[str, Any]:
    """The DynamoDB item of `job`: its fields and its index attributes (KIND, CREATED_KEY,
    SLOT_POOL while it holds a slot)."""
    item = {k: _to_dynamo(v) for k, v in job.model_dump(mode="json").items() if v is not None}
    item[KIND] = {"S": KIND_JOB}
    item[CREATED_KEY] = {"S": created_key(job.created_at, job.job_id)}
    if job.slot_held:
        item[SLOT_POOL] = {"S": SLOT_POOL_HELD}
    return item


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

    @property
    def clusters(self) -> ClusterRecords:
        """The warm/held cluster records, kept in the same table (raylauncher/warm.py)."""
        from raylauncher.cluster_records import ClusterRecords

        return ClusterRecords(self._ddb, self._table)

    def create(self, job: Job) -> Job:
        item = job_item(job)
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
                jobs += [Job.model_validate(_from_dynamo(item)) for item in page.get("Items", [])
                         if item.get(KIND, {}).get("S", KIND_JOB) == KIND_JOB]  # not the cluster records
        except (ClientError, BotoCoreError) as err:
            raise StorageError("cannot list jobs", error_code(err)) from err
        return sorted(jobs, key=lambda j: j.created_at, reverse=True)

    def iter_jobs(self, query: JobQuery) -> Iterator[Job]:
        return self._query(query, page_size=None)

    def find(self, query: JobQuery, limit: int) -> list[Job]:
        # One request when no filter is left over: limit + 1 (the exclusive bound's own item).
        page_size = limit + 1 if self._query_params(query).get("FilterExpression") is None else None
        return list(islice(self._query(query, page_size), limit))

    def count(self, query: JobQuery) -> int:
        params = {**self._query_params(query), "Select": "COUNT"}
        if query.created_from and query.created_before:  # BETWEEN includes the upper bound: not ours
            return sum(1 for _ in self._query(query, page_size=None))
        total = 0
        try:
            for page in self._ddb.get_paginator("query").paginate(**params):
                total += page["Count"]
        except (ClientError, BotoCoreError) as err:
            raise StorageError("cannot count jobs", error_code(err)) from err
        return total

    def _query_params(self, query: JobQuery) -> dict[str, Any]:
        """A Query of the index that fits `query` best; what the index key does not cover becomes
        a filter. Indexes are eventually consistent: callers act through conditional writes."""
        filters: dict[str, str] = {}
        if query.holding_slot:
            index, value = HOLDING_SLOT, SLOT_POOL_HELD
            filters = {k: v for k, v in (("status", query.status), ("pipeline", query.pipeline)) if v}
        elif query.status is not None:
            index, value = BY_STATUS, query.status.value
            filters = {"pipeline": query.pipeline} if query.pipeline else {}
        elif query.pipeline is not None:
            index, value = BY_PIPELINE, query.pipeline
        else:
            index, value = BY_CREATED, KIND_JOB
        names = {"#pk": index.partition_key, "#ck": index.sort_key}
        values: dict[str, Any] = {":pk": {"S": value}}
        condition = "#pk = :pk"
        if query.created_from is not None and query.created_before is not None:
            condition += " AND #ck BETWEEN :from AND :before"
        elif query.created_from is not None:
            condition += " AND #ck >= :from"
        elif query.created_before is not None:
            condition += " AND #ck < :before"
        if query.created_from is not None:
            values[":from"] = {"S": query.created_from}
        if query.created_before is not None:
            values[":before"] = {"S": query.created_before}
        if condition == "#pk = :pk":
            del names["#ck"]
        params: dict[str, Any] = {
            "TableName": self._table,
            "IndexName": index.name,
            "KeyConditionExpression": condition,
            "ScanIndexForward": query.oldest_first,
        }
        if filters:
            clauses = []
            for i, (name, wanted) in enumerate(sorted(filters.items())):
                names[f"#x{i}"] = name
                values[f":x{i}"] = {"S": str(wanted)}
                clauses.append(f"#x{i} = :x{i}")
            params["FilterExpression"] = " AND ".join(clauses)
        return params | {"ExpressionAttributeNames": names, "ExpressionAttributeValues": values}

    def _query(self, query: JobQuery, page_size: int | None) -> Iterator[Job]:
        params = self._query_params(query)
        if page_size is not None:
            params["Limit"] = page_size
        while True:
            try:
                resp = self._ddb.query(**params)
            except (ClientError, BotoCoreError) as err:
                raise StorageError("cannot query jobs", error_code(err)) from err
            for item in resp.get("Items", []):
                if query.created_before is not None and item[CREATED_KEY]["S"] >= query.created_before:
                    continue  # BETWEEN's upper bound is inclusive; ours is not
                yield Job.model_validate(_from_dynamo(item))
            if "LastEvaluatedKey" not in resp:
                return
            params["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

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

    def note(self, job: Job, **fields: Any) -> Job:
        """`mark`, announced as a same-status event (e.g. a kept cluster's idle seconds)."""
        noted = self.mark(job, **fields)
        self._events.job_changed(job, noted)
        return noted

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
        if "slot_held" in fields:  # the sparse index's attribute follows the flag
            names["#slot_pool"] = SLOT_POOL
            if fields["slot_held"]:
                values[":slot_pool"] = {"S": SLOT_POOL_HELD}
                sets.append("#slot_pool = :slot_pool")
            else:
                removes.append("#slot_pool")
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
