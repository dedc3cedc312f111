"""Tag dictionary exports (e.g. PI AF): which tag measures what, on which unit, in which unit."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from schemas.units import UnitError, conversion
from sources.base import (
    CsvShape,
    ReadResult,
    add_lineage,
    plausible_unit,
    read_csv_text,
    rejects_where,
    require_columns,
)
from sources.profiles import FileProfile
from sources.site import Site


def _conversion(
    tag: str, parameter: str, uom: str, site: Site | None
) -> tuple[str, float, float, str | None]:
    """(canonical unit, scale, offset, reason the tag cannot be used or None)."""
    canonical = site.canonical_unit(parameter, uom) if site is not None else uom
    if not plausible_unit(uom):
        return (
            canonical,
            float("nan"),
            float("nan"),
            f"tag {tag[:80]!r}: {uom[:50]!r} is not a unit expression "
            "(letters, digits, / * ^ % ( ), small powers; at most 40 characters)",
        )
    try:
        scale, offset = conversion(uom, canonical)
    except UnitError as err:
        return (
            canonical,
            float("nan"),
            float("nan"),
            f"tag {tag[:80]!r}: {err} (the site's unit of {parameter})",
        )
    # pint's parser fails on garbage (e.g. '\x1b') with AssertionError, TokenError,
    # RecursionError…: that is an unconvertible unit (a quarantined row), not a crashed read
    except Exception as err:  # noqa: BLE001
        return (
            canonical,
            float("nan"),
            float("nan"),
            f"tag {tag[:80]!r}: cannot convert {uom[:50]!r} to {canonical!r}: "
            f"unparseable unit ({type(err).__name__})",
        )
    return canonical, scale, offset, None


REQUIRED = ("tag", "unit_id", "parameter", "uom", "role", "interpolation")
OPTIONAL = ("low", "high", "max_gap_s", "description")


def read_tags(
    path: Path, sha256: str, rel_path: str, profile: FileProfile, site: Site | None = None
) -> ReadResult:
    """Tag dictionary rows; each tag's unit is converted to the site's unit of its parameter
    (`site.parameters`; a parameter the site does not list keeps the tag's unit). A tag whose
    unit cannot be converted is quarantined with the reason, keyed by the tag (`row_key`), so
    that its points are quarantined with a reason that names it."""
    df, lines, rejects = read_csv_text(path, CsvShape.of(profile, path), sha256, rel_path)
    col = {k: profile.column(k) for k in (*REQUIRED, *OPTIONAL)}
    require_columns(df, [col[k] for k in REQUIRED])
    out = pd.DataFrame({k: df[col[k]].str.strip() for k in REQUIRED})
    out["role"] = out["role"].str.lower()
    out["interpolation"] = out["interpolation"].str.lower()
    problems = []
    ok = pd.Series(True, index=df.index)
    for k in ("low", "high", "max_gap_s"):
        text = (
            df[col[k]].str.strip().str.replace(profile.decimal, ".", regex=False)
            if col[k] in df
            else pd.Series("", index=df.index)
        )
        num = pd.to_numeric(text, errors="coerce").astype("float64")
        bad = num.isna() & (text != "")
        problems.append(
            rejects_where(
                bad & ok,
                df,
                lines,
                col[k],
                "number_parse",
                f"{k} is not a number",
                sha256,
                rel_path,
            )
        )
        ok &= ~bad
        out[k] = num
    out["description"] = df[col["description"]] if col["description"] in df else None
    conv = [
        _conversion(t, p, u, site)
        for t, p, u in zip(out["tag"], out["parameter"], out["uom"], strict=True)
    ]
    out["canonical_uom"] = [c[0] for c in conv]
    out["scale"] = [c[1] for c in conv]
    out["offset"] = [c[2] for c in conv]
    bad_unit = pd.Series([c[3] is not None for c in conv], index=df.index)
    reasons = pd.Series([c[3] for c in conv], index=df.index)
    problems.append(
        rejects_where(
            bad_unit & ok,
            df,
            lines,
            col["uom"],
            "uom_conversion",
            reasons,
            sha256,
            rel_path,
            row_key=out["tag"],
        )
    )
    ok &= ~bad_unit
    out = add_lineage(
        out[ok.to_numpy()].reset_index(drop=True), sha256, lines[ok.to_numpy()], rel_path
    )
    return ReadResult(
        {"tags": out},
        pd.concat([rejects, *problems], ignore_index=True),
        rows_read=len(df) + len(rejects),
    )
