"""What every reader shares: the result type, file hashing, and CSV reading with line numbers."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from schemas import lineage
from schemas.validate import quarantine_frame


@dataclass
class ReadResult:
    """Tables parsed from one source (by silver table name), unparseable rows, and the count read."""

    tables: dict[str, pd.DataFrame]
    rejects: pd.DataFrame = field(default_factory=lambda: quarantine_frame([]))
    rows_read: int = 0
    notes: list[str] = field(default_factory=list)


class SourceRejected(ValueError):
    """The whole file is unreadable as its dataset (message: one line naming the problem)."""


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def add_lineage(df: pd.DataFrame, sha256: str, rows, rel_path: str) -> pd.DataFrame:
    df[lineage.SOURCE_SHA256] = sha256
    df[lineage.SOURCE_ROW] = np.asarray(rows, dtype=np.int64)
    df[lineage.SOURCE_PATH] = rel_path
    return df


def read_csv_text(path: Path, delimiter: str = ",", encoding: str = "utf8", sha256: str = "", rel_path: str = "") -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Read a CSV as strings; return (frame, line number of each row, rejects of malformed lines).

    Reading single-threaded makes pyarrow report the line number of every malformed line, so
    the line of each good row follows by elimination (header = line 1, one record per line).
    """
    bad: list[dict] = []

    def on_invalid(row) -> str:
        bad.append({"source_sha256": sha256, "source_row": row.number, "source_path": rel_path, "column": None,
                    "check": "field_count", "failure_value": row.text[:200],
                    "reason": f"line has {row.actual_columns} fields, expected {row.expected_columns}"})
        return "skip"

    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            table = pacsv.read_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=False, encoding=encoding, block_size=1 << 24),
                parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
                convert_options=pacsv.ConvertOptions(
                    column_types=_all_strings(path, delimiter, encoding), strings_can_be_null=False, quoted_strings_can_be_null=False
                ),
            )
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError) as err:
        raise SourceRejected(f"not a readable CSV: {str(err).splitlines()[0]}") from None
    rejected_lines = np.array(sorted(b["source_row"] for b in bad), dtype=np.int64)
    all_lines = np.arange(2, table.num_rows + len(bad) + 2, dtype=np.int64)
    lines = np.setdiff1d(all_lines, rejected_lines, assume_unique=True)
    return table.to_pandas(), lines, quarantine_frame(bad)


def _all_strings(path: Path, delimiter: str, encoding: str) -> dict[str, pa.DataType]:
    with pa.input_stream(str(path), compression="detect") as stream:
        head = stream.read(1 << 16).decode(encoding, errors="replace")
    header = head.splitlines()[0] if head else ""
    if not header.strip():
        raise SourceRejected("empty file or missing header line")
    return {name.strip('"'): pa.string() for name in header.split(delimiter)}


def require_columns(df: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SourceRejected(f"{what}: missing column(s) {', '.join(map(repr, missing))}; found {', '.join(map(repr, df.columns))}")


_OFFSET = r"(?:Z|[+-]\d\d:?\d\d)\s*$"


def parse_timestamps(text: pd.Series, fmt: str | None, tz: str) -> pd.Series:
    """Text -> UTC timestamps; NaT where the text is unparseable or names no real local time.

    Naive local times are placed in `tz`. A local time skipped by the spring DST change does
    not exist and one repeated in autumn is ambiguous: both become NaT (and are quarantined)
    rather than guessed, unless the rows are in time order, which resolves the repeated hour.
    """
    if fmt is None:
        has_offset = text.str.contains(_OFFSET, regex=True, na=False)
        out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
        if has_offset.any():
            out[has_offset] = pd.to_datetime(text[has_offset], format="ISO8601", errors="coerce", utc=True)
        if (~has_offset).any():
            naive = pd.to_datetime(text[~has_offset], format="ISO8601", errors="coerce")
            out[~has_offset] = _localize(naive, tz)
        return out
    return _localize(pd.to_datetime(text, format=fmt, errors="coerce"), tz).astype("datetime64[us, UTC]")


def _localize(naive: pd.Series, tz: str) -> pd.Series:
    try:
        out = naive.dt.tz_localize(tz, ambiguous="infer", nonexistent="NaT").dt.tz_convert("UTC")
    except (ValueError, TypeError):
        out = naive.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT").dt.tz_convert("UTC")
    return out.astype("datetime64[us, UTC]")


def rejects_where(mask: pd.Series, df: pd.DataFrame, lines: np.ndarray, column: str, check: str, reason: str, sha256: str, rel_path: str) -> pd.DataFrame:
    """Quarantine rows for the True entries of `mask`, naming line, column, check and value."""
    m = np.asarray(mask, dtype=bool)
    return pd.DataFrame(
        {
            "source_sha256": sha256,
            "source_row": pd.array(lines[m], dtype="Int64"),
            "source_path": rel_path,
            "column": column,
            "check": check,
            "failure_value": df.loc[m, column].astype(str).str.slice(0, 200).to_numpy() if column in df else None,
            "reason": reason,
        }
    )


def finish_records(rows: list[dict], sha256: str, rel_path: str) -> pd.DataFrame:
    """Records built row by row (MES readers) -> typed frame; each record's `line` becomes lineage."""
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for c in ("start_ts", "end_ts", "inoculation_ts", "record_ts", "ts", "sampled_ts", "reported_ts"):
        if c in df:
            df[c] = pd.to_datetime(df[c], utc=True).astype("datetime64[us, UTC]")
    lines = df.pop("line").to_numpy(dtype=np.int64)
    return add_lineage(df, sha256, lines, rel_path)
