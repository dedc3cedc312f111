"""The Dagster definitions load, and the landing sensor requests one run per new file."""
import json
import shutil

import dagster as dg

from pipelines.definitions import defs, landing_zone_sensor
from pipelines.resources import LandingResource, default_sql_url


def test_definitions_load_with_groups_checks_sensor_and_schedule():
    repo = defs.get_repository_def()
    groups = {repo.assets_defs_by_key[k].group_names_by_key[k] for k in repo.assets_defs_by_key}
    assert {"ingest", "curate"} <= groups
    specs = defs.resolve_asset_graph().asset_check_keys
    assert dg.AssetCheckKey(dg.AssetKey("historian_files"), "check_rows_conserved") in specs
    assert defs.resolve_sensor_def("landing_zone_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_schedule_def("sql_historian_pull").cron_schedule == "*/15 * * * *"
    for key, asset in repo.assets_defs_by_key.items():
        assert asset.descriptions_by_key.get(key), f"{key} has no description"


def test_landing_sensor_requests_each_new_file_once(fresh_data):
    landing = LandingResource(root=str(fresh_data / "landing"), sql_url=default_sql_url(fresh_data))
    ctx = dg.build_sensor_context(resources={"landing": landing})
    first = landing_zone_sensor(ctx)
    n_files = sum(1 for p in (fresh_data / "landing").rglob("*") if p.is_file())
    assert len(first.run_requests) == n_files
    assert len({r.run_key for r in first.run_requests}) == n_files  # run keys are content hashes
    by_file = {r.tags["batchtwin/file"]: r for r in first.run_requests}
    assert by_file["tags/tag_dictionary.csv"].asset_selection == [dg.AssetKey("tag_dictionary"), dg.AssetKey("lake_catalog")]

    again = landing_zone_sensor(dg.build_sensor_context(cursor=first.cursor, resources={"landing": landing}))
    assert isinstance(again, dg.SkipReason)

    new = fresh_data / "landing" / "lims" / "lims_extra.csv"
    shutil.copy(next((fresh_data / "landing" / "lims").glob("*.csv")), new)
    third = landing_zone_sensor(dg.build_sensor_context(cursor=first.cursor, resources={"landing": landing}))
    assert [r.tags["batchtwin/file"] for r in third.run_requests] == ["lims/lims_extra.csv"]
    assert json.loads(third.cursor).keys() > json.loads(first.cursor).keys()
