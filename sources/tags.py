"""Tag dictionary exports (e.g. PI AF): which tag measures what, on which unit, in which unit."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from sources.base import ReadResult, add_lineage, read_csv_text, rejects_where, require_columns
from sources.profiles import FileProfile

REQUIRED = ("tag", "unit_id", "parameter", "uom", "role", "interpolation")
OPTIONAL = ("low", "high", "max_gap_s", "description")


def read_tags(path: Path, sha256: str, rel_path: str, profile: FileProfile) -> ReadResult:
    df, lines, rejects = read_csv_text(path, profile.delimiter, profile.encoding, sha256, rel_path)
    col = {k: profile.column(k) for k in (*REQUIRED, *OPTIONAL)}
    require_columns(df, [col[k] for k in REQUIRED], rel_path)
    out = pd.DataFrame({k: df[col[k]].str.strip() for k in REQUIRED})
    out["role"] = out["role"].str.lower()
    out["interpolation"] = out["interpolation"].str.lower()
    problems = []
    ok = pd.Series(True, index=df.index)
    for k in ("low", "high", "max_gap_s"):
        text = df[col[k]].str.strip().str.replace(profile.decimal, ".", regex=False) if col[k] in df else pd.Series("", index=df.index)
        num = pd.to_numeric(text, errors="coerce").astype("float64")
        bad = num.isna() & (text != "")
        problems.append(rejects_where(bad & ok, df, lines, col[k], "number_parse", f"{k} is not a number", sha256, rel_path))
        ok &= ~bad
        out[k] = num
    out["description"] = df[col["description"]] if col["description"] in df else None
    out = add_lineage(out[ok.to_numpy()].reset_index(drop=True), sha256, lines[ok.to_numpy()], rel_path)
    return ReadResult({"tags": out}, pd.concat([rejects, *problems], ignore_index=True), rows_read=len(df) + len(rejects))
