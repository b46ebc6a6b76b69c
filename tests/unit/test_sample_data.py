"""Unit tests of the sample sales data generator and the independent reference result."""

from __future__ import annotations

import csv
import io

import pandas as pd
import pytest

from raylauncher.local.sample_data import (
    BAD_VALUES,
    HEADER,
    compare_aggregates,
    expected_aggregates,
    generate_sales_csv,
)

TINY_CSV = (
    "order_id,region,product,quantity,unit_price,order_date\n"
    "1,North,widget,2,10.50,2024-01-01\n"
    "2,  North ,gadget,1,4.00,2024-01-02\n"
    '3,"Asia, Pacific",widget,3,1.25,2024-01-03\n'
    "4,,widget,1,1.00,2024-01-04\n"
    "5,North,widget,abc,1.00,2024-01-05\n"
    "6,North,widget,0,1.00,2024-01-06\n"
    "7,North,widget,-2,1.00,2024-01-07\n"
    "8,North,widget,1,-4.50,2024-01-08\n"
    "9,North,widget,1,nan,2024-01-09\n"
    '10,North,widget,1,"12,50",2024-01-10\n'
    "11,São Paulo,widget,+4,.5,2024-01-11\n"
).encode("utf-8")


def parse(blob: bytes) -> list[list[str]]:
    """Parse a CSV blob into rows of fields (header included)."""
    return list(csv.reader(io.StringIO(blob.decode("utf-8"))))


def aggregates(*records: tuple[str, int, int, float, float]) -> pd.DataFrame:
    """Build an aggregates frame with the job's columns and dtypes."""
    frame = pd.DataFrame(
        records,
        columns=["region", "orders", "quantity_total", "revenue_total", "revenue_mean"],
    )
    return frame.astype({"region": "str", "orders": "int64", "quantity_total": "int64"})


def test_generator_is_deterministic_per_seed() -> None:
    # Given a row count and a seed
    # When generating twice with the same seed and once with another
    first = generate_sales_csv(500, seed=7)
    second = generate_sales_csv(500, seed=7)
    other = generate_sales_csv(500, seed=8)

    # Then the same seed gives the same bytes and another seed different data
    assert first == second
    assert first != other


def test_generator_writes_header_and_six_fields_on_every_line() -> None:
    # Given a generated file
    rows = parse(generate_sales_csv(2_000, seed=1))

    # Then it has the header, the requested number of rows and six fields per line
    assert tuple(rows[0]) == HEADER
    assert len(rows) == 2_001
    assert {len(row) for row in rows} == {6}
    # And quoted fields (a region with a comma) survive the round trip
    assert any(row[1] == "Asia, Pacific" for row in rows[1:])


def test_generator_mixes_in_about_two_percent_bad_rows_of_varied_kinds() -> None:
    # Given a generated file of 20,000 rows
    blob = generate_sales_csv(20_000, seed=3)
    rows = parse(blob)[1:]

    # When the independent reference classifies them
    _, rows_in, rows_rejected = expected_aggregates([blob])

    # Then about 2% are rejected
    assert rows_in == 20_000
    assert 0.01 < rows_rejected / rows_in < 0.03
    # And every kind of bad value appears
    column_index = {name: index for index, name in enumerate(HEADER)}
    seen = {(column, row[column_index[column]]) for row in rows for column in column_index}
    assert set(BAD_VALUES) <= seen


def test_expected_aggregates_of_a_hand_written_csv() -> None:
    # Given a tiny CSV with three valid regions (one padded) and seven bad rows

    # When the reference result is computed
    result, rows_in, rows_rejected = expected_aggregates([TINY_CSV])

    # Then it matches the hand-computed numbers, sorted by region
    assert (rows_in, rows_rejected) == (11, 7)
    assert result.to_dict("records") == [
        {
            "region": "Asia, Pacific",
            "orders": 1,
            "quantity_total": 3,
            "revenue_total": 3.75,
            "revenue_mean": 3.75,
        },
        {
            "region": "North",
            "orders": 2,
            "quantity_total": 3,
            "revenue_total": 25.0,
            "revenue_mean": 12.5,
        },
        {
            "region": "São Paulo",
            "orders": 1,
            "quantity_total": 4,
            "revenue_total": 2.0,
            "revenue_mean": 2.0,
        },
    ]
    assert result.dtypes.astype(str).tolist() == ["str", "int64", "int64", "float64", "float64"]


def test_expected_aggregates_adds_up_several_files() -> None:
    # Given the tiny CSV twice and a header-only file
    header_only = ",".join(HEADER).encode("utf-8") + b"\n"

    # When the reference result is computed over all three
    result, rows_in, rows_rejected = expected_aggregates([TINY_CSV, header_only, TINY_CSV])

    # Then counts and totals double while means stay the same
    assert (rows_in, rows_rejected) == (22, 14)
    assert result["orders"].tolist() == [2, 4, 2]
    assert result["revenue_total"].tolist() == [7.5, 50.0, 4.0]
    assert result["revenue_mean"].tolist() == [3.75, 12.5, 2.0]


def test_compare_aggregates_accepts_equal_frames_within_tolerance() -> None:
    # Given two frames whose floats differ far below the 1e-9 relative tolerance
    expected = aggregates(("North", 2, 3, 25.0, 12.5), ("South", 1, 1, 0.1, 0.1))
    actual = aggregates(("North", 2, 3, 25.0 * (1 + 1e-12), 12.5), ("South", 1, 1, 0.1, 0.1))

    # When compared
    # Then there is no difference
    assert compare_aggregates(actual, expected) == []


@pytest.mark.parametrize(
    ("actual", "message"),
    [
        pytest.param(
            aggregates(("North", 2, 3, 25.0, 12.5), ("South", 1, 1, 0.1, 0.1 * (1 + 1e-6))),
            f"region 'South', revenue_mean: actual {0.1 * (1 + 1e-6)}, expected 0.1",
            id="float-beyond-tolerance",
        ),
        pytest.param(
            aggregates(("North", 3, 3, 25.0, 12.5), ("South", 1, 1, 0.1, 0.1)),
            "region 'North', orders: actual 3, expected 2",
            id="integer-differs",
        ),
        pytest.param(
            aggregates(("North", 2, 3, 25.0, 12.5)),
            "missing region 'South'",
            id="missing-region",
        ),
        pytest.param(
            aggregates(("North", 2, 3, 25.0, 12.5), ("South", 1, 1, 0.1, 0.1), ("West", 1, 1, 1, 1)),
            "unexpected region 'West'",
            id="unexpected-region",
        ),
        pytest.param(
            aggregates(("South", 1, 1, 0.1, 0.1), ("North", 2, 3, 25.0, 12.5)),
            "actual rows are not sorted by region",
            id="unsorted",
        ),
        pytest.param(
            aggregates(("North", 2, 3, 25.0, 12.5), ("South", 1, 1, 0.1, 0.1)).astype(
                {"orders": "float64"}
            ),
            "column 'orders' is float, expected integer",
            id="wrong-dtype",
        ),
    ],
)
def test_compare_aggregates_reports_each_difference(actual: pd.DataFrame, message: str) -> None:
    # Given the expected aggregates and an actual frame with one kind of difference
    expected = aggregates(("North", 2, 3, 25.0, 12.5), ("South", 1, 1, 0.1, 0.1))

    # When compared
    differences = compare_aggregates(actual, expected)

    # Then the difference is reported in readable words
    assert message in differences


def test_compare_aggregates_reports_different_columns() -> None:
    # Given an actual frame without the revenue_mean column
    expected = aggregates(("North", 2, 3, 25.0, 12.5))
    actual = expected.drop(columns="revenue_mean")

    # When compared
    differences = compare_aggregates(actual, expected)

    # Then the column mismatch is the one difference reported
    assert len(differences) == 1
    assert differences[0].startswith("columns differ")
