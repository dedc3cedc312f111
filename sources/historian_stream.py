"""Long historian CSVs read and parsed inside DuckDB, so large exports stream with bounded memory.

`stage_long` reads the file into the temp table `parsed`: one row per good CSV line with its
line number, the parsed UTC timestamp, numeric value or digital state, mapped quality, and
(where parsing failed) the check, column, value and reason for quarantine. Malformed lines
(wrong field count) come back separately, with their line numbers, from DuckDB's reject
table. Profile values reach the SQL only as bound parameters; column names only as quoted
identifiers.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from schemas.sql_checks import SqlCheck, first_failure_sql
from sources.base import (
    QUALITY_REASON,
    VALUE_PARSE_REASON,
    CsvShape,
    SourceRejected,
    csv_header,
    empty_lines,
    require_columns,
    timestamp_reason,
)
from sources.profiles import FileProfile

ENCODINGS = {
    "utf8": "utf-8",
    "utf-8": "utf-8",
    "latin1": "latin-1",
    "latin-1": "latin-1",
    "iso-8859-1": "latin-1",
    "utf-16": "utf-16",
}
_OFFSET = r"(Z|[+-]\d\d:?\d\d)\s*$"


def ident(name: str) -> str:
    """`name` as a quoted SQL identifier (embedded quotes doubled): CSV header names are data and
    may hold any character."""
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Staged:
    rows_read: int
    malformed: (
        pd.DataFrame
    )  # line, error_type, text, message of lines DuckDB could not split into the header's fields
    numbered: bool  # `parsed` has a `line` column (lines were skipped); otherwise see line_sql
    header_line: int = 1  # the line of column names (0: none): the first record follows it

    def reasons(self) -> pd.Series:
        """One-line reasons for the malformed lines, worded as the other CSV readers word them."""

        def word(message: str) -> str:
            m = re.search(r"Expected Number of Columns: (\d+) Found: (\d+)", message)
            return (
                f"line has {m.group(2)} fields, expected {m.group(1)}"
                if m
                else message.split("\n")[0]
            )

        return self.malformed["message"].astype(str).map(word)

    @property
    def line_sql(self) -> str:
        """SQL for each `parsed` row's line in the file."""
        return "line" if self.numbered else f"rn + {self.header_line}"


def _timestamp_sql(profile: FileProfile) -> tuple[str, str]:
    """(local_sql, ts_sql): `ts_text` -> naive local TIMESTAMP -> TIMESTAMPTZ, NULL when
    unparseable.

    The DST rule of `sources.base.localize`, in SQL: a naive local time is placed in the
    profile's zone and must map back to the same wall clock (a time skipped by the spring
    change does not) and must not also be reachable one hour earlier (a time repeated in
    autumn is ambiguous); both are quarantined, never guessed. (One hour: the shift of every
    zone but Lord Howe's half hour.) Text with an explicit offset (ISO 8601) needs no zone.
    """
    if profile.timestamp_format and "%z" in profile.timestamp_format:
        return "NULL::TIMESTAMP", "try_strptime(ts_text, $ts_format)::TIMESTAMPTZ"
    local = (
        "try_strptime(ts_text, $ts_format)"
        if profile.timestamp_format
        else "try_cast(ts_text AS TIMESTAMP)"
    )
    placed = "timezone($tz, local_ts)"
    naive = (
        f"CASE WHEN timezone($tz, {placed}) = local_ts"
        f" AND timezone($tz, {placed} - INTERVAL 1 HOUR) <> local_ts THEN {placed} END"
    )
    if profile.timestamp_format:
        return local, naive
    if profile.timezone.upper() == "UTC":
        return (
            local,
            "try_cast(ts_text AS TIMESTAMPTZ)",
        )  # the session zone is UTC: naive text is UTC, offsets are honoured
    return (
        local,
        f"CASE WHEN regexp_matches(ts_text, '{_OFFSET}') THEN try_cast(ts_text AS TIMESTAMPTZ)"
        f" ELSE {naive} END",
    )


def _number_lines(con: duckdb.DuckDBPyConnection, skipped: list[int], header_line: int) -> None:
    """Add each `parsed` row's line in the file as column `line`, from DuckDB's row number.

    DuckDB numbers the rows it accepts in file order, the first on the line after the header;
    every line it skipped after the header (malformed or empty) before a row shifts it by one:
    row rn lies after the k-th skipped line s_k exactly when rn >= s_k - k - (header_line - 1).
    An as-of join finds the last such k for every row in one pass, however many lines were
    skipped.
    """
    steps = [s - k - (header_line - 1) for k, s in enumerate(sorted(skipped), start=1)]
    con.execute(
        """CREATE OR REPLACE TEMP TABLE skip_steps AS
                   SELECT t, max(k) AS k
                   FROM (SELECT unnest($t) AS t, unnest(range(1, len($t) + 1)) AS k) GROUP BY t""",
        {"t": steps},
    )
    con.execute(
        """CREATE OR REPLACE TEMP TABLE parsed_lines AS
           SELECT p.*, p.rn + $header_line + coalesce(s.k, 0) AS line
           FROM parsed p ASOF LEFT JOIN skip_steps s ON p.rn >= s.t
           ORDER BY p.rn""",
        {"header_line": header_line},
    )
    con.execute(
        "DROP TABLE parsed; ALTER TABLE parsed_lines RENAME TO parsed; DROP TABLE skip_steps"
    )


def _tag_sql(profile: FileProfile, tag_column: str) -> tuple[str, dict, list[str]]:
    """SQL for a row's tag: its tag column, or the profile's `tag_template` over several columns
    ("{StreamId}.{Field}"; the literal parts are bound, never formatted into SQL); with the
    parameters and the columns it reads."""
    if not profile.tag_template:
        return f"trim({ident(tag_column)})", {}, [tag_column]
    pieces, params, columns = [], {}, []
    for i, (literal, name, _, _) in enumerate(string.Formatter().parse(profile.tag_template)):
        if literal:
            params[f"tag_literal_{i}"] = literal
            pieces.append(f"$tag_literal_{i}")
        if name:
            columns.append(name)
            pieces.append(f"trim({ident(name)})")
    return f"concat({', '.join(pieces)})", params, columns


def stage_long(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    profile: FileProfile,
    checks: Sequence[SqlCheck] = (),
) -> Staged:
    """Read and parse a long historian CSV into temp table `parsed` (see module docstring).

    `parsed` holds one row per accepted CSV record: `rn` (its ordinal among accepted records,
    turned into a line number by `Staged.line_sql`), the point columns, and `problem`,
    `problem_column`, `failure_value`, `reason` for records that fail parsing or one of `checks`
    (pandera checks translated to SQL, plus any the caller adds, e.g. the tag dictionary).
    """
    shape = CsvShape.of(profile, path)
    header = csv_header(path, shape)
    cols = {k: profile.column(k) for k in ("tag", "ts", "value", "status")}
    tag_sql, tag_params, tag_columns = _tag_sql(profile, cols["tag"])
    require_columns(pd.DataFrame(columns=header), [*tag_columns, cols["ts"], cols["value"]])
    status_sql = ident(cols["status"]) if cols["status"] in header else "NULL"
    encoding = ENCODINGS.get(shape.encoding.lower())
    if encoding is None:
        raise SourceRejected(
            f"encoding {profile.encoding!r} is not supported for streamed historian files"
            f" ({', '.join(sorted(ENCODINGS))})"
        )
    local_sql, ts_sql = _timestamp_sql(profile)
    check_sql, column_sql, check_params = first_failure_sql(list(checks))
    reason_cases = " ".join(f"WHEN $chk_{i} THEN $why_{i}" for i in range(len(checks)))
    check_reason = f"CASE check_problem {reason_cases} END" if checks else "NULL"
    # a CASE over bound parameters: a MAP built from parameters would be rebuilt for every row
    qkeys = [str(k).strip().lower() for k in profile.quality]
    quality_case = (
        (
            "CASE lower(trim(status_text)) "
            + " ".join(f"WHEN $qk_{i} THEN $qv_{i}" for i in range(len(qkeys)))
            + " END"
        )
        if qkeys
        else "NULL"
    )
    params = {
        "path": str(path),
        **tag_params,
        "has_header": shape.header_line > 0,
        "skip": max(shape.header_line - 1, 0),
        "delim": profile.delimiter,
        "encoding": encoding,
        "columns": {h: "VARCHAR" for h in header},
        "decimal": profile.decimal,
        "states": [x.lower() for x in profile.digital_states],
        **{f"qk_{i}": k for i, k in enumerate(qkeys)},
        **{f"qv_{i}": v for i, v in enumerate(profile.quality.values())},
        "ts_col": cols["ts"],
        "value_col": cols["value"],
        "status_col": cols["status"],
        **PARSE_REASON_PARAMS,
        "why_timestamp": timestamp_reason(profile.timestamp_format, profile.timezone),
        **check_params,
        **{f"why_{i}": c.reason for i, c in enumerate(checks)},
        **({"ts_format": profile.timestamp_format} if "$ts_format" in local_sql + ts_sql else {}),
        **({"tz": profile.timezone} if "$tz" in ts_sql else {}),
    }
    con.execute("DROP TABLE IF EXISTS reject_errors; DROP TABLE IF EXISTS reject_scans")
    ts_id, value_id = ident(cols["ts"]), ident(cols["value"])
    try:
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE parsed AS
                WITH raw AS (
                    SELECT row_number() OVER () AS rn, {tag_sql} AS tag, {ts_id} AS ts_text,
                           trim({value_id}) AS value_text, {status_sql} AS status_text
                    FROM read_csv($path, header = $has_header, skip = $skip, all_varchar = true,
                                  delim = $delim, quote = '"', escape = '"', encoding = $encoding,
                                  strict_mode = true, null_padding = false, auto_detect = false,
                                  columns = $columns, ignore_errors = true, store_rejects = true)),
                p0 AS (SELECT *, {local_sql} AS local_ts FROM raw),
                p1 AS (
                    SELECT *, {ts_sql} AS ts,
                           try_cast(CASE WHEN $decimal = '.' THEN value_text
                                         ELSE replace(value_text, $decimal, '.') END AS DOUBLE)
                             AS n,
                           -- not finite (inf, 1e309, NaN) is not a value
                           -- (as sources.base.historian_values)
                           CASE WHEN isfinite(n) THEN n END AS num,
                           -- a blank status is none given: good (as sources.base.qualities)
                           CASE WHEN coalesce(trim(status_text), '') = '' THEN 'good'
                                ELSE {quality_case} END AS q
                    FROM p0),
                p2 AS (
                    SELECT rn, tag, ts, num AS value, ts_text, value_text, status_text,
                           -- coalesce: an empty value is NULL text,
                           -- and NULL IN (...) is NULL, not false
                           CASE WHEN num IS NULL
                                THEN coalesce(lower(value_text) IN (SELECT unnest($states)), false)
                                ELSE false END AS is_state, q
                    FROM p1),
                pt AS (
                    SELECT rn, tag, ts, value, CASE WHEN is_state THEN value_text END AS state,
                           CASE WHEN is_state THEN 'bad' ELSE q END AS quality, ts_text,
                           CASE WHEN ts IS NULL THEN 'timestamp'
                                WHEN value IS NULL AND NOT is_state THEN 'value_parse'
                                WHEN q IS NULL THEN 'quality_code' END AS parse_problem,
                           CASE WHEN ts IS NULL THEN $ts_col
                                WHEN value IS NULL AND NOT is_state THEN $value_col
                                WHEN q IS NULL THEN $status_col END AS parse_column,
                           CASE WHEN ts IS NULL THEN ts_text
                                WHEN value IS NULL AND NOT is_state THEN value_text
                                WHEN q IS NULL THEN status_text END AS parse_value
                    FROM p2),
                chk AS (SELECT *,
                               CASE WHEN parse_problem IS NULL THEN {check_sql} END
                                 AS check_problem,
                               CASE WHEN parse_problem IS NULL THEN {column_sql} END
                                 AS check_column
                        FROM pt)
                SELECT rn, tag, ts, value, state, quality, ts_text,
                       coalesce(parse_problem, check_problem) AS problem,
                       coalesce(parse_column, check_column) AS problem_column,
                       CASE WHEN parse_problem IS NOT NULL THEN parse_value
                            WHEN check_column = 'tag' THEN tag
                            WHEN check_column = 'quality' THEN quality
                            WHEN check_column = 'ts_text' THEN ts_text END AS failure_value,
                       CASE parse_problem WHEN 'timestamp' THEN $why_timestamp
                            WHEN 'value_parse' THEN $why_value_parse
                            WHEN 'quality_code' THEN $why_quality_code ELSE {check_reason} END
                         AS reason
                FROM chk""",
            params,
        )
    except (duckdb.InvalidInputException, duckdb.IOException, duckdb.ConversionException) as err:
        # what a bad file causes; a binder or parser error would be a bug here and must surface
        raise SourceRejected(f"not a readable CSV: {str(err).splitlines()[0]}") from None
    malformed = con.execute(
        """SELECT line, any_value(error_type::VARCHAR) AS error_type, any_value(csv_line) AS text,
                  any_value(error_message) AS message
           FROM reject_errors GROUP BY line ORDER BY line"""
    ).df()
    n = con.execute("SELECT count(*) FROM parsed").fetchall()[0][0]
    # DuckDB's `skip` counts the preamble's empty lines as lines: only later ones shift rows
    after = [e for e in empty_lines(path, encoding) if e > shape.header_line]
    skipped = malformed["line"].astype("int64").tolist() + after
    if skipped:
        _number_lines(con, skipped, shape.header_line)
    return Staged(
        rows_read=n + len(malformed),
        malformed=malformed,
        numbered=bool(skipped),
        header_line=shape.header_line,
    )


PARSE_REASON_PARAMS = {
    "why_value_parse": VALUE_PARSE_REASON,
    "why_quality_code": QUALITY_REASON,
}
