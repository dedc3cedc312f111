"""Curate assets: the DuckDB catalog of views over the silver Parquet tables."""

import dagster as dg

from lake import catalog, query
from pipelines.ingest_assets import INGEST_ASSETS
from pipelines.resources import LakeResource

# After any ingest asset updated, once none is running: a source that failed (and so skipped the
# catalog in its run) must not keep what the other sources ingested out of the catalog.
AFTER_ANY_INGEST = (
    dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
)


@dg.asset(
    group_name="curate",
    kinds={"duckdb"},
    deps=[key for step in INGEST_ASSETS for key in sorted(step.keys)],
    pool="catalog_writer",
    automation_condition=AFTER_ANY_INGEST,
)
def lake_catalog(context: dg.AssetExecutionContext, lake: LakeResource) -> dg.MaterializeResult:
    """`catalog.duckdb`: one view per lake table (DESIGN §4), rebuilt whole and swapped in
    atomically.

    One writer at a time (a file lock, plus the `catalog_writer` pool): DuckDB allows a single
    writing process per database file. Readers open it read-only. Rebuilt after any ingest, even
    when another source of the same run failed.
    """
    the_lake = lake.lake()
    views = catalog.rebuild(the_lake)
    counts = {
        v: int(query.query(the_lake, f'SELECT count(*) AS n FROM "{v}"')["n"].iloc[0])
        for v in views
    }
    context.log.info(f"catalog rebuilt with {len(views)} views at {the_lake.catalog}")
    table = "\n".join(f"| {v} | {n:,} |" for v, n in counts.items())
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(the_lake.catalog)),
            "views": len(views),
            "batches": counts.get("batches", 0),
            "historian_points": counts.get("historian_points", 0),
            "row_counts": dg.MetadataValue.md("| view | rows |\n|---|---:|\n" + table),
        }
    )
