"""DuckDB connections for computation over the lake: UTC, a memory limit, and a spill folder.

DuckDB spills to disk beyond its memory limit, which is what keeps memory flat as inputs
grow; `BATCHTWIN_DUCKDB_MEMORY` (e.g. "2GB") sets the limit.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import duckdb

from lake.layout import PARTIAL, Lake

DEFAULT_MEMORY = "1GB"

# A float sum computed in parallel depends on which thread added what first, so two runs over the
# same data differ in the last bits. Summed as fixed point (12 decimals) the additions are integer
# ones, which do not depend on order: a rerun gives bit-identical curated numbers. Terms beyond
# ±1e14 (no process value integrates to that; a historian's overflow sentinel might) fall back to
# a float sum rather than overflow.
EXACT_SUM = """
    CREATE OR REPLACE TEMP MACRO exact_sum(x) AS
    CASE WHEN count(x) > 0 THEN
        coalesce(sum(CASE WHEN abs(x) < 1e14 THEN x::DECIMAL(38, 12) END)::DOUBLE, 0)
        + coalesce(sum(CASE WHEN NOT abs(x) < 1e14 THEN x END), 0)
    END"""


def sql_string(text: str | Path) -> str:
    """A SQL string literal's body (for the few statements that take no bound parameters, e.g. COPY … TO)."""
    return str(text).replace("'", "''")


def connect(lake: Lake) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    # one spill folder per process: DuckDB names its spill files alike in every process
    spill = lake.state("duckdb_tmp") / str(os.getpid())
    spill.mkdir(parents=True, exist_ok=True)
    limit = os.environ.get("BATCHTWIN_DUCKDB_MEMORY", DEFAULT_MEMORY)
    if not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", limit, re.IGNORECASE):
        limit = DEFAULT_MEMORY
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{limit}'")
    con.execute(f"SET temp_directory = '{sql_string(spill)}'")
    con.execute("SET preserve_insertion_order = true")  # row numbers follow a file's order
    con.execute("SET enable_progress_bar = false")  # progress is the CLI's job, not DuckDB's stderr
    con.execute(EXACT_SUM)
    return con


def copy_to_parquet(con: duckdb.DuckDBPyConnection, select_sql: str, out: Path, params: dict | None = None) -> None:
    """COPY a query to `out` atomically (temporary name in the same folder, then rename)."""
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".tmp-", suffix=PARTIAL)
    os.close(fd)
    try:
        con.execute(f"COPY ({select_sql}) TO '{sql_string(tmp)}' (FORMAT parquet, COMPRESSION zstd)", params or {})
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
