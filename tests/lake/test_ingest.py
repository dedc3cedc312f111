"""Ingestion bookkeeping: idempotence, overlapping exports, rejected files, row conservation."""

import dataclasses
import shutil

import duckdb
import pandas as pd

from demo.plant import demo_site
from lake import catalog, ingest
from lake.layout import Lake
from sources.profiles import profile_for

PROFILES = demo_site().files


def _ingest(lake, landing, rel):
    return ingest.ingest_file(lake, landing, rel, profile_for(rel, PROFILES))


def test_the_same_file_twice_is_a_recorded_no_op(fresh_data):
    lake, landing = Lake(fresh_data / "lake"), fresh_data / "landing"
    first = _ingest(lake, landing, "historian/BR101_2026-03-15.csv")
    again = _ingest(lake, landing, "historian/BR101_2026-03-15.csv")
    assert first.status == "ingested" and again.status == "unchanged"
    assert again.log["sha256"] == first.log["sha256"] and again.log["rows_read"] == 0
    assert len(list(lake.silver("ingest_log").glob("*.parquet"))) == 2
    raw = lake.raw(first.log["sha256"], ".csv")
    assert raw.read_bytes() == (landing / "historian/BR101_2026-03-15.csv").read_bytes()


def test_an_overlapping_export_quarantines_the_repeated_points(fresh_data):
    lake, landing = Lake(fresh_data / "lake"), fresh_data / "landing"
    first = _ingest(lake, landing, "historian/BR101_2026-03-15.csv")
    # a re-export of the last 200 rows of the same week, as a new file
    lines = (landing / "historian/BR101_2026-03-15.csv").read_text().splitlines(keepends=True)
    (landing / "historian/BR101_reexport.csv").write_text(lines[0] + "".join(lines[-200:]))
    second = _ingest(lake, landing, "historian/BR101_reexport.csv")
    assert second.log["rows_read"] == 200
    assert second.log["rows_quarantined"] == 200 and second.log["rows_accepted"] == 0
    catalog.rebuild(lake)
    with duckdb.connect(str(lake.catalog), read_only=True) as con:
        dupes = con.execute(
            "select count(*) from"
            " (select tag, ts from historian_points group by all having count(*) > 1)"
        ).fetchone()[0]
        checks = con.execute(
            'select distinct "check" from quarantine where source_sha256 = ?',
            [second.log["sha256"]],
        ).fetchall()
    assert dupes == 0 and checks == [("duplicate_across_sources",)]
    assert first.log["rows_accepted"] > 0


def test_a_file_without_required_columns_is_rejected_and_the_run_goes_on(fresh_data):
    lake, landing = Lake(fresh_data / "lake"), fresh_data / "landing"
    (landing / "lims" / "broken.csv").write_text("sample,result\nS1,4.2\n")
    out = _ingest(lake, landing, "lims/broken.csv")
    assert out.status == "rejected"
    assert (
        out.log["error"].startswith("lims/broken.csv: ")
        and "missing column" in out.log["error"]
        and "\n" not in out.log["error"]
    )
    ok = _ingest(
        lake,
        landing,
        next(p.relative_to(landing).as_posix() for p in (landing / "lims").glob("lims_*.csv")),
    )
    assert ok.status == "ingested"


def test_a_rejected_file_is_read_again_once_its_profile_is_fixed(fresh_data):
    """The fix for a rejection is a profile change (raw data are never altered): the same bytes
    are skipped under the same profile and read under the fixed one."""
    lake, landing = Lake(fresh_data / "lake"), fresh_data / "landing"
    source = next((landing / "lims").glob("lims_*.csv"))
    header, *rows = source.read_text().splitlines()
    (landing / "lims" / "renamed.csv").write_text(
        "\n".join([header.replace("analyte", "test_name"), *rows]) + "\n"
    )
    profile = profile_for("lims/renamed.csv", PROFILES)
    first = ingest.ingest_file(lake, landing, "lims/renamed.csv", profile)
    again = ingest.ingest_file(lake, landing, "lims/renamed.csv", profile)
    assert first.status == "rejected" and "analyte" in first.log["error"]
    assert again.status == "unchanged"
    fixed = dataclasses.replace(profile, columns={**profile.columns, "analyte": "test_name"})
    read = ingest.ingest_file(lake, landing, "lims/renamed.csv", fixed)
    assert (
        read.status == "ingested"
        and read.log["rows_accepted"] == len(rows) - read.log["rows_quarantined"]
    )
    assert read.log["rows_accepted"] > 0
    assert ingest.ingest_file(lake, landing, "lims/renamed.csv", fixed).status == "unchanged"


def test_every_quarantined_row_names_file_row_column_and_reason(fresh_data, truth):
    lake, landing = Lake(fresh_data / "lake"), fresh_data / "landing"
    _ingest(lake, landing, "tags/tag_dictionary.csv")
    tags = ingest.known_tags(lake)
    fault = next(
        f
        for f in truth["faults"]
        if f["fault"] == "malformed_line" and f["file"].startswith("historian")
    )
    out = ingest.ingest_file(
        lake, landing, fault["file"], profile_for(fault["file"], PROFILES), tags_known=tags
    )
    q = pd.read_parquet(lake.silver("quarantine") / f"{out.log['sha256']}.parquet")
    assert len(q) == out.log["rows_quarantined"] == out.log["rows_read"] - out.log["rows_accepted"]
    assert q[["source_sha256", "source_row", "check", "reason", "dataset"]].notna().all().all()
    assert fault["line"] in set(q.source_row)
    assert set(q["check"]) >= {"field_count", "duplicate_key"}


def test_silver_lineage_points_at_the_source_line_in_a_file_with_empty_lines(fresh_data):
    """A concatenated export (empty lines between the parts, a duplicate, a malformed line):
    every silver row's and quarantine row's source_row is the line holding its text."""
    lake, landing = Lake(fresh_data / "lake"), fresh_data / "landing"
    lines = (landing / "historian/BR101_2026-03-15.csv").read_text().splitlines()
    part = lines[1:6]
    text_lines = [
        lines[0],
        *part[:2],
        "",
        *part[2:],
        "",
        "",
        part[0],
        "BR101.TT01.PV,2026-03-15T10:00:00+0100",
        "",
    ]
    (landing / "historian/BR101_concat.csv").write_text("\n".join(text_lines))
    out = _ingest(lake, landing, "historian/BR101_concat.csv")
    silver = pd.read_parquet(lake.silver("historian_points") / f"{out.log['sha256']}.parquet")
    assert silver["source_row"].tolist() == [
        3,
        5,
        6,
        7,
        10,
    ]  # the repeat on line 10 wins over line 2
    for row in silver.itertuples():
        assert text_lines[row.source_row - 1].startswith(f"{row.tag},{row.ts_text},")
    q = pd.read_parquet(lake.silver("quarantine") / f"{out.log['sha256']}.parquet").sort_values(
        "source_row"
    )
    assert q["source_row"].tolist() == [2, 11] and q["check"].tolist() == [
        "duplicate_key",
        "field_count",
    ]


def test_a_tag_listed_twice_takes_its_later_definition(fresh_data):
    lake, landing = Lake(fresh_data / "lake"), fresh_data / "landing"
    path = landing / "tags" / "tag_dictionary.csv"
    lines = path.read_text().splitlines(keepends=True)
    temperature = next(i for i, line in enumerate(lines) if "TT" in line.split(",")[0])
    # the same tag again at the end of the file, now with a wider instrument range
    again = lines[temperature].rstrip("\n").split(",")
    header = lines[0].rstrip("\n").split(",")
    again[header.index("high")] = "999"
    path.write_text("".join(lines) + ",".join(again) + "\n")
    out = _ingest(lake, landing, "tags/tag_dictionary.csv")
    assert out.log["rows_read"] == len(lines)  # header excluded, the repeated line included
    assert (out.log["rows_accepted"], out.log["rows_quarantined"]) == (len(lines) - 1, 1)
    silver = pd.read_parquet(lake.silver("tags") / f"{out.log['sha256']}.parquet")
    kept = silver[silver["tag"] == again[0]]
    assert kept["high"].tolist() == [999.0] and kept["source_row"].tolist() == [len(lines) + 1]
    q = pd.read_parquet(lake.silver("quarantine") / f"{out.log['sha256']}.parquet")
    assert q["source_row"].tolist() == [temperature + 1]
    assert q["reason"].tolist() == ["duplicate tag: the later definition in the file wins"]
    # the sensor's points are checked against the dictionary and accepted: the tag is defined
    rel = "historian/BR101_2026-03-15.csv"
    points = ingest.ingest_file(
        lake, landing, rel, profile_for(rel, PROFILES), tags_known=ingest.known_tags(lake)
    )
    with duckdb.connect() as con:
        accepted = con.execute(
            "select count(*) from read_parquet(?) where tag = ?",
            [str(lake.silver("historian_points") / f"{points.log['sha256']}.parquet"), again[0]],
        ).fetchone()[0]
    assert accepted > 100


def test_the_lake_tables_have_their_model_types(fresh_data):
    lake, landing = Lake(fresh_data / "lake"), fresh_data / "landing"
    _ingest(lake, landing, "historian/BR101_2026-03-15.csv")
    catalog.rebuild(lake)
    with duckdb.connect(str(lake.catalog), read_only=True) as con:
        log = dict(
            con.execute("select column_name, column_type from (describe ingest_log)").fetchall()
        )
        q = dict(
            con.execute("select column_name, column_type from (describe quarantine)").fetchall()
        )
        audit = dict(
            con.execute("select column_name, column_type from (describe audit_log)").fetchall()
        )
    assert log["error"] == log["notes"] == log["run_id"] == "VARCHAR"
    assert log["rows_read"] == "BIGINT" and log["started_at"] == "TIMESTAMP WITH TIME ZONE"
    assert q["source_row"] == "BIGINT" and q["row_key"] == "VARCHAR"
    assert audit["old_value"] == "VARCHAR" and audit["ts"] == "TIMESTAMP WITH TIME ZONE"


def test_the_conservation_check_fails_on_a_reader_that_loses_a_row(fresh_data, monkeypatch):
    import dagster as dg

    from pipelines.ingest_assets import batch_and_lab_records
    from pipelines.resources import resources_from_env

    honest = ingest.READERS["lims"]

    def lossy(*args, **kwargs):
        result = honest(*args, **kwargs)
        result.tables["samples"] = result.tables["samples"].iloc[1:]  # a bug: one row vanishes
        return result

    monkeypatch.setitem(ingest.READERS, "lims", lossy)
    result = dg.materialize(
        [batch_and_lab_records],
        instance=dg.DagsterInstance.ephemeral(),
        resources=resources_from_env(fresh_data),
    )
    checks = {(c.asset_key.path[-1], c.check_name): c for c in result.get_asset_check_evaluations()}
    conserved = checks["samples", "check_rows_conserved"]
    assert not conserved.passed
    # the MES documents the same step read lost nothing: their tables' checks pass
    assert checks["batch_records", "check_rows_conserved"].passed
    lims_files = sorted(p.name for p in (fresh_data / "landing" / "lims").glob("*.csv"))
    assert conserved.metadata["unbalanced_files"].value.split(", ") == [
        f"lims/{name}" for name in lims_files
    ]
    monkeypatch.setitem(ingest.READERS, "lims", honest)
    fresh = fresh_data / "again"
    shutil.copytree(fresh_data / "landing", fresh / "landing")
    shutil.copytree(fresh_data / "sql", fresh / "sql")
    result = dg.materialize(
        [batch_and_lab_records],
        instance=dg.DagsterInstance.ephemeral(),
        resources=resources_from_env(fresh),
    )
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) == 10  # two checks on each of the step's five tables
    assert all(c.passed for c in evaluations if c.check_name == "check_rows_conserved")


def test_the_conservation_check_fails_on_a_journal_reader_that_loses_a_record(
    fresh_data, monkeypatch
):
    """A journal's rows are the records its lines call for, counted from the lines: a phase
    record the reader builds and then loses is missing from rows accepted."""
    from sources import mes_journal

    lake, landing = Lake(fresh_data / "lake"), fresh_data / "landing"
    rel = sorted(p.relative_to(landing).as_posix() for p in (landing / "mes").glob("*.csv"))[0]
    honest = _ingest(lake, landing, rel).log
    assert honest["rows_read"] == honest["rows_accepted"] + honest["rows_quarantined"]
    finish = mes_journal.finish_records

    def lossy(rows, *args):
        if rows and "level" in rows[0]:  # the phase records: a bug drops the last one
            rows = rows[:-1]
        return finish(rows, *args)

    monkeypatch.setattr(mes_journal, "finish_records", lossy)
    lost = _ingest(Lake(fresh_data / "lake2"), landing, rel).log
    assert lost["rows_read"] == honest["rows_read"]
    assert lost["rows_accepted"] + lost["rows_quarantined"] == lost["rows_read"] - 1


def test_the_catalog_sees_files_written_after_it_was_built(fresh_data):
    lake, landing = Lake(fresh_data / "lake"), fresh_data / "landing"
    _ingest(lake, landing, "historian/BR101_2026-03-15.csv")
    catalog.rebuild(lake)
    with duckdb.connect(str(lake.catalog), read_only=True) as con:
        empty = con.execute("select count(*) from sample_records").fetchone()[0]
        kpis = dict(
            con.execute("select column_name, column_type from (describe batch_kpis)").fetchall()
        )
    # an empty table already has its model's columns and types
    assert empty == 0 and kpis["peak_vcd"] == "DOUBLE" and kpis["batch_id"] == "VARCHAR"
    lims = sorted((landing / "lims").glob("*.csv"))[0].relative_to(landing).as_posix()
    read = _ingest(lake, landing, lims)
    with duckdb.connect(str(lake.catalog), read_only=True) as con:  # no rebuild in between
        n = con.execute("select count(*) from sample_records").fetchone()[0]
    assert n == read.log["rows_accepted"] > 0
