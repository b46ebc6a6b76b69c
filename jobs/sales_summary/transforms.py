"""Pure pandas transforms of the sales-summary job (no Ray here).

Validation rules (a row is valid iff all hold; invalid rows are kept and flagged):

* ``region`` stripped of surrounding whitespace is non-empty;
* ``quantity`` stripped is an optional ``+`` and ASCII digits with a value in
  ``1 .. 10**18 - 1`` (so it always fits int64);
* ``unit_price`` stripped is a plain decimal number (``12``, ``12.5``, ``.5``,
  ``1e3``; no ``nan``/``inf``/thousands separators) that is finite and ``>= 0``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

INPUT_COLUMNS = ("order_id", "region", "product", "quantity", "unit_price", "order_date")
PARTIAL_COLUMNS = ("region", "is_valid", "rows", "quantity", "revenue")
AGGREGATE_COLUMNS = ("region", "orders", "quantity_total", "revenue_total", "revenue_mean")

_QUANTITY_PATTERN = r"\+?0*[1-9][0-9]{0,17}"
_PRICE_PATTERN = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_PARTIAL_DTYPES = {
    "region": "str",
    "is_valid": "bool",
    "rows": "int64",
    "quantity": "int64",
    "revenue": "float64",
}
_AGGREGATE_DTYPES = {
    "region": "str",
    "orders": "int64",
    "quantity_total": "int64",
    "revenue_total": "float64",
    "revenue_mean": "float64",
}


def _stripped_text(column: pd.Series) -> pd.Series:
    """Return the column as strings stripped of whitespace, missing values as ""."""
    return column.fillna("").astype(str).str.strip()


def clean(batch: pd.DataFrame) -> pd.DataFrame:
    """Flag each row with ``is_valid`` and normalize region, quantity and unit_price.

    Valid rows get the stripped region, an int64 quantity and a float64 unit_price;
    invalid rows get region "", quantity 0 and unit_price 0.0.
    """
    region = _stripped_text(batch["region"])
    quantity_text = _stripped_text(batch["quantity"])
    price_text = _stripped_text(batch["unit_price"])

    quantity_ok = quantity_text.str.fullmatch(_QUANTITY_PATTERN).astype(bool)
    price_ok = price_text.str.fullmatch(_PRICE_PATTERN).astype(bool)
    quantity = quantity_text.where(quantity_ok, "0").astype("int64")
    price = price_text.where(price_ok, "nan").astype("float64")
    valid = (region != "") & quantity_ok & np.isfinite(price) & (price >= 0)

    out = batch.copy()
    out["region"] = region.where(valid, "").astype("str")
    out["quantity"] = quantity.where(valid, 0).astype("int64")
    out["unit_price"] = price.where(valid, 0.0).astype("float64")
    out["is_valid"] = valid.astype(bool)
    return out


def add_revenue(batch: pd.DataFrame) -> pd.DataFrame:
    """Add ``revenue = quantity * unit_price`` (0.0 for invalid rows) to a cleaned batch."""
    out = batch.copy()
    revenue = batch["quantity"].astype("float64") * batch["unit_price"]
    out["revenue"] = revenue.where(batch["is_valid"], 0.0).astype("float64")
    return out


def partial_aggregate(batch: pd.DataFrame) -> pd.DataFrame:
    """Map-side combine: one row per (is_valid, region) with row count and sums.

    Invalid rows all fall under region "" (``clean`` blanks their region).
    """
    partial = (
        batch.groupby(["is_valid", "region"], sort=False)
        .agg(
            rows=("quantity", "size"),
            quantity=("quantity", "sum"),
            revenue=("revenue", "sum"),
        )
        .reset_index()
    )
    return partial[list(PARTIAL_COLUMNS)].astype(_PARTIAL_DTYPES)


def final_aggregate(partials: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """Reduce partial aggregates to ``(aggregates, rows_in, rows_rejected)``.

    ``aggregates`` has one row per region of valid rows, sorted by region. A frame without
    columns (what Ray returns when no input had rows) counts as no rows.
    """
    partials = partials.reindex(columns=list(PARTIAL_COLUMNS)).astype(_PARTIAL_DTYPES)
    valid = partials[partials["is_valid"]]
    rows_in = int(partials["rows"].sum())
    rows_rejected = rows_in - int(valid["rows"].sum())

    aggregates = (
        valid.groupby("region", sort=True)
        .agg(
            orders=("rows", "sum"),
            quantity_total=("quantity", "sum"),
            revenue_total=("revenue", "sum"),
        )
        .reset_index()
    )
    aggregates["revenue_mean"] = aggregates["revenue_total"] / aggregates["orders"]
    aggregates = aggregates[list(AGGREGATE_COLUMNS)].astype(_AGGREGATE_DTYPES)
    return aggregates.reset_index(drop=True), rows_in, rows_rejected
