"""Warm clusters and debug holds: a cluster that outlives its job, as a record of its own.

A pipeline with `keep_warm_seconds` keeps a cluster up after a job that SUCCEEDED (or FAILED
for an application reason: RAY_JOB_FAILED) so the pipeline's next job skips `ray up`; one with
`keep_failed_cluster_seconds` keeps the cluster of a job that FAILED for an application
reason for debugging (HELD) until the time runs out or `raylauncher jobs release JOB`.
Never after an infrastructure failure, a cancel, a deadline or a teardown problem.

The cluster record is an item of the job table, `cluster#<run id of the cluster's first job>`,
with `kind = "cluster"` (so the by_created index lists clusters apart from jobs; its status and
pipeline attributes have names of their own so the job indexes never see it). It is written
only when a cluster is kept: with the defaults (0) nothing here runs.

Who holds a kept cluster (the driver process that ran its last job) renews a lease on the
record (`heartbeat_at`) like a running driver. The watchdog tears down a cluster whose lease
lapsed or whose time ran out (plus a lease), from the record alone. The cluster keeps the
cluster slot its first job took (it counts against the caps) and gives it back when torn down.

THE cluster state machine (every change a conditional update on status and version):
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime
from enum import StrEnum
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, Field

from raylauncher.aws import error_code
from raylauncher.config import Pipeline
from raylauncher.errors import JobNotFound, StorageError, TransitionConflict
from raylauncher.model import Job, JobStatus, ReasonCode, iso, parse_iso, utc_now

log = logging.getLogger(__name__)

KIND_CLUSTER = "cluster"
KEY_PREFIX = "cluster#"
#: A torn-down cluster record stays readable this long (the table's TTL attribute removes it).
RECORD_RETENTION_S = 14 * 24 * 3600


class ClusterStatus(StrEnum):
    ACTIVE = "ACTIVE"  # a job runs on it (its holder is that job's driver)
    WARM = "WARM"  # idle, waiting for the pipeline's next job until idle_until
    ASSIGNED = "ASSIGNED"  # admission gave it a LAUNCHING job; its holder claims it
    HELD = "HELD"  # kept after an application failure, for debugging, until held_until
    TEARING_DOWN = "TEARING_DOWN"  # going down (holder or watchdog)
    TORN_DOWN = "TORN_DOWN"
    TEARDOWN_FAILED = "TEARDOWN_FAILED"  # may still be up: the reaper (EC2) and a person act


C = ClusterStatus
#: THE cluster transition table. Anything not listed is forbidden.
CLUSTER_TRANSITIONS: dict[ClusterStatus, frozenset[ClusterStatus]] = {
    C.ACTIVE: frozenset({C.WARM, C.HELD, C.TEARING_DOWN}),
    C.WARM: frozenset({C.ASSIGNED, C.TEARING_DOWN}),
    C.ASSIGNED: frozenset({C.ACTIVE, C.WARM, C.TEARING_DOWN}),  # WARM: the job was cancelled first
    C.HELD: frozenset({C.TEARING_DOWN}),
    C.TEARING_DOWN: frozenset({C.TORN_DOWN, C.TEARDOWN_FAILED}),
    C.TORN_DOWN: frozenset(),
    C.TEARDOWN_FAILED: frozenset(),
}
LIVE: frozenset[ClusterStatus] = frozenset({C.ACTIVE, C.WARM, C.ASSIGNED, C.HELD, C.TEARING_DOWN})

__doc__ += "\n".join(
    f"    {s.value:<15} -> {', '.join(sorted(t.value for t in nxt)) or '(final)'}" for s, nxt in CLUSTER_TRANSITIONS.items()
)


def cluster_key(origin_run_id: str) -> str:
    return KEY_PREFIX + origin_run_id


def profile_of(pipeline: Pipeline) -> str:
    """A fingerprint of the pipeline's cluster profile: a warm cluster serves only its own."""
    return hashlib.sha256(pipeline.cluster.model_dump_json().encode()).hexdigest()[:16]


def keep_mode(pipeline: Pipeline, status: JobStatus, reason: ReasonCode | None) -> str | None:
    """"warm", "held" or None (tear down): what happens to a cluster whose job ended so.
    Only a success or the job's own failure (RAY_JOB_FAILED) keeps a cluster: never after an
    infrastructure failure, a cancel, a deadline (RUN_TIMEOUT) or a teardown problem."""
    if status == JobStatus.SUCCEEDED:
        return "warm" if pipeline.keep_warm_seconds > 0 else None
    if status == JobStatus.FAILED and reason == ReasonCode.RAY_JOB_FAILED:
        if pipeline.keep_failed_cluster_seconds > 0:
            return "held"
        return "warm" if pipeline.keep_warm_seconds > 0 else None
    return None


class ClusterRecord(BaseModel):
    key: str  # cluster#<origin run id>
    name: str  # the backend's name of the cluster (rl-<run id> on EC2)
    pipeline: str
    profile: str
    status: ClusterStatus
    version: int = 0
    owner: str | None = None
    heartbeat_at: str | None = None
    created_at: str  # when its first job entered PROVISIONING
    origin_job_id: str  # the job (and attempt) that brought it up: its marker and its Ray token
    origin_attempt: int = 1
    details: dict[str, Any] = Field(default_factory=dict)  # the backend's handle details
    slot_held: bool = False  # holds the cluster slot its first job took
    jobs_served: list[str] = Field(default_factory=list)
    last_job: str | None = None
    assigned_job: str | None = None
    idle_since: str | None = None
    idle_until: str | None = None  # WARM: torn down after this
    held_until: str | None = None  # HELD: torn down after this
    release_requested: bool = False
    warm_seconds: float = 0.0  # total idle (WARM/ASSIGNED) seconds
    held_seconds: float = 0.0
    torn_down_at: str | None = None
    cluster_seconds: float | None = None  # created -> torn down

    @property
    def origin_run_id(self) -> str:
        return self.key.removeprefix(KEY_PREFIX)

    def origin_job(self, pipeline_trigger: str = "api") -> Job:
        """The job (attempt) the cluster belongs to, as teardown needs it: its run id is the local
        marker, the EC2 cluster name and the Ray token's parameter."""
        return Job(job_id=self.origin_job_id, pipeline=self.pipeline, trigger=pipeline_trigger,  # type: ignore[arg-type]
                   created_at=self.created_at, updated_at=self.created_at, attempt=self.origin_attempt,
                   cluster=dict(self.details), status=JobStatus.TEARING_DOWN)  # fmt: skip

    def deadline(self) -> datetime | None:
        """When a WARM/ASSIGNED/HELD cluster's time runs out."""
        until = self.held_until if self.status == C.HELD else self.idle_until
        return parse_iso(until) if until and self.status in (C.WARM, C.ASSIGNED, C.HELD) else None

    def idle_seconds(self, now: datetime) -> float:
        return max(0.0, (now - parse_iso(self.idle_since)).total_seconds()) if self.idle_since else 0.0


def origin_of(job: Job) -> Job:
    """The job attempt whose cluster `job` ran on: itself, unless it ran on a kept cluster (its
    record names the cluster's first job). Teardown, logs and tokens go through this."""
    details = job.cluster or {}
    origin_id, origin_attempt = details.get("origin_job_id"), details.get("origin_attempt")
    if not origin_id or (origin_id == job.job_id and int(origin_attempt or 1) == job.attempt):
        return job
    return job.model_copy(update={"job_id": origin_id, "attempt": int(origin_attempt or 1)})


_FIELDS = {
    "name", "pipeline", "profile", "owner", "heartbeat_at", "created_at", "origin_job_id", "origin_attempt", "details",
    "slot_held", "jobs_served", "last_job", "assigned_job", "idle_since", "idle_until", "held_until",
    "release_requested", "warm_seconds", "held_seconds", "torn_down_at", "cluster_seconds",
}  # fmt: skip
#: Attribute names in the job table: never the job indexes' (`status`, `pipeline`, `slot_pool`).
_ATTR = {"status": "cluster_status", "pipeline": "cluster_pipeline", "version": "cluster_version"}


def _attr(field: str) -> str:
    return _ATTR.get(field, "c_" + field if field in _FIELDS else field)


class ClusterRecords:
    """The cluster records in the job table (DynamoDB). Every status change is conditional on
    (status, version); the lease is conditional on the owner."""

    def __init__(self, dynamodb_client: Any, table_name: str) -> None:
        self._ddb = dynamodb_client
        self._table = table_name

    @property
    def table_name(self) -> str:
        return self._table

    # -- items ---------------------------------------------------------------------------------

    def item(self, record: ClusterRecord) -> dict[str, Any]:
        from raylauncher.store import CREATED_KEY, KIND, _to_dynamo

        plain = record.model_dump(mode="json")
        item = {"job_id": {"S": record.key}, KIND: {"S": KIND_CLUSTER},
                CREATED_KEY: {"S": f"{record.created_at}#{record.key}"}}  # fmt: skip
        for name, value in plain.items():
            if name != "key" and value is not None:
                item[_attr(name)] = _to_dynamo(value)
        return item

    @staticmethod
    def parse(item: dict[str, Any]) -> ClusterRecord:
        from raylauncher.store import _from_dynamo

        plain = _from_dynamo(item)
        back = {v: k for k, v in _ATTR.items()}
        fields: dict[str, Any] = {"key": plain["job_id"]}
        for name, value in plain.items():
            field = back.get(name) or (name[2:] if name.startswith("c_") else None)
            if field:
                fields[field] = value
        return ClusterRecord.model_validate(fields)

    def put_params(self, record: ClusterRecord) -> dict[str, Any]:
        """A new record (conditional on none existing), for a transaction."""
        return {"TableName": self._table, "Item": self.item(record), "ConditionExpression": "attribute_not_exists(job_id)"}

    def update_params(self, record: ClusterRecord, target: ClusterStatus | None, **fields: Any) -> dict[str, Any]:
        """The conditional update moving `record` to `target` (None: same status, version bumped
        anyway), setting `fields` (None removes), for a transaction too."""
        from raylauncher.store import _to_dynamo

        if target is not None and target not in CLUSTER_TRANSITIONS[record.status]:
            raise TransitionConflict(record.key, record.status.value, target.value)
        names = {"#s": "cluster_status", "#v": "cluster_version"}
        values: dict[str, Any] = {":from": {"S": record.status.value}, ":ver": {"N": str(record.version)},
                                  ":next": {"N": str(record.version + 1)}}  # fmt: skip
        sets, removes = ["#v = :next"], []
        if target is not None:
            values[":to"] = {"S": target.value}
            sets.append("#s = :to")
            if target in (C.TORN_DOWN, C.TEARDOWN_FAILED):
                names["#ttl"] = "expires_at"
                values[":ttl"] = {"N": str(int(utc_now().timestamp()) + RECORD_RETENTION_S)}
                sets.append("#ttl = :ttl")
        for i, (name, value) in enumerate(sorted(fields.items())):
            if name not in _FIELDS:
                raise ValueError(f"unknown cluster field {name!r}")
            names[f"#f{i}"] = _attr(name)
            if value is None:
                removes.append(f"#f{i}")
            else:
                values[f":f{i}"] = _to_dynamo(value.value if hasattr(value, "value") else value)
                sets.append(f"#f{i} = :f{i}")
        return {
            "TableName": self._table, "Key": {"job_id": {"S": record.key}},
            "UpdateExpression": "SET " + ", ".join(sets) + (" REMOVE " + ", ".join(removes) if removes else ""),
            "ConditionExpression": "#s = :from AND #v = :ver",
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values,
        }  # fmt: skip

    # -- reads and writes -------------------------------------------------------------------------

    def get(self, key: str) -> ClusterRecord:
        try:
            resp = self._ddb.get_item(TableName=self._table, Key={"job_id": {"S": key}}, ConsistentRead=True)
        except (ClientError, BotoCoreError) as err:
            raise StorageError(f"cannot read cluster {key}", error_code(err)) from err
        if "Item" not in resp:
            raise JobNotFound(key)
        return self.parse(resp["Item"])

    def live(self, pipeline: str | None = None, status: ClusterStatus | None = None) -> list[ClusterRecord]:
        """Clusters not torn down (the by_created index, kind = cluster; eventually consistent:
        act through conditional writes)."""
        values: dict[str, Any] = {":k": {"S": KIND_CLUSTER}}
        names = {"#k": "kind", "#s": "cluster_status"}
        wanted = [status] if status else sorted(LIVE)
        values.update({f":s{i}": {"S": s.value} for i, s in enumerate(wanted)})
        filt = "#s IN (" + ", ".join(f":s{i}" for i in range(len(wanted))) + ")"
        if pipeline:
            names["#p"] = "cluster_pipeline"
            values[":p"] = {"S": pipeline}
            filt += " AND #p = :p"
        params = {"TableName": self._table, "IndexName": "by_created", "KeyConditionExpression": "#k = :k",
                  "FilterExpression": filt, "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}  # fmt: skip
        found = []
        try:
            for page in self._ddb.get_paginator("query").paginate(**params):
                found += [self.parse(item) for item in page.get("Items", [])]
        except (ClientError, BotoCoreError) as err:
            raise StorageError("cannot list clusters", error_code(err)) from err
        return found

    def create(self, record: ClusterRecord) -> ClusterRecord:
        try:
            self._ddb.put_item(**self.put_params(record))
        except (ClientError, BotoCoreError) as err:
            if error_code(err) == "ConditionalCheckFailedException":
                raise TransitionConflict(record.key, "(new)", None) from None
            raise StorageError(f"cannot create cluster {record.key}", error_code(err)) from err
        return record

    def update(self, record: ClusterRecord, target: ClusterStatus | None, **fields: Any) -> ClusterRecord:
        params = self.update_params(record, target, **fields)
        try:
            resp = self._ddb.update_item(**params, ReturnValues="ALL_NEW")
        except (ClientError, BotoCoreError) as err:
            if error_code(err) == "ConditionalCheckFailedException":
                raise TransitionConflict(record.key, record.status.value, None) from None
            raise StorageError(f"cannot update cluster {record.key}", error_code(err)) from err
        return self.parse(resp["Attributes"])

    def renew_lease(self, key: str, owner: str) -> None:
        """The holder's heartbeat: iff it still owns the cluster and the cluster is live."""
        values: dict[str, Any] = {":o": {"S": owner}, ":now": {"S": iso(utc_now())}}
        values.update({f":s{i}": {"S": s.value} for i, s in enumerate(sorted(LIVE))})
        live = ", ".join(f":s{i}" for i in range(len(LIVE)))
        try:
            self._ddb.update_item(
                TableName=self._table, Key={"job_id": {"S": key}}, UpdateExpression="SET c_heartbeat_at = :now",
                ConditionExpression=f"c_owner = :o AND cluster_status IN ({live})", ExpressionAttributeValues=values,
            )  # fmt: skip
        except (ClientError, BotoCoreError) as err:
            if error_code(err) == "ConditionalCheckFailedException":
                raise TransitionConflict(key, "owned by " + owner, None) from None
            raise StorageError(f"cannot renew the lease of cluster {key}", error_code(err)) from err

    def request_release(self, job: Job) -> ClusterRecord:
        """`jobs release JOB`: end the hold of the cluster JOB failed on, at once (its holder or
        the watchdog tears it down). TransitionConflict if the job's cluster is not HELD for it."""
        if not job.cluster_key:
            raise TransitionConflict(job.job_id, "not holding a cluster", None)
        record = self.get(job.cluster_key)
        if record.status != C.HELD or record.last_job != job.job_id:
            raise TransitionConflict(job.job_id, "not holding a cluster", record.status.value)
        return self.update(record, None, release_requested=True, held_until=iso(utc_now()))


def seconds_between(start: str | None, end: datetime) -> float:
    return max(0.0, (end - parse_iso(start)).total_seconds()) if start else 0.0


__all__ = [
    "CLUSTER_TRANSITIONS", "ClusterRecord", "ClusterRecords", "ClusterStatus", "cluster_key", "end_cluster", "keep_mode",
    "origin_of", "profile_of",
]  # fmt: skip


def end_items(records: ClusterRecords, record: ClusterRecord, target: ClusterStatus, now: datetime,
              slot_items: list[dict[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    """The transaction that ends a TEARING_DOWN cluster record: TORN_DOWN (or TEARDOWN_FAILED)
    with its cluster-seconds, and its slot given back (`slot_items`) if it holds one."""
    fields: dict[str, Any] = {"slot_held": False, "torn_down_at": iso(now), "idle_since": None,
                              "cluster_seconds": round(seconds_between(record.created_at, now), 3)}  # fmt: skip
    return [{"Update": records.update_params(record, target, **fields)}, *(slot_items if record.slot_held else [])]


def end_cluster(records: ClusterRecords, record: ClusterRecord, target: ClusterStatus,
                slot_items: list[dict[str, Any]]) -> bool:  # fmt: skip
    """Apply `end_items` (one transaction). False if it did not apply (somebody else ended it)."""
    try:
        records._ddb.transact_write_items(TransactItems=end_items(records, record, target, utc_now(), slot_items))
    except (ClientError, BotoCoreError) as err:
        log.warning("cluster %s: not ended as %s (%s)", record.key, target, error_code(err))
        return False
    log.info("cluster %s: %s", record.key, target)
    return True
