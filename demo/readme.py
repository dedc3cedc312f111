"""Regenerate the README's demo outputs from the lakes `make demo` built, so they cannot go stale.

Every fenced block of README.md that starts with `$ batchtwin sql "…"` (the statement may span
indented lines) gets the statement's current result; a block that starts with
`$ batchtwin status --data-dir DIR` gets that site's status (`--data-dir` after a statement
names the site it runs on; default `data`). Run `make readme` after `make demo`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

from lake.layout import Lake
from lake.query import query

BLOCK = re.compile(r"```\n(\$ batchtwin (sql|status)[^\n]*(?:\n {10,}[^\n]*)*)\n.*?```", re.S)


def render(frame: pd.DataFrame) -> str:
    """A result as the README shows it: plain columns, no index, text left-aligned."""
    if frame.empty:
        return "(no rows)"
    text = [
        c
        for c in frame.columns
        if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c])
    ]
    formatters = {
        c: f"{{:<{max(frame[c].astype(str).str.len().max(), len(c))}}}".format for c in text
    }
    table = frame.to_string(index=False, formatters=formatters)
    return "\n".join(line.rstrip() for line in table.splitlines())


def status_text(data_dir: Path) -> str:
    """The parts of `batchtwin status` worth showing: per dataset, top reasons, batches, models."""
    lake = Lake(data_dir / "lake")
    per_dataset = query(
        lake,
        """
        SELECT dataset, count(*) FILTER (status = 'ingested') AS files,
               count(*) FILTER (status = 'rejected') AS rejected,
               sum(rows_read)::BIGINT AS rows_read, sum(rows_accepted)::BIGINT AS rows_accepted,
               sum(rows_quarantined)::BIGINT AS rows_quarantined
        FROM ingest_log GROUP BY dataset ORDER BY dataset""",
    )
    reasons = query(
        lake,
        """SELECT dataset, reason, count(*) AS rows FROM quarantine GROUP BY ALL
                             ORDER BY rows DESC, dataset, reason LIMIT 6""",
    )
    reasons["reason"] = reasons["reason"].str.slice(0, 70)
    batches = query(lake, "SELECT status, count(*) AS n FROM batches GROUP BY 1 ORDER BY 1")
    champions = query(
        lake,
        """SELECT product, model, version, json_array_length(training_batches) AS batches,
                  round(validation_error, 2) AS validation_error
           FROM model_versions WHERE status = 'champion' ORDER BY product""",
    )
    lines = [
        render(per_dataset),
        render(reasons),
        "batches: " + ", ".join(f"{r.n} {r.status}" for r in batches.itertuples()),
        "models: "
        + (
            "; ".join(
                f"{r.product} champion {r.model} v{r.version} on {r.batches} batches, "
                f"validation error "
                f"{r.validation_error}"
                for r in champions.itertuples()
            )
            or "none"
        ),
    ]
    return "\n".join(lines)


def sql_of(command: str) -> str:
    """The statement between the outer quotes of a README `batchtwin sql` command, on one line
    (its continuation lines are README layout, not SQL)."""
    statement = command.split('"', 1)[1].rsplit('"', 1)[0]
    return " ".join(statement.split())


def regenerate(readme: Path, data_dir: Path) -> int:
    """Rewrite the outputs in `readme`; return how many blocks were refreshed."""
    text = readme.read_text(encoding="utf-8")
    count = 0

    def refresh(match: re.Match) -> str:
        nonlocal count
        command, kind = match.group(1), match.group(2)
        site = (
            Path(command.split("--data-dir", 1)[1].split()[0])
            if "--data-dir" in command
            else data_dir
        )
        if kind == "sql":
            output = render(query(Lake(site / "lake"), sql_of(command)))
        else:
            output = status_text(site)
        count += 1
        return f"```\n{command}\n{output}\n```"

    readme.write_text(BLOCK.sub(refresh, text), encoding="utf-8")
    return count


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("data")
    n = regenerate(Path("README.md"), root)
    print(f"README.md: {n} demo outputs regenerated from {root}/")
