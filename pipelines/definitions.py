"""The one `Definitions` of batchtwin: assets, checks, jobs, the landing sensor and the SQL schedule."""

import json
from pathlib import Path

import dagster as dg

from pipelines.contextualize_assets import CONTEXTUALIZE_ASSETS, completed_batches_sensor
from pipelines.curate_assets import lake_catalog
from pipelines.ingest_assets import INGEST_ASSETS, INGEST_DATASETS
from pipelines.resources import LandingResource, resources_from_env
from sources.base import sha256_of
from sources.profiles import profile_for

INGEST_AND_CATALOG = [*INGEST_ASSETS, lake_catalog]
ALL_ASSETS = [*INGEST_AND_CATALOG, *CONTEXTUALIZE_ASSETS]

ingest_everything = dg.define_asset_job("ingest_everything", selection=dg.AssetSelection.assets(*INGEST_AND_CATALOG),
                                        description="Ingest every landing dataset and the SQL historians, then rebuild the catalog.")
pull_sql_historians = dg.define_asset_job("pull_sql_historians", selection=dg.AssetSelection.assets("historian_sql", "lake_catalog"),
                                          description="Incremental SQL historian pull, then catalog rebuild.")

sql_pull_schedule = dg.ScheduleDefinition(
    name="sql_historian_pull", job=pull_sql_historians, cron_schedule="*/15 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING, description="Pull new rows from the SQL historians every 15 minutes.",
)

ASSET_FOR_DATASET = {ds: name for name, datasets in INGEST_DATASETS.items() for ds in datasets}


@dg.sensor(name="landing_zone_sensor", job=ingest_everything, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def landing_zone_sensor(context: dg.SensorEvaluationContext, landing: LandingResource):
    """Request an ingest run for each new or changed landing file (run key = the file's SHA-256).

    The cursor remembers (size, mtime) per file so only new or touched files are hashed; the
    run key makes a file that reappears unchanged a no-op.
    """
    seen = json.loads(context.cursor) if context.cursor else {}
    files, _ = landing.profiles()
    root = Path(landing.root)
    requests = []
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
        asset = ASSET_FOR_DATASET[prof.dataset]
        requests.append(dg.RunRequest(run_key=sha, asset_selection=[dg.AssetKey(asset), dg.AssetKey("lake_catalog")], tags={"batchtwin/file": rel}))
    if not requests:
        return dg.SkipReason("no new landing files")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(seen))


defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=[ingest_everything, pull_sql_historians],
    schedules=[sql_pull_schedule],
    sensors=[
        landing_zone_sensor,
        completed_batches_sensor,
        # eager assets (running-batch gold, golden profiles) need this sensor running to fire
        dg.AutomationConditionSensorDefinition("automation", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING),
    ],
    resources=resources_from_env(),
)
