"""Whole runs on sites that differ from the demo: a failing source fails its own asset only,
a site without a SQL historian or a model runs clean."""

import pytest
import yaml
from typer.testing import CliRunner

from lake.layout import Lake
from lake.query import query
from pipelines.cli import app
from pipelines.runner import materialize_all


def _edit_site(data, change) -> None:
    path = data / "landing" / "sources.yaml"
    doc = yaml.safe_load(path.read_text())
    change(doc)
    path.write_text(yaml.safe_dump(doc))


def test_an_unreachable_sql_historian_fails_its_asset_only_and_the_run_says_so(fresh_data):
    _edit_site(
        fresh_data,
        lambda d: d["sql"]["ip21_br201"].update(url="sqlite:////nonexistent-dir/historian.sqlite"),
    )
    result = CliRunner().invoke(app, ["run", "--data-dir", str(fresh_data)])
    assert result.exit_code == 1
    out = " ".join(result.output.split())
    assert (
        "failed: ingest_historian_points: SQL historian 'ip21_br201': "
        "OperationalError: unable to open database file" in out
    )
    assert "with 1 failed step(s); everything else was ingested and curated" in out
    assert "sources failing" in out
    lake = Lake(fresh_data / "lake")
    log = query(lake, "SELECT status, error FROM ingest_log WHERE source = 'ip21_br201'")
    assert log["status"].tolist() == ["failed"] and log["error"].iloc[0].startswith(
        "SQL historian 'ip21_br201': "
    )
    # the other units' batches were contextualized, and the model was fitted on them
    kpis = query(lake, "SELECT unit_id, count(*) AS n FROM batch_kpis GROUP BY 1 ORDER BY 1")
    assert set(kpis["unit_id"]) == {"BR-101", "BR-102", "BR-201"}
    assert (
        query(lake, "SELECT count(*) AS n FROM process_values WHERE unit_id = 'BR-201'")["n"].iloc[
            0
        ]
        == 0
    )
    assert (
        query(lake, "SELECT count(*) AS n FROM process_values WHERE unit_id = 'BR-101'")["n"].iloc[
            0
        ]
        > 1000
    )
    assert len(query(lake, "SELECT * FROM model_versions")) == 1


def test_a_site_without_sql_historian_or_models_runs_clean(fresh_data):
    def change(doc):
        doc.pop("sql")
        doc["models"] = {}

    _edit_site(fresh_data, change)
    run = materialize_all(fresh_data)
    assert run.success, run.failures()
    lake = Lake(fresh_data / "lake")
    assert (
        query(lake, "SELECT count(*) AS n FROM ingest_log WHERE dataset = 'historian_sql'")[
            "n"
        ].iloc[0]
        == 0
    )
    assert len(query(lake, "SELECT * FROM model_versions")) == 0
    fit = next(
        e
        for e in run.all_events
        if e.event_type_value == "ASSET_MATERIALIZATION" and e.asset_key.path == ["model_fit"]
    )
    reason = fit.event_specific_data.materialization.metadata["reason"].value
    assert reason == "MAB-A: no model in the site's catalog (sources.yaml `models:`)"


def test_a_landing_zone_without_sources_yaml_stops_with_one_line(tmp_path):
    (tmp_path / "landing").mkdir()
    result = CliRunner().invoke(app, ["run", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1
    assert "sources.yaml not found" in " ".join(result.output.split())
    assert not (tmp_path / "lake").exists() or not any((tmp_path / "lake").rglob("*.parquet"))


def test_under_the_daemon_a_failed_source_does_not_keep_the_others_out_of_the_catalog(fresh_data):
    import dagster as dg

    from pipelines.definitions import defs as project_defs
    from pipelines.resources import resources_from_env

    _edit_site(
        fresh_data,
        lambda d: d["sql"]["ip21_br201"].update(url="sqlite:////nonexistent-dir/historian.sqlite"),
    )
    resources = resources_from_env(fresh_data)
    defs = dg.Definitions(assets=project_defs.assets, jobs=project_defs.jobs, resources=resources)
    with dg.DagsterInstance.ephemeral() as instance:
        before = dg.evaluate_automation_conditions(
            defs=defs, instance=instance
        )  # the daemon's tick before the run
        ran = defs.resolve_job_def("ingest_everything").execute_in_process(
            instance=instance, raise_on_error=False
        )
        assert not ran.success
        assert [e.step_key for e in ran.get_step_failure_events()] == ["ingest_historian_points"]
        assert not (fresh_data / "lake" / "catalog.duckdb").exists()  # the run skipped it
        evaluation = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, cursor=before.cursor
        )
        requested = {
            r.key
            for r in evaluation.results
            if r.true_subset.size and isinstance(r.key, dg.AssetKey)
        }
        assert dg.AssetKey("lake_catalog") in requested
        dg.materialize(
            project_defs.assets,
            selection=[dg.AssetKey("lake_catalog")],
            instance=instance,
            resources=resources,
        )
    assert query(Lake(fresh_data / "lake"), "SELECT count(*) AS n FROM batches")["n"].iloc[0] > 0


def test_a_network_outage_is_retried_and_a_wrong_url_is_not(tmp_path):
    import socket

    import dagster as dg

    from lake.ingest import ingest_sql
    from pipelines.ingest_assets import _results, historian_points
    from sources.profiles import SqlProfile

    assert historian_points.op.retry_policy is not None
    assert historian_points.op.retry_policy.max_retries >= 2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once the socket is closed
    for url, retried in (
        (f"postgresql+psycopg://u:p@127.0.0.1:{port}/ip21", True),
        ("sqlite:////nonexistent-dir/historian.sqlite", False),
        ("postgresql+nosuchdriver://u:p@127.0.0.1/ip21", False),
    ):
        outcome = ingest_sql(Lake(tmp_path / "lake"), SqlProfile("ip21", url))
        with pytest.raises(dg.Failure) as failure:
            _results(dg.build_asset_context(), ["historian_points"], [outcome])
        assert failure.value.allow_retries is retried, url
