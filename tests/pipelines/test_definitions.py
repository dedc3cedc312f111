"""The Dagster definitions load, and the landing sensor requests one run per new file."""

import json
import shutil

import dagster as dg

from pipelines.definitions import defs, landing_zone_sensor
from pipelines.resources import LakeResource, LandingResource


def test_definitions_load_with_groups_checks_sensor_and_schedule():
    repo = defs.get_repository_def()
    groups = {repo.assets_defs_by_key[k].group_names_by_key[k] for k in repo.assets_defs_by_key}
    assert {"ingest", "curate"} <= groups
    specs = defs.resolve_asset_graph().asset_check_keys
    assert dg.AssetCheckKey(dg.AssetKey("historian_points"), "check_rows_conserved") in specs
    assert (
        defs.resolve_sensor_def("landing_zone_sensor").default_status
        == dg.DefaultSensorStatus.RUNNING
    )
    assert defs.resolve_schedule_def("sql_historian_pull").cron_schedule == "*/15 * * * *"
    for key, asset in repo.assets_defs_by_key.items():
        assert asset.descriptions_by_key.get(key), f"{key} has no description"


def test_landing_sensor_requests_one_run_per_asset_with_new_files(fresh_data):
    landing = LandingResource(root=str(fresh_data / "landing"))
    res = {"landing": landing, "lake": LakeResource(root=str(fresh_data / "lake"))}
    first = landing_zone_sensor(dg.build_sensor_context(resources=res))
    steps = [r.tags["batchtwin/step"] for r in first.run_requests]
    assert steps == ["ingest_batch_and_lab_records", "ingest_historian_points", "ingest_tags"]
    # a step's run materializes every table it writes
    assert [k.path[-1] for k in first.run_requests[0].asset_selection] == [
        "batch_event_records",
        "batch_records",
        "material_event_records",
        "phase_records",
        "samples",
        "lake_catalog",
    ]
    assert all(r.asset_selection[-1] == dg.AssetKey("lake_catalog") for r in first.run_requests)
    # every data file; the site's sources.yaml and the demo's list of its files are not data
    n_files = sum(
        1 for p in (fresh_data / "landing").rglob("*") if p.is_file() and p.parent.name != "landing"
    )
    assert n_files > 20
    assert sum(int(r.tags["batchtwin/new_files"]) for r in first.run_requests) == n_files
    assert (
        len({r.run_key for r in first.run_requests}) == 3
    )  # keys are hashes of the files' contents

    again = landing_zone_sensor(dg.build_sensor_context(cursor=first.cursor, resources=res))
    assert not again.run_requests and again.skip_reason

    new = fresh_data / "landing" / "lims" / "lims_extra.csv"
    shutil.copy(next((fresh_data / "landing" / "lims").glob("*.csv")), new)
    third = landing_zone_sensor(dg.build_sensor_context(cursor=first.cursor, resources=res))
    assert [
        (r.tags["batchtwin/step"], r.tags["batchtwin/first_file"]) for r in third.run_requests
    ] == [("ingest_batch_and_lab_records", "lims/lims_extra.csv")]
    assert json.loads(third.cursor).keys() > json.loads(first.cursor).keys()


def test_finished_runs_are_written_to_the_audit_trail(fresh_data):
    from lake.layout import Lake
    from pipelines.definitions import audit_successful_runs
    from pipelines.ingest_assets import tag_dictionary
    from pipelines.resources import LakeResource, resources_from_env

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [tag_dictionary], instance=instance, resources=resources_from_env(fresh_data)
    )
    success = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_SUCCESS)
    lake = LakeResource(root=str(fresh_data / "lake"))
    ctx = dg.build_run_status_sensor_context(
        sensor_name="audit_successful_runs",
        dagster_event=success,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources={"lake": lake},
    )
    audit_successful_runs(ctx)
    import pandas as pd

    events = pd.concat(
        pd.read_parquet(p) for p in (Lake(fresh_data / "lake").root / "audit").glob("*.parquet")
    )
    run = events[events.action == "run_succeeded"]
    assert run.run_id.tolist() == [result.run_id] and run.object.tolist() == [
        result.dagster_run.job_name
    ]
    assert (events[events.action == "file_ingested"].run_id == result.run_id).all()


def test_files_the_lake_already_read_request_no_run(fresh_data):
    from pipelines.runner import materialize_all

    assert materialize_all(fresh_data, models=False).success
    res = {
        "landing": LandingResource(root=str(fresh_data / "landing")),
        "lake": LakeResource(root=str(fresh_data / "lake")),
    }
    # a daemon started after `batchtwin run` (a fresh sensor cursor) redoes nothing
    first = landing_zone_sensor(dg.build_sensor_context(resources=res))
    assert not first.run_requests and json.loads(first.cursor)
    new = fresh_data / "landing" / "lims" / "lims_extra.csv"
    new.write_text(next((fresh_data / "landing" / "lims").glob("*.csv")).read_text() + "\n")
    second = landing_zone_sensor(dg.build_sensor_context(cursor=first.cursor, resources=res))
    assert [r.tags["batchtwin/first_file"] for r in second.run_requests] == ["lims/lims_extra.csv"]
