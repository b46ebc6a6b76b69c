"""The local moto server keeps DynamoDB transactions all or nothing (it rolls them back item by
item, not by copying whole tables)."""

from typing import Any

import pytest
from botocore.exceptions import ClientError

from raylauncher import aws
from raylauncher.config import Settings
from raylauncher.store import IDEMPOTENCY_TABLE


def ids_and_counts(ddb: Any, table: str) -> list[tuple[str, str | None]]:
    items = ddb.scan(TableName=table, ConsistentRead=True)["Items"]
    return sorted((i["id"]["S"], i.get("n", {}).get("N")) for i in items)


def test_a_cancelled_transaction_leaves_no_write_behind(settings: Settings) -> None:
    # Given a table with a counter and a taken id
    ddb = aws.client("dynamodb", settings)
    table = settings.idempotency_table
    ddb.create_table(**IDEMPOTENCY_TABLE.create_table_kwargs(table))
    ddb.put_item(TableName=table, Item={"id": {"S": "counter"}, "n": {"N": "1"}})
    ddb.put_item(TableName=table, Item={"id": {"S": "taken"}})
    before = ids_and_counts(ddb, table)

    # When a transaction updates, puts, deletes, then fails its last condition
    with pytest.raises(ClientError) as refused:
        ddb.transact_write_items(
            TransactItems=[
                {"Update": {"TableName": table, "Key": {"id": {"S": "counter"}}, "UpdateExpression": "SET n = n + :one",
                            "ExpressionAttributeValues": {":one": {"N": "1"}}}},
                {"Put": {"TableName": table, "Item": {"id": {"S": "new"}}, "ConditionExpression": "attribute_not_exists(id)"}},
                {"Delete": {"TableName": table, "Key": {"id": {"S": "taken"}}}},
                {"ConditionCheck": {"TableName": table, "Key": {"id": {"S": "absent"}},
                                    "ConditionExpression": "attribute_exists(id)"}},
            ]
        )  # fmt: skip

    # Then it is refused for that item only, and the table is as before
    assert refused.value.response["Error"]["Code"] == "TransactionCanceledException"
    reasons = [r["Code"] for r in refused.value.response["CancellationReasons"]]
    assert reasons == ["None", "None", "None", "ConditionalCheckFailed"]
    assert ids_and_counts(ddb, table) == before

    # And a transaction whose conditions hold applies every write
    ddb.transact_write_items(
        TransactItems=[
            {"Update": {"TableName": table, "Key": {"id": {"S": "counter"}}, "UpdateExpression": "SET n = n + :one",
                        "ExpressionAttributeValues": {":one": {"N": "1"}}}},
            {"Put": {"TableName": table, "Item": {"id": {"S": "new"}}, "ConditionExpression": "attribute_not_exists(id)"}},
        ]
    )  # fmt: skip
    assert ids_and_counts(ddb, table) == [("counter", "2"), ("new", None), ("taken", None)]
