"""Pure Arrow transforms of the sales-summary job (no Ray here): pyarrow tables in and out.

Every function works on whole columns with ``pyarrow.compute`` (trimming, regex validation,
casts, arithmetic, group-by): no Python loop over rows, so a batch of a million rows costs a
few dozen kernel calls.

Validation rules (a row is valid iff all hold; invalid rows are kept and flagged):

* ``region`` stripped of surrounding whitespace is non-empty;
* ``quantity`` stripped is an optional ``+`` and ASCII digits with a value in
  ``1 .. 10**18 - 1`` (so it always fits int64);
* ``unit_price`` stripped is a plain decimal number (``12``, ``12.5``, ``.5``,
  ``1e3``; no ``nan``/``inf``/thousands separators) that is finite and ``>= 0``.

"Whitespace" is what Python's ``str.strip()`` removes (``utf8_trim_whitespace`` trims the
same Unicode set); a missing value (null) counts as an empty string.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa
import pyarrow.compute as pc

INPUT_COLUMNS = ("order_id", "region", "product", "quantity", "unit_price", "order_date")
# The columns the aggregates depend on: the only ones the job needs to parse.
USED_COLUMNS = ("region", "quantity", "unit_price")
PARTIAL_SCHEMA = pa.schema(
    [("region", pa.string()), ("is_valid", pa.bool_()), ("rows", pa.int64()), ("quantity", pa.int64()), ("revenue", pa.float64())]
)
AGGREGATE_SCHEMA = pa.schema(
    [
        ("region", pa.string()),
        ("orders", pa.int64()),
        ("quantity_total", pa.int64()),
        ("revenue_total", pa.float64()),
        ("revenue_mean", pa.float64()),
    ]
)
PARTIAL_COLUMNS = tuple(PARTIAL_SCHEMA.names)
AGGREGATE_COLUMNS = tuple(AGGREGATE_SCHEMA.names)

# RE2 (Arrow's regex engine) with \A...\z: the whole string must match, like Python's fullmatch.
_QUANTITY_PATTERN = r"\A(?:\+?0*[1-9][0-9]{0,17})\z"
_PRICE_PATTERN = r"\A(?:[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)\z"


def _stripped_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """The column as strings stripped of whitespace, missing values as ""."""
    return pc.utf8_trim_whitespace(pc.fill_null(pc.cast(column, pa.string()), ""))


def _replace(batch: pa.Table, name: str, column: pa.Array | pa.ChunkedArray) -> pa.Table:
    return batch.set_column(batch.schema.get_field_index(name), name, column)


def clean(batch: pa.Table) -> pa.Table:
    """Flag each row with ``is_valid`` and normalize region, quantity and unit_price.

    Valid rows get the stripped region, an int64 quantity and a float64 unit_price;
    invalid rows get region "", quantity 0 and unit_price 0.0. Other columns pass through.
    Raises ``KeyError`` if a used column is missing.
    """
    region = _stripped_text(batch["region"])
    quantity_text = _stripped_text(batch["quantity"])
    price_text = _stripped_text(batch["unit_price"])

    quantity_ok = pc.match_substring_regex(quantity_text, _QUANTITY_PATTERN)
    price_ok = pc.match_substring_regex(price_text, _PRICE_PATTERN)
    # Arrow's integer parser takes no "+"; the pattern allows one, before the digits only.
    quantity = pc.cast(pc.if_else(quantity_ok, pc.utf8_ltrim(quantity_text, characters="+"), "0"), pa.int64())
    price = pc.cast(pc.if_else(price_ok, price_text, "nan"), pa.float64())  # "1e400" -> inf
    valid = pc.and_(
        pc.and_(pc.not_equal(region, ""), quantity_ok),
        pc.and_(pc.is_finite(price), pc.greater_equal(price, 0.0)),
    )

    out = _replace(batch, "region", pc.if_else(valid, region, ""))
    out = _replace(out, "quantity", pc.if_else(valid, quantity, 0))
    out = _replace(out, "unit_price", pc.if_else(valid, price, 0.0))
    return out.append_column("is_valid", valid)


def add_revenue(batch: pa.Table) -> pa.Table:
    """Add ``revenue = quantity * unit_price`` (0.0 for invalid rows) to a cleaned batch."""
    # safe=False: a quantity above 2**53 rounds to the nearest double, as numpy's astype does.
    quantity = pc.cast(batch["quantity"], pa.float64(), safe=False)
    revenue = pc.if_else(batch["is_valid"], pc.multiply(quantity, batch["unit_price"]), 0.0)
    return batch.append_column("revenue", revenue)


def partial_aggregate(batch: pa.Table) -> pa.Table:
    """Map-side combine: one row per (is_valid, region) with row count and sums.

    Invalid rows all fall under region "" (``clean`` blanks their region). An empty batch
    gives an empty table with ``PARTIAL_SCHEMA``.
    """
    grouped = batch.group_by(["is_valid", "region"], use_threads=False).aggregate(
        [([], "count_all"), ("quantity", "sum"), ("revenue", "sum")]
    )
    return pa.table(
        [grouped["region"], grouped["is_valid"], grouped["count_all"], grouped["quantity_sum"], grouped["revenue_sum"]],
        schema=PARTIAL_SCHEMA,
    )


def final_aggregate(partials: Iterable[pa.Table]) -> tuple[pa.Table, int, int]:
    """Reduce the partial aggregates of all batches to ``(aggregates, rows_in, rows_rejected)``.

    ``aggregates`` has one row per region of valid rows, sorted by region (code point order).
    Partials without rows are skipped (Ray may hand over empty or column-less blocks), so no
    partials at all mean no rows.
    """
    tables = [table.select(list(PARTIAL_COLUMNS)).cast(PARTIAL_SCHEMA) for table in partials if table.num_rows]
    combined = pa.concat_tables(tables) if tables else PARTIAL_SCHEMA.empty_table()
    valid = combined.filter(combined["is_valid"])
    rows_in = pc.sum(combined["rows"]).as_py() or 0
    rows_rejected = rows_in - (pc.sum(valid["rows"]).as_py() or 0)

    totals = (
        valid.group_by("region", use_threads=False)
        .aggregate([("rows", "sum"), ("quantity", "sum"), ("revenue", "sum")])
        .sort_by("region")
    )
    revenue_mean = pc.divide(totals["revenue_sum"], pc.cast(totals["rows_sum"], pa.float64()))
    aggregates = pa.table(
        [totals["region"], totals["rows_sum"], totals["quantity_sum"], totals["revenue_sum"], revenue_mean],
        schema=AGGREGATE_SCHEMA,
    )
    return aggregates, rows_in, rows_rejected
