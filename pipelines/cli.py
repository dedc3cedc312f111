"""`batchtwin`: the command line (demo, run, sql, status).

Errors are one line and a non-zero exit, never a traceback for bad input. Dagster is
imported only by the commands that run the pipeline, so `sql` and `status` start fast.
"""
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from lake.layout import Lake

app = typer.Typer(add_completion=False, no_args_is_help=True, help="batchtwin: curated batch data and self-refitting models for bioprocess digital twins.")
console = Console()
err = Console(stderr=True)

DATA_OPTION = typer.Option(Path("data"), "--data-dir", help="folder holding landing/, lake/ and sql/ (env BATCHTWIN_LAKE / BATCHTWIN_LANDING override)")


def _lake(data_dir: Path) -> Lake:
    return Lake(Path(os.environ.get("BATCHTWIN_LAKE", data_dir / "lake")))


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


@app.command()
def demo(
    data_dir: Path = DATA_OPTION,
    batches: int = typer.Option(15, help="batches to simulate (the last ones are still running)"),
    seconds_per_sample: float = typer.Option(5.0, help="historian scan interval before archive compression"),
    seed: int = typer.Option(20260316, help="random seed: the same seed writes byte-identical files"),
    generate_only: bool = typer.Option(False, "--generate-only", help="write the demo plant without running the pipeline"),
) -> None:
    """Write the demo plant's landing zone and run the whole pipeline once."""
    from demo.plant import PlantSize, generate

    started = time.perf_counter()
    with console.status("simulating the demo plant…") as status:
        truth = generate(data_dir, PlantSize(batches, seconds_per_sample, seed), progress=lambda m: status.update(f"demo plant: {m}"))
    running = sum(b["status"] == "running" for b in truth["batches"])
    console.print(f"demo plant: {len(truth['batches'])} batches ({running} running), {len(truth['faults'])} injected faults, "
                  f"written to {data_dir}/ in {time.perf_counter() - started:.1f} s")
    if not generate_only:
        run(data_dir)


@app.command()
def run(data_dir: Path = DATA_OPTION) -> None:
    """Materialize every asset through Dagster, in process, then print a summary."""
    from pipelines.runner import materialize_all

    started = time.perf_counter()
    with console.status("running the pipeline through Dagster…"):
        result = materialize_all(data_dir)
    if not result.success:
        _fail("the pipeline run failed; see the Dagster log above")
    console.print(f"pipeline run {result.run_id[:8]} succeeded in {time.perf_counter() - started:.1f} s")
    status(data_dir)


@app.command()
def sql(
    statement: str = typer.Argument(..., help="SQL over the catalog views, e.g. \"select count(*) from batches\""),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json"),
    data_dir: Path = DATA_OPTION,
) -> None:
    """Query the curated lake with SQL (read-only)."""
    import duckdb

    from lake.query import CatalogMissing, query

    if fmt not in ("table", "csv", "json"):
        _fail(f"--format must be table, csv or json, not {fmt!r}")
    try:
        df = query(_lake(data_dir), statement)
    except CatalogMissing as e:
        _fail(str(e))
    except duckdb.Error as e:
        _fail(str(e).splitlines()[0])
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(df.to_json(orient="records", date_format="iso") + "\n")
    else:
        _print_frame(df)


def _print_frame(df, title: Optional[str] = None) -> None:
    table = Table(title=title, show_lines=False)
    for col in df.columns:
        table.add_column(str(col), justify="right" if df[col].dtype.kind in "iuf" else "left")
    for row in df.itertuples(index=False):
        table.add_row(*("" if v is None or (isinstance(v, float) and v != v) else str(v) for v in row))
    console.print(table)


@app.command()
def status(data_dir: Path = DATA_OPTION) -> None:
    """What was ingested, quarantined and curated (files and rows per dataset, batches, phases)."""
    from lake.query import CatalogMissing, query

    lake = _lake(data_dir)
    try:
        per_dataset = query(lake, """
            SELECT dataset, count(*) FILTER (status = 'ingested') AS files, count(*) FILTER (status = 'rejected') AS rejected,
                   sum(rows_read)::BIGINT AS rows_read, sum(rows_accepted)::BIGINT AS rows_accepted,
                   sum(rows_quarantined)::BIGINT AS rows_quarantined
            FROM ingest_log GROUP BY dataset ORDER BY dataset""")
        batches = query(lake, "SELECT status, count(*) AS batches FROM batches GROUP BY status ORDER BY status")
        phases = query(lake, "SELECT count(*) AS n FROM phases WHERE level = 'phase'")["n"].iloc[0]
        reasons = query(lake, "SELECT dataset, reason, count(*) AS rows FROM quarantine GROUP BY ALL ORDER BY rows DESC LIMIT 8")
    except CatalogMissing as e:
        _fail(str(e))
    _print_frame(per_dataset, "ingested by dataset")
    _print_frame(reasons, "top quarantine reasons")
    summary = ", ".join(f"{r.batches} {r.status}" for r in batches.itertuples())
    console.print(f"batches: {summary or 'none'}; phases: {phases}")
    console.print("models: no model versions recorded in the lake")
    console.print(f"catalog: {lake.catalog}")


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
