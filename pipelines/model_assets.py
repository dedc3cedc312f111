"""Model assets: refit when completed batches land, forecast running batches from the champion.

`model_fit` depends on the per-batch gold tables; its eager automation condition fires when a
`batch_gold` partition is (re)materialized, i.e. when a batch completes or its record is
amended, and waits while any completed batch still lacks its gold tables. Every fit is a new
registry version (candidate -> champion or rejected by the promotion rule). `forecasts`
follows the champion and every update of the running batches.
"""

import base64
import json
from pathlib import Path

import dagster as dg

from lake.query import CatalogMissing
from models import forecast as fc_mod
from models import plots
from models.data import load_batches
from models.registry import (
    DEFAULT_TOLERANCE,
    Registry,
    completed_batches,
    fit_and_register,
    load_model,
)
from pipelines.contextualize_assets import batch_gold, running_batch_gold
from pipelines.ingest_assets import site_of
from pipelines.resources import LakeResource, LandingResource

MAX_EMBEDDED_PLOTS = 3  # metadata stays small; every plot's path is listed


class FitConfig(dg.Config):
    """Fit settings (run config); the defaults are what automation uses."""

    model: str = "cho_fedbatch"
    n_starts: int = 3
    folds: int = 3
    seed: int = 20260316
    tolerance: float = DEFAULT_TOLERANCE


class ForecastConfig(dg.Config):
    model: str = "cho_fedbatch"
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


@dg.asset(
    group_name="models",
    kinds={"scipy", "parquet"},
    deps=[batch_gold],
    automation_condition=dg.AutomationCondition.eager(),
)
def model_fit(
    context: dg.AssetExecutionContext,
    config: FitConfig,
    lake: LakeResource,
    landing: LandingResource,
) -> dg.MaterializeResult:
    """Fit the model on every completed batch of the products the site assigns it (`models:` in
    sources.yaml; shared kinetics, per-batch initial states, weighted least squares in log space,
    multistart) and record the version in the registry; promotion to champion follows the rule
    in models.registry. Metadata: parameters with 95 % intervals, validation error, decision,
    fit plots. No product using the model, no completed batch or a fit that fails is reported in
    one line (metadata `reason`): curated data never wait on a model."""
    the_lake = lake.lake()
    products = products_of(landing, config.model)
    if not products:
        return _not_fitted(
            context,
            f"{config.model}: no product of this site uses it (sources.yaml `models:`); "
            "nothing to fit",
        )
    try:
        ids = [b for p in products for b in completed_batches(the_lake, p)]
    except CatalogMissing:
        ids = []
    if not ids:
        return _not_fitted(
            context, f"{config.model}: no completed batch with samples of {', '.join(products)} yet"
        )
    try:
        result, decision = fit_and_register(
            the_lake,
            config.model,
            sorted(ids),
            tolerance=config.tolerance,
            n_starts=config.n_starts,
            folds=config.folds,
            seed=config.seed,
        )
    except (ValueError, LookupError, ArithmeticError) as err:
        return _not_fitted(
            context,
            f"{config.model}: the fit failed on {len(ids)} batches: "
            f"{' '.join(str(err).split())[:300]}",
        )
    if result is None:
        context.log.info(f"{config.model}: {decision.reason}")
        return dg.MaterializeResult(
            metadata={
                "fitted": False,
                "model": config.model,
                "version": decision.version,
                "status": decision.status,
                "reason": decision.reason,
            }
        )
    model = load_model(config.model)
    pngs = plots.fit_plots(the_lake, result, decision.version, load_batches(the_lake, model, ids))
    table = result.table()
    table = table[~table["fixed"] | table["name"].isin(result.probe["name"])]
    context.log.info(
        f"{config.model} v{decision.version}: {decision.status} ({decision.reason}) "
        f"in {result.seconds:.1f} s"
    )
    return dg.MaterializeResult(
        metadata={
            "fitted": True,
            "model": config.model,
            "version": decision.version,
            "status": decision.status,
            "reason": decision.reason,
            "training_batches": len(ids),
            "fit_seconds": round(result.seconds, 2),
            "reduced_chi2": float(result.metrics["reduced_chi2"]),
            "validation_error": float(result.metrics["validation_rmse_weighted"] or float("nan")),
            "data_fingerprint": result.data_fingerprint,
            "parameters": dg.MetadataValue.md(table.to_markdown(index=False, floatfmt=".4g")),
            "plots": _png_md(pngs),
        }
    )


def products_of(landing: LandingResource, model: str) -> list[str]:
    """The products the site assigns `model` to (sources.yaml `models:`)."""
    return sorted(p for p, names in site_of(landing).models.items() if model in names)


def _not_fitted(context: dg.AssetExecutionContext, reason: str) -> dg.MaterializeResult:
    context.log.warning(reason)
    return dg.MaterializeResult(metadata={"fitted": False, "reason": reason})


@dg.asset_check(
    asset=model_fit,
    description="the latest fit converged to a sensible optimum: reduced chi-square below 4, "
    "every fitted parameter inside its bounds and identifiable",
)
def model_fit_quality(lake: LakeResource) -> dg.AssetCheckResult:
    """Check the latest registry version (of any model) for fit, bounds and identifiability.

    Severity WARN: the version is already recorded and its promotion is the registry's rule."""
    reg = Registry(lake.lake())
    versions = reg.versions()
    if versions.empty:
        return dg.AssetCheckResult(passed=True, metadata={"versions": 0})
    latest = versions.sort_values("fitted_at").iloc[-1]
    metrics = json.loads(latest["metrics"])
    params = reg.parameters(latest["model"], int(latest["version"]))
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
    deps=[model_fit, running_batch_gold],
    automation_condition=dg.AutomationCondition.eager(),
)
def forecasts(
    context: dg.AssetExecutionContext,
    config: ForecastConfig,
    lake: LakeResource,
    landing: LandingResource,
) -> dg.MaterializeResult:
    """p10/p50/p90 forecasts of every running batch of the model's products to its planned
    harvest from the champion and its parameter uncertainty (models.forecast), written to the
    `forecasts` table; metadata has the final-titer bands and fans."""
    the_lake = lake.lake()
    products = products_of(landing, config.model)
    if not products:
        return dg.MaterializeResult(
            metadata={"batches": 0, "reason": f"{config.model}: no product of this site uses it"}
        )
    try:
        if Registry(the_lake).champion(config.model) is None:
            return dg.MaterializeResult(metadata={"batches": 0, "reason": "no champion model yet"})
        fcs = fc_mod.forecast_running(
            the_lake, config.model, n_draws=config.n_draws, seed=config.seed, products=products
        )
    except CatalogMissing:
        return dg.MaterializeResult(metadata={"batches": 0, "reason": "no catalog yet"})
    pngs = [plots.forecast_plot(the_lake, f) for f in fcs]
    rows = "\n".join(
        f"| {f.batch_id} | v{f.version} | {f.as_of:%Y-%m-%d %H:%M} "
        f"| {f.now_h:.0f} | {f.harvest_h:.0f} | "
        + " | ".join(f"{v:.3g}" for v in f.final("titer"))
        + " |"
        for f in fcs
    )
    return dg.MaterializeResult(
        metadata={
            "batches": len(fcs),
            "final_titer": dg.MetadataValue.md(
                "| batch | model | as of | now h | harvest h | p10 | p50 | p90 |\n"
                "|---|---|---|---|---|---|---|---|\n" + rows
                if fcs
                else "no running batches"
            ),
            "plots": _png_md(pngs),
        }
    )


MODEL_ASSETS = [model_fit, forecasts]
MODEL_CHECKS = [model_fit_quality]
