"""Contextualize assets: completed batches are dynamic partitions; gold tables per batch.

A sensor adds each newly completed batch (or a batch whose record was amended) as a
partition and requests its gold computation. Running batches are recomputed as a whole on
every ingest, and the golden profiles follow the completed batches automatically.
"""

import json
import warnings

import dagster as dg

from lake import contextualize
from lake.query import CatalogMissing, query
from pipelines.curate_assets import lake_catalog
from pipelines.ingest_assets import site_of
from pipelines.resources import ContextSettings, LakeResource, LandingResource

BATCH_PARTITIONS = "batches"
RECORDS_KEY = "batch_records"
batch_partitions = dg.DynamicPartitionsDefinition(name=BATCH_PARTITIONS)


def _gold_result(context, ids: list[str], counts: dict[str, int], lake) -> dg.MaterializeResult:
    kpis = query(
        lake,
        "SELECT batch_id, round(peak_vcd, 2) AS peak_vcd, round(final_titer, 2) AS final_titer, "
        "round(qp, 1) AS qp "
        "FROM batch_kpis WHERE batch_id IN (SELECT unnest(?)) ORDER BY 1",
        [ids],
    )
    coverage = query(
        lake,
        "SELECT avg(coverage) AS c FROM batch_trajectories WHERE batch_id IN (SELECT unnest(?))",
        [ids],
    )["c"].iloc[0]
    records = query(
        lake,
        "SELECT batch_id, source_sha256 FROM batches WHERE batch_id IN (SELECT unnest(?))",
        [ids],
    )
    context.log.info(f"gold tables for {len(ids)} batch(es): {counts}")
    return dg.MaterializeResult(
        metadata={
            "batches": len(ids),
            # which version of each batch record the gold tables were computed from
            RECORDS_KEY: dg.MetadataValue.json(
                dict(zip(records["batch_id"], records["source_sha256"], strict=True))
            ),
            **{f"rows_{t}": int(n) for t, n in counts.items()},
            "mean_trajectory_coverage": float(coverage) if coverage == coverage else 0.0,
            "kpis": dg.MetadataValue.md(kpis.to_markdown(index=False) if len(kpis) else "none"),
        }
    )


def _settings(settings: ContextSettings, landing: LandingResource) -> contextualize.Settings:
    """The run's grid and band, and the site's historian gap and operating limits."""
    return contextualize.Settings.for_site(
        site_of(landing), settings.grid_minutes, settings.golden_k
    )


# single-run backfills are "beta" in Dagster 1.13 but are the documented way to compute many
# partitions in one run; the warning would otherwise greet every CLI user
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")


@dg.asset(
    group_name="contextualize",
    kinds={"duckdb", "parquet"},
    deps=[lake_catalog],
    partitions_def=batch_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def batch_gold(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    settings: ContextSettings,
    landing: LandingResource,
) -> dg.MaterializeResult:
    """Gold tables of completed batches: `process_values` (points placed in batch and phase,
    canonical units), `batch_trajectories` (time-weighted grid), `phase_summary` and
    `batch_kpis`, one file per batch."""
    the_lake = lake.lake()
    ids = list(context.partition_keys)
    counts = contextualize.contextualize(the_lake, ids, _settings(settings, landing))
    return _gold_result(context, ids, counts, the_lake)


@dg.asset(
    group_name="contextualize",
    kinds={"duckdb", "parquet"},
    deps=[lake_catalog],
    automation_condition=dg.AutomationCondition.eager(),
)
def running_batch_gold(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    settings: ContextSettings,
    landing: LandingResource,
) -> dg.MaterializeResult:
    """Gold tables of batches still running, up to their latest data; recomputed after every
    ingest."""
    the_lake = lake.lake()
    try:
        ids = query(
            the_lake,
            "SELECT batch_id FROM batches "
            "WHERE status NOT IN ('complete', 'aborted', 'stopped') ORDER BY 1",
        )["batch_id"].tolist()
    except CatalogMissing:
        ids = []
    counts = contextualize.contextualize(the_lake, ids, _settings(settings, landing))
    return _gold_result(context, ids, counts, the_lake)


@dg.asset(
    group_name="contextualize",
    kinds={"duckdb", "parquet"},
    deps=[batch_gold],
    automation_condition=dg.AutomationCondition.eager(),
)
def golden_profiles(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    settings: ContextSettings,
    landing: LandingResource,
) -> dg.MaterializeResult:
    """Golden-batch reference per product and parameter: mean ± k·σ of completed batches on
    t_batch_h; the `batch_deviation` view compares every batch with it."""
    the_lake = lake.lake()
    n = contextualize.golden_profiles(the_lake, _settings(settings, landing))
    return dg.MaterializeResult(metadata={"rows": n, "k_sigma": settings.golden_k})


@dg.sensor(
    name="completed_batches_sensor",
    target=batch_gold,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def completed_batches_sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
    """Add each completed batch as a partition and request its gold tables; an amended batch
    record (new source hash) requests a recomputation."""
    try:
        done = query(
            lake.lake(),
            "SELECT batch_id, source_sha256 FROM batches "
            "WHERE status = 'complete' ORDER BY batch_id",
        )
    except CatalogMissing:
        return dg.SkipReason("no catalog yet")
    seen = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(BATCH_PARTITIONS))
    new = [b for b in done["batch_id"] if b not in known]
    # gold already computed from the current record (by `batchtwin run`, or before a daemon
    # restart that lost the cursor) is not requested again
    for batch in done["batch_id"]:
        if batch not in seen and batch in known:
            seen.update(_computed_from(context.instance, batch))
    changed = [
        (b, sha)
        for b, sha in zip(done["batch_id"], done["source_sha256"], strict=True)
        if seen.get(b) != sha
    ]
    if not new and not changed:
        return dg.SensorResult(
            skip_reason="no newly completed or amended batches", cursor=json.dumps(seen)
        )
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=b, run_key=f"{b}:{sha}") for b, sha in changed],
        dynamic_partitions_requests=[batch_partitions.build_add_request(new)] if new else [],
        cursor=json.dumps({**seen, **dict(changed)}),
    )


def _computed_from(instance: dg.DagsterInstance, batch_id: str) -> dict[str, str]:
    """The batch-record hash the latest gold materialization of `batch_id` was computed from."""
    found = instance.fetch_materializations(
        dg.AssetRecordsFilter(dg.AssetKey("batch_gold"), asset_partitions=[batch_id]), limit=1
    ).records
    if not found or found[0].asset_materialization is None:
        return {}
    meta = found[0].asset_materialization.metadata.get(RECORDS_KEY)
    held = meta.value if isinstance(meta, dg.JsonMetadataValue) else None
    return {batch_id: held[batch_id]} if isinstance(held, dict) and batch_id in held else {}


CONTEXTUALIZE_ASSETS = [batch_gold, running_batch_gold, golden_profiles]
