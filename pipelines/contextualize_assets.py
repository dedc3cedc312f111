"""Contextualize assets: every batch is a dynamic partition of the four gold tables.

A sensor adds each batch of the MES records as a partition and requests its gold tables when
its record changes (it starts, completes or is amended), while it runs after every catalog
update, and once it has ended when data of it arrive late. The golden profiles follow the
completed batches automatically.
"""

import json
import warnings

import dagster as dg
import pandas as pd

from lake import contextualize
from lake.query import CatalogMissing, query
from pipelines.curate_assets import lake_catalog
from pipelines.ingest_assets import site_of
from pipelines.resources import ContextSettings, LakeResource, LandingResource
from schemas.tables import ENDED_STATUSES, GOLD_MODELS, table_description

BATCH_PARTITIONS = "batches"
RECORDS_KEY = "batch_records"
batch_partitions = dg.DynamicPartitionsDefinition(name=BATCH_PARTITIONS)
GOLD = dg.AssetKey("batch_kpis")  # one of the four tables batch_gold writes together
# What follows the gold tables (golden profiles, fits, forecasts) runs when any batch's gold
# updates, without eager's wait for every partition: a batch whose gold cannot be computed (or
# has not been yet) must not hold back the others', and these assets read what exists.
AFTER_GOLD = dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing())


def _gold_results(
    context, ids: list[str], counts: dict[str, int], lake
) -> list[dg.MaterializeResult]:
    kpis = query(
        lake,
        "SELECT batch_id, status, round(peak_vcd, 2) AS peak_vcd, "
        "round(final_titer, 2) AS final_titer, round(qp, 1) AS qp "
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
    # which version of each batch record the tables were computed from
    computed_from = dg.MetadataValue.json(
        dict(zip(records["batch_id"], records["source_sha256"], strict=True))
    )
    extra: dict[str, dict[str, dg.RawMetadataValue]] = {
        "batch_trajectories": {"mean_coverage": float(coverage) if coverage == coverage else 0.0},
        "batch_kpis": {
            "kpis": dg.MetadataValue.md(kpis.to_markdown(index=False) if len(kpis) else "none")
        },
    }
    return [
        dg.MaterializeResult(
            asset_key=table,
            metadata={
                "batches": len(ids),
                "rows": int(counts[table]),
                RECORDS_KEY: computed_from,
                **extra.get(table, {}),
            },
        )
        for table in contextualize.GOLD_TABLES
    ]


def _settings(settings: ContextSettings, landing: LandingResource) -> contextualize.Settings:
    """The run's grid and band, and the site's historian gap and operating limits."""
    return contextualize.Settings.for_site(
        site_of(landing), settings.grid_minutes, settings.golden_k
    )


# single-run backfills are "beta" in Dagster 1.13 but are the documented way to compute many
# partitions in one run; the warning would otherwise greet every CLI user
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*backfill_policy.*")


@dg.multi_asset(
    name="batch_gold",
    specs=[
        dg.AssetSpec(
            table,
            group_name="contextualize",
            kinds={"duckdb", "parquet"},
            deps=[lake_catalog],
            description=table_description(GOLD_MODELS[table]),
        )
        for table in contextualize.GOLD_TABLES
    ],
    partitions_def=batch_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def batch_gold(
    context: dg.AssetExecutionContext,
    lake: LakeResource,
    settings: ContextSettings,
    landing: LandingResource,
):
    """Gold tables per batch: `process_values` (points placed in batch and phase, canonical
    units), `batch_trajectories` (time-weighted grid), `phase_summary` and `batch_kpis`, one
    file per batch and table. A running batch's are up to its latest data."""
    the_lake = lake.lake()
    ids = list(context.partition_keys)
    counts = contextualize.contextualize(the_lake, ids, _settings(settings, landing))
    yield from _gold_results(context, ids, counts, the_lake)


@dg.asset(
    group_name="contextualize",
    kinds={"duckdb", "parquet"},
    deps=list(contextualize.GOLD_TABLES),
    automation_condition=AFTER_GOLD,
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
    name="batches_sensor",
    target=batch_gold,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def batches_sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
    """Add every batch of the MES records as a partition and request its gold tables: once per
    version of its record (a batch starts, completes, is amended); for a running batch again
    after every catalog update (its latest data); for an ended batch again when historian
    points inside its window or lab results of it arrive late."""
    try:
        records = query(
            lake.lake(),
            "SELECT batch_id, source_sha256, NOT list_contains(?, status) AS running "
            "FROM batches ORDER BY batch_id",
            [list(ENDED_STATUSES)],
        )
    except CatalogMissing:
        return dg.SkipReason("no catalog yet")
    cursor = json.loads(context.cursor) if context.cursor else {}
    seen: dict[str, str] = cursor.get("records", {})
    known = set(context.instance.get_dynamic_partitions(BATCH_PARTITIONS))
    new = [b for b in records["batch_id"] if b not in known]
    # gold already computed from the current record (by `batchtwin run`, or before a daemon
    # restart that lost the cursor) is not requested again
    for batch in records["batch_id"]:
        if batch not in seen and batch in known:
            seen.update(_computed_from(context.instance, batch))
    catalog = _latest(context.instance, dg.AssetKey("lake_catalog"))
    late, ingest_seen = _late_data(lake.lake(), cursor.get("ingest_seen"))
    requests = []
    for batch, sha, running in records.itertuples(index=False):
        if seen.get(batch) != sha:
            requests.append(dg.RunRequest(partition_key=batch, run_key=f"{batch}:{sha}"))
        elif running and _latest(context.instance, GOLD, batch) < catalog:
            requests.append(
                dg.RunRequest(
                    partition_key=batch, run_key=f"{batch}:{sha}|running, catalog {catalog}"
                )
            )
        elif batch in late:
            requests.append(
                dg.RunRequest(
                    partition_key=batch,
                    run_key=f"{batch}:{sha}|late data, ingested by {ingest_seen['newest']}",
                )
            )
    seen.update(zip(records["batch_id"], records["source_sha256"], strict=True))
    new_cursor = json.dumps({"records": seen, "ingest_seen": ingest_seen})
    # a batch gets its partition even when nothing is requested for it (its record was seen
    # before its partition was deleted, say)
    partitions = [batch_partitions.build_add_request(new)] if new else []
    if not requests:
        return dg.SensorResult(
            skip_reason="no new, amended or running batch and no late data",
            cursor=new_cursor,
            dynamic_partitions_requests=partitions,
        )
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=partitions,
        cursor=new_cursor,
    )


# An ingest_log row is written when its source is done, stamped a moment before: a row may
# land after a newer one was read. Rows this close to the newest are remembered by hash.
LATE_DATA_OVERLAP = "1h"


def _late_data(lake, seen: dict | None) -> tuple[set[str], dict]:
    """Ended batches (complete, aborted, stopped) that got data from sources ingested since
    the last look: historian points inside their window on their unit, or lab results of
    theirs. `seen` is that look: {"newest": finished_at, "recent": hashes near it}.

    On the sensor's first tick (`seen` None) nothing is late: the lake's gold was computed
    from everything ingested so far (`batchtwin run` recomputes every batch).
    """
    log = query(
        lake,
        "SELECT sha256, CAST(finished_at AS VARCHAR) AS t FROM ingest_log "
        "WHERE status = 'ingested' AND finished_at > "
        "CAST(? AS TIMESTAMPTZ) - to_seconds(?)",
        [seen["newest"] if seen else "-infinity", pd.Timedelta(LATE_DATA_OVERLAP).total_seconds()],
    )
    times = pd.to_datetime(log["t"], utc=True, format="ISO8601")
    if len(log):
        newest = log["t"][times.idxmax()]
        near = times > times.max() - pd.Timedelta(LATE_DATA_OVERLAP)
        recent = dict(zip(log["sha256"][near], log["t"][near], strict=True))
    else:
        newest, recent = (seen or {}).get("newest"), {}
    remembered = {"newest": newest, "recent": recent}
    fresh = sorted(set(log["sha256"]) - set((seen or {}).get("recent", {})))
    if seen is None or not fresh:
        return set(), remembered
    late = query(
        lake,
        """WITH spans AS (SELECT t.unit_id, min(p.ts) AS lo, max(p.ts) AS hi
                          FROM historian_points p JOIN tags t USING (tag)
                          WHERE p.source_sha256 IN (SELECT unnest($fresh)) GROUP BY 1),
                ended AS (SELECT * FROM batches WHERE list_contains($ended, status))
           SELECT b.batch_id FROM ended b JOIN spans s USING (unit_id)
           WHERE b.start_ts <= s.hi AND b.end_ts >= s.lo
           UNION
           SELECT DISTINCT r.batch_id FROM sample_records r JOIN ended USING (batch_id)
           WHERE r.source_sha256 IN (SELECT unnest($fresh))""",
        {"fresh": fresh, "ended": list(ENDED_STATUSES)},
    )
    return set(late["batch_id"]), remembered


def _latest_record(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None = None):
    """The latest materialization record of `key` (of one partition), None if none."""
    found = instance.fetch_materializations(
        dg.AssetRecordsFilter(key, asset_partitions=[partition] if partition else None), limit=1
    ).records
    return found[0] if found else None


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None = None) -> int:
    """The storage id of the latest materialization of `key` (of one partition), -1 if none:
    ids grow with time, so a smaller one was materialized before."""
    record = _latest_record(instance, key, partition)
    return record.storage_id if record else -1


def _computed_from(instance: dg.DagsterInstance, batch_id: str) -> dict[str, str]:
    """The batch-record hash the latest gold materialization of `batch_id` was computed from."""
    record = _latest_record(instance, GOLD, batch_id)
    if record is None or record.asset_materialization is None:
        return {}
    meta = record.asset_materialization.metadata.get(RECORDS_KEY)
    held = meta.value if isinstance(meta, dg.JsonMetadataValue) else None
    return {batch_id: held[batch_id]} if isinstance(held, dict) and batch_id in held else {}


CONTEXTUALIZE_ASSETS = [batch_gold, golden_profiles]
