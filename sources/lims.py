"""Lab results: LIMS exports (one row per sample and analyte) and analyzer exports (one row per
sample, one column per analyte: cell counters, chemistry and metabolite analyzers).

Both shapes become the same result rows and pass the same checks; the site's analyte
dictionary is applied at ingest, to lab results from every source (`lake.ingest`).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from sources.base import (
    CsvShape,
    ReadResult,
    SourceRejected,
    add_lineage,
    parse_timestamps,
    plausible_unit,
    read_csv_text,
    rejects_where,
    require_columns,
    timestamp_reason,
)
from sources.profiles import FileProfile

_CENSORED = re.compile(r"^\s*[<>]\s*\d")


def read_lims(path: Path, sha256: str, rel_path: str, profile: FileProfile) -> ReadResult:
    """A LIMS export: one row per sample and analyte, the unit in a column of its own."""
    df, lines, rejects = read_csv_text(path, CsvShape.of(profile, path), sha256, rel_path)
    col = {
        k: profile.column(k)
        for k in ("sample_id", "analyte", "value", "unit", "sampled_at", "reported_at")
    }
    require_columns(df, [*col.values(), *_batch_columns(profile)])
    batch, batch_text = batch_ids(df, profile, rel_path)
    results = pd.DataFrame(
        {
            "batch_id": batch,
            "batch_text": batch_text,
            "sample_id": df[col["sample_id"]].str.strip(),
            "analyte": analyte_names(df[col["analyte"]], profile),
            "text": df[col["value"]].str.strip(),
            "unit": df[col["unit"]].str.strip(),
            "unit_column": col["unit"],
            "sampled_at": df[col["sampled_at"]],
            "reported_at": df[col["reported_at"]],
            "line": lines,
            "value_column": col["value"],
        }
    )
    return _checked(results, profile, sha256, rel_path, rejects, [])


def read_lims_wide(path: Path, sha256: str, rel_path: str, profile: FileProfile) -> ReadResult:
    """An analyzer export: one row per sample, one column per analyte (the unit from the
    profile's `units` or from the header by `header_unit`). An empty cell is no result; every
    other cell is one result, checked as a LIMS result is."""
    df, lines, rejects = read_csv_text(path, CsvShape.of(profile, path), sha256, rel_path)
    col = {k: profile.column(k) for k in ("sample_id", "sampled_at", "reported_at")}
    require_columns(df, [col["sample_id"], col["sampled_at"], *_batch_columns(profile)])
    reported = col["reported_at"] if col["reported_at"] in df else None
    id_columns = {*col.values(), profile.column("batch_id"), *_batch_columns(profile)}
    # a header ending in the delimiter names an empty column: nothing to read there
    id_columns |= {c for c in df.columns if not c.strip() and (df[c].str.strip() == "").all()}
    columns = result_columns(list(df.columns), profile, id_columns)
    wide = df[list(columns)].apply(lambda c: c.str.strip())
    filled = (wide != "").to_numpy()
    rows, cols = np.nonzero(filled)  # row-major: a sample's results in column order
    headers = np.array(list(columns))[cols]
    batch, batch_text = batch_ids(df, profile, rel_path)
    results = pd.DataFrame(
        {
            "batch_id": batch.to_numpy()[rows],
            "batch_text": batch_text.to_numpy()[rows],
            "sample_id": df[col["sample_id"]].str.strip().to_numpy()[rows],
            "analyte": analyte_names(pd.Series([columns[h][0] for h in headers]), profile),
            "text": wide.to_numpy()[rows, cols],
            "unit": [columns[h][1] for h in headers],
            "unit_column": headers,  # the unit is part of the result column's header
            "sampled_at": df[col["sampled_at"]].to_numpy()[rows],
            "reported_at": df[reported].to_numpy()[rows] if reported else "",
            "line": lines[rows],
            "value_column": headers,
        }
    )
    empty = int((~filled.any(axis=1)).sum())
    notes = [f"{empty} sample row(s) without any result"] if empty else []
    return _checked(results, profile, sha256, rel_path, rejects, notes)


def result_columns(
    headers: list[str], profile: FileProfile, not_results: set[str]
) -> dict[str, tuple[str, str]]:
    """Result column header -> (analyte, unit) for a wide export; SourceRejected when a column
    would be a result of no known unit (say which columns are results, or exclude the others)."""
    if profile.analyte_columns:
        try:
            require_columns(pd.DataFrame(columns=headers), list(profile.analyte_columns))
        except SourceRejected as err:
            raise SourceRejected(f"{err} (the profile's `analyte_columns`)") from None
        chosen = list(profile.analyte_columns)
    else:
        chosen = [h for h in headers if h not in not_results and h not in profile.exclude_columns]
    pattern = re.compile(profile.header_unit) if profile.header_unit else None
    out, unitless = {}, []
    for header in chosen:
        found = pattern.fullmatch(header.strip()) if pattern else None
        analyte = profile.analyte_columns.get(header) or (found["analyte"] if found else header)
        unit = profile.units.get(header, found["unit"] if found else None)
        if unit is None:
            unitless.append(header)
            continue
        out[header] = (analyte, unit.strip())
    if unitless:
        raise SourceRejected(
            f"no unit for result column(s) {', '.join(map(repr, unitless[:10]))}: give the "
            "profile's `units` or a `header_unit` pattern, or list the result columns in "
            "`analyte_columns` (or the others in `exclude_columns`)"
        )
    if not out:
        raise SourceRejected(
            f"no result columns; found {', '.join(map(repr, headers))}: list them in the "
            "profile's `analyte_columns`"
        )
    return out


def analyte_names(names: pd.Series, profile: FileProfile) -> pd.Series:
    """A source's analyte names -> the site's (the profile's `analyte_names`, case and blanks
    ignored; a name it does not map is kept), lower case as the analyte dictionary's keys."""
    mapping = {k.strip().lower(): v.strip().lower() for k, v in profile.analyte_names.items()}
    lower = names.astype(str).str.strip().str.lower()
    return lower.map(lambda name: mapping.get(name, name)).astype(lower.dtype)


def _batch_columns(profile: FileProfile) -> list[str]:
    """The column the batch id is read from, if any."""
    if not profile.batch_from:
        return [profile.column("batch_id")]
    return [profile.batch_from["column"]] if "column" in profile.batch_from else []


def batch_ids(df: pd.DataFrame, profile: FileProfile, rel_path: str) -> tuple[pd.Series, pd.Series]:
    """Each row's batch id and the text it was taken from: its column (by default `batch_id`),
    the file's path, or the profile's constant (`batch_from`); an optional `pattern` takes the
    `batch` group of the text. "" where a row has none (quarantined by the checks)."""
    spec = profile.batch_from
    if "path" in spec:
        found = re.search(spec["path"], rel_path)
        if found is None or not found["batch"]:
            raise SourceRejected(
                f"the profile's batch_from.path pattern {spec['path']!r} finds no batch id in "
                "the file's path"
            )
        text = pd.Series(found["batch"], index=df.index)
    elif "value" in spec:
        text = pd.Series(spec["value"], index=df.index)
    else:
        text = df[_batch_columns(profile)[0]].str.strip()
    found = text.str.extract(spec["pattern"])["batch"].fillna("") if "pattern" in spec else text
    return found.str.strip(), text


def _checked(
    results: pd.DataFrame,
    profile: FileProfile,
    sha256: str,
    rel_path: str,
    rejects: pd.DataFrame,
    notes: list[str],
) -> ReadResult:
    """Result rows -> `samples` rows; a row failing a check is quarantined with its first
    failure, naming the column it came from."""
    text = results["text"]
    numeric = (
        text.str.replace(profile.decimal, ".", regex=False) if profile.decimal != "." else text
    )
    value = pd.to_numeric(numeric, errors="coerce").astype("float64")
    censored = text.str.match(_CENSORED)
    sampled = parse_timestamps(
        results["sampled_at"].astype(str), profile.timestamp_format, profile.timezone
    )
    reported_text = results["reported_at"].astype(str).str.strip()
    reported = parse_timestamps(reported_text, profile.timestamp_format, profile.timezone)
    # units go to pint later (contextualization, models): text pint cannot safely evaluate stops
    unit_ok = results["unit"].map(plausible_unit).astype(bool)
    stamp = timestamp_reason(profile.timestamp_format, profile.timezone)
    checks = [
        (
            results["batch_id"] == "",
            _batch_source(profile),
            results["batch_text"],
            "batch_id",
            "no batch id",
        ),
        (
            (value.isna() & ~censored) | np.isinf(value),
            results["value_column"],
            text,
            "value_parse",
            "result is neither a finite number nor a censored value like '<0.5'",
        ),
        (
            sampled.isna(),
            profile.column("sampled_at"),
            results["sampled_at"],
            "timestamp",
            "sample time: " + stamp,
        ),
        (
            reported.isna() & (reported_text != ""),
            profile.column("reported_at"),
            reported_text,
            "timestamp",
            "report time: " + stamp,
        ),
        (
            ~unit_ok,
            results["unit_column"],
            results["unit"],
            "uom_syntax",
            "unit is not a unit expression "
            "(letters, digits, / * ^ % ( ), small powers; at most 40 characters)",
        ),
    ]
    failed = pd.Series(False, index=results.index)
    problems = []
    for mask, column, values, check, reason in checks:
        first = mask & ~failed
        problems.append(
            rejects_where(
                first,
                results,
                results["line"].to_numpy(),
                column,
                check,
                reason,
                sha256,
                rel_path,
                values=values,
            )
        )
        failed |= mask
    ok = (~failed).to_numpy()
    out = pd.DataFrame(
        {
            "batch_id": results["batch_id"],
            "sample_id": results["sample_id"],
            "analyte": results["analyte"],
            "value": value,
            "value_text": text,
            "censored": censored.astype(bool),
            "uom": results["unit"],
            "sampled_ts": sampled,
            "reported_ts": reported,
        }
    )[ok]
    out = add_lineage(out.reset_index(drop=True), sha256, results["line"].to_numpy()[ok], rel_path)
    return ReadResult(
        {"samples": out},
        pd.concat([rejects, *problems], ignore_index=True),
        rows_read=len(results) + len(rejects),
        notes=notes,
    )


def _batch_source(profile: FileProfile) -> str:
    """What a quarantined row's missing batch id came from (a column, or the profile)."""
    columns = _batch_columns(profile)
    return columns[0] if columns else "batch_from"
