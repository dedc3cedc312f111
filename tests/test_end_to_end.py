"""One materialization of the whole asset graph on the small demo plant, checked against the
truth."""

import shutil

import duckdb
import pandas as pd
import pytest
from typer.testing import CliRunner

from lake.layout import Lake
from pipelines.cli import app
from pipelines.runner import materialize_all

pytestmark = pytest.mark.slow  # runs the pipeline or a fit: scheduled first


def _con(data):
    return duckdb.connect(str(data / "lake" / "catalog.duckdb"), read_only=True)


def test_the_whole_graph_materializes(pipeline_run):
    _, result = pipeline_run
    assert result.success
    checks = [e for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    conserved = [
        e.event_specific_data.passed
        for e in checks
        if e.event_specific_data.check_name == "check_rows_conserved"
    ]
    assert conserved and all(conserved)


def test_catalog_opens_read_only_without_project_code(pipeline_run, truth):
    data, _ = pipeline_run
    with _con(data) as con:
        assert con.execute("select count(*) from batches").fetchone()[0] == len(truth["batches"])
        assert len(con.execute("select * from historian_points limit 5").fetchall()) == 5
        views = {
            r[0]
            for r in con.execute(
                "select view_name from duckdb_views() where not internal"
            ).fetchall()
        }
    assert {
        "ingest_log",
        "quarantine",
        "tags",
        "batches",
        "phases",
        "material_events",
        "historian_points",
        "samples",
    } <= views


def test_batches_and_phases_match_the_truth(pipeline_run, truth):
    data, _ = pipeline_run
    with _con(data) as con:
        batches = con.execute("select * from batches").df().set_index("batch_id")
        phases = con.execute(
            "select batch_id, phase, start_ts, end_ts from phases where level = 'phase'"
        ).df()
    for b in truth["batches"]:
        got = batches.loc[b["batch_id"]]
        assert got["status"] == b["status"]
        assert got["inoculation_ts"] == pd.Timestamp(b["inoculation_ts"])
        assert got["unit_id"] == b["unit_id"]
        if b["status"] == "complete":
            assert got["end_ts"] == pd.Timestamp(b["end_ts"])
            mine = phases[phases.batch_id == b["batch_id"]].set_index("phase")
            assert set(mine.index) == set(b["phases"])
            for name, p in b["phases"].items():
                assert mine.loc[name, "start_ts"] == pd.Timestamp(p["start_ts"])
        else:
            assert pd.isna(got["end_ts"])


def test_the_amended_record_supersedes_and_both_versions_are_kept(pipeline_run):
    data, _ = pipeline_run
    with _con(data) as con:
        rows = con.execute(
            "select record_version, superseded_by from batch_records"
            " where batch_id = 'B26-001' order by 1"
        ).fetchall()
        current = con.execute(
            "select record_version from batches where batch_id = 'B26-001'"
        ).fetchone()[0]
        bolus = con.execute(
            "select count(distinct record_version) from material_events where batch_id = 'B26-001'"
        ).fetchone()[0]
    assert [r[0] for r in rows] == [1, 2] and rows[0][1] is not None and rows[1][1] is None
    assert current == 2 and bolus == 1


def test_rows_are_conserved_and_faults_quarantined_with_reasons(pipeline_run):
    data, _ = pipeline_run
    with _con(data) as con:
        unbalanced = con.execute(
            "select count(*) from ingest_log where rows_read <> rows_accepted + rows_quarantined"
        ).fetchone()[0]
        per_file = con.execute(
            "select sha256, rows_quarantined from ingest_log where status = 'ingested'"
        ).df()
        q = con.execute("select source_sha256, count(*) n from quarantine group by 1").df()
        reasons = {r[0] for r in con.execute('select distinct "check" from quarantine').fetchall()}
        unknown = con.execute(
            "select count(*) from historian_points where tag = 'BR101.TT99.PV'"
        ).fetchone()[0]
        dupes = con.execute(
            "select count(*) from"
            " (select tag, ts from historian_points group by all having count(*) > 1)"
        ).fetchone()[0]
    assert unbalanced == 0
    merged = per_file.merge(q, left_on="sha256", right_on="source_sha256", how="left").fillna(
        {"n": 0}
    )
    assert (merged.rows_quarantined == merged.n).all()
    assert {"field_count", "duplicate_key"} <= reasons and any("dictionary" in r for r in reasons)
    assert unknown == 0 and dupes == 0


def test_the_fahrenheit_and_dst_sources_land_in_utc(pipeline_run):
    data, _ = pipeline_run
    with _con(data) as con:
        f = con.execute(
            "select min(value), max(value) from historian_points where tag = 'BR102.TT01.SP'"
        ).fetchone()
        dst = con.execute(
            """select count(*) from historian_points where tag = 'BR102.TT01.SP'
               and ts >= '2026-03-29 00:00:00+00' and ts < '2026-03-29 02:00:00+00'"""
        ).fetchone()[0]
    assert 59.0 <= f[0] and f[1] <= 99.0
    assert dst == 120  # two UTC hours of one-minute rows, none lost or doubled at the DST change


def _fingerprints(data) -> dict:
    """Row count and an order-independent hash of every view's rows, except the logs. Floats are
    hashed by their exact repr: curated numbers must be bit-identical on a rerun."""
    out = {}
    with _con(data) as con:
        views = [
            r[0]
            for r in con.execute(
                "select view_name from duckdb_views() where not internal"
            ).fetchall()
        ]
        for v in views:
            if v in ("ingest_log", "audit_log"):
                continue
            df = con.execute(f'select * from "{v}"').df()
            out[v] = (len(df), int(pd.util.hash_pandas_object(df.astype(str), index=False).sum()))
    return out


def test_a_second_run_changes_nothing(pipeline_run, tmp_path):
    shared, _ = pipeline_run
    before = _fingerprints(shared)
    # the rerun on a copy: the session's lake stays as the first run left it for other tests
    data = tmp_path / "data"
    for part in ("landing", "sql", "lake"):
        shutil.copytree(shared / part, data / part)
    lake = Lake(data / "lake")
    files_before = sorted(
        p.relative_to(lake.root)
        for p in (lake.root / "silver" / "historian_points").glob("*.parquet")
    )
    assert materialize_all(data).success
    after = _fingerprints(data)
    assert {v: n for v, (n, _) in after.items()} == {v: n for v, (n, _) in before.items()}
    changed = {v for v in before if before[v] != after.get(v)}
    assert not changed, changed
    with _con(data) as con:
        statuses = con.execute("select status, count(*) from ingest_log group by 1").fetchall()
    assert files_before == sorted(
        p.relative_to(lake.root)
        for p in (lake.root / "silver" / "historian_points").glob("*.parquet")
    )
    assert dict(statuses)["unchanged"] >= 1


def test_cli_sql_and_status(pipeline_run, truth):
    data, _ = pipeline_run
    runner = CliRunner()
    out = runner.invoke(
        app,
        ["sql", "select count(*) as n from batches", "--format", "csv", "--data-dir", str(data)],
    )
    assert out.exit_code == 0 and out.stdout.splitlines() == ["n", str(len(truth["batches"]))]
    bad = runner.invoke(app, ["sql", "select nope from batches", "--data-dir", str(data)])
    assert (
        bad.exit_code == 1
        and "Traceback" not in bad.output
        and len(bad.output.strip().splitlines()) == 1
    )
    status = runner.invoke(app, ["status", "--data-dir", str(data)])
    assert status.exit_code == 0 and "historian_long" in status.stdout


def test_cli_sql_without_a_catalog_says_what_to_do(tmp_path):
    out = CliRunner().invoke(app, ["sql", "select 1", "--data-dir", str(tmp_path)])
    assert out.exit_code == 1 and "make demo" in out.output


def test_the_duckdb_shell_reads_the_catalog(pipeline_run, truth):
    import subprocess
    import sys
    from pathlib import Path

    shell = Path(sys.executable).parent / "duckdb"
    data, _ = pipeline_run
    out = subprocess.run(
        [
            str(shell),
            "-readonly",
            "-csv",
            str(data / "lake" / "catalog.duckdb"),
            "-c",
            "select count(*) as n from batches",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["n", str(len(truth["batches"]))]
