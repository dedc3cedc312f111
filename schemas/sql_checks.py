"""pandera column checks as DuckDB SQL, for tables too large to validate in pandas.

The pandera model stays the one definition of a table; this module translates its column
checks (ranges, allowed values, string lengths, nullability) into SQL predicates so that
large files are validated while they stream through DuckDB. A check it cannot translate
raises `UntranslatableCheck`, so a model can never be enforced partially by accident.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandera.pandas as pa


class UntranslatableCheck(ValueError):
    pass


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


def column_checks(model: type[pa.DataFrameModel], skip: frozenset[str] = frozenset()) -> list[SqlCheck]:
    """SQL predicates for every column check of `model`, except columns in `skip`."""
    out: list[SqlCheck] = []
    for name, col in model.to_schema().columns.items():
        if name in skip:
            continue
        ref = _ident(name)
        if not col.nullable:
            out.append(SqlCheck(name, "not_nullable", f"{ref} IS NOT NULL", {}))
        if col.unique:
            raise UntranslatableCheck(f"{model.__name__}.{name}: unique is checked by the caller's duplicate rule")
        for i, check in enumerate(col.checks):
            key = f"p_{name}_{i}"
            stats = check.statistics or {}
            label = str(check)
            if check.name == "isin":
                out.append(SqlCheck(name, label, f"{ref} IN (SELECT unnest(${key}))", {key: list(stats["allowed_values"])}))
            elif check.name == "notin":
                out.append(SqlCheck(name, label, f"{ref} NOT IN (SELECT unnest(${key}))", {key: list(stats["forbidden_values"])}))
            elif check.name in ("greater_than_or_equal_to", "greater_than", "less_than_or_equal_to", "less_than"):
                op = {"greater_than_or_equal_to": ">=", "greater_than": ">", "less_than_or_equal_to": "<=", "less_than": "<"}[check.name]
                value = stats.get("min_value", stats.get("max_value"))
                out.append(SqlCheck(name, label, f"{ref} {op} ${key}", {key: value}))
            elif check.name == "in_range":
                lo_op = ">=" if stats.get("include_min", True) else ">"
                hi_op = "<=" if stats.get("include_max", True) else "<"
                out.append(SqlCheck(name, label, f"{ref} {lo_op} ${key}_lo AND {ref} {hi_op} ${key}_hi",
                                    {f"{key}_lo": stats["min_value"], f"{key}_hi": stats["max_value"]}))
            elif check.name == "str_length":
                parts, params = [], {}
                if stats.get("min_value") is not None:
                    parts.append(f"length({ref}) >= ${key}_lo")
                    params[f"{key}_lo"] = stats["min_value"]
                if stats.get("max_value") is not None:
                    parts.append(f"length({ref}) <= ${key}_hi")
                    params[f"{key}_hi"] = stats["max_value"]
                out.append(SqlCheck(name, label, " AND ".join(parts) or "true", params))
            else:
                raise UntranslatableCheck(f"{model.__name__}.{name}: no SQL translation for check {check.name!r}")
    return out


def first_failure_sql(checks: list[SqlCheck]) -> tuple[str, str, dict]:
    """(check_expr, column_expr, params): SQL CASE expressions naming the first failing check."""
    if not checks:
        return "NULL", "NULL", {}
    params: dict = {}
    check_case, column_case = [], []
    for i, c in enumerate(checks):
        params.update(c.params)
        params[f"chk_{i}"], params[f"col_{i}"] = c.check, c.column
        check_case.append(f"WHEN NOT coalesce({c.ok_sql}, {'true' if c.check != 'not_nullable' else 'false'}) THEN $chk_{i}")
        column_case.append(f"WHEN NOT coalesce({c.ok_sql}, {'true' if c.check != 'not_nullable' else 'false'}) THEN $col_{i}")
    return f"CASE {' '.join(check_case)} END", f"CASE {' '.join(column_case)} END", params
