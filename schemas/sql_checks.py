"""A pandera model's rules as DuckDB SQL, for tables too large to validate in pandas.

The pandera model stays the one definition of a table; this module translates its column
checks (ranges, allowed values, string lengths, nullability) into SQL predicates, its key and
duplicate rule into a window (`key_sql`) and its dtypes into column types (`schemas.types`,
`require_types`), so that large files are validated while they stream through DuckDB.
Anything it cannot translate (a dataframe-level check, a check without an SQL form, a key
the caller does not resolve) raises `UntranslatableCheck`, so a model can never be enforced
partially by accident.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandera.pandas as pa

from schemas.keys import KeyRule
from schemas.types import duckdb_types


class UntranslatableCheck(ValueError):
    """A rule of a model has no SQL form here: the streamed path must not run without it."""


@dataclass(frozen=True)
class SqlCheck:
    column: str
    check: str  # pandera's name for it, as it appears in quarantine rows from the pandas path
    ok_sql: str  # true (or NULL for a NULL value) when the row passes
    params: dict
    reason: str = ""

    def __post_init__(self) -> None:
        if not self.reason:
            object.__setattr__(self, "reason", f"{self.column} failed {self.check}")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def column_checks(
    model: type[pa.DataFrameModel],
    skip: frozenset[str] = frozenset(),
    key_resolved: bool = False,
) -> list[SqlCheck]:
    """SQL predicates for every column check of `model`, except columns in `skip`.

    `key_resolved` says the caller applies the model's key and duplicate rule (`key_sql`);
    a model with a key, or with a dataframe-level check, is refused otherwise.
    """
    schema = model.to_schema()
    if schema.checks:
        names = ", ".join(str(c.name) for c in schema.checks)
        raise UntranslatableCheck(
            f"{model.__name__}: no SQL translation for dataframe check(s) {names}"
        )
    if schema.unique and not key_resolved:
        raise UntranslatableCheck(
            f"{model.__name__}: key {schema.unique} must be resolved by its duplicate rule"
            " (key_sql)"
        )
    out: list[SqlCheck] = []
    for name, col in schema.columns.items():
        if name in skip:
            continue
        if not col.nullable:
            out.append(SqlCheck(name, "not_nullable", f"{_ident(name)} IS NOT NULL", {}))
        if col.unique:
            raise UntranslatableCheck(
                f"{model.__name__}.{name}: a unique column; declare keys in Config"
            )
        out.extend(
            check_sql(name, check, f"p_{name}_{i}", model.__name__)
            for i, check in enumerate(col.checks)
        )
    return out


COMPARISONS = {
    "greater_than_or_equal_to": ">=",
    "greater_than": ">",
    "less_than_or_equal_to": "<=",
    "less_than": "<",
    "equal_to": "=",
    "not_equal_to": "<>",
}


def check_sql(column: str, check: pa.Check, key: str, owner: str = "") -> SqlCheck:
    """One pandera column check as a SQL predicate, with the reason the pandas path gives
    (`schemas.validate.reason_of`); UntranslatableCheck for a check it cannot express."""
    ref = _ident(column)
    stats = check.statistics or {}
    label = str(check.error)
    reason = reason_text(column, check)
    if check.name == "isin":
        return SqlCheck(
            column,
            label,
            f"{ref} IN (SELECT unnest(${key}))",
            {key: list(stats["allowed_values"])},
            reason,
        )
    if check.name == "notin":
        return SqlCheck(
            column,
            label,
            f"{ref} NOT IN (SELECT unnest(${key}))",
            {key: list(stats["forbidden_values"])},
            reason,
        )
    if check.name in COMPARISONS:
        value = stats.get("min_value", stats.get("max_value", stats.get("value")))
        return SqlCheck(
            column, label, f"{ref} {COMPARISONS[check.name]} ${key}", {key: value}, reason
        )
    if check.name == "in_range":
        lo_op = ">=" if stats.get("include_min", True) else ">"
        hi_op = "<=" if stats.get("include_max", True) else "<"
        return SqlCheck(
            column,
            label,
            f"{ref} {lo_op} ${key}_lo AND {ref} {hi_op} ${key}_hi",
            {f"{key}_lo": stats["min_value"], f"{key}_hi": stats["max_value"]},
            reason,
        )
    if check.name == "str_length":
        parts, params = [], {}
        if stats.get("min_value") is not None:
            parts.append(f"length({ref}) >= ${key}_lo")
            params[f"{key}_lo"] = stats["min_value"]
        if stats.get("max_value") is not None:
            parts.append(f"length({ref}) <= ${key}_hi")
            params[f"{key}_hi"] = stats["max_value"]
        return SqlCheck(column, label, " AND ".join(parts) or "true", params, reason)
    raise UntranslatableCheck(
        f"{owner or 'check'}.{column}: no SQL translation for check {check.name!r}"
    )


def require_types(
    described: list[tuple[str, str]], model: type[pa.DataFrameModel], what: str
) -> None:
    """Raise unless `described` ((column, DuckDB type) of a query) has the model's columns
    with the model's types, in any order: the streamed path's dtype check."""
    got = dict(described)
    want = duckdb_types(model)
    wrong = {n: (got.get(n), t) for n, t in want.items() if got.get(n) != t}
    if wrong:
        detail = ", ".join(f"{n}: {g or 'missing'} (model: {t})" for n, (g, t) in wrong.items())
        raise TypeError(f"{what} does not have the types of {model.__name__}: {detail}")


def key_sql(rule: KeyRule, renamed: dict[str, str] | None = None) -> tuple[str, str]:
    """(key columns, ORDER BY best first) of a model's duplicate rule, for a window
    `PARTITION BY key ORDER BY order`; `renamed` maps a model column to the SQL expression that
    holds it (e.g. source_row, which a staged file knows as its row number)."""
    renamed = renamed or {}
    key = ", ".join(_ident(k) for k in rule.key)
    order = ", ".join(p.order_sql(renamed.get(p.column, _ident(p.column))) for p in rule.prefer)
    return key, order


def reason_text(column: str, check: pa.Check) -> str:
    """The quarantine reason of a failed check: its own error text where it was given one,
    else '<column> failed <check>' (the same words on the pandas and the SQL path)."""
    error = str(check.error)
    return error if error and not error.startswith(f"{check.name}(") else f"{column} failed {error}"


def first_failure_sql(checks: list[SqlCheck]) -> tuple[str, str, dict]:
    """(check_expr, column_expr, params): SQL CASE expressions naming the first failing check."""
    if not checks:
        return "NULL", "NULL", {}
    params: dict = {}
    check_case, column_case = [], []
    for i, c in enumerate(checks):
        params.update(c.params)
        params[f"chk_{i}"], params[f"col_{i}"] = c.check, c.column
        failed = f"NOT coalesce({c.ok_sql}, {'true' if c.check != 'not_nullable' else 'false'})"
        check_case.append(f"WHEN {failed} THEN $chk_{i}")
        column_case.append(f"WHEN {failed} THEN $col_{i}")
    return f"CASE {' '.join(check_case)} END", f"CASE {' '.join(column_case)} END", params
