"""Historian CSV exports, long (tag, time, value, status) and wide (time, tag1, tag2, …)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from sources.base import (
    VALUE_PARSE_REASON,
    CsvShape,
    ReadResult,
    SourceRejected,
    add_lineage,
    historian_values,
    parse_timestamps,
    read_csv_text,
    rejects_where,
    require_columns,
    timestamp_reason,
)
from sources.historian_stream import stage_long
from sources.profiles import FileProfile

POINT_COLUMNS = ["tag", "ts", "value", "state", "quality", "ts_text"]


def read_long(path: Path, sha256: str, rel_path: str, profile: FileProfile) -> ReadResult:
    """A long export as a frame (the ingest streams the same parse straight to Parquet instead)."""
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        staged = stage_long(con, path, profile)
        df = con.execute(f"SELECT *, {staged.line_sql} AS line FROM parsed ORDER BY rn").df()
    ok = df["problem"].isna().to_numpy()
    points = add_lineage(
        df.loc[ok, POINT_COLUMNS].reset_index(drop=True),
        sha256,
        df.loc[ok, "line"].to_numpy(),
        rel_path,
    )
    bad = df[~ok]
    rejects = pd.DataFrame(
        {
            "source_sha256": sha256,
            "source_row": pd.array(bad["line"], dtype="Int64"),
            "source_path": rel_path,
            "column": bad["problem_column"],
            "check": bad["problem"],
            "failure_value": bad["failure_value"],
            "reason": bad["reason"],
        }
    )
    malformed = pd.DataFrame(
        {
            "source_sha256": sha256,
            "source_row": pd.array(staged.malformed["line"], dtype="Int64"),
            "source_path": rel_path,
            "column": None,
            "check": "field_count",
            "failure_value": staged.malformed["text"].astype(str).str.slice(0, 200),
            "reason": staged.reasons(),
        }
    )
    return ReadResult(
        {"historian_points": points},
        pd.concat([malformed, rejects], ignore_index=True),
        rows_read=staged.rows_read,
    )


def read_wide(path: Path, sha256: str, rel_path: str, profile: FileProfile) -> ReadResult:
    """Each non-empty cell becomes one point; rows_read counts cells plus malformed lines."""
    df, lines, rejects = read_csv_text(path, CsvShape.of(profile, path), sha256, rel_path)
    ts_col = profile.column("ts")
    require_columns(df, [ts_col])
    tags = [c for c in df.columns if c != ts_col and c not in profile.exclude_columns]
    if not tags:
        raise SourceRejected("wide historian export has a timestamp column but no tag columns")
    # one row per instant, in time order: the order resolves an autumn hour (sources.base.localize)
    ts = parse_timestamps(
        df[ts_col], profile.timestamp_format, profile.timezone, in_time_order=True
    )
    long = df.melt(
        id_vars=[ts_col], value_vars=tags, var_name="tag", value_name="text", ignore_index=False
    )
    long["line"] = np.tile(lines, len(tags))
    long["ts"] = np.tile(ts.to_numpy(), len(tags))
    long = long[long["text"].str.strip() != ""].reset_index(drop=True)
    value, state, unparseable = historian_values(
        long["text"], profile.decimal, profile.digital_states
    )
    bad_ts = long["ts"].isna()
    row_lines = long["line"].to_numpy()
    problems = [
        rejects_where(
            bad_ts,
            long,
            row_lines,
            ts_col,
            "timestamp",
            timestamp_reason(profile.timestamp_format, profile.timezone),
            sha256,
            rel_path,
        ),
        rejects_where(
            unparseable & ~bad_ts,
            long,
            row_lines,
            long["tag"],  # the cell's column: its tag
            "value_parse",
            VALUE_PARSE_REASON,
            sha256,
            rel_path,
            values=long["text"],
        ),
    ]
    ok = (~(bad_ts | unparseable)).to_numpy()
    # wide exports are the historian's sampled/interpolated values: quality is not exported
    out = pd.DataFrame(
        {
            "tag": long["tag"],
            "ts": long["ts"],
            "value": value,
            "state": state,
            "quality": np.where(state.isna(), "good", "bad"),
            "ts_text": long[ts_col],
        }
    )[ok]
    out = add_lineage(out.reset_index(drop=True), sha256, row_lines[ok], rel_path)
    return ReadResult(
        {"historian_points": out},
        pd.concat([rejects, *problems], ignore_index=True),
        rows_read=len(long) + len(rejects),
    )
