"""The storage types of a model's columns: one mapping from pandera dtypes, for the Parquet
files (Arrow) and for DuckDB, which reads those files."""

from __future__ import annotations

import pandera.pandas as pa
import pyarrow as pa_arrow

# DuckDB's name for each Arrow type the mapping below produces
_DUCKDB = {
    pa_arrow.float64(): "DOUBLE",
    pa_arrow.int64(): "BIGINT",
    pa_arrow.bool_(): "BOOLEAN",
    pa_arrow.string(): "VARCHAR",
    pa_arrow.timestamp("us", tz="UTC"): "TIMESTAMP WITH TIME ZONE",
}


def arrow_schema(model: type[pa.DataFrameModel]) -> pa_arrow.Schema:
    """The Parquet (Arrow) schema of a model's table: its columns, in order, with its types
    (timestamps are UTC microseconds; text is anything not a number, boolean or time)."""
    fields = []
    for name, col in model.to_schema().columns.items():
        if "datetime64" in str(col.dtype):
            kind = pa_arrow.timestamp("us", tz="UTC")
        else:
            kind = {"f": pa_arrow.float64(), "i": pa_arrow.int64(), "b": pa_arrow.bool_()}.get(
                getattr(getattr(col.dtype, "type", None), "kind", "O"), pa_arrow.string()
            )
        fields.append(pa_arrow.field(name, kind, nullable=True))
    return pa_arrow.schema(fields)


def duckdb_types(model: type[pa.DataFrameModel]) -> dict[str, str]:
    """Column -> DuckDB type of the model's table, as DuckDB reads its Parquet files."""
    return {f.name: _DUCKDB[f.type] for f in arrow_schema(model)}
