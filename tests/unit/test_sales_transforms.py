"""Unit tests of the sales-summary job's pure Arrow transforms (pyarrow tables in and out)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pyarrow as pa
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs" / "sales_summary"))

import transforms  # noqa: E402

AGGREGATE_COLUMNS = ["region", "orders", "quantity_total", "revenue_total", "revenue_mean"]
PARTIAL_COLUMNS = ["region", "is_valid", "rows", "quantity", "revenue"]


def orders(*rows: tuple[str | None, str | None, str | None]) -> pa.Table:
    """Build an input batch (all strings, as the job reads its CSVs) from (region, quantity,
    unit_price) triples."""
    return pa.table(
        {
            "order_id": pa.array([f"o{i}" for i in range(len(rows))], pa.string()),
            "region": pa.array([row[0] for row in rows], pa.string()),
            "product": pa.array(["widget"] * len(rows), pa.string()),
            "quantity": pa.array([row[1] for row in rows], pa.string()),
            "unit_price": pa.array([row[2] for row in rows], pa.string()),
            "order_date": pa.array(["2024-01-01"] * len(rows), pa.string()),
        }
    )


def column(table: pa.Table, name: str) -> list:
    return table[name].to_pylist()


def run_pipeline(batch: pa.Table) -> pa.Table:
    """Apply the map-side transforms to one batch."""
    return transforms.partial_aggregate(transforms.add_revenue(transforms.clean(batch)))


def test_clean_keeps_and_normalizes_valid_rows() -> None:
    # Given valid rows, some with padding, a leading "+", leading zeros or exponent prices
    batch = orders(
        ("North", "3", "2.50"),
        ("  South ", " +007 ", " 1e1 "),
        ("East", "1", "0"),
        ("West", "2", ".5"),
    )

    # When they are cleaned
    cleaned = transforms.clean(batch)

    # Then all are valid, with stripped regions and typed quantity and price
    assert column(cleaned, "is_valid") == [True, True, True, True]
    assert column(cleaned, "region") == ["North", "South", "East", "West"]
    assert column(cleaned, "quantity") == [3, 7, 1, 2]
    assert cleaned.schema.field("quantity").type == pa.int64()
    assert column(cleaned, "unit_price") == [2.5, 10.0, 0.0, 0.5]
    assert cleaned.schema.field("unit_price").type == pa.float64()
    # And the other columns pass through untouched
    assert column(cleaned, "order_id") == ["o0", "o1", "o2", "o3"]
    assert cleaned.num_rows == batch.num_rows


@pytest.mark.parametrize(
    ("region", "quantity", "unit_price"),
    [
        pytest.param("", "1", "1.0", id="empty-region"),
        pytest.param("   ", "1", "1.0", id="blank-region"),
        pytest.param("\u00a0\u3000", "1", "1.0", id="unicode-blank-region"),
        pytest.param("North", "abc", "1.0", id="non-numeric-quantity"),
        pytest.param("North", "", "1.0", id="empty-quantity"),
        pytest.param("North", "2.5", "1.0", id="fractional-quantity"),
        pytest.param("North", "0", "1.0", id="zero-quantity"),
        pytest.param("North", "-3", "1.0", id="negative-quantity"),
        pytest.param("North", "1000000000000000000", "1.0", id="quantity-too-large"),
        pytest.param("North", "\u0661", "1.0", id="non-ascii-digit-quantity"),
        pytest.param("North", "1", "-4.50", id="negative-price"),
        pytest.param("North", "1", "nan", id="nan-price"),
        pytest.param("North", "1", "inf", id="infinite-price"),
        pytest.param("North", "1", "1e400", id="overflowing-price"),
        pytest.param("North", "1", "N/A", id="garbage-price"),
        pytest.param("North", "1", "12,50", id="comma-price"),
        pytest.param("North", "1", "", id="empty-price"),
    ],
)
def test_clean_flags_each_kind_of_bad_row(region: str, quantity: str, unit_price: str) -> None:
    # Given one bad row between two good ones
    batch = orders(("East", "1", "1.0"), (region, quantity, unit_price), ("West", "2", "3.0"))

    # When the batch is cleaned
    cleaned = transforms.clean(batch)

    # Then only the bad row is flagged, it is kept and blanked, the good ones are untouched
    assert column(cleaned, "is_valid") == [True, False, True]
    bad = cleaned.slice(1, 1).to_pylist()[0]
    assert (bad["region"], bad["quantity"], bad["unit_price"]) == ("", 0, 0.0)
    assert column(cleaned, "region") == ["East", "", "West"]
    assert column(cleaned, "quantity") == [1, 0, 2]


@pytest.mark.parametrize(
    ("region", "quantity", "unit_price", "expected"),
    [
        pytest.param("\tNorth\u00a0", "1", "1", ("North", 1, 1.0), id="unicode-padding-stripped"),
        pytest.param("N", "+000000000000000000000042", "1", ("N", 42, 1.0), id="many-leading-zeros"),
        pytest.param("N", "999999999999999999", "1", ("N", 999_999_999_999_999_999, 1.0), id="largest-quantity"),
        pytest.param("N", "1", "1.", ("N", 1, 1.0), id="trailing-dot-price"),
        pytest.param("N", "1", "+1.5E+2", ("N", 1, 150.0), id="signed-exponent-price"),
        pytest.param("N", "1", "1e-400", ("N", 1, 0.0), id="underflowing-price-is-zero"),
    ],
)
def test_clean_accepts_edge_cases_of_the_rules(
    region: str, quantity: str, unit_price: str, expected: tuple[str, int, float]
) -> None:
    # Given a row at an edge of the validation rules
    batch = orders((region, quantity, unit_price))

    # When it is cleaned
    cleaned = transforms.clean(batch).to_pylist()[0]

    # Then it is valid with the values Python's own parsing gives
    assert cleaned["is_valid"] is True
    assert (cleaned["region"], cleaned["quantity"], cleaned["unit_price"]) == expected


def test_clean_treats_missing_values_as_invalid() -> None:
    # Given a batch whose fields are missing (null) rather than empty strings
    batch = orders(("North", "1", "1.0"), (None, "1", "1.0"), ("East", "1", None))

    # When it is cleaned
    cleaned = transforms.clean(batch)

    # Then the rows with missing values are invalid instead of failing the batch
    assert column(cleaned, "is_valid") == [True, False, False]


def test_clean_works_on_batches_of_several_chunks() -> None:
    # Given a batch made of two chunks (what a CSV reader read in two pieces)
    batch = pa.concat_tables([orders(("North", "1", "2")), orders((" ", "1", "2"), ("South", "+3", "0.5"))])

    # When it is cleaned
    cleaned = transforms.clean(batch)

    # Then every row is judged on its own
    assert column(cleaned, "is_valid") == [True, False, True]
    assert column(cleaned, "quantity") == [1, 0, 3]


def test_add_revenue_multiplies_quantity_by_price_and_zeroes_invalid_rows() -> None:
    # Given a cleaned batch with two valid rows and one invalid row
    cleaned = transforms.clean(orders(("North", "3", "2.5"), ("South", "4", "0.25"), ("", "5", "9")))

    # When revenue is added
    with_revenue = transforms.add_revenue(cleaned)

    # Then revenue is quantity * unit_price, and 0 for the invalid row
    assert column(with_revenue, "revenue") == [7.5, 1.0, 0.0]
    assert with_revenue.schema.field("revenue").type == pa.float64()


def test_partial_aggregate_combines_rows_per_validity_and_region() -> None:
    # Given a batch with two regions and bad rows of different kinds
    batch = orders(
        ("North", "1", "10"),
        ("North", "2", "5"),
        ("South", "3", "1.5"),
        ("", "1", "1"),
        ("South", "x", "1"),
        ("North", "1", "-1"),
    )

    # When it is combined map-side
    partial = run_pipeline(batch)

    # Then there is one row per (is_valid, region), invalid rows all under region ""
    assert partial.column_names == PARTIAL_COLUMNS
    by_key = {
        (row["is_valid"], row["region"]): (row["rows"], row["quantity"], row["revenue"])
        for row in partial.to_pylist()
    }
    assert by_key == {
        (True, "North"): (2, 3, 20.0),
        (True, "South"): (1, 3, 4.5),
        (False, ""): (3, 0, 0.0),
    }
    assert partial.schema == transforms.PARTIAL_SCHEMA


def test_partial_aggregate_of_an_empty_batch_is_empty_with_typed_columns() -> None:
    # Given an empty batch
    batch = orders()

    # When it goes through the map-side transforms
    partial = run_pipeline(batch)

    # Then the partial is empty but keeps its columns and types
    assert partial.num_rows == 0
    assert partial.column_names == PARTIAL_COLUMNS
    assert partial.schema == transforms.PARTIAL_SCHEMA


def test_final_aggregate_computes_totals_means_and_counts() -> None:
    # Given the partial aggregate of a hand-computed batch
    partial = run_pipeline(
        orders(
            ("South", "3", "1.5"),
            ("North", "1", "10"),
            ("North", "2", "5"),
            ("North", "0", "5"),
            ("", "1", "1"),
        )
    )

    # When the partials are reduced
    aggregates, rows_in, rows_rejected = transforms.final_aggregate([partial])

    # Then there is one row per region, sorted, with totals and means
    assert (rows_in, rows_rejected) == (5, 2)
    assert aggregates.column_names == AGGREGATE_COLUMNS
    assert aggregates.to_pylist() == [
        {
            "region": "North",
            "orders": 2,
            "quantity_total": 3,
            "revenue_total": 20.0,
            "revenue_mean": 10.0,
        },
        {
            "region": "South",
            "orders": 1,
            "quantity_total": 3,
            "revenue_total": 4.5,
            "revenue_mean": 4.5,
        },
    ]
    assert [str(field.type) for field in aggregates.schema] == ["string", "int64", "int64", "double", "double"]


def test_final_aggregate_over_several_partials_equals_aggregating_in_one_go() -> None:
    # Given a batch with valid and invalid rows, and the same batch split into three chunks
    batch = orders(
        ("North", "1", "10.10"),
        ("Île-de-France", "2", "3.30"),
        ("South", "3", "1.5"),
        ("North", "abc", "1"),
        ("Asia, Pacific", "4", "0.07"),
        ("South", "5", "2.25"),
        ("", "1", "1"),
        ("North", "6", "nan"),
        ("Île-de-France", "7", "0.01"),
        ("North", "8", "9.99"),
    )
    chunks = [batch.slice(0, 3), batch.slice(3, 4), batch.slice(7)]

    # When aggregating the whole batch, and separately the per-chunk partials
    whole_aggregates, whole_in, whole_rejected = transforms.final_aggregate([run_pipeline(batch)])
    split_aggregates, split_in, split_rejected = transforms.final_aggregate(run_pipeline(c) for c in chunks)

    # Then the results are the same (floats up to summation order), sorted by code point
    assert (split_in, split_rejected) == (whole_in, whole_rejected) == (10, 3)
    assert column(split_aggregates, "region") == ["Asia, Pacific", "North", "South", "Île-de-France"]
    assert split_aggregates.schema == whole_aggregates.schema
    for split_row, whole_row in zip(split_aggregates.to_pylist(), whole_aggregates.to_pylist(), strict=True):
        assert split_row.keys() == whole_row.keys()
        for name, value in split_row.items():
            if isinstance(value, float):
                assert math.isclose(value, whole_row[name], rel_tol=1e-12), name
            else:
                assert value == whole_row[name], name


@pytest.mark.parametrize(
    "partials",
    [
        pytest.param([], id="no-partials"),
        pytest.param([pa.table({})], id="a-column-less-block"),
        pytest.param([transforms.PARTIAL_SCHEMA.empty_table()], id="an-empty-partial"),
    ],
)
def test_final_aggregate_of_no_rows_is_empty(partials: list[pa.Table]) -> None:
    # Given no partial with rows (what Ray hands over when no input block had rows)

    # When they are reduced
    aggregates, rows_in, rows_rejected = transforms.final_aggregate(partials)

    # Then nothing was read or rejected and there are no aggregates, but the columns exist
    assert (rows_in, rows_rejected) == (0, 0)
    assert aggregates.num_rows == 0
    assert aggregates.schema == transforms.AGGREGATE_SCHEMA
