"""Unit tests of the sales-summary job's pure pandas transforms."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "jobs" / "sales_summary"))

import transforms  # noqa: E402

AGGREGATE_COLUMNS = ["region", "orders", "quantity_total", "revenue_total", "revenue_mean"]


def orders(*rows: tuple[str, str, str]) -> pd.DataFrame:
    """Build an input batch (all strings) from (region, quantity, unit_price) triples."""
    return pd.DataFrame(
        {
            "order_id": [f"o{i}" for i in range(len(rows))],
            "region": [row[0] for row in rows],
            "product": ["widget"] * len(rows),
            "quantity": [row[1] for row in rows],
            "unit_price": [row[2] for row in rows],
            "order_date": ["2024-01-01"] * len(rows),
        },
        dtype="str",
    )


def run_pipeline(batch: pd.DataFrame) -> pd.DataFrame:
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
    assert cleaned["is_valid"].tolist() == [True, True, True, True]
    assert cleaned["region"].tolist() == ["North", "South", "East", "West"]
    assert cleaned["quantity"].tolist() == [3, 7, 1, 2]
    assert cleaned["quantity"].dtype == "int64"
    assert cleaned["unit_price"].tolist() == [2.5, 10.0, 0.0, 0.5]
    assert cleaned["unit_price"].dtype == "float64"
    # And the other columns pass through untouched
    assert cleaned["order_id"].tolist() == ["o0", "o1", "o2", "o3"]
    assert len(cleaned) == len(batch)


@pytest.mark.parametrize(
    ("region", "quantity", "unit_price"),
    [
        pytest.param("", "1", "1.0", id="empty-region"),
        pytest.param("   ", "1", "1.0", id="blank-region"),
        pytest.param("North", "abc", "1.0", id="non-numeric-quantity"),
        pytest.param("North", "", "1.0", id="empty-quantity"),
        pytest.param("North", "2.5", "1.0", id="fractional-quantity"),
        pytest.param("North", "0", "1.0", id="zero-quantity"),
        pytest.param("North", "-3", "1.0", id="negative-quantity"),
        pytest.param("North", "1000000000000000000", "1.0", id="quantity-too-large"),
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
    assert cleaned["is_valid"].tolist() == [True, False, True]
    bad = cleaned.iloc[1]
    assert (bad["region"], bad["quantity"], bad["unit_price"]) == ("", 0, 0.0)
    assert cleaned["region"].tolist() == ["East", "", "West"]
    assert cleaned["quantity"].tolist() == [1, 0, 2]


def test_clean_treats_missing_values_as_invalid() -> None:
    # Given a batch whose fields are missing (None) rather than empty strings
    batch = orders(("North", "1", "1.0"), ("South", "1", "1.0"), ("East", "1", "1.0"))
    batch["region"] = pd.Series(["North", None, "East"], dtype="object")
    batch["unit_price"] = pd.Series(["1.0", "1.0", None], dtype="object")

    # When it is cleaned
    cleaned = transforms.clean(batch)

    # Then the rows with missing values are invalid instead of failing the batch
    assert cleaned["is_valid"].tolist() == [True, False, False]


def test_add_revenue_multiplies_quantity_by_price_and_zeroes_invalid_rows() -> None:
    # Given a cleaned batch with two valid rows and one invalid row
    cleaned = transforms.clean(orders(("North", "3", "2.5"), ("South", "4", "0.25"), ("", "5", "9")))

    # When revenue is added
    with_revenue = transforms.add_revenue(cleaned)

    # Then revenue is quantity * unit_price, and 0 for the invalid row
    assert with_revenue["revenue"].tolist() == [7.5, 1.0, 0.0]
    assert with_revenue["revenue"].dtype == "float64"


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
    assert list(partial.columns) == ["region", "is_valid", "rows", "quantity", "revenue"]
    by_key = {
        (row.is_valid, row.region): (row.rows, row.quantity, row.revenue)
        for row in partial.itertuples()
    }
    assert by_key == {
        (True, "North"): (2, 3, 20.0),
        (True, "South"): (1, 3, 4.5),
        (False, ""): (3, 0, 0.0),
    }
    assert partial["rows"].dtype == "int64"
    assert partial["quantity"].dtype == "int64"
    assert partial["revenue"].dtype == "float64"


def test_partial_aggregate_of_an_empty_batch_is_empty_with_typed_columns() -> None:
    # Given an empty batch
    batch = orders()

    # When it goes through the map-side transforms
    partial = run_pipeline(batch)

    # Then the partial is empty but keeps its columns and dtypes
    assert partial.empty
    assert list(partial.columns) == ["region", "is_valid", "rows", "quantity", "revenue"]
    assert partial["rows"].dtype == "int64"


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
    aggregates, rows_in, rows_rejected = transforms.final_aggregate(partial)

    # Then there is one row per region, sorted, with totals and means
    assert (rows_in, rows_rejected) == (5, 2)
    assert list(aggregates.columns) == AGGREGATE_COLUMNS
    assert aggregates.to_dict("records") == [
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
    assert aggregates.dtypes.astype(str).tolist() == ["str", "int64", "int64", "float64", "float64"]


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
    chunks = [batch.iloc[0:3], batch.iloc[3:7], batch.iloc[7:]]

    # When aggregating the whole batch, and separately the concatenated per-chunk partials
    whole = transforms.final_aggregate(run_pipeline(batch))
    combined = transforms.final_aggregate(pd.concat([run_pipeline(chunk) for chunk in chunks]))

    # Then the results are the same (floats up to summation order)
    whole_aggregates, whole_in, whole_rejected = whole
    split_aggregates, split_in, split_rejected = combined
    assert (split_in, split_rejected) == (whole_in, whole_rejected) == (10, 3)
    assert split_aggregates["region"].tolist() == ["Asia, Pacific", "North", "South", "Île-de-France"]
    pd.testing.assert_frame_equal(split_aggregates, whole_aggregates, rtol=1e-12)


def test_final_aggregate_of_no_rows_is_empty() -> None:
    # Given the frame Ray returns when no input block had rows (no columns at all)
    partials = pd.DataFrame()

    # When it is reduced
    aggregates, rows_in, rows_rejected = transforms.final_aggregate(partials)

    # Then nothing was read or rejected and there are no aggregates, but the columns exist
    assert (rows_in, rows_rejected) == (0, 0)
    assert aggregates.empty
    assert list(aggregates.columns) == AGGREGATE_COLUMNS
