"""DuckDB connections for computation over the lake: UTC, a memory limit, and a spill folder.

DuckDB spills to disk beyond its memory limit, which is what keeps memory flat as inputs
grow; `BATCHTWIN_DUCKDB_MEMORY` (e.g. "2GB") sets the limit.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
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
    """A SQL string literal's body (for the few statements that take no bound parameters, e.g.
    COPY … TO)."""
    return str(text).replace("'", "''")


def connect(lake: Lake) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection for the lake's heavy SQL: UTC, a memory limit
    (BATCHTWIN_DUCKDB_MEMORY) with spilling to the lake's state folder, file order kept, and the
    `exact_sum` macro."""
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


def copy_to_parquet(
    con: duckdb.DuckDBPyConnection, select_sql: str, out: Path, params: dict | None = None
) -> None:
    """COPY a query to `out` atomically (temporary name in the same folder, then rename)."""
    import tempfile

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".tmp-", suffix=PARTIAL)
    os.close(fd)
    try:
        con.execute(
            f"COPY ({select_sql}) TO '{sql_string(tmp)}' (FORMAT parquet, COMPRESSION zstd)",
            params or {},
        )
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_per_key(
    con: duckdb.DuckDBPyConnection,
    select_sql: str,
    key: str,
    targets: dict[str, Path],
    params: dict | None = None,
    check: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Write a query's rows in one pass to one Parquet file per value of column `key`
    (`targets`: value -> file; the key column stays in the files). A value without rows gets an
    empty file, so stale rows never survive. The files are written into a temporary folder,
    `check(relation_sql)` may inspect them there, and only then each is renamed into place.
    Returns rows written per value."""
    import shutil
    import tempfile

    import pyarrow.parquet as pq

    if not targets:
        return {}
    keys = list(targets)
    folders = {p.parent for p in targets.values()}
    if len(folders) != 1:
        raise ValueError("copy_per_key writes into one folder")
    folder = folders.pop()
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder, prefix=".tmp-", suffix=PARTIAL))
    try:
        files: dict[str, Path] = {}
        if (
            len(keys) == 1
        ):  # one batch (a Dagster partition's run): a plain COPY, no partitioning work
            files[keys[0]] = tmp / "0.parquet"
            con.execute(
                f"COPY (SELECT * FROM ({select_sql}) WHERE {key} = $copy_key)"
                f" TO '{sql_string(files[keys[0]])}' (FORMAT parquet, COMPRESSION zstd)",
                {**(params or {}), "copy_key": keys[0]},
            )
        else:
            # partition on the key's position in `targets`: hive folder names need no escaping then
            written = con.execute(
                f"""COPY (SELECT *, list_position($copy_keys, {key}) AS copy_part
                          FROM ({select_sql}) WHERE {key} IN (SELECT unnest($copy_keys)))
                    TO '{sql_string(tmp)}'
                    (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (copy_part), RETURN_FILES)""",
                {**(params or {}), "copy_keys": keys},
            ).fetchall()[0][1]
            for f in map(Path, written):
                k = keys[int(f.parent.name.removeprefix("copy_part=")) - 1]
                if k in files:
                    raise RuntimeError(f"DuckDB wrote more than one file for {key} = {k!r}")
                files[k] = f
        missing = [k for k in keys if k not in files]
        if missing:  # one empty file with the query's schema, copied for each value without rows
            empty = tmp / "empty_0.parquet"
            con.execute(
                f"COPY (SELECT * FROM ({select_sql}) WHERE false)"
                f" TO '{sql_string(empty)}' (FORMAT parquet)",
                params or {},
            )
            for i, k in enumerate(missing):
                files[k] = (
                    empty if i == 0 else Path(shutil.copyfile(empty, tmp / f"empty_{i}.parquet"))
                )
        if check is not None:
            quoted = ", ".join("'" + sql_string(f) + "'" for f in files.values())
            check(f"read_parquet([{quoted}])")
        counts = {k: pq.read_metadata(f).num_rows for k, f in files.items()}
        for k, f in files.items():
            os.replace(f, targets[k])
        return counts
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def parquet_columns(con: duckdb.DuckDBPyConnection, files: list[str]) -> set[str]:
    """The columns of any of `files` (union by name): files written before a column existed
    lack it, and a query naming it must not be run on them alone."""
    described = con.execute(
        "DESCRIBE SELECT * FROM read_parquet(?, union_by_name = true)", [files]
    ).fetchall()
    return {r[0] for r in described}
