"""A batch completes -> the landing sensor, the batches sensor and the automation conditions
produce a new candidate model version, with no manual materialization."""

import json
import shutil

import dagster as dg
import pandas as pd
import pytest

from demo.plant import PlantSize, generate
from lake.layout import Lake
from lake.query import query
from models.registry import Registry
from pipelines.contextualize_assets import batch_gold, batch_partitions, batches_sensor
from pipelines.definitions import ALL_ASSETS, landing_zone_sensor
from pipelines.model_assets import MODEL_CHECKS
from pipelines.resources import LakeResource, LandingResource, resources_from_env
from pipelines.runner import materialize_all
from sources.base import sha256_of

pytestmark = pytest.mark.slow  # runs the pipeline or a fit: scheduled first


def _requested(evaluation) -> set:
    return {
        r.key for r in evaluation.results if r.true_subset.size and isinstance(r.key, dg.AssetKey)
    }


def _execute(keys, defs_assets, instance, resources):
    """Run what a sensor or the automation asked for, as the daemon would."""
    if keys:
        result = dg.materialize(
            defs_assets,
            selection=sorted(keys, key=lambda k: k.to_user_string()),
            instance=instance,
            resources=resources,
        )
        assert result.success


def test_a_newly_completed_batch_triggers_a_refit(tmp_path):
    # the 6-batch demo plant, whose MES has not yet exported B26-004's (completed) batch record
    fresh_data = tmp_path / "plant"
    truth = generate(fresh_data, PlantSize(batches=6, seconds_per_sample=60.0))
    assert {b["batch_id"]: b["status"] for b in truth["batches"]}["B26-004"] == "complete"
    record = fresh_data / "landing" / "mes" / "B26-004.xml"
    held_back = tmp_path / "B26-004.xml"
    shutil.move(record, held_back)
    instance = dg.DagsterInstance.ephemeral()
    assert materialize_all(fresh_data, instance=instance).success
    lake = Lake(fresh_data / "lake")
    reg = Registry(lake)
    assert list(reg.versions()["version"]) == [1]
    resources = resources_from_env(fresh_data)
    defs = dg.Definitions(assets=ALL_ASSETS, asset_checks=MODEL_CHECKS, resources=resources)
    landing = LandingResource(root=str(fresh_data / "landing"))
    lake_res = LakeResource(root=str(lake.root))

    # the daemon's state before the drop: sensors and automation have seen the current lake
    # files `materialize_all` ingested request nothing, though the sensor never saw them
    before = landing_zone_sensor(
        dg.build_sensor_context(resources={"landing": landing, "lake": lake_res})
    )
    assert not before.run_requests
    landing_cursor = before.cursor
    before_done = batches_sensor(
        dg.build_sensor_context(instance=instance, resources={"lake": lake_res})
    )
    # gold that materialize_all computed from the current records is not requested again
    assert not before_done.run_requests and before_done.skip_reason
    done_cursor = before_done.cursor
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    _execute(_requested(first), ALL_ASSETS, instance, resources)
    settle = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor)
    assert dg.AssetKey("model_fit") not in _requested(settle)

    # the MES exports the completed batch record into the landing zone
    shutil.copy(held_back, record)
    held_sha = sha256_of(record)

    sensed = landing_zone_sensor(
        dg.build_sensor_context(
            cursor=landing_cursor, resources={"landing": landing, "lake": lake_res}
        )
    )
    assert [
        r.tags.get("batchtwin/file") or r.tags.get("batchtwin/first_file")
        for r in sensed.run_requests
    ] == ["mes/B26-004.xml"]
    assert dg.AssetKey("batch_records") in sensed.run_requests[0].asset_selection
    _execute(
        {k for r in sensed.run_requests for k in r.asset_selection}, ALL_ASSETS, instance, resources
    )

    done = batches_sensor(
        dg.build_sensor_context(instance=instance, cursor=done_cursor, resources={"lake": lake_res})
    )
    # the completed batch for its new record; the running ones for the catalog's new data
    requested_for = {r.partition_key: r.run_key for r in done.run_requests}
    assert requested_for.pop("B26-004") == f"B26-004:{held_sha}"
    assert set(requested_for) == {"B26-005", "B26-006"}
    assert all("|running, catalog " in key for key in requested_for.values())
    for req in done.dynamic_partitions_requests:
        instance.add_dynamic_partitions(batch_partitions.name, list(req.partition_keys))
    for r in done.run_requests:
        assert dg.materialize(
            [batch_gold], partition_key=r.partition_key, instance=instance, resources=resources
        ).success

    # a batch whose gold was never computed (its run failed, say) holds back no refit
    instance.add_dynamic_partitions(batch_partitions.name, ["B26-GHOST"])
    evaluated = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=settle.cursor
    )
    requested = _requested(evaluated)
    assert dg.AssetKey("model_fit") in requested
    _execute(requested, ALL_ASSETS, instance, resources)

    versions = reg.versions()
    assert list(versions["version"]) == [1, 2]
    new = versions.iloc[-1]
    assert "B26-004" in json.loads(new["training_batches"])
    # the refit's status follows the promotion rule: inside its bounds and a validation error
    # within tolerance of the champion's
    first, limit = versions.iloc[0], versions.iloc[0]["validation_error"] * (1 + reg.tolerance)
    promoted = new["validation_error"] <= limit and not new["reason"].startswith(
        "fitted parameter(s) at a bound"
    )
    assert new["status"] == ("champion" if promoted else "rejected")
    assert first["status"] == ("retired" if promoted else "champion")
    assert new["data_fingerprint"] != versions.iloc[0]["data_fingerprint"]
    # the forecasts follow in the same automation tick, from whichever version is champion now
    assert dg.AssetKey("forecasts") in requested
    champion = reg.champion("MAB-A")
    forecasts = pd.concat(
        pd.read_parquet(f) for f in (lake.root / "models" / "forecasts").glob("*.parquet")
    )
    newest = forecasts[
        (forecasts["model"] == champion["model"])
        & (forecasts["version"] == int(champion["version"]))
    ]
    assert set(newest["batch_id"]) >= {"B26-005", "B26-006"}

    def ingest_new(cursor: str) -> dg.SensorResult:
        """A landing sensor tick and the runs it requests, as the daemon does them."""
        res = {"landing": landing, "lake": lake_res}
        sensed = landing_zone_sensor(dg.build_sensor_context(cursor=cursor, resources=res))
        keys = {k for r in sensed.run_requests for k in r.asset_selection}
        _execute(keys, ALL_ASSETS, instance, resources)
        return sensed

    def batches_tick(cursor: str) -> tuple[dg.SensorResult, dict[str, str]]:
        """A batches sensor tick, and why it requested each batch."""
        res = {"lake": lake_res}
        ticked = batches_sensor(
            dg.build_sensor_context(instance=instance, cursor=cursor, resources=res)
        )
        why = {r.partition_key: r.run_key.split("|")[-1].split(",")[0] for r in ticked.run_requests}
        return ticked, why

    # historian points inside the completed B26-004's window arrive late: its gold is computed
    # again (the running batches are requested for the catalog's new data)
    b = query(lake, "SELECT unit_id, start_ts, end_ts FROM batches WHERE batch_id = 'B26-004'")
    tag = query(lake, "SELECT min(tag) AS tag FROM tags WHERE unit_id = ?", [b["unit_id"].iloc[0]])[
        "tag"
    ].iloc[0]
    at = (b["start_ts"].iloc[0] + pd.Timedelta(hours=5, seconds=7)).strftime("%Y-%m-%dT%H:%M:%S%z")
    (fresh_data / "landing" / "historian" / "late.csv").write_text(
        f"Tag,Timestamp,Value,Status\n{tag},{at},1.5,Good\n"
    )
    sensed = ingest_new(sensed.cursor)
    late, why = batches_tick(done.cursor)
    assert why == {"B26-004": "late data", "B26-005": "running", "B26-006": "running"}
    rows_before = query(lake, "SELECT count(*) AS n FROM process_values WHERE batch_id = 'B26-004'")
    assert dg.materialize(
        [batch_gold], partition_key="B26-004", instance=instance, resources=resources
    ).success
    rows_after = query(lake, "SELECT count(*) AS n FROM process_values WHERE batch_id = 'B26-004'")
    assert rows_after["n"].iloc[0] == rows_before["n"].iloc[0] + 1

    # a release assay of the completed B26-004 arrives days later: its gold (the KPIs read the
    # lab results) is computed again
    end = b["end_ts"].iloc[0]
    sampled, reported = (
        (end - pd.Timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        (end + pd.Timedelta(hours=48)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    (fresh_data / "landing" / "lims" / "release_B26-004.csv").write_text(
        "sample_id,batch_id,analyte,value,unit,sampled_at,reported_at\n"
        f"B26-004-REL,B26-004,titer,5.1,g/L,{sampled},{reported}\n"
    )
    ingest_new(sensed.cursor)
    again, why = batches_tick(late.cursor)
    assert why.get("B26-004") == "late data"
    # the sources already looked at are not late a second time
    assert "B26-004" not in batches_tick(again.cursor)[1]
