"""Model assets: refit when completed batches land, forecast running batches from the champion.

What is fitted is the site's model catalog (`models:` in sources.yaml, models.catalog): for
each product, one or more models and what the lake's data are to them. `model_fit` depends
on the per-batch gold tables; its eager automation condition fires when a batch's gold is
(re)computed. A fit whose training data (the completed batches) and settings equal a recorded
version's is not repeated, so updates of running batches add no version; any other fit is a
new registry version (candidate -> champion or rejected by the promotion rule, one champion
per product). `forecasts` follows the champions and every update of the running
batches. A product without a model, a catalog entry that cannot be used, too few batches or
a fit that fails is one line of metadata: curated data never wait on a model.
"""

import base64
import json
from pathlib import Path

import dagster as dg

from lake.contextualize import GOLD_TABLES
from lake.query import CatalogMissing, query
from models import forecast as fc_mod
from models import plots
from models.catalog import CatalogError, ModelSpec, specs
from models.data import load_batches
from models.registry import DEFAULT_TOLERANCE, Registry, completed_batches, fit_and_register
from pipelines.contextualize_assets import AFTER_GOLD
from pipelines.ingest_assets import site_of
from pipelines.resources import LakeResource, LandingResource

MAX_EMBEDDED_PLOTS = 3  # metadata stays small; every plot's path is listed


class FitConfig(dg.Config):
    """Fit settings (run config); the defaults are what automation uses."""

    n_starts: int = 3
    folds: int = 3
    seed: int = 20260316
    tolerance: float = DEFAULT_TOLERANCE
    profile: bool = False  # likelihood profiles at the interval ends (2 refits per parameter)


class ForecastConfig(dg.Config):
    n_draws: int = 200
    seed: int = 20260316


def _png_md(paths: list[Path]) -> dg.MetadataValue:
    parts = []
    for p in paths[:MAX_EMBEDDED_PLOTS]:
        data = base64.b64encode(p.read_bytes()).decode()
        parts.append(f"**{p.stem}**\n\n![{p.stem}](data:image/png;base64,{data})")
    rest = "\n".join(f"- `{p}`" for p in paths)
    return dg.MetadataValue.md(
        "\n\n".join(parts) + ("\n\nall plots:\n" + rest if paths else "no plots")
    )


def _fit_one(
    context: dg.AssetExecutionContext, config: FitConfig, lake, spec: ModelSpec
) -> tuple[dict, list[Path]]:
    """Fit and register one catalog entry; the outcome as a row of the asset's table."""
    row = {"product": spec.product, "model": spec.name, "version": "", "status": "not fitted"}
    try:
        ids = completed_batches(lake, spec.product)
    except CatalogMissing:
        ids = []
    if not ids:
        return {**row, "reason": "no completed batch with samples yet"}, []
    try:
        result, decision = fit_and_register(
            lake,
            spec,
            ids,
            tolerance=config.tolerance,
            n_starts=config.n_starts,
            folds=config.folds,
            seed=config.seed,
            profile=config.profile,
        )
    except (ValueError, LookupError, ArithmeticError, RuntimeError) as err:
        reason = f"the fit failed on {len(ids)} batches: {' '.join(str(err).split())[:300]}"
        context.log.warning(f"{spec.product} {spec.name}: {reason}")
        return {**row, "reason": reason}, []
    row.update(version=f"v{decision.version}", status=decision.status, reason=decision.reason)
    if result is None:
        return row, []
    context.log.info(
        f"{spec.product} {spec.name} v{decision.version}: {decision.status} "
        f"({decision.reason}) in {result.seconds:.1f} s"
    )
    pngs = plots.fit_plots(lake, result, decision.version, load_batches(lake, spec, ids))
    return {**row, "batches": len(ids), "seconds": round(result.seconds, 1)}, pngs


@dg.asset(
    group_name="models",
    kinds={"scipy", "parquet"},
    deps=list(GOLD_TABLES),
    automation_condition=AFTER_GOLD,
)
def model_fit(
    context: dg.AssetExecutionContext,
    config: FitConfig,
    lake: LakeResource,
    landing: LandingResource,
) -> dg.MaterializeResult:
    """Fit every model of the site's catalog on the completed batches of its product (shared
    kinetics, per-batch initial states, weighted least squares in log space, multistart) and
    record each version in the registry; promotion to the product's champion follows the rule
    in models.registry. Metadata: one row per catalog entry (version, status, reason), the
    fit plots. A product with no model, an unusable entry, no completed batch or a failing fit
    is its row's reason: the run stays green."""
    the_lake = lake.lake()
    site = site_of(landing)
    rows, pngs = [], []
    for spec in specs(site.models):
        if isinstance(spec, CatalogError):
            context.log.warning(str(spec))
            rows.append({"status": "not fitted", "reason": f"catalog: {spec}"})
            continue
        row, p = _fit_one(context, config, the_lake, spec)
        rows.append(row)
        pngs += p
    try:
        without = sorted(set(_products(the_lake)) - set(site.models))
    except CatalogMissing:
        without = []
    for product in without:
        reason = "no model in the site's catalog (sources.yaml `models:`)"
        rows.append({"product": product, "status": "not fitted", "reason": reason})
    if not rows:
        rows.append({"status": "not fitted", "reason": "the site's catalog has no model"})
    return dg.MaterializeResult(
        metadata={
            "fitted": sum(r.get("version", "") != "" for r in rows),
            "entries": dg.MetadataValue.md(_table(rows)),
            "reason": "; ".join(_line(r) for r in rows),
            "plots": _png_md(pngs),
        }
    )


def _line(row: dict) -> str:
    """'PRODUCT model: reason' (just the reason when the row has no product)."""
    who = " ".join(filter(None, (row.get("product"), row.get("model"))))
    return f"{who}: {row['reason']}" if who else row["reason"]


def _products(lake) -> list[str]:
    df = query(lake, "SELECT DISTINCT product FROM batches WHERE product IS NOT NULL")
    return df["product"].tolist()


def _table(rows: list[dict]) -> str:
    cols = ["product", "model", "version", "status", "reason"]
    body = "\n".join("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |" for r in rows)
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n" + body


@dg.asset_check(
    asset=model_fit,
    description="the latest fit converged to a sensible optimum: reduced chi-square below 4, "
    "every fitted parameter inside its bounds and identifiable",
)
def model_fit_quality(lake: LakeResource) -> dg.AssetCheckResult:
    """Check the latest registry version (of any product and model) for fit, bounds and
    identifiability.

    Severity WARN: the version is already recorded and its promotion is the registry's rule."""
    reg = Registry(lake.lake())
    versions = reg.versions()
    if versions.empty:
        return dg.AssetCheckResult(passed=True, metadata={"versions": 0})
    latest = versions.sort_values("fitted_at").iloc[-1]
    metrics = json.loads(latest["metrics"])
    params = reg.parameters(latest["product"], latest["model"], int(latest["version"]))
    fitted = params[~params["fixed"]]
    unidentifiable = fitted.loc[fitted["identifiable"] != "yes", "name"].tolist()
    at_bounds = fitted.loc[
        (fitted["value"] <= fitted["bound_low"] * 1.001)
        | (fitted["value"] >= fitted["bound_high"] * 0.999),
        "name",
    ].tolist()
    chi2 = float(metrics.get("reduced_chi2", float("nan")))
    passed = chi2 < 4.0 and not unidentifiable and not at_bounds
    return dg.AssetCheckResult(
        passed=passed,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "product": latest["product"],
            "model": latest["model"],
            "version": int(latest["version"]),
            "status": latest["status"],
            "reduced_chi2": chi2,
            "unidentifiable": ", ".join(unidentifiable) or "none",
            "at_bounds": ", ".join(at_bounds) or "none",
            "validation_error": float(latest["validation_error"]),
        },
    )


@dg.asset(
    group_name="models",
    kinds={"scipy", "parquet"},
    deps=[model_fit, *GOLD_TABLES],
    automation_condition=AFTER_GOLD,
)
def forecasts(
    context: dg.AssetExecutionContext,
    config: ForecastConfig,
    lake: LakeResource,
    landing: LandingResource,
) -> dg.MaterializeResult:
    """p10/p50/p90 forecasts of every running batch whose product has a champion, to its
    planned harvest, from the champion and its parameter uncertainty (models.forecast),
    written to the `forecasts` table; metadata has the bands at harvest of the site's product
    analyte (`kpis.product`) and the fans. A batch that cannot be forecast is one line."""
    the_lake = lake.lake()
    site = site_of(landing)
    try:
        fcs, skipped = fc_mod.forecast_running(
            the_lake, sorted(site.models), n_draws=config.n_draws, seed=config.seed
        )
    except CatalogMissing:
        return dg.MaterializeResult(metadata={"batches": 0, "reason": "no catalog yet"})
    for line in skipped:
        context.log.warning(f"not forecast: {line}")
    pngs = [plots.forecast_plot(the_lake, f) for f in fcs]
    rows = []
    for f in fcs:
        for analyte in [a for a in (site.kpis.product,) if a in f.units] or list(f.units):
            p10, p50, p90 = f.final(analyte)
            rows.append(
                f"| {f.batch_id} | {f.model} v{f.version} | {f.as_of:%Y-%m-%d %H:%M} "
                f"| {f.now_h:.0f} | {f.harvest_h:.0f} | {analyte} [{f.units[analyte]}] "
                f"| {p10:.3g} | {p50:.3g} | {p90:.3g} |"
            )
    return dg.MaterializeResult(
        metadata={
            "batches": len(fcs),
            "not_forecast": "; ".join(skipped) or "none",
            "at_harvest": dg.MetadataValue.md(
                "| batch | model | as of | now h | planned harvest h | analyte "
                "| p10 | p50 | p90 |\n"
                "|---|---|---|---|---|---|---|---|---|\n" + "\n".join(rows)
                if fcs
                else "no running batch of a product with a champion"
            ),
            "plots": _png_md(pngs),
        }
    )


MODEL_ASSETS = [model_fit, forecasts]
MODEL_CHECKS = [model_fit_quality]
