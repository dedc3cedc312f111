"""Read-only queries over the catalog: the Python face of `batchtwin sql`."""
from __future__ import annotations

import duckdb
import pandas as pd

from lake.layout import Lake


class CatalogMissing(FileNotFoundError):
    pass


def connect(lake: Lake) -> duckdb.DuckDBPyConnection:
    """A read-only connection to the catalog (many readers may hold one at once)."""
    if not lake.catalog.exists():
        raise CatalogMissing(f"no catalog at {lake.catalog}: run `batchtwin run` (or `make demo`) first")
    con = duckdb.connect(str(lake.catalog), read_only=True)
    con.execute("SET TimeZone = 'UTC'")  # timestamps are UTC everywhere; show them so
    return con


def query(lake: Lake, sql: str, params: list | None = None) -> pd.DataFrame:
    with connect(lake) as con:
        return con.execute(sql, params or []).df()
