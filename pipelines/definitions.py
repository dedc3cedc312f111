"""The one `Definitions` of batchtwin: assets, checks, jobs, the landing sensor and the SQL
schedule."""

import hashlib
import json
from pathlib import Path

import dagster as dg

from lake import audit, ingest
from pipelines.contextualize_assets import CONTEXTUALIZE_ASSETS, batches_sensor
from pipelines.curate_assets import lake_catalog
from pipelines.ingest_assets import INGEST_ASSETS, INGEST_STEPS, historian_points
from pipelines.model_assets import MODEL_ASSETS, MODEL_CHECKS
from pipelines.resources import LakeResource, LandingResource, deployed_resources
from sources.base import sha256_of
from sources.profiles import profile_for
from sources.site import SiteConfigError

INGEST_AND_CATALOG = [*INGEST_ASSETS, lake_catalog]
ALL_ASSETS = [*INGEST_AND_CATALOG, *CONTEXTUALIZE_ASSETS, *MODEL_ASSETS]

ingest_everything = dg.define_asset_job(
    "ingest_everything",
    selection=dg.AssetSelection.assets(*INGEST_AND_CATALOG),
    description="Ingest every landing dataset and the SQL historians, then rebuild the catalog.",
)
pull_sql_historians = dg.define_asset_job(
    "pull_sql_historians",
    selection=dg.AssetSelection.assets(historian_points, lake_catalog),
    description="Incremental SQL historian pull, then catalog rebuild.",
)

sql_pull_schedule = dg.ScheduleDefinition(
    name="sql_historian_pull",
    job=pull_sql_historians,
    cron_schedule="*/15 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Pull new rows from the SQL historians every 15 minutes.",
)

# the tables a step writes are materialized together: a new file requests all of its step's
STEP_BY_NAME = {step.op.name: step for step in INGEST_ASSETS}
STEP_FOR_DATASET = {
    ds: step for step in INGEST_ASSETS for ds in INGEST_STEPS[step.op.name] if ds != "historian_sql"
}


@dg.sensor(
    name="landing_zone_sensor",
    job=ingest_everything,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def landing_zone_sensor(
    context: dg.SensorEvaluationContext, landing: LandingResource, lake: LakeResource
):
    """Request ingest runs for new or changed landing files: one run per ingest step that has
    new files (a step ingests every new file of its datasets at once), keyed by the files' hashes.

    The cursor remembers (size, mtime) per file so only new or touched files are hashed; the
    run key makes files that reappear unchanged a no-op, and a file the lake already read (by
    `batchtwin run` or `batchtwin demo`, say) requests nothing.
    """
    seen = json.loads(context.cursor) if context.cursor else {}
    try:
        files = landing.site().files
    except SiteConfigError as err:
        return dg.SkipReason(str(err))
    root, the_lake = Path(landing.root), lake.lake()
    new: dict[str, list[tuple[str, str]]] = {}
    for path in sorted(root.rglob("*")) if root.exists() else []:
        if not path.is_file() or path.name.startswith("."):
            continue
        rel = path.relative_to(root).as_posix()
        prof = profile_for(rel, files)
        if prof is None:
            continue
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        if seen.get(rel) == stamp:
            continue
        seen[rel] = stamp
        sha = sha256_of(path)
        if not ingest.already_read(the_lake, prof, sha):
            new.setdefault(STEP_FOR_DATASET[prof.dataset].op.name, []).append((rel, sha))
    if not new:
        return dg.SensorResult(skip_reason="no new landing files", cursor=json.dumps(seen))
    requests = [
        dg.RunRequest(
            run_key=hashlib.sha256(
                "\n".join(sha for _, sha in sorted(items, key=lambda x: x[1])).encode()
            ).hexdigest(),
            asset_selection=[*sorted(STEP_BY_NAME[step].keys), dg.AssetKey("lake_catalog")],
            tags={
                "batchtwin/step": step,
                "batchtwin/new_files": str(len(items)),
                "batchtwin/first_file": items[0][0][:200],
            },
        )
        for step, items in sorted(new.items())
    ]
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(seen))


def _audit_run(context: dg.RunStatusSensorContext, lake: LakeResource, action: str) -> None:
    run = context.dagster_run
    assets = ", ".join(sorted(k.to_user_string() for k in (run.asset_selection or [])))
    audit.record(
        lake.lake(),
        action,
        run.job_name,
        new=assets or None,
        reason=f"run status {run.status.value}",
        run_id=run.run_id,
    )


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    name="audit_successful_runs",
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def audit_successful_runs(context: dg.RunStatusSensorContext, lake: LakeResource):
    """Every finished run goes into the lake's audit trail (who ran what, when)."""
    _audit_run(context, lake, "run_succeeded")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.FAILURE,
    name="audit_failed_runs",
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def audit_failed_runs(context: dg.RunStatusSensorContext, lake: LakeResource):
    """Failed runs are recorded too: the audit trail must show attempts, not only successes."""
    _audit_run(context, lake, "run_failed")


defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=MODEL_CHECKS,
    jobs=[ingest_everything, pull_sql_historians],
    schedules=[sql_pull_schedule],
    sensors=[
        landing_zone_sensor,
        batches_sensor,
        audit_successful_runs,
        audit_failed_runs,
        # eager assets (golden profiles, model refit, forecasts) need this
        # sensor running to fire
        dg.AutomationConditionSensorDefinition(
            "automation",
            target=dg.AssetSelection.all(),
            default_status=dg.DefaultSensorStatus.RUNNING,
        ),
    ],
    resources=deployed_resources(),
)
