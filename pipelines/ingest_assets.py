"""Ingest assets: one per silver table; landing files and SQL pulls -> raw copies, validated
silver Parquet, quarantine.

Every step ingests whatever is new among its sources (files already ingested are recognized by
their SHA-256 and skipped) and reports, per table, counts and the top quarantine reasons as
metadata, with two checks: rows are conserved, and validation quarantined nothing. The records
of runs (`ingest_log`, `quarantine`, `audit_log`) are written by every step and are not assets.
"""

import os
from collections import Counter
from pathlib import Path

import dagster as dg

from lake import ingest
from lake.ingest import IngestOutcome
from pipelines.resources import LakeResource, LandingResource
from schemas.tables import SILVER_MODELS, table_description
from sources.site import Site, SiteConfigError

# One asset per silver table; one step per group of tables that share their sources (the MES
# documents carry lab results too), so a source is read once and no table has two writers.
INGEST_STEPS = {
    "ingest_tags": ("tags",),
    "ingest_batch_and_lab_records": ("mes_xml", "mes_journal", "lims", "lims_wide"),
    "ingest_historian_points": ("historian_long", "historian_wide", "historian_sql"),
}


def tables_of(datasets: tuple[str, ...]) -> list[str]:
    """The silver tables these datasets write, in lake.ingest's order."""
    return list(dict.fromkeys(t for ds in datasets for t in ingest.TABLES_WRITTEN[ds]))


def _results(
    context: dg.AssetExecutionContext, tables: list[str], outcomes: list[IngestOutcome]
) -> list[dg.MaterializeResult]:
    """Each table's materialization and checks, over the sources whose dataset writes it; a
    failed source fails the step after every other source of it was ingested."""
    for o in outcomes:
        if o.status == "rejected":
            context.log.warning(f"rejected {o.log['error']}")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        # retried (the step's retry policy) only when a source may answer later: a network outage
        raise dg.Failure(
            description="; ".join(o.log["error"] for o in failed),
            metadata={"failed_sources": ", ".join(o.log["source"] for o in failed)},
            allow_retries=any(o.retryable for o in failed),
        )
    return [
        _table_result(
            table,
            [o for o in outcomes if table in ingest.TABLES_WRITTEN[o.log["dataset"]]],
        )
        for table in tables
    ]


def _table_result(table: str, outcomes: list[IngestOutcome]) -> dg.MaterializeResult:
    ingested = [o for o in outcomes if o.status == "ingested"]
    rejected = [o for o in outcomes if o.status == "rejected"]
    reasons: Counter[str] = Counter()
    for o in outcomes:
        reasons.update(o.reasons)
    read = sum(o.log["rows_read"] for o in outcomes)
    accepted = sum(o.log["rows_accepted"] for o in outcomes)
    quarantined = sum(o.log["rows_quarantined"] for o in outcomes)
    unbalanced = [
        o.log["path"]
        for o in outcomes
        if o.log["rows_read"] != o.log["rows_accepted"] + o.log["rows_quarantined"]
    ]
    top = "\n".join(f"| {n} | {r} |" for r, n in reasons.most_common(5))
    return dg.MaterializeResult(
        asset_key=table,
        metadata={
            "files_ingested": len(ingested),
            "files_unchanged": sum(o.status == "unchanged" for o in outcomes),
            "files_rejected": len(rejected),
            # a source's rows, whichever of its tables they went to
            "rows_read": read,
            "rows_accepted": accepted,
            "rows_quarantined": quarantined,
            f"rows_written_to_{table}": sum(o.accepted.get(table, 0) for o in outcomes),
            "top_quarantine_reasons": dg.MetadataValue.md(
                "| rows | reason |\n|---|---|\n" + top if top else "none"
            ),
        },
        check_results=[
            dg.AssetCheckResult(
                asset_key=table,
                check_name="check_rows_conserved",
                passed=not unbalanced,
                metadata={
                    "rows_read": read,
                    "rows_accepted": accepted,
                    "rows_quarantined": quarantined,
                    "unbalanced_files": ", ".join(unbalanced) or "none",
                },
            ),
            dg.AssetCheckResult(
                asset_key=table,
                check_name="check_validation",
                passed=quarantined == 0 and not rejected,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "rows_quarantined": quarantined,
                    "files_rejected": len(rejected),
                    "top_reasons": dg.MetadataValue.json(
                        {r: int(n) for r, n in reasons.most_common(5)}
                    ),
                },
            ),
        ],
    )


def _checks(name: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            "check_rows_conserved",
            asset=name,
            description="for every source, rows read = rows accepted + rows quarantined",
        ),
        dg.AssetCheckSpec(
            "check_validation",
            asset=name,
            description="warns when validation quarantined rows or rejected files; "
            "metadata has the counts and top reasons",
        ),
    ]


def site_of(landing: LandingResource) -> Site:
    """The site's configuration; a missing or wrong sources.yaml fails the asset with its one
    line."""
    try:
        return landing.site()
    except SiteConfigError as err:
        raise dg.Failure(description=str(err)) from None


# A network historian that refused or timed out is tried again after 30 s, then 60 s, 120 s
# (BATCHTWIN_SQL_RETRY_DELAY_S sets the first wait; read when the code loads, as Dagster binds a
# retry policy to its step). A retry reads the landing files again too: they are skipped by hash.
SQL_RETRY = dg.RetryPolicy(
    max_retries=3,
    delay=float(os.environ.get("BATCHTWIN_SQL_RETRY_DELAY_S", "30")),
    backoff=dg.Backoff.EXPONENTIAL,
    jitter=dg.Jitter.PLUS_MINUS,
)


def _ingest_step(name: str, description: str, deps: list[str]) -> dg.AssetsDefinition:
    datasets = INGEST_STEPS[name]
    tables = tables_of(datasets)
    pulls_sql = "historian_sql" in datasets

    @dg.multi_asset(
        name=name,
        description=description,
        specs=[
            dg.AssetSpec(
                table,
                group_name="ingest",
                kinds={"parquet", "pandera", *(["sql"] if pulls_sql else [])},
                deps=deps,
                description=table_description(SILVER_MODELS[table]),
            )
            for table in tables
        ],
        check_specs=[c for table in tables for c in _checks(table)],
        retry_policy=SQL_RETRY if pulls_sql else None,
        # the landing sensor and the SQL schedule may both request a step: one run at a time
        # writes its tables, so two pulls never store the same new rows twice
        pool=name,
    )
    def _step(context: dg.AssetExecutionContext, lake: LakeResource, landing: LandingResource):
        the_lake = lake.lake()
        landing_root = Path(landing.root)
        site = site_of(landing)
        tags_known = ingest.known_tags(the_lake)
        outcomes = [
            ingest.ingest_file(
                the_lake,
                landing_root,
                rel,
                prof,
                run_id=context.run.run_id,
                tags_known=tags_known,
                site=site,
            )
            for ds in datasets
            for rel, prof in ingest.landing_files(landing_root, site.files, ds)
        ]
        if pulls_sql:
            outcomes += [
                ingest.ingest_sql(the_lake, p, run_id=context.run.run_id, tags_known=tags_known)
                for p in site.sqls
            ]
        yield from _results(context, tables, outcomes)

    return _step


tag_dictionary = _ingest_step(
    "ingest_tags",
    "Tag dictionary exports (landing/tags/*.csv) -> silver `tags`: what each historian tag "
    "measures, on which unit, in which unit.",
    [],
)
batch_and_lab_records = _ingest_step(
    "ingest_batch_and_lab_records",
    "MES batch records (BatchML/B2MML XML and event-journal CSV in landing/mes) and offline lab "
    "results (LIMS and analyzer exports) -> silver batch, phase, material-event and batch-event "
    "records (every version kept) and `samples` (retests supersede by report time).",
    [],
)
historian_points = _ingest_step(
    "ingest_historian_points",
    "Historian CSV exports, long and wide, plain or gzip (landing/historian), and incremental "
    "pulls from the SQL historians of sources.yaml (`sql:`; a look-back window behind the "
    "stored watermark, rows already held skipped) -> silver `historian_points`. A source that "
    "cannot be reached fails this step with its cause after the others were read.",
    ["tags"],
)

INGEST_ASSETS = [tag_dictionary, batch_and_lab_records, historian_points]
