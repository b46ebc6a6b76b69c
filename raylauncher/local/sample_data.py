"""Sample sales data for the sales-summary job and an independent reference result.

``expected_aggregates`` re-implements the job's rules row by row in plain Python and
pandas, on purpose without importing the job's code, so tests compare two independent
computations:

* region stripped of whitespace is non-empty;
* quantity stripped is an optional ``+`` and ASCII digits, ``0 < quantity < 10**18``;
* unit_price stripped is a plain decimal number (no nan/inf), finite and ``>= 0``.
"""

from __future__ import annotations

import csv
import io
import math
import random
import re
from datetime import date, timedelta

import pandas as pd

HEADER = ("order_id", "region", "product", "quantity", "unit_price", "order_date")
AGGREGATE_COLUMNS = ("region", "orders", "quantity_total", "revenue_total", "revenue_mean")
REGIONS = (
    "North",
    "South",
    "East",
    "West",
    "Central",
    "Asia, Pacific",
    "Île-de-France",
    "São Paulo",
)
PRODUCTS = ("widget", "gadget", "gizmo", "sprocket", "flange")
BAD_ROW_RATE = 0.02
PADDED_REGION_RATE = 0.03
# (column, value) pairs that make a row invalid; one is picked for each bad row.
BAD_VALUES = (
    ("region", ""),
    ("region", "   "),
    ("quantity", "abc"),
    ("quantity", ""),
    ("quantity", "2.5"),
    ("quantity", "0"),
    ("quantity", "-3"),
    ("unit_price", "-4.50"),
    ("unit_price", "nan"),
    ("unit_price", "NaN"),
    ("unit_price", "inf"),
    ("unit_price", "N/A"),
    ("unit_price", "12,50"),
)
_ORDER_DATES = tuple((date(2024, 1, 1) + timedelta(days=day)).isoformat() for day in range(366))
_PRICE_PATTERN = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)
_AGGREGATE_DTYPES = {
    "region": "str",
    "orders": "int64",
    "quantity_total": "int64",
    "revenue_total": "float64",
    "revenue_mean": "float64",
}
_REL_TOL = 1e-9


def generate_sales_csv(rows: int, seed: int) -> bytes:
    """Return a deterministic UTF-8 CSV (header + ``rows`` orders), about 2% of them invalid.

    Every line has six fields; ``csv`` quotes fields that need it (``"Asia, Pacific"``).
    Some valid rows carry a whitespace-padded region that the job must strip.
    """
    rng = random.Random(seed)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    for index in range(rows):
        region = rng.choice(REGIONS)
        if rng.random() < PADDED_REGION_RATE:
            region = f"  {region} "
        record = {
            "order_id": f"{seed}-{index:09d}",
            "region": region,
            "product": rng.choice(PRODUCTS),
            "quantity": str(rng.randint(1, 20)),
            "unit_price": f"{rng.randint(50, 99_999) / 100:.2f}",
            "order_date": rng.choice(_ORDER_DATES),
        }
        if rng.random() < BAD_ROW_RATE:
            column, value = rng.choice(BAD_VALUES)
            record[column] = value
        writer.writerow(record[column] for column in HEADER)
    return buffer.getvalue().encode("utf-8")


def _quantity(text: str) -> int | None:
    """Return the quantity if valid, else None."""
    stripped = text.strip()
    digits = stripped[1:] if stripped.startswith("+") else stripped
    if not (digits.isascii() and digits.isdigit()):
        return None
    value = int(digits)
    return value if 0 < value < 10**18 else None


def _unit_price(text: str) -> float | None:
    """Return the unit price if valid, else None."""
    stripped = text.strip()
    if _PRICE_PATTERN.fullmatch(stripped) is None:
        return None
    value = float(stripped)
    return value if math.isfinite(value) and value >= 0 else None


def expected_aggregates(csv_blobs: list[bytes]) -> tuple[pd.DataFrame, int, int]:
    """Compute ``(aggregates, rows_in, rows_rejected)`` for CSV files, independently of the job.

    ``aggregates`` has the job's columns, one row per region of valid rows, sorted by region.
    """
    frames = [
        pd.read_csv(io.BytesIO(blob), dtype=str, keep_default_na=False, encoding="utf-8")
        for blob in csv_blobs
    ]
    valid_rows: list[tuple[str, int, float]] = []
    rows_in = 0
    for frame in frames:
        rows_in += len(frame)
        for region_text, quantity_text, price_text in zip(
            frame["region"], frame["quantity"], frame["unit_price"]
        ):
            region = region_text.strip()
            quantity = _quantity(quantity_text)
            price = _unit_price(price_text)
            if region and quantity is not None and price is not None:
                valid_rows.append((region, quantity, quantity * price))

    valid = pd.DataFrame(valid_rows, columns=["region", "quantity", "revenue"])
    aggregates = (
        valid.groupby("region")
        .agg(
            orders=("quantity", "count"),
            quantity_total=("quantity", "sum"),
            revenue_total=("revenue", "sum"),
            revenue_mean=("revenue", "mean"),
        )
        .reset_index()
        .astype(_AGGREGATE_DTYPES)
        .sort_values("region", ignore_index=True)
    )
    return aggregates[list(AGGREGATE_COLUMNS)], rows_in, rows_in - len(valid_rows)


def _kind(column: pd.Series) -> str:
    """Name the kind of a column's dtype: string, integer, float or the dtype itself."""
    if pd.api.types.is_string_dtype(column):
        return "string"
    if pd.api.types.is_integer_dtype(column):
        return "integer"
    if pd.api.types.is_float_dtype(column):
        return "float"
    return str(column.dtype)


def compare_aggregates(actual: pd.DataFrame, expected: pd.DataFrame) -> list[str]:
    """List human-readable differences between two aggregate frames (empty when equal).

    Integers must match exactly; floats within a relative tolerance of 1e-9.
    """
    if list(actual.columns) != list(expected.columns):
        return [f"columns differ: actual {list(actual.columns)}, expected {list(expected.columns)}"]

    differences = [
        f"column {name!r} is {_kind(actual[name])}, expected {_kind(expected[name])}"
        for name in expected.columns
        if _kind(actual[name]) != _kind(expected[name])
    ]
    actual_regions = list(actual["region"])
    expected_regions = list(expected["region"])
    if actual_regions != sorted(actual_regions):
        differences.append("actual rows are not sorted by region")
    for region in sorted(set(actual_regions)):
        if actual_regions.count(region) > 1:
            differences.append(f"region {region!r} appears {actual_regions.count(region)} times")
    differences += [f"missing region {r!r}" for r in expected_regions if r not in actual_regions]
    differences += [f"unexpected region {r!r}" for r in actual_regions if r not in expected_regions]

    actual_by_region = actual.drop_duplicates("region").set_index("region")
    expected_by_region = expected.set_index("region")
    for region in expected_regions:
        if region not in actual_by_region.index:
            continue
        for name in expected.columns.drop("region"):
            got = actual_by_region.at[region, name]
            want = expected_by_region.at[region, name]
            if pd.api.types.is_float_dtype(expected[name]):
                equal = math.isclose(float(got), float(want), rel_tol=_REL_TOL)
            else:
                equal = got == want
            if not equal:
                differences.append(f"region {region!r}, {name}: actual {got}, expected {want}")
    return differences
