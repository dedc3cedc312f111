"""What every reader shares: the result type, file hashing, and CSV reading with line numbers."""

from __future__ import annotations

import codecs
import csv
import functools
import hashlib
import io
import re
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
    """Tables parsed from one source (by silver table name), unparseable rows, and the count
    read."""

    tables: dict[str, pd.DataFrame]
    rejects: pd.DataFrame = field(default_factory=lambda: quarantine_frame([]))
    rows_read: int = 0
    notes: list[str] = field(default_factory=list)


class SourceRejected(ValueError):
    """The whole file is unreadable as its dataset (message: one line naming the problem)."""


def _first_line(err: BaseException) -> str:
    """The first non-blank line of an error message (SourceRejected messages are one line; some
    errors have none)."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    """The file's SHA-256 (hex), read in chunks: the identity of a landing file, its raw copy and
    every row read from it."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def add_lineage(df: pd.DataFrame, sha256: str, rows, rel_path: str) -> pd.DataFrame:
    """Add the lineage columns in place (file hash, each row's line or ordinal `rows`, relative
    path) and return `df`."""
    df[lineage.SOURCE_SHA256] = sha256
    df[lineage.SOURCE_ROW] = np.asarray(rows, dtype=np.int64)
    df[lineage.SOURCE_PATH] = rel_path
    return df


@dataclass(frozen=True)
class CsvShape:
    """How a CSV is laid out: the profile keys every CSV reader honours."""

    delimiter: str = ","
    encoding: str = "utf8"
    header_line: int = 1  # the line of column names; lines before it are a preamble; 0: none
    column_names: tuple[str, ...] = ()  # the columns by position, for a file without a header

    @classmethod
    def of(cls, profile, path: Path) -> CsvShape:
        """The profile's layout of `path`, in the encoding its byte-order mark shows (else the
        profile's)."""
        encoding = _detected_encoding(path, profile.encoding)
        return cls(profile.delimiter, encoding, profile.header_line, profile.column_names)


def read_csv_text(
    path: Path, shape: CsvShape, sha256: str = "", rel_path: str = ""
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Read a CSV as strings; return (frame, line number of each row, rejects of malformed lines).

    Reading single-threaded makes pyarrow report the record number of every malformed line, so
    the record of each good row follows by elimination; records are then mapped to line numbers
    in the file (lines of a preamble and the header counted, one record per line, empty lines
    skipped but counted).
    """
    delimiter, encoding, first = shape.delimiter, shape.encoding, shape.header_line
    bad: list[dict] = []

    def on_invalid(row) -> str:
        bad.append(
            {
                "source_sha256": sha256,
                "source_row": row.number,
                "source_path": rel_path,
                "column": None,
                "check": "field_count",
                "failure_value": row.text[:200],
                "reason": f"line has {row.actual_columns} fields, expected {row.expected_columns}",
            }
        )
        return "skip"

    try:
        # The header is parsed here and handed to pyarrow (column_names + skip_rows), so the names
        # that get string types are exactly the names of the table: a guessed name that missed
        # (BOM, quotes, spaces) let pyarrow infer numbers/timestamps and lose the source text, and
        # a duplicated name made pyarrow keep one of the columns silently.
        names, header_only = _header_names(path, delimiter, encoding, first, shape.column_names)
        if header_only:
            return (
                pd.DataFrame({n: pd.Series(dtype="str") for n in names}),
                np.empty(0, dtype=np.int64),
                quarantine_frame([]),
            )
        with pa.input_stream(str(path), compression="detect") as stream:
            table = pacsv.read_csv(
                stream,
                read_options=pacsv.ReadOptions(
                    use_threads=False,
                    encoding=encoding,
                    block_size=1 << 24,
                    column_names=names,
                    skip_rows=first,  # pyarrow counts empty lines here, as lines
                ),
                parse_options=pacsv.ParseOptions(
                    delimiter=delimiter, invalid_row_handler=on_invalid
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types={n: pa.string() for n in names},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        frame = table.to_pandas()
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError) as err:
        if isinstance(err, UnicodeDecodeError) or "invalid UTF8" in str(err):
            raise SourceRejected(
                f"line {_first_undecodable_line(path, encoding)} is not {encoding} text: set the "
                "profile's `encoding` (e.g. latin-1, cp1252, utf-16)"
            ) from None
        raise SourceRejected(f"not a readable CSV: {_first_line(err)}") from None
    # pyarrow numbers records on from the header's line and skips later empty lines: lineage
    # must name the line an editor shows, so records are mapped to lines by counting the empty
    # lines after the header before them (empty lines of a preamble are counted by pyarrow)
    skipped = np.asarray([e for e in empty_lines(path, encoding) if e > first], dtype=np.int64)
    shift = skipped - np.arange(1, skipped.size + 1)  # records before the k-th empty line

    def line_of(record: np.ndarray) -> np.ndarray:
        return record + np.searchsorted(shift, record, side="left")

    rejected = np.array(sorted(b["source_row"] for b in bad), dtype=np.int64)
    records = np.setdiff1d(
        np.arange(first + 1, first + 1 + table.num_rows + len(bad), dtype=np.int64),
        rejected,
        assume_unique=True,
    )
    bad_lines = line_of(np.array([b["source_row"] for b in bad], dtype=np.int64))
    for b, line in zip(bad, bad_lines, strict=True):
        b["source_row"] = int(line)
    return frame, line_of(records), quarantine_frame(bad)


# byte-order marks of encodings a declared one cannot read: a UTF-16 file (Windows instrument
# software writes them) read as UTF-8 is garbage from its first byte. A UTF-8 mark is skipped by
# the readers whatever the declared encoding.
_UTF16_MARKS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _detected_encoding(path: Path, declared: str) -> str:
    """`utf-16` when the file starts with a UTF-16 byte-order mark, else the declared one;
    SourceRejected when the file cannot be opened (a .gz that is not gzip, say)."""
    try:
        with pa.input_stream(str(path), compression="detect") as stream:
            start = stream.read(2)
    except (pa.ArrowInvalid, OSError) as err:
        raise SourceRejected(f"cannot open: {_first_line(err)}") from None
    return "utf-16" if start in _UTF16_MARKS else declared


def _first_undecodable_line(path: Path, encoding: str) -> int | str:
    """The number of the first line that does not decode (the readers' own messages count
    records, not the lines an editor shows); '?' if every line decodes one by one."""
    with pa.input_stream(str(path), compression="detect") as stream:
        for number, line in enumerate(io.BufferedReader(stream), start=1):
            try:
                line.decode(encoding)
            except UnicodeDecodeError:
                return number
    return "?"


def empty_lines(path: Path, encoding: str = "utf8", chunk: int = 1 << 24) -> list[int]:
    """Line numbers (1-based) of the file's empty lines ("\n" or "\r\n" alone), read in chunks.

    CSV readers (pyarrow, DuckDB) skip empty lines and number only records; lineage adds these
    back. ASCII-compatible encodings are scanned as bytes (a newline byte is always a newline
    there), others are decoded and scanned as UTF-8. Lines ending in a lone "\r" (classic Mac)
    are not supported.
    """
    codec = codecs.lookup(encoding).name
    decoder = (
        None
        if codec in ("utf-8", "latin-1", "iso8859-1", "ascii", "cp1252")
        else codecs.getincrementaldecoder(codec)(errors="replace")
    )
    found: list[np.ndarray] = []
    # `tail` carries the last two bytes of the previous chunk, so an empty line across the chunk
    # boundary is seen; before the file, a virtual newline makes line 1 like any other line.
    tail, base = (
        b"\n",
        -1,
    )  # line number of the line after the k-th newline (0-based) in buf = base + k + 2
    with pa.input_stream(str(path), compression="detect") as stream:
        while block := stream.read(chunk):
            buf = tail + (block if decoder is None else decoder.decode(block).encode())
            a = np.frombuffer(buf, dtype=np.uint8)
            nl = np.flatnonzero(a == 10)
            gap = np.diff(nl)
            empty = ((gap == 1) | ((gap == 2) & (a[nl[:-1] + 1] == 13))) & (nl[1:] >= len(tail))
            found.append(base + np.flatnonzero(empty) + 2)
            tail = buf[-2:]
            base += nl.size - tail.count(b"\n")
    return np.concatenate(found).tolist() if found else []


_HEAD = 1 << 16  # the header line must fit in the first 64 KiB


def _header_names(
    path: Path,
    delimiter: str,
    encoding: str,
    header_line: int = 1,
    given: tuple[str, ...] = (),
) -> tuple[list[str], bool]:
    """(column names of line `header_line`, or the `given` names of a file without a header
    (line 0); whether no data follow); SourceRejected if unusable."""
    with pa.input_stream(str(path), compression="detect") as stream:
        head = stream.read(_HEAD + 1)
    text = head[:_HEAD].decode(encoding, errors="replace").lstrip("\ufeff")
    if header_line == 0:
        return list(given), len(head) <= _HEAD and not text.strip()
    parts = re.split(r"\r\n|\r|\n", text, maxsplit=header_line)  # lines to the header, the rest
    if len(parts) <= header_line and len(head) > _HEAD:
        raise SourceRejected(
            f"the header line (line {header_line}) ends beyond the first {_HEAD} bytes"
        )
    if len(parts) < header_line:
        raise SourceRejected(
            f"the file has fewer than {header_line} lines: no header at line {header_line} "
            "(the profile's `header_line`)"
        )
    line, rest = parts[header_line - 1], (parts[header_line] if len(parts) > header_line else "")
    if not line.strip():
        where = "" if header_line == 1 else f" at line {header_line} (the profile's `header_line`)"
        raise SourceRejected(f"empty file or missing header line{where}")
    try:
        names = next(csv.reader([line], delimiter=delimiter, strict=True))
    except csv.Error as err:  # e.g. a quoted name running over the line end
        raise SourceRejected(f"unreadable header line: {_first_line(err)}") from None
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SourceRejected(
            f"duplicate column name(s) in the header: {', '.join(repr(d[:50]) for d in dupes[:5])}"
        )
    # nothing but line ends after the header (pyarrow skips empty lines; it cannot skip a header
    # with no data)
    return names, len(head) <= _HEAD and rest.strip("\r\n") == ""


def csv_header(path: Path, shape: CsvShape) -> list[str]:
    """Column names, read as `read_csv_text` reads them; SourceRejected if unusable."""
    try:
        return _header_names(
            path, shape.delimiter, shape.encoding, shape.header_line, shape.column_names
        )[0]
    except (pa.ArrowInvalid, OSError) as err:
        raise SourceRejected(f"cannot open: {_first_line(err)}") from None


_UNIT_TEXT = re.compile(r"[\w\s/*.^%()°µ+-]{0,40}")
_BIG_POWER = re.compile(r"(\*\*|\^)\s*\(?\s*[+-]?\d{3,}|(\*\*|\^)[\s\d.()+-]*(\*\*|\^)")


@functools.cache
def plausible_unit(text: str) -> bool:
    """Whether `text` may be handed to pint (contextualization and models convert units with it).

    pint's parser evaluates arithmetic: '10**10**10' computes a ten-billion-digit integer (the
    process hangs), and garbage such as '\x1b', 'k)M' or '2/0' raises AssertionError, TokenError,
    ZeroDivisionError… instead of a unit error, which crashes whoever converts it later. Units
    are short words, prefixes, '/', '*', small powers and factors like '1e6 cells/mL'; a text
    pint merely does not know ('furlongs/fortnight' fine, 'blorp' unknown) is still plausible.
    """
    if not _UNIT_TEXT.fullmatch(text) or _BIG_POWER.search(text):
        return False
    if not text.strip():
        return True
    import pint

    from schemas.units import _parse  # the exact parsing that conversion() does

    try:
        _parse(text)
    except (pint.errors.PintError, ValueError, AttributeError):
        return True  # an unknown or odd unit: conversion() reports it as a UnitError, cleanly
    # see docstring: pint's parser fails in arbitrary ways on garbage
    except Exception:  # noqa: BLE001
        return False
    return True


def require_columns(df: pd.DataFrame, columns) -> None:
    """SourceRejected, naming the missing and the found columns, unless `df` has every one of
    `columns`: a file without them cannot be read as its dataset at all. (The message names no
    file: whoever reports it names the source once.)"""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SourceRejected(
            f"missing column(s) {', '.join(map(repr, missing))}; "
            f"found {', '.join(map(repr, df.columns))}"
        )


_OFFSET = r"(?:Z|[+-]\d\d:?\d\d)\s*$"


def timestamp_reason(fmt: str | None, tz: str) -> str:
    """The quarantine reason of a timestamp `parse_timestamps` (or its SQL twin) refused."""
    return (
        "unparseable timestamp, or a local time the DST change skips or repeats"
        f" (format {fmt or 'ISO 8601'}, zone {tz})"
    )


def parse_timestamps(
    text: pd.Series, fmt: str | None, tz: str, in_time_order: bool = False
) -> pd.Series:
    """Text -> UTC timestamps; NaT where the text is unparseable or names no real local time.

    Text with an offset needs no zone; naive local times are placed in `tz` by `localize`.
    """
    if fmt is None:
        has_offset = text.str.contains(_OFFSET, regex=True, na=False)
        out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[us, UTC]")
        if has_offset.any():
            out[has_offset] = pd.to_datetime(
                text[has_offset], format="ISO8601", errors="coerce", utc=True
            )
        if (~has_offset).any():
            naive = pd.to_datetime(text[~has_offset], format="ISO8601", errors="coerce")
            out[~has_offset] = localize(naive, tz, in_time_order)
        return out
    if (
        "%z" in fmt or "%Z" in fmt
    ):  # the text carries its offset: nothing to localize (and offsets may differ row to row)
        return pd.to_datetime(text, format=fmt, errors="coerce", utc=True).astype(
            "datetime64[us, UTC]"
        )
    return localize(pd.to_datetime(text, format=fmt, errors="coerce"), tz, in_time_order)


def localize(naive: pd.Series, tz: str, in_time_order: bool = False) -> pd.Series:
    """Naive local times in `tz` -> UTC: the one DST rule of every reader.

    A local time the spring change skips does not exist: NaT, so the row is quarantined. One
    the autumn change repeats names two instants and is quarantined too, never guessed, unless
    the rows are one time series in time order (`in_time_order`: a wide export, one row per
    instant), where the repeat itself tells the two hours apart; if the order does not show it,
    they are quarantined all the same. Elsewhere order proves nothing (a SQL pull orders by
    text, a long file may be sorted by tag). The streamed CSV path applies the rule in SQL
    (`sources.historian_stream`).
    """
    placed = None
    if in_time_order:
        try:
            placed = naive.dt.tz_localize(tz, ambiguous="infer", nonexistent="NaT")
        except (ValueError, TypeError):  # the order does not resolve the repeated hour
            placed = None
    if placed is None:
        placed = naive.dt.tz_localize(tz, ambiguous="NaT", nonexistent="NaT")
    return placed.dt.tz_convert("UTC").astype("datetime64[us, UTC]")


def rejects_where(
    mask: pd.Series,
    df: pd.DataFrame,
    lines: np.ndarray,
    column: str | pd.Series,
    check: str,
    reason,
    sha256: str,
    rel_path: str,
    row_key: pd.Series | None = None,
    values: pd.Series | None = None,
) -> pd.DataFrame:
    """Quarantine rows for the True entries of `mask`, naming line, column, check and value.

    `column` is the source column (a Series when each row's value came from its own column, as
    cells of a wide export do); the value shown is `values`, by default `df[column]`. `reason`
    is one text, or a Series aligned with `df` giving each row's own reason.
    """
    m = np.asarray(mask, dtype=bool)
    if isinstance(reason, pd.Series):
        reason = reason[m].to_numpy()
    if values is None and isinstance(column, str) and column in df:
        values = df[column]
    return pd.DataFrame(
        {
            "source_sha256": sha256,
            "source_row": pd.array(lines[m], dtype="Int64"),
            "source_path": rel_path,
            "column": column[m].to_numpy() if isinstance(column, pd.Series) else column,
            "check": check,
            "failure_value": values[m].astype(str).str.slice(0, 200).to_numpy()
            if values is not None
            else None,
            "reason": reason,
            "row_key": row_key[m].to_numpy() if row_key is not None else None,
        }
    )


def qualities(status: pd.Series, mapping: dict[str, str]) -> pd.Series:
    """A source's status texts -> quality words by the profile's mapping (case and surrounding
    blanks ignored); NaN for a status the mapping lacks (quarantined). A blank status means the
    source gave none, as a file without a status column: good. The streamed CSV path applies
    the same rule in SQL (`sources.historian_stream`)."""
    text = status.astype("str").str.strip().str.lower()
    words = {str(k).strip().lower(): v for k, v in mapping.items()}
    return text.map(words).where(text.fillna("") != "", "good")


QUALITY_REASON = "status is not in the profile's quality mapping"
VALUE_PARSE_REASON = "value is neither a finite number nor a known digital state"


def historian_values(
    text: pd.Series, decimal: str, digital_states
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(numeric value, digital state, unparseable mask) of a historian value column. A value
    that is not finite (inf, 1e309, NaN) is unparseable: no curated number may be infinite.
    The streamed long-CSV path applies the same rule in SQL (`sources.historian_stream`)."""
    cleaned = text.astype("string").fillna("").str.strip()
    numeric_text = cleaned.str.replace(decimal, ".", regex=False) if decimal != "." else cleaned
    value = pd.to_numeric(numeric_text, errors="coerce").astype("float64")
    value = value.where(np.isfinite(value))
    states = {s.lower(): s for s in digital_states}
    is_state = value.isna() & cleaned.str.lower().isin(states).fillna(False).astype(bool)
    state = (
        cleaned.where(is_state).astype("str").where(is_state, None)
    )  # typed text even when all empty
    return value, state, value.isna() & ~is_state


def finish_records(rows: list[dict], sha256: str, rel_path: str) -> pd.DataFrame:
    """Records built row by row (MES readers) -> typed frame; each record's `line` becomes
    lineage."""
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for c in (
        "start_ts",
        "end_ts",
        "inoculation_ts",
        "record_ts",
        "ts",
        "sampled_ts",
        "reported_ts",
    ):
        if c in df:
            df[c] = pd.to_datetime(df[c], utc=True).astype("datetime64[us, UTC]")
    lines = df.pop("line").to_numpy(dtype=np.int64)
    return add_lineage(df, sha256, lines, rel_path)
