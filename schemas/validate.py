"""Validation that splits instead of failing: accepted rows go on, rejected rows go to quarantine.

Row-level failures (a value out of range, an unknown tag) quarantine that row with the column,
check and value that failed: one quarantine row per rejected row, so quarantine rows count
rejected source rows. Rows sharing the model's key are resolved by the model's duplicate rule
(`schemas.keys`): one stays, the others are quarantined with the rule as their reason.
Schema-level failures (a missing column, a wrong type) mean the file cannot be read as this
dataset at all: `SchemaRejected` carries a one-line reason and the caller rejects the whole file.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow

from schemas import lineage
from schemas.keys import KeyRule
from schemas.sql_checks import reason_text
from schemas.types import arrow_schema

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
    """Quarantine rows in the one column layout every path writes (`source_row` nullable Int64),
    even when there are none, so frames from different checks concatenate cleanly."""
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
    extra_checks: Mapping[str, Sequence[pa.Check]] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate lazily against `model`; return (accepted, quarantined), every row in one of them.

    The model's key is not checked here: duplicates are resolved by its rule
    (`resolve_duplicates`), not all rejected.
    """
    schema = copy.copy(model.to_schema())  # to_schema() is cached: never change it in place
    schema.unique = None
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
        found = _row_rejects(
            df, idx, column_name, str(check), group["failure_case"].tolist(), reason
        )
        rejects.append(found.set_axis(idx))
    failures = pd.concat(rejects)
    # one quarantine row per rejected row: its first failure, with every reason it failed for
    every_reason = failures.groupby(level=0, sort=False)["reason"].agg(
        lambda r: "; ".join(dict.fromkeys(r))
    )
    quarantined = failures[~failures.index.duplicated()].sort_index()
    quarantined = quarantined.assign(reason=every_reason.loc[quarantined.index].to_numpy())
    return df.drop(index=quarantined.index), quarantined.reset_index(drop=True)


def resolve_duplicates(df: pd.DataFrame, rule: KeyRule) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep one row per key: the first by the rule's preference order; quarantine the others.

    The rule's text is the quarantine reason, so anyone reading the quarantine knows why a
    row lost.
    """
    keys = list(rule.key)
    dup = df.duplicated(subset=keys, keep=False)
    if not dup.any():
        return df, quarantine_frame([])
    shared = df[dup]
    order = pd.DataFrame({f"k{i}": shared[k] for i, k in enumerate(keys)})
    for i, term in enumerate(rule.prefer):
        order[f"p{i}"] = term.sort_key(shared)
    ascending = [True] * len(keys) + [not p.descending or bool(p.ranking) for p in rule.prefer]
    ordered = order.sort_values(list(order.columns), ascending=ascending, kind="stable")
    losers = shared.loc[ordered.index[ordered.duplicated(subset=order.columns[: len(keys)])]]
    rejects = _row_rejects(
        df, losers.index, ",".join(keys), "duplicate_key", losers[keys[-1]].tolist(), rule.rule
    )
    return df.drop(index=losers.index), rejects


def as_arrow(
    frame: pd.DataFrame, model: type[pa.DataFrameModel], frame_checks: bool = True
) -> pa_arrow.Table:
    """`frame` validated by `model` and typed by it, ready to write: the lake's own tables (log,
    quarantine, audit) are held to their contracts like every silver table. A failure is a bug
    of the writer and raises. `frame_checks=False` leaves the model's dataframe-level checks to
    an asset check that reports them (the ingest log's conservation)."""
    schema = model.to_schema()
    if not frame_checks:
        schema = copy.copy(schema)
        schema.checks = []
    absent = [n for n, c in schema.columns.items() if n not in frame and c.nullable]
    frame = frame.assign(**dict.fromkeys(absent)) if absent else frame  # unknown: NULL
    typed = pa_arrow.Table.from_pandas(
        frame[list(schema.columns)].reset_index(drop=True),
        schema=arrow_schema(model),
        preserve_index=False,
    )
    schema.validate(typed.to_pandas(), lazy=True)
    return typed
