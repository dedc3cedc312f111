"""Read-only queries over the catalog: the Python face of `batchtwin sql`.

`batchtwin sql` runs text a user typed, so the connection is sandboxed, not merely opened
read-only (read_only=True stops writes to catalog.duckdb, not `COPY … TO`, `ATTACH`,
`INSTALL`/`LOAD` or `read_text('/etc/passwd')`):

- DuckDB's `enable_external_access = false` with `allowed_directories` = the lake root: table
  functions and COPY reach files under the lake only (the catalog views read Parquet there),
  never other local files, URLs, extensions or Python objects in scope (replacement scans);
  `lock_configuration = true` then stops any `SET`/`PRAGMA` from undoing that.
- `query()` runs exactly one statement, and only a read: SELECT (which includes WITH, FROM …,
  VALUES, DESCRIBE, SHOW, SUMMARIZE) or EXPLAIN of one. Everything else — COPY, ATTACH,
  EXPORT, INSTALL, LOAD, SET, PRAGMA, CALL, CREATE (even TEMP) — is refused before it runs,
  which also keeps `COPY … TO '<lake>/silver/…'` from planting files inside the lake.

`allow_files=True` (`batchtwin sql --allow-files`) widens the allowed directories to the whole
local file system for reading, e.g. to join a CSV on disk; network access, extension loading
and every non-read statement stay refused.
"""

from __future__ import annotations

import re

import duckdb
import pandas as pd

from lake.layout import Lake


class CatalogMissing(FileNotFoundError):
    pass


class QueryRefused(ValueError):
    """The statement is not a read-only query (the message is one line)."""


READ_ONLY_HINT = (
    "batchtwin sql is read-only: "
    "one SELECT / WITH / DESCRIBE / SHOW / SUMMARIZE / EXPLAIN statement"
)
_EXPLAIN = re.compile(r"\s*EXPLAIN\s+(?:ANALY[SZ]E\s+)?", re.IGNORECASE)


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _allowed_directories(lake: Lake, allow_files: bool) -> list[str]:
    # trailing '/': DuckDB matches by prefix, and '<root>X/' must not count as inside '<root>'
    return ["/"] if allow_files else [lake.root.as_posix().rstrip("/") + "/"]


def _settings(con: duckdb.DuckDBPyConnection, *names: str) -> tuple:
    """The current values of DuckDB settings `names`, in order. Without them the sandbox cannot
    be verified, so a missing result row refuses the query rather than assuming."""
    row = con.execute(
        "SELECT " + ", ".join(f"current_setting({_sql_literal(n)})" for n in names)
    ).fetchone()
    if row is None:
        raise QueryRefused("could not read the connection's settings; refusing to run the query")
    return row


def _sandbox(con: duckdb.DuckDBPyConnection, lake: Lake, allow_files: bool) -> None:
    """Lock the connection's database instance down (settings are global and, once locked,
    final)."""
    wanted = _allowed_directories(lake, allow_files)
    (locked,) = _settings(con, "lock_configuration")
    if not locked:
        # timestamps are UTC everywhere; show them so
        # (fetched: DuckDB 2 keeps an unread result open)
        con.execute("SET TimeZone = 'UTC'").fetchall()
        for setting in (
            "autoinstall_known_extensions",
            "autoload_known_extensions",
            "allow_community_extensions",
        ):
            con.execute(f"SET {setting} = false")
        # allowed_directories can be set only before external access is switched off (DuckDB 2.0)
        con.execute(f"SET allowed_directories = [{', '.join(map(_sql_literal, wanted))}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    # DuckDB shares one database instance between the connections a process opens to the same
    # file: another connection may have locked it first. Verify rather than assume.
    external, allowed, locked = _settings(
        con, "enable_external_access", "allowed_directories", "lock_configuration"
    )
    if (
        external
        or not locked
        or not set(wanted) <= set(allowed)
        or (not allow_files and "/" in allowed)
    ):
        raise QueryRefused(
            "the catalog is already open in this process with other file-access settings;"
            " close that connection first"
        )


def connect(lake: Lake, allow_files: bool = False) -> duckdb.DuckDBPyConnection:
    """A read-only, sandboxed connection to the catalog (many readers may hold one at once)."""
    if not lake.catalog.exists():
        raise CatalogMissing(
            f"no catalog at {lake.catalog}: run `batchtwin run` (or `make demo`) first"
        )
    con = duckdb.connect(str(lake.catalog), read_only=True)
    try:
        _sandbox(con, lake, allow_files)
    except BaseException:
        con.close()
        raise
    return con


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """QueryRefused unless `sql` is exactly one read-only statement (parse errors raise
    duckdb.Error)."""
    statements = con.extract_statements(sql)
    if len(statements) != 1:
        raise QueryRefused(f"{READ_ONLY_HINT}, not {len(statements)} statements")
    kind = statements[0].type
    if kind == duckdb.StatementType.EXPLAIN:
        # EXPLAIN ANALYZE executes its statement: only the EXPLAIN of a SELECT is a read
        match = _EXPLAIN.match(sql)
        inner = con.extract_statements(sql[match.end() :]) if match else []
        if len(inner) == 1 and inner[0].type == duckdb.StatementType.SELECT:
            return
    elif kind == duckdb.StatementType.SELECT:
        return
    raise QueryRefused(f"{READ_ONLY_HINT}; {kind.name} statements are refused")


def query(
    lake: Lake, sql: str, params: list | dict | None = None, *, allow_files: bool = False
) -> pd.DataFrame:
    """Run one read-only statement against the catalog in a sandboxed connection and return its
    result; anything but a single read raises QueryRefused before it runs."""
    with connect(lake, allow_files=allow_files) as con:
        check_read_only(con, sql)
        return con.execute(sql, params or []).df()
