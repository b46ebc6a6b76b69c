"""The cluster records of warm clusters and debug holds (raylauncher/warm.py) in DynamoDB: items
of the job table, `cluster#<origin run id>`, with attribute names of their own so the job
indexes never see them. Every status change is conditional on (status, version); the lease on
the owner. The adapter turns ClientError codes into domain exceptions.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from raylauncher.aws import error_code
from raylauncher.errors import JobNotFound, StorageError, TransitionConflict
from raylauncher.model import Job, iso, parse_iso, utc_now
from raylauncher.warm import (
    CLUSTER_TRANSITIONS,
    KIND_CLUSTER,
    LIVE,
    RECORD_RETENTION_S,
    ClusterRecord,
    ClusterStatus,
    seconds_between,
)

C = ClusterStatus
log = logging.getLogger(__name__)

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

    def update_params(
        self, record: ClusterRecord, target: ClusterStatus | None, expect_heartbeat: bool = False, **fields: Any
    ) -> dict[str, Any]:
        """The conditional update moving `record` to `target` (None: same status, version bumped
        anyway), setting `fields` (None removes), for a transaction too. `expect_heartbeat`: also
        conditional on the holder's heartbeat being the one `record` has (renewals do not bump
        the version: a takeover must lose to a holder that renewed since it read)."""
        from raylauncher.store import _to_dynamo

        if target is not None and target not in CLUSTER_TRANSITIONS[record.status]:
            raise TransitionConflict(record.key, record.status.value, target.value)
        names = {"#s": "cluster_status", "#v": "cluster_version"}
        values: dict[str, Any] = {":from": {"S": record.status.value}, ":ver": {"N": str(record.version)},
                                  ":next": {"N": str(record.version + 1)}}  # fmt: skip
        sets, removes = ["#v = :next"], []
        condition = "#s = :from AND #v = :ver"
        if expect_heartbeat:
            names["#hb"] = "c_heartbeat_at"
            if record.heartbeat_at:
                values[":hb"] = {"S": record.heartbeat_at}
                condition += " AND #hb = :hb"
            else:
                condition += " AND attribute_not_exists(#hb)"
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
            "ConditionExpression": condition,
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

    def update(
        self, record: ClusterRecord, target: ClusterStatus | None, expect_heartbeat: bool = False, **fields: Any
    ) -> ClusterRecord:
        params = self.update_params(record, target, expect_heartbeat, **fields)
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

    def end(self, record: ClusterRecord, target: ClusterStatus, slot_items: list[dict[str, Any]]) -> bool:
        """End a TEARING_DOWN record as `target` with its cluster-seconds, and give its slot back
        (`slot_items`) if it holds one: one transaction. False if it did not apply."""
        try:
            self._ddb.transact_write_items(TransactItems=end_items(self, record, target, utc_now(), slot_items))
        except (ClientError, BotoCoreError) as err:
            log.warning("cluster %s: not ended as %s (%s)", record.key, target, error_code(err))
            return False
        log.info("cluster %s: %s", record.key, target)
        return True

    def teardown_failed_since(self, since: datetime) -> list[ClusterRecord]:
        """Kept clusters whose teardown failed after `since` (each one may still run: an incident)."""
        return [r for r in self.live(status=C.TEARDOWN_FAILED) if r.torn_down_at and parse_iso(r.torn_down_at) >= since]


def end_items(records: ClusterRecords, record: ClusterRecord, target: ClusterStatus, now: datetime,
              slot_items: list[dict[str, Any]]) -> list[dict[str, Any]]:  # fmt: skip
    """The transaction that ends a TEARING_DOWN cluster record: TORN_DOWN (or TEARDOWN_FAILED)
    with its cluster-seconds, and its slot given back (`slot_items`) if it holds one."""
    fields: dict[str, Any] = {"slot_held": False, "torn_down_at": iso(now), "idle_since": None,
                              "cluster_seconds": round(seconds_between(record.created_at, now), 3)}  # fmt: skip
    return [{"Update": records.update_params(record, target, **fields)}, *(slot_items if record.slot_held else [])]
