"""Streamed ingest of long historian CSVs: parse, validate, resolve duplicates, write — in DuckDB.

Historian exports are the large inputs (tens of millions of rows). Going through pandas would
cost several times DuckDB's own CSV→Parquet copy and gigabytes of memory, so these files stay
inside DuckDB from reading to the silver Parquet file, under a memory limit (DuckDB spills to
disk beyond it). The rules are the same as for every other source: the pandera model's
column checks (translated to SQL), the tag dictionary, the documented duplicate rules; every
row is accepted or quarantined with its line and reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd
import pandera.pandas as pa

from lake.duck import connect, copy_to_parquet, parquet_columns
from lake.layout import Lake
from schemas import lineage
from schemas.keys import key_rule
from schemas.sql_checks import SqlCheck, check_sql, column_checks, key_sql, require_types
from schemas.tables import HistorianPoint
from schemas.validate import quarantine_frame
from sources.historian_stream import stage_long
from sources.profiles import FileProfile

# the model's key and duplicate rule, applied here in SQL as the pandas path applies it
POINT_KEY = key_rule(HistorianPoint)
# Points already in silver stay, for the pandas path (lake.ingest: wide exports, SQL pulls) and
# this streamed one alike.
ACROSS_SOURCES_RULE = (
    "duplicate (tag, ts) of a point already ingested from an earlier source: "
    "the first ingested value stays (silver is never rewritten)"
)


@dataclass(frozen=True)
class TagDictionary:
    """The tags points are checked against: those the dictionary defines, and those it listed
    but that were quarantined (a unit the site cannot use), with the reason."""

    known: frozenset[str]
    unusable: dict[str, str] = field(default_factory=dict)


def known_tags(lake: Lake) -> TagDictionary | None:
    """The ingested tag dictionary (None when none was ingested yet: nothing to check against)."""
    folder = lake.silver("tags")
    if not any(folder.glob("*.parquet")):
        return None
    quarantine = [str(p) for p in lake.silver("quarantine").glob("*.parquet")]
    with duckdb.connect() as con:
        known = frozenset(
            r[0]
            for r in con.execute(
                "SELECT DISTINCT tag FROM read_parquet(?)", [str(folder / "*.parquet")]
            ).fetchall()
        )
        unusable = (
            dict(
                con.execute(
                    """SELECT row_key, arg_max(reason, ingested_at)
               FROM read_parquet(?, union_by_name = true)
               WHERE dataset = 'tags' AND "check" = 'uom_conversion' AND row_key IS NOT NULL
               GROUP BY ALL""",
                    [quarantine],
                ).fetchall()
            )
            if quarantine and "row_key" in parquet_columns(con, quarantine)
            else {}
        )
    return TagDictionary(known, {t: r for t, r in unusable.items() if t not in known})


def tag_checks(tags: TagDictionary | None) -> dict[str, list[pa.Check]] | None:
    """Checks of a point's tag against the dictionary: a tag the dictionary listed but quarantined
    is named with its own reason, any other unknown tag is 'not in the tag dictionary'."""
    if not tags:
        return None
    checks = [
        pa.Check.isin(
            sorted(tags.known | set(tags.unusable)), error="tag is not in the tag dictionary"
        )
    ]
    checks += [
        pa.Check.ne(tag, error=f"the tag dictionary's entry for this tag was quarantined: {reason}")
        for tag, reason in sorted(tags.unusable.items())
    ]
    return {"tag": checks}


def point_checks(tags: TagDictionary | None) -> list[SqlCheck]:
    """The model's column checks plus the tag dictionary's (`tag_checks`, in SQL)."""
    checks = column_checks(
        HistorianPoint, skip=frozenset(lineage.COLUMNS) | {"ts_text"}, key_resolved=True
    )
    extra = (tag_checks(tags) or {}).get("tag", [])
    return checks + [check_sql("tag", check, f"tag_{i}") for i, check in enumerate(extra)]


def ingest_long_csv(
    lake: Lake,
    path: Path,
    sha256: str,
    rel_path: str,
    profile: FileProfile,
    tags_known: TagDictionary | None,
) -> tuple[int, int, pd.DataFrame]:
    """Write silver/historian_points/<sha>.parquet.

    Returns (rows_read, rows_accepted, quarantine rows).
    """
    with connect(lake) as con:
        staged = stage_long(con, path, profile, point_checks(tags_known))
        line_sql = staged.line_sql
        within = _duplicates_within(con)
        beaten = {rn for rn, *_ in within}
        losers = within + [x for x in _duplicates_across(con, lake, sha256) if x[0] not in beaten]
        con.execute(
            "CREATE OR REPLACE TEMP TABLE losers (rn BIGINT, check_name VARCHAR, reason VARCHAR)"
        )
        if losers:
            con.executemany("INSERT INTO losers VALUES (?, ?, ?)", losers)
        points = f"""SELECT tag, ts, value, state, quality, ts_text, $sha AS source_sha256,
                           {line_sql}::BIGINT AS source_row, $rel AS source_path
                    FROM parsed WHERE problem IS NULL AND rn NOT IN (SELECT rn FROM losers)"""
        params = {"sha": sha256, "rel": rel_path}
        described = con.execute(f"DESCRIBE {points}", params).fetchall()
        require_types([(r[0], r[1]) for r in described], HistorianPoint, "the streamed points")
        target = lake.silver("historian_points") / f"{sha256}.parquet"
        copy_to_parquet(con, points, target, params)  # insertion order = file order
        # counted from what was written, not derived from what was read
        written = con.execute("SELECT count(*) FROM read_parquet(?)", [str(target)]).fetchall()
        accepted = written[0][0]
        rejected = con.execute(
            f"""SELECT {line_sql} AS source_row, problem_column AS "column", problem AS "check",
                       failure_value, reason
                FROM parsed WHERE problem IS NOT NULL
                UNION ALL
                SELECT {line_sql}, 'tag,ts', check_name, tag || ' @ ' || ts_text, loser_reason
                FROM (SELECT p.*, x.check_name, x.reason AS loser_reason
                      FROM losers x JOIN parsed p USING (rn))
                ORDER BY 1"""
        ).df()
    malformed = pd.DataFrame(
        {
            "source_row": staged.malformed["line"].astype("int64"),
            "column": None,
            "check": "field_count",
            "failure_value": staged.malformed["text"].astype(str).str.slice(0, 200),
            "reason": staged.reasons(),
        }
    )
    q = (
        pd.concat([x for x in (malformed, rejected) if len(x)], ignore_index=True)
        if len(malformed) or len(rejected)
        else quarantine_frame([])
    )
    q["source_sha256"], q["source_path"] = sha256, rel_path
    q["source_row"] = q["source_row"].astype("Int64")
    return staged.rows_read, int(accepted), q


def _duplicates_within(con) -> list[tuple]:
    """Losers among rows sharing the model's key in this file, by the model's duplicate rule."""
    assert POINT_KEY is not None
    key, order = key_sql(POINT_KEY, {"source_row": "rn"})
    rows = con.execute(
        f"""WITH keys AS (
                SELECT {key} FROM parsed WHERE problem IS NULL GROUP BY ALL HAVING count(*) > 1)
            SELECT rn FROM (
                SELECT rn, row_number() OVER (PARTITION BY {key} ORDER BY {order}) AS k
                FROM parsed SEMI JOIN keys USING ({key}) WHERE problem IS NULL)
            WHERE k > 1"""
    ).fetchall()
    return [(r[0], "duplicate_key", POINT_KEY.rule) for r in rows]


def _duplicates_across(con, lake: Lake, sha256: str) -> list[tuple]:
    """Rows whose (tag, ts) an earlier file or pull already put in silver."""
    held = held_elsewhere(
        con, lake, sha256, "SELECT rn AS id, tag, ts FROM parsed WHERE problem IS NULL"
    )
    return [(rn, "duplicate_across_sources", ACROSS_SOURCES_RULE) for rn in held]


def held_elsewhere(con, lake: Lake, sha256: str, incoming_sql: str) -> list[int]:
    """The ids of `incoming_sql`'s rows (id, tag, ts) whose (tag, ts) another silver file already
    holds: ACROSS_SOURCES_RULE, for this streamed path and the pandas one (wide exports, SQL
    pulls)."""
    others = [str(p) for p in lake.silver("historian_points").glob("*.parquet") if p.stem != sha256]
    if not others:
        return []
    lo, hi = con.execute(f"SELECT min(ts), max(ts) FROM ({incoming_sql})").fetchall()[0]
    if lo is None:
        return []
    rows = con.execute(
        f"""SELECT i.id FROM ({incoming_sql}) i
            SEMI JOIN (SELECT tag, ts FROM read_parquet($others) WHERE ts BETWEEN $lo AND $hi) h
                ON h.tag = i.tag AND h.ts = i.ts""",
        {"others": others, "lo": lo, "hi": hi},
    ).fetchall()
    return [r[0] for r in rows]
