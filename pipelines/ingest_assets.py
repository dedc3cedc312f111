"""Ingest assets: each landing dataset -> raw copies, validated silver Parquet, quarantine.

Every asset ingests whatever is new in its part of the landing zone (files already ingested
are recognized by their SHA-256 and skipped), reports counts and the top quarantine reasons
as metadata, and carries two checks: rows are conserved, and validation quarantined nothing.
"""

import os
from collections import Counter
from pathlib import Path

import dagster as dg

from lake import ingest
from lake.ingest import IngestOutcome
from pipelines.resources import LakeResource, LandingResource
from sources.site import Site, SiteConfigError

INGEST_DATASETS = {
    "tag_dictionary": ("tags",),
    "mes_batch_records": ("mes_xml", "mes_journal"),
    "historian_files": ("historian_long", "historian_wide"),
    "lims_samples": ("lims",),
}


def _summary(
    context: dg.AssetExecutionContext, asset_name: str, outcomes: list[IngestOutcome]
) -> dg.MaterializeResult:
    ingested = [o for o in outcomes if o.status == "ingested"]
    rejected = [o for o in outcomes if o.status == "rejected"]
    reasons: Counter[str] = Counter()
    for o in outcomes:
        reasons.update(o.reasons)
    read = sum(o.log["rows_read"] for o in outcomes)
    accepted = sum(o.log["rows_accepted"] for o in outcomes)
    quarantined = sum(o.log["rows_quarantined"] for o in outcomes)
    for o in rejected:
        context.log.warning(f"rejected {o.log['error']}")
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        # the other sources of this asset were ingested and stay; the asset fails with the cause
        # retried (the asset's retry policy) only when a source may answer later: a network outage
        raise dg.Failure(
            description="; ".join(o.log["error"] for o in failed),
            metadata={"failed_sources": ", ".join(o.log["source"] for o in failed)},
            allow_retries=any(o.retryable for o in failed),
        )
    unbalanced = [
        o.log["path"]
        for o in outcomes
        if o.log["rows_read"] != o.log["rows_accepted"] + o.log["rows_quarantined"]
    ]
    top = "\n".join(f"| {n} | {r} |" for r, n in reasons.most_common(5))
    return dg.MaterializeResult(
        metadata={
            "files_ingested": len(ingested),
            "files_unchanged": sum(o.status == "unchanged" for o in outcomes),
            "files_rejected": len(rejected),
            "rows_read": read,
            "rows_accepted": accepted,
            "rows_quarantined": quarantined,
            "top_quarantine_reasons": dg.MetadataValue.md(
                "| rows | reason |\n|---|---|\n" + top if top else "none"
            ),
        },
        check_results=[
            dg.AssetCheckResult(
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


def _file_asset(name: str, datasets: tuple[str, ...], description: str, deps: list[str]):
    @dg.asset(
        name=name,
        group_name="ingest",
        kinds={"parquet", "pandera"},
        deps=deps,
        check_specs=_checks(name),
        description=description,
    )
    def _asset(
        context: dg.AssetExecutionContext, lake: LakeResource, landing: LandingResource
    ) -> dg.MaterializeResult:
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
        return _summary(context, name, outcomes)

    return _asset


tag_dictionary = _file_asset(
    "tag_dictionary",
    INGEST_DATASETS["tag_dictionary"],
    "Tag dictionary exports (landing/tags/*.csv) -> silver `tags`: what each historian tag "
    "measures, on which unit, in which unit.",
    [],
)
mes_batch_records = _file_asset(
    "mes_batch_records",
    INGEST_DATASETS["mes_batch_records"],
    "MES batch records (BatchML/B2MML XML and event-journal CSV in landing/mes) -> silver "
    "batch, phase and material-event records, every version kept.",
    [],
)
historian_files = _file_asset(
    "historian_files",
    INGEST_DATASETS["historian_files"],
    "Historian CSV exports, long and wide, plain or gzip (landing/historian) -> silver "
    "`historian_points`; unknown tags, unparseable values and duplicates are quarantined.",
    ["tag_dictionary"],
)
lims_samples = _file_asset(
    "lims_samples",
    INGEST_DATASETS["lims_samples"],
    "Offline lab results (landing/lims/*.csv) -> silver `samples`, with sample and report "
    "times; retests supersede by report time.",
    [],
)


# A network historian that refused or timed out is tried again after 30 s, then 60 s, 120 s
# (BATCHTWIN_SQL_RETRY_DELAY_S sets the first wait; read when the code loads, as Dagster binds a
# retry policy to its asset).
SQL_RETRY = dg.RetryPolicy(
    max_retries=3,
    delay=float(os.environ.get("BATCHTWIN_SQL_RETRY_DELAY_S", "30")),
    backoff=dg.Backoff.EXPONENTIAL,
    jitter=dg.Jitter.PLUS_MINUS,
)


@dg.asset(
    group_name="ingest",
    kinds={"sql", "parquet"},
    deps=["tag_dictionary"],
    check_specs=_checks("historian_sql"),
    retry_policy=SQL_RETRY,
)
def historian_sql(
    context: dg.AssetExecutionContext, lake: LakeResource, landing: LandingResource
) -> dg.MaterializeResult:
    """Incremental pulls from the SQL historians of `sources.yaml` (`sql:`) -> silver
    `historian_points`.

    Each pull re-reads a look-back window behind the stored watermark, so late rows are picked
    up, and skips rows already held. A source that cannot be reached fails this asset with its
    cause; the other sources are still pulled. A site without SQL historians materializes with
    nothing to pull.
    """
    the_lake = lake.lake()
    sqls = site_of(landing).sqls
    tags_known = ingest.known_tags(the_lake)
    outcomes = [
        ingest.ingest_sql(the_lake, p, run_id=context.run.run_id, tags_known=tags_known)
        for p in sqls
    ]
    return _summary(context, "historian_sql", outcomes)


INGEST_ASSETS = [tag_dictionary, mes_batch_records, historian_files, lims_samples, historian_sql]
