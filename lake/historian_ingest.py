"""Streamed ingest of long historian CSVs: parse, validate, resolve duplicates, write — in DuckDB.

Historian exports are the large inputs (tens of millions of rows). Going through pandas would
cost several times DuckDB's own CSV→Parquet copy and gigabytes of memory, so these files stay
inside DuckDB from reading to the silver Parquet file, under a memory limit (DuckDB spills to
disk beyond it). The rules are the same as for every other source: the pandera model's
column checks (translated to SQL), the tag dictionary, the documented duplicate rules; every
row is accepted or quarantined with its line and reason.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa

from lake.layout import Lake, atomic_write_parquet
from schemas import lineage
from schemas.sql_checks import SqlCheck, column_checks
from schemas.tables import HistorianPoint
from schemas.validate import quarantine_frame
from sources.historian_stream import stage_long
from sources.profiles import FileProfile

MEMORY_LIMIT = os.environ.get("BATCHTWIN_DUCKDB_MEMORY", "1GB")
QUALITY_RANK_SQL = "CASE quality WHEN 'good' THEN 0 WHEN 'substituted' THEN 1 WHEN 'uncertain' THEN 2 ELSE 3 END"
WITHIN_FILE_RULE = "duplicate (tag, ts): the best-quality value wins, then the later row in the file (the historian's last write)"
ACROSS_SOURCES_RULE = "duplicate (tag, ts) of a point already ingested from an earlier source: the first ingested value stays (silver is never rewritten)"


def point_checks(tags_known: set[str] | None) -> list[SqlCheck]:
    checks = column_checks(HistorianPoint, skip=frozenset(lineage.COLUMNS) | {"ts_text"})
    if tags_known:
        checks.append(SqlCheck("tag", "isin(tag dictionary)", "tag IN (SELECT unnest($known_tags))",
                               {"known_tags": sorted(tags_known)}, "tag is not in the tag dictionary"))
    return checks


def connect(lake: Lake) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    spill = lake.state("duckdb_tmp")
    spill.mkdir(parents=True, exist_ok=True)
    con.execute("SET TimeZone = 'UTC'")
    # DuckDB spills to disk beyond its memory limit: this is what keeps memory flat as files grow
    limit = MEMORY_LIMIT if re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", MEMORY_LIMIT, re.I) else "1GB"
    con.execute(f"SET memory_limit = '{limit}'")
    con.execute(f"SET temp_directory = '{_sql_str(spill)}'")
    con.execute("SET preserve_insertion_order = true")  # row numbers follow the file's order
    return con


def _sql_str(path: Path) -> str:
    return str(path).replace("'", "''")


def ingest_long_csv(lake: Lake, path: Path, sha256: str, rel_path: str, profile: FileProfile, tags_known: set[str] | None) -> tuple[int, int, pd.DataFrame]:
    """Write silver/historian_points/<sha>.parquet; return (rows_read, rows_accepted, quarantine rows)."""
    with connect(lake) as con:
        staged = stage_long(con, path, profile, point_checks(tags_known))
        line_sql, line_params = staged.line_sql()
        con.execute(f"CREATE OR REPLACE TEMP TABLE lines AS SELECT rn, {line_sql} AS line FROM parsed", line_params)
        within = _duplicates_within(con)
        beaten = {rn for rn, *_ in within}
        losers = within + [x for x in _duplicates_across(con, lake, sha256) if x[0] not in beaten]
        con.execute("CREATE OR REPLACE TEMP TABLE losers (rn BIGINT, check_name VARCHAR, reason VARCHAR)")
        if losers:
            con.executemany("INSERT INTO losers VALUES (?, ?, ?)", losers)
        out = lake.silver("historian_points") / f"{sha256}.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".tmp-", suffix=".parquet")
        os.close(fd)
        try:
            con.execute(
                f"""COPY (SELECT p.tag, p.ts, p.value, p.state, p.quality, p.ts_text,
                                 $sha AS source_sha256, l.line AS source_row, $rel AS source_path
                          FROM parsed p JOIN lines l USING (rn)
                          WHERE p.problem IS NULL AND p.rn NOT IN (SELECT rn FROM losers)
                          ORDER BY p.rn)
                    TO '{_sql_str(Path(tmp))}' (FORMAT parquet, COMPRESSION zstd)""",
                {"sha": sha256, "rel": rel_path},
            )
            os.replace(tmp, out)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        accepted = con.execute("SELECT count(*) FROM parsed WHERE problem IS NULL AND rn NOT IN (SELECT rn FROM losers)").fetchall()[0][0]
        rejected = con.execute(
            """SELECT l.line AS source_row, p.problem_column AS "column", p.problem AS "check", p.failure_value, p.reason
               FROM parsed p JOIN lines l USING (rn) WHERE p.problem IS NOT NULL
               UNION ALL
               SELECT l.line, 'tag,ts', x.check_name, p.tag || ' @ ' || p.ts_text, x.reason
               FROM losers x JOIN parsed p USING (rn) JOIN lines l USING (rn)
               ORDER BY 1"""
        ).df()
    malformed = pd.DataFrame({"source_row": staged.malformed["line"].astype("int64"), "column": None, "check": "field_count",
                              "failure_value": staged.malformed["text"].astype(str).str.slice(0, 200),
                              "reason": staged.malformed["message"].astype(str).str.split("\n").str[0]})
    q = pd.concat([x for x in (malformed, rejected) if len(x)], ignore_index=True) if len(malformed) or len(rejected) else quarantine_frame([])
    q["source_sha256"], q["source_path"] = sha256, rel_path
    q["source_row"] = q["source_row"].astype("Int64")
    return staged.rows_read, int(accepted), q


def _duplicates_within(con) -> list[tuple]:
    """Losers among rows sharing (tag, ts) in this file, by the documented rule."""
    rows = con.execute(
        f"""WITH keys AS (SELECT tag, ts FROM parsed WHERE problem IS NULL GROUP BY ALL HAVING count(*) > 1)
            SELECT rn FROM (
                SELECT p.rn, row_number() OVER (PARTITION BY p.tag, p.ts ORDER BY {QUALITY_RANK_SQL}, p.rn DESC) AS k
                FROM parsed p SEMI JOIN keys USING (tag, ts) WHERE p.problem IS NULL)
            WHERE k > 1"""
    ).fetchall()
    return [(r[0], "duplicate_key", WITHIN_FILE_RULE) for r in rows]


def _duplicates_across(con, lake: Lake, sha256: str) -> list[tuple]:
    """Rows whose (tag, ts) an earlier file or pull already put in silver."""
    others = [str(p) for p in lake.silver("historian_points").glob("*.parquet") if p.stem != sha256]
    if not others:
        return []
    lo, hi = con.execute("SELECT min(ts), max(ts) FROM parsed WHERE problem IS NULL").fetchall()[0]
    if lo is None:
        return []
    rows = con.execute(
        """SELECT p.rn FROM parsed p
           SEMI JOIN (SELECT tag, ts FROM read_parquet($others) WHERE ts BETWEEN $lo AND $hi) h USING (tag, ts)
           WHERE p.problem IS NULL""",
        {"others": others, "lo": lo, "hi": hi},
    ).fetchall()
    return [(r[0], "duplicate_across_sources", ACROSS_SOURCES_RULE) for r in rows]
