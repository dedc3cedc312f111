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
