"""Validation that splits instead of failing: accepted rows go on, rejected rows go to quarantine.

Row-level failures (a value out of range, an unknown tag, a duplicate key) quarantine that row
with the column, check and value that failed. Schema-level failures (a missing column, a
wrong type) mean the file cannot be read as this dataset at all: `SchemaRejected` carries a
one-line reason and the caller rejects the whole file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import pandas as pd
import pandera.pandas as pa

from schemas import lineage
from schemas.sql_checks import reason_text

QUARANTINE_COLUMNS = (
    "source_sha256",
    "source_row",
    "source_path",
    "column",
    "check",
    "failure_value",
    "reason",
    "row_key",
)


class SchemaRejected(ValueError):
    """The file does not have the shape of its dataset; the message is one line."""


def quarantine_frame(rows: Iterable[dict]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=list(QUARANTINE_COLUMNS))
    df["source_row"] = df["source_row"].astype("Int64")
    return df


def _row_rejects(
    df: pd.DataFrame, index: pd.Index, column: str | None, check: str, values, reason: str
) -> pd.DataFrame:
    rows = df.loc[index]
    return pd.DataFrame(
        {
            "source_sha256": rows[lineage.SOURCE_SHA256].to_numpy(),
            "source_row": rows[lineage.SOURCE_ROW].astype("Int64").to_numpy(),
            "source_path": rows[lineage.SOURCE_PATH].to_numpy(),
            "column": column,
            "check": check,
            "failure_value": [
                None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v)
                for v in values
            ],
            "reason": reason,
        }
    )


def split(
    df: pd.DataFrame,
    model: type[pa.DataFrameModel],
    extra_checks: dict[str, Sequence[pa.Check]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate lazily against `model`; return (accepted, quarantined) with every row in one of them."""
    schema = model.to_schema()
    if extra_checks:
        schema = schema.update_columns(
            {
                col: {"checks": [*schema.columns[col].checks, *checks]}
                for col, checks in extra_checks.items()
            }
        )
    try:
        schema.validate(df, lazy=True)
        return df, quarantine_frame([])
    except pa.errors.SchemaErrors as err:
        cases = err.failure_cases
    reasons = {
        (col, str(check.error)): reason_text(col, check)
        for col, c in schema.columns.items()
        for check in c.checks
    }
    schema_level = cases[cases["index"].isna()]
    if len(schema_level):
        first = schema_level.iloc[0]
        raise SchemaRejected(
            f"{first['check']} failed for column {first['column']!r}: {first['failure_case']}"
        )
    rejects = []
    for (column, check), group in cases.groupby(["column", "check"], sort=False, dropna=False):
        idx = pd.Index(group["index"].astype(df.index.dtype))
        column_name = None if column == model.__name__ else column
        reason = reasons.get((column, str(check)), f"{column_name or 'row'} failed {check}")
        rejects.append(
            _row_rejects(df, idx, column_name, str(check), group["failure_case"].tolist(), reason)
        )
    quarantined = pd.concat(rejects, ignore_index=True)
    bad = pd.Index(cases["index"].dropna().unique()).astype(df.index.dtype)
    return df.drop(index=bad), quarantined


def resolve_duplicates(
    df: pd.DataFrame,
    keys: Sequence[str],
    prefer: Sequence[str],
    ascending: Sequence[bool],
    rule: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one row per key: the first after sorting by `prefer`; quarantine the others.

    `rule` is the documented resolution rule, stored as the quarantine reason so that anyone
    reading the quarantine knows why a row lost.
    """
    ordered = df.sort_values(
        [*keys, *prefer], ascending=[True] * len(keys) + list(ascending), kind="stable"
    )
    dup = ordered.duplicated(subset=list(keys), keep="first")
    if not dup.any():
        return df, quarantine_frame([])
    losers = ordered[dup]
    rejects = _row_rejects(
        df, losers.index, ",".join(keys), "duplicate_key", losers[keys[-1]].tolist(), rule
    )
    return df.drop(index=losers.index), rejects
