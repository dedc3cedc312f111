"""`batchtwin`: the command line (demo, run, sql, status).

Errors are one line and a non-zero exit, never a traceback for bad input. Dagster is
imported only by the commands that run the pipeline, so `sql` and `status` start fast.
"""

import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import TypedDict

import typer
from rich.console import Console
from rich.table import Table

from lake.layout import Lake

# typer lists each command's first docstring paragraph under `batchtwin --help` with its line
# breaks, so a first line too long for the source is continued with a backslash, not wrapped
app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="batchtwin: curated batch data and self-refitting models for bioprocess digital twins.",
)
console = Console()
err = Console(stderr=True)

DATA_OPTION = typer.Option(
    Path("data"),
    "--data-dir",
    help="folder holding landing/, lake/ and sql/ "
    "(env BATCHTWIN_LAKE / BATCHTWIN_LANDING override)",
)


def _lake(data_dir: Path) -> Lake:
    return Lake(Path(os.environ.get("BATCHTWIN_LAKE", data_dir / "lake")))


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


DEMO_SITES = ("cho", "penicillin")


class _DemoSize(TypedDict, total=False):
    """The `demo` size options given on the command line (fields of both PlantSize and
    PenicillinSize, so one set of options builds either)."""

    batches: int
    seconds_per_sample: float
    seed: int


@app.command()
def demo(
    data_dir: Path = DATA_OPTION,
    site: str = typer.Option(
        "cho",
        help="which demo site: cho (Basel, CHO fed-batch) "
        "or penicillin (Werk Süd, microbial fed-batch)",
    ),
    batches: int | None = typer.Option(
        None,
        help="batches to simulate (the last ones are still running); "
        "default 15 (cho) or 8 (penicillin)",
    ),
    seconds_per_sample: float | None = typer.Option(
        None, help="historian scan interval before archive compression; default 5 (cho) or 60 s"
    ),
    seed: int | None = typer.Option(
        None, help="random seed: the same seed writes byte-identical files"
    ),
    generate_only: bool = typer.Option(
        False, "--generate-only", help="write the demo site without running the pipeline"
    ),
) -> None:
    """Write a demo site's landing zone (with its sources.yaml) and run the whole pipeline once.

    The demo writes only its own files: a file you dropped into the landing zone stays."""
    if site not in DEMO_SITES:
        _fail_plain(f"--site must be one of {', '.join(DEMO_SITES)}, not {site!r}")
    # only the options given: the site's size class supplies its own defaults for the rest
    given: _DemoSize = {}
    if batches is not None:
        given["batches"] = batches
    if seconds_per_sample is not None:
        given["seconds_per_sample"] = seconds_per_sample
    if seed is not None:
        given["seed"] = seed
    if site == "cho":
        from demo import plant

        simulate = partial(plant.generate, data_dir, plant.PlantSize(**given))
    else:
        from demo import penicillin

        simulate = partial(penicillin.generate, data_dir, penicillin.PenicillinSize(**given))
    started = time.perf_counter()
    try:
        with console.status(f"simulating the {site} demo site…") as status:
            truth = simulate(progress=lambda m: status.update(f"demo site: {m}"))
    except (FileExistsError, ValueError) as e:
        _fail_plain(str(e))
    running = sum(b["status"] == "running" for b in truth["batches"])
    console.print(
        f"demo site {site}: {len(truth['batches'])} batches ({running} running), "
        f"{len(truth['faults'])} injected faults, "
        f"written to {data_dir}/ in {time.perf_counter() - started:.1f} s"
    )
    if not generate_only:
        run(data_dir)


@app.command()
def run(data_dir: Path = DATA_OPTION) -> None:
    """Materialize every asset through Dagster, in process, then print a summary."""
    from rich.markup import escape

    from pipelines.runner import materialize_all
    from sources.site import SiteConfigError, load_site

    try:
        load_site(Path(os.environ.get("BATCHTWIN_LANDING", data_dir / "landing")))
    except SiteConfigError as e:
        _fail_plain(str(e))
    started = time.perf_counter()
    with console.status("running the pipeline through Dagster…"):
        result = materialize_all(data_dir)
    took = time.perf_counter() - started
    if result.success:
        console.print(f"pipeline run {result.run_id[:8]} succeeded in {took:.1f} s")
    status(data_dir)
    if not result.success:
        for line in result.failures():
            err.print(f"[red]failed:[/red] {escape(line)}")
        _fail(
            f"pipeline run {result.run_id[:8]} finished in {took:.1f} s "
            f"with {len(result.failures())} failed step(s); "
            "everything else was ingested and curated"
        )


@app.command()
def sql(
    statement: str = typer.Argument(
        ..., help='SQL over the catalog views, e.g. "select count(*) from batches"'
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv or json"),
    allow_files: bool = typer.Option(
        False,
        "--allow-files",
        help="let table functions (read_csv, read_parquet, glob, …) read local files "
        "outside the lake; writes, network access and extensions stay refused",
    ),
    data_dir: Path = DATA_OPTION,
) -> None:
    """Query the curated lake with SQL (read-only: one SELECT, no COPY/ATTACH/SET/INSTALL, \
no files outside the lake)."""
    import duckdb

    from lake.query import CatalogMissing, QueryRefused, query

    if fmt not in ("table", "csv", "json"):
        _fail_plain(f"--format must be table, csv or json, not {fmt!r}")
    try:
        df = query(_lake(data_dir), statement, allow_files=allow_files)
    except (CatalogMissing, QueryRefused) as e:
        _fail_plain(str(e))
    except duckdb.Error as e:
        _fail_plain(_one_line(e))
    except Exception as e:
        # e.g. a result pandas cannot hold: still one line, never a traceback (DESIGN §8)
        _fail_plain(f"{type(e).__name__}: {_one_line(e)}")
    if fmt == "csv":
        sys.stdout.write(df.to_csv(index=False))
    elif fmt == "json":
        sys.stdout.write(df.to_json(orient="records", date_format="iso") + "\n")
    else:
        _print_frame(df)


def _one_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def _fail_plain(message: str) -> None:
    """`_fail` for messages that quote user input (SQL): no rich markup, no wrapping, one line."""
    from rich.text import Text

    err.print(Text("error: ", style="red") + Text(" ".join(message.split())), soft_wrap=True)
    raise typer.Exit(1)


def _print_frame(df, title: str | None = None) -> None:
    from rich.text import Text

    # cells and headers are data (a tag, a batch id, a SQL alias): Text, so '[/]' or '[red]'
    # is shown, not parsed as markup
    table = Table(title=title, show_lines=False)
    for col in df.columns:
        table.add_column(Text(str(col)), justify="right" if df[col].dtype.kind in "iuf" else "left")
    for row in df.itertuples(index=False):
        table.add_row(
            *(Text("" if v is None or (isinstance(v, float) and v != v) else str(v)) for v in row)
        )
    console.print(table)


@app.command()
def status(data_dir: Path = DATA_OPTION) -> None:
    """What was ingested, quarantined and curated (files and rows per dataset, batches, phases)."""
    from lake.query import CatalogMissing, query

    lake = _lake(data_dir)
    try:
        per_dataset = query(
            lake,
            """
            SELECT dataset, count(*) FILTER (status = 'ingested') AS files,
                   count(*) FILTER (status = 'rejected') AS rejected,
                   count(*) FILTER (status = 'failed') AS failed_pulls,
                   sum(rows_read)::BIGINT AS rows_read, sum(rows_accepted)::BIGINT AS rows_accepted,
                   sum(rows_quarantined)::BIGINT AS rows_quarantined
            FROM ingest_log GROUP BY dataset ORDER BY dataset""",
        )
        batches = query(
            lake, "SELECT status, count(*) AS batches FROM batches GROUP BY status ORDER BY status"
        )
        phases = query(lake, "SELECT count(*) AS n FROM phases WHERE level = 'phase'")["n"].iloc[0]
        reasons = query(
            lake,
            "SELECT dataset, reason, count(*) AS rows FROM quarantine "
            "GROUP BY ALL ORDER BY rows DESC LIMIT 8",
        )
        # a source whose latest attempt failed (an unreachable SQL historian): shown until it
        # succeeds again
        failing = query(
            lake,
            """
            SELECT source, finished_at, error FROM ingest_log
            QUALIFY row_number() OVER (PARTITION BY source ORDER BY finished_at DESC) = 1
                    AND status = 'failed'
            ORDER BY source""",
        )
    except CatalogMissing as e:
        _fail(str(e))
    _print_frame(per_dataset, "ingested by dataset")
    if len(failing):
        _print_frame(failing, "sources failing")
    _print_frame(reasons, "top quarantine reasons")
    summary = ", ".join(f"{r.batches} {r.status}" for r in batches.itertuples())
    console.print(f"batches: {summary or 'none'}; phases: {phases}")
    _print_models(lake)
    console.print(f"catalog: {lake.catalog}")


def _print_models(lake: Lake) -> None:
    """The champion of each product and its fitted parameters (status's model section)."""
    from models.registry import Registry

    reg = Registry(lake)
    versions = reg.versions()
    if versions.empty:
        console.print("models: no model versions recorded in the lake")
        return
    for product, v in versions.groupby("product"):
        champ = reg.champion(str(product))
        counts = "; ".join(
            f"{m}: "
            + ", ".join(f"{n} {s}" for s, n in g["status"].value_counts().sort_index().items())
            for m, g in v.groupby("model")
        )
        if champ is None:
            console.print(f"models: {product}: no champion ({counts})")
            continue
        name = f"{champ['model']} v{int(champ['version'])}"
        console.print(
            f"models: {product} champion {name}, "
            f"fitted {champ['fitted_at']:%Y-%m-%d %H:%M} UTC "
            f"on {len(json.loads(champ['training_batches']))} batches, "
            f"validation error {champ['validation_error']:.3g} ({counts})"
        )
        p = reg.parameters(str(product), str(champ["model"]), int(champ["version"]))
        p = p[~p["fixed"]][["name", "value", "ci_low", "ci_high", "uom", "identifiable"]]
        _print_frame(
            p.assign(**{c: p[c].map(lambda x: f"{x:.4g}") for c in ("value", "ci_low", "ci_high")}),
            f"{product} {name} fitted parameters",
        )


@app.command()
def fit(
    data_dir: Path = DATA_OPTION,
    product: str | None = typer.Option(
        None, help="product to fit (default: every product of the site's model catalog)"
    ),
    model: str | None = typer.Option(
        None, help="model of the product's catalog to fit (default: each of them)"
    ),
    batches: str | None = typer.Option(
        None, help="comma-separated training batch ids (default: every completed batch)"
    ),
    n_starts: int = typer.Option(3, help="multistart: number of starting points"),
    seed: int = typer.Option(20260316, help="random seed of the multistart"),
    force: bool = typer.Option(
        False, "--force", help="refit even when a version with the same data and settings exists"
    ),
    profile: bool = typer.Option(
        False, "--profile", help="check each fitted parameter's likelihood profile (slower)"
    ),
) -> None:
    """Fit the site's catalog models (sources.yaml `models:`) on completed batches and \
record each version in the registry (promotion by the registry rule)."""
    from rich.markup import escape

    from lake.query import CatalogMissing
    from models.catalog import CatalogError, specs
    from models.registry import fit_and_register
    from sources.site import SiteConfigError, load_site

    lake = _lake(data_dir)
    try:
        site = load_site(Path(data_dir) / "landing")
    except SiteConfigError as e:
        _fail(escape(str(e)))
    chosen = [
        s
        for s in specs(site.models)
        if isinstance(s, CatalogError)
        or ((product is None or s.product == product) and (model is None or s.name == model))
    ]
    for err in [s for s in chosen if isinstance(s, CatalogError)]:
        console.print(f"[yellow]skipped[/yellow] {escape(str(err))}")
    entries = [s for s in chosen if not isinstance(s, CatalogError)]
    if not entries:
        _fail(
            escape(
                f"no catalog entry for product {product or 'any'} and model {model or 'any'} "
                "in sources.yaml `models:` (README 'Models per product')"
            )
        )
    ids = [b.strip() for b in batches.split(",") if b.strip()] if batches else None
    for spec in entries:
        started = time.perf_counter()
        what = f"{spec.product} {spec.name}"
        try:
            with console.status(f"fitting {what}…"):
                result, decision = fit_and_register(
                    lake, spec, ids, force=force, n_starts=n_starts, seed=seed, profile=profile
                )
        except CatalogMissing as e:
            _fail(str(e))
        except (KeyError, ValueError, ArithmeticError, RuntimeError) as e:
            console.print(
                f"[red]{escape(what)}: not fitted[/red] — {escape(str(e).strip(chr(39)))}"
            )
            continue
        if result is None:
            console.print(f"{what}: {decision.reason} ({decision.status}); use --force to refit")
            continue
        console.print(
            f"{what} v{decision.version}: {decision.status} — {decision.reason} "
            f"({len(result.training_batches)} batches, {time.perf_counter() - started:.1f} s)"
        )
        t = result.table()
        t = t[~t["fixed"]][["name", "value", "stderr", "ci_low", "ci_high", "identifiable", "uom"]]
        cols = ["value", "stderr", "ci_low", "ci_high"]
        if len(result.profile):  # the profile's rise at each interval end (3.84 when quadratic)
            t = t.merge(result.profile, on="name", how="left")
            cols += ["rise_low", "rise_high"]
        _print_frame(
            t.assign(**{c: t[c].map(lambda x: f"{x:.4g}") for c in cols}),
            f"{what} fitted parameters (95 % intervals"
            + (", likelihood profile)" if len(result.profile) else ")"),
        )


@app.command()
def forecast(
    batch: str = typer.Argument(..., help="id of a batch with samples, e.g. B26-014"),
    data_dir: Path = DATA_OPTION,
    draws: int = typer.Option(200, help="parameter draws"),
    analyte: str | None = typer.Option(
        None, help="analyte to print (default: the site's kpis.product; all are recorded)"
    ),
) -> None:
    """Forecast a batch to its planned harvest with its product's champion model \
(p10/p50/p90) and record it."""
    from rich.markup import escape

    from lake.query import CatalogMissing
    from models.forecast import forecast_batch, write_forecast
    from models.plots import forecast_plot
    from sources.site import SiteConfigError, load_site

    lake = _lake(data_dir)
    try:
        with console.status(f"forecasting {batch}…"):
            fc = forecast_batch(lake, batch, n_draws=draws)
    except CatalogMissing as e:
        _fail(str(e))
    except (KeyError, ValueError, LookupError) as e:
        _fail(escape(str(e).strip("'\"")))
    write_forecast(lake, fc)
    png = forecast_plot(lake, fc)
    if analyte is None:
        try:
            analyte = load_site(Path(data_dir) / "landing").kpis.product
        except SiteConfigError:
            analyte = None
        analyte = analyte if analyte in fc.units else next(iter(fc.units))
    b = fc.bands[(fc.bands["analyte"] == analyte) & (fc.bands["kind"] == "trajectory")]
    if b.empty:
        _fail(escape(f"no analyte {analyte!r}; recorded: {', '.join(sorted(fc.units))}"))
    unit = fc.units[analyte]
    step = max(len(b) // 12, 1)
    shown = b.iloc[::step][["t_batch_h", "p10", "p50", "p90"]]
    _print_frame(
        shown.assign(**{c: shown[c].map(lambda x: f"{x:.3g}") for c in shown.columns}),
        f"{batch} {analyte} [{unit}], band at the planned harvest time: {fc.model} "
        f"v{fc.version}, as of {fc.as_of:%Y-%m-%d %H:%M} UTC (t = {fc.now_h:.0f} h)",
    )
    p10, p50, p90 = fc.final(analyte)
    console.print(
        f"{analyte} at harvest, harvest time drawn from completed batches (median "
        f"{fc.harvest_h:.0f} h): p10 {p10:.3g}, p50 {p50:.3g}, p90 {p90:.3g} {unit}; plot: {png}"
    )


def main() -> None:  # pragma: no cover - console entry point
    """Run the `batchtwin` command line (`python -m pipelines.cli`; the installed script
    calls `app` directly)."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
