"""LIMS result exports: one row per sample and analyte, with sample and report times."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from sources.base import (
    ReadResult,
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
    """Lab results, one row per sample and analyte (the site's analyte dictionary is applied at
    ingest, to lab results from every source: `lake.ingest`)."""
    df, lines, rejects = read_csv_text(path, profile.delimiter, profile.encoding, sha256, rel_path)
    col = {
        k: profile.column(k)
        for k in ("sample_id", "batch_id", "analyte", "value", "unit", "sampled_at", "reported_at")
    }
    require_columns(df, list(col.values()), rel_path)
    text = df[col["value"]].str.strip()
    numeric = (
        text.str.replace(profile.decimal, ".", regex=False) if profile.decimal != "." else text
    )
    value = pd.to_numeric(numeric, errors="coerce").astype("float64")
    censored = text.str.match(_CENSORED)
    sampled = parse_timestamps(df[col["sampled_at"]], profile.timestamp_format, profile.timezone)
    reported = parse_timestamps(df[col["reported_at"]], profile.timestamp_format, profile.timezone)
    bad_value = (value.isna() & ~censored) | np.isinf(value)
    bad_sampled = sampled.isna()
    bad_reported = reported.isna() & (df[col["reported_at"]].str.strip() != "")
    # units go to pint later (contextualization, models):
    # text pint cannot safely evaluate stops here
    bad_unit = ~df[col["unit"]].str.strip().map(plausible_unit).astype(bool)
    problems = [
        rejects_where(
            bad_value,
            df,
            lines,
            col["value"],
            "value_parse",
            "result is neither a finite number nor a censored value like '<0.5'",
            sha256,
            rel_path,
        ),
        rejects_where(
            bad_sampled & ~bad_value,
            df,
            lines,
            col["sampled_at"],
            "timestamp",
            "sample time: " + timestamp_reason(profile.timestamp_format, profile.timezone),
            sha256,
            rel_path,
        ),
        rejects_where(
            bad_reported & ~bad_sampled & ~bad_value,
            df,
            lines,
            col["reported_at"],
            "timestamp",
            "report time: " + timestamp_reason(profile.timestamp_format, profile.timezone),
            sha256,
            rel_path,
        ),
        rejects_where(
            bad_unit & ~bad_reported & ~bad_sampled & ~bad_value,
            df,
            lines,
            col["unit"],
            "uom_syntax",
            "unit is not a unit expression "
            "(letters, digits, / * ^ % ( ), small powers; at most 40 characters)",
            sha256,
            rel_path,
        ),
    ]
    ok = (~(bad_value | bad_sampled | bad_reported | bad_unit)).to_numpy()
    out = pd.DataFrame(
        {
            "batch_id": df[col["batch_id"]].str.strip(),
            "sample_id": df[col["sample_id"]].str.strip(),
            "analyte": df[col["analyte"]].str.strip().str.lower(),
            "value": value,
            "value_text": text,
            "censored": censored.astype(bool),
            "uom": df[col["unit"]].str.strip(),
            "sampled_ts": sampled,
            "reported_ts": reported,
        }
    )[ok]
    out = add_lineage(out.reset_index(drop=True), sha256, lines[ok], rel_path)
    return ReadResult(
        {"samples": out},
        pd.concat([rejects, *problems], ignore_index=True),
        rows_read=len(df) + len(rejects),
    )
