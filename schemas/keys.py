"""Table keys and the preference order that resolves duplicates, as the models declare them.

A model states its key in `Config.unique` and, in `Config.metadata["duplicates"]`, how rows
sharing a key are resolved: a `Duplicates` with the preference order and the rule's text (the
quarantine reason of every row that loses). The pandas path (`schemas.validate`), the streamed
SQL path (`lake.historian_ingest`) and the catalog's views read it from here, so the rule is
stated once.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pandera.pandas as pa


@dataclass(frozen=True)
class Prefer:
    """One term of a preference order: a column, best value first.

    `ranking` lists a text column's values from best to worst (values not listed come last);
    without it the column sorts by value, ascending unless `descending`.
    """

    column: str
    descending: bool = False
    ranking: tuple[str, ...] = ()

    def sort_key(self, frame: pd.DataFrame) -> pd.Series:
        """The column as a sortable key where smaller is better."""
        if not self.ranking:
            return frame[self.column]
        rank = {value: i for i, value in enumerate(self.ranking)}
        return frame[self.column].map(rank).fillna(len(self.ranking))

    def order_sql(self, ident: str) -> str:
        """This term of an SQL ORDER BY (best first) on the column named by `ident`."""
        if not self.ranking:
            return f"{ident} {'DESC' if self.descending else 'ASC'} NULLS LAST"
        cases = " ".join(f"WHEN '{v}' THEN {i}" for i, v in enumerate(self.ranking))
        return f"CASE {ident} {cases} ELSE {len(self.ranking)} END"


@dataclass(frozen=True)
class Duplicates:
    """How rows sharing a model's key are resolved: the first by `prefer` stays."""

    prefer: tuple[Prefer, ...]
    rule: str  # the documented rule, stored as the quarantine reason of every losing row


@dataclass(frozen=True)
class KeyRule:
    """A model's key with its resolution (`key_rule`)."""

    key: tuple[str, ...]
    prefer: tuple[Prefer, ...]
    rule: str


def key_rule(model: type[pa.DataFrameModel]) -> KeyRule | None:
    """The key and duplicate rule `model` declares (None for a table without a key).

    A key without a resolution is a model error: every duplicate would be quarantined and no
    copy would reach silver, so it raises rather than guessing an order.
    """
    unique = model.to_schema().unique
    if not unique:
        return None
    resolution = (getattr(model.Config, "metadata", None) or {}).get("duplicates")
    if not isinstance(resolution, Duplicates):
        raise TypeError(f"{model.__name__} declares the key {unique} but no Duplicates rule")
    return KeyRule(tuple(unique), resolution.prefer, resolution.rule)
