"""Readers on the demo plant's files, the real vendor record, and malformed input."""

import gzip
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from demo.plant import demo_site
from sources import historian_csv, lims, mes_journal, mes_xml, tags
from sources.base import SourceRejected, sha256_of
from sources.profiles import profile_for
from sources.site import SiteConfigError, load_site

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "b2mml"
SITE = demo_site()
PROFILES = {p.name: p for p in SITE.files}


def _read(reader, path: Path, landing: Path):
    rel = path.relative_to(landing).as_posix()
    return reader(path, sha256_of(path), rel, profile_for(rel, SITE.files))


def test_long_historian_quarantines_the_truncated_line_by_its_number(plant_dir, truth):
    landing = plant_dir / "landing"
    fault = next(
        f
        for f in truth["faults"]
        if f["fault"] == "malformed_line" and f["file"].startswith("historian")
    )
    res = _read(historian_csv.read_long, landing / fault["file"], landing)
    points = res.tables["historian_points"]
    assert res.rejects["source_row"].tolist() == [fault["line"]]
    assert res.rows_read == len(points) + len(res.rejects)
    text = gzip.decompress((landing / fault["file"]).read_bytes()).decode().splitlines()
    row = points.iloc[100]
    assert text[row.source_row - 1].startswith(f"{row.tag},{row.ts_text},")


def test_long_historian_keeps_digital_states_as_bad_quality(plant_dir):
    landing = plant_dir / "landing"
    pts = pd.concat(
        _read(historian_csv.read_long, p, landing).tables["historian_points"]
        for p in (landing / "historian").glob("BR101_*")
    )
    states = pts[pts.state.notna()]
    assert {"Pt Created", "I/O Timeout", "Scan Off"} <= set(states.state)
    assert states.value.isna().all() and (states.quality == "bad").all()
    assert {"uncertain", "bad", "good"} <= set(pts.quality)
    assert str(pts.ts.dtype) == "datetime64[us, UTC]"


def test_wide_historian_reads_decimal_comma_and_local_time_across_dst(plant_dir):
    landing = plant_dir / "landing"
    res = _read(
        historian_csv.read_wide, landing / "historian" / "BR102_2026-03-22_wide.csv", landing
    )
    pts = res.tables["historian_points"]
    temp = pts[pts.tag == "BR102.TT01.SP"].sort_values("ts")
    assert temp.value.between(59.0, 99.0).all()  # °F set-points: 15 °C … 36.8 °C
    steps = temp.ts.diff().dropna().dt.total_seconds()
    assert (steps == 60).all(), "one minute apart in UTC, also across the DST change"
    dst = pts[
        pts.ts_text.isin(["29.03.2026 01:59:00", "29.03.2026 03:00:00"])
        & (pts.tag == "BR102.TT01.SP")
    ]
    assert (dst.ts.diff().dropna().dt.total_seconds() == 60).all()
    assert res.rows_read == len(pts) + len(res.rejects)


def test_event_journal_derives_phases_from_state_changes(plant_dir, truth):
    landing = plant_dir / "landing"
    path = next((landing / "mes").glob("*_journal.csv"))
    res = _read(mes_journal.read_journal, path, landing)
    batch = res.tables["batch_records"].iloc[0]
    expected = next(b for b in truth["batches"] if b["batch_id"] == batch.batch_id)
    assert batch["product"] == "MAB-A" and batch.unit_id == expected["unit_id"]
    assert batch.inoculation_ts == pd.Timestamp(expected["inoculation_ts"])
    phases = res.tables["phase_records"]
    fed = phases[phases.phase == "FED_BATCH"].iloc[0]
    assert fed.start_ts == pd.Timestamp(expected["phases"]["FED_BATCH"]["start_ts"])
    assert fed.end_ts == pd.Timestamp(expected["phases"]["FED_BATCH"]["end_ts"])
    assert set(phases.level) == {"procedure", "unit_procedure", "operation", "phase"}


def test_batchml_reads_batch_phases_materials_and_version(plant_dir, truth):
    landing = plant_dir / "landing"
    v1 = _read(mes_xml.read_batchml, landing / "mes" / "B26-001_v1.xml", landing)
    v2 = _read(mes_xml.read_batchml, landing / "mes" / "B26-001_v2.xml", landing)
    b1, b2 = v1.tables["batch_records"].iloc[0], v2.tables["batch_records"].iloc[0]
    assert (b1.record_version, b2.record_version) == (1, 2)
    expected = next(b for b in truth["batches"] if b["batch_id"] == "B26-001")
    assert b2.end_ts == pd.Timestamp(expected["end_ts"]) and b1.end_ts < b2.end_ts
    assert b2.inoculation_ts == pd.Timestamp(expected["inoculation_ts"])
    bolus = v2.tables["material_event_records"]
    bolus = bolus[bolus.kind == "bolus"]
    assert bolus.quantity.tolist() == pytest.approx([b["volume_l"] for b in expected["boluses"]])
    assert len(v2.tables["phase_records"].query("level == 'phase'")) == 6
    # the material actuals of the record's own segment response belong to its batch
    assert set(v2.tables["material_event_records"].batch_id) == {"B26-001"}
    assert set(v2.tables["batch_records"].batch_id) == {"B26-001"}
    # the control recipe's state changes are the batch's events
    events = v2.tables["batch_event_records"]
    assert set(events.kind) == {"event"} and set(events.text) == {"RUNNING", "COMPLETE"}
    assert set(events.category) == {"Control Recipe: State Change"}
    assert events.ts.is_monotonic_increasing and events.ts.iloc[0] == b2.start_ts


def test_the_real_rockwell_record_parses_into_batch_bx10():
    path = REFERENCE / "rockwell-pharmasuite-batch-production-record-v0401.xml"
    res = mes_xml.read_batchml(
        path, sha256_of(path), path.name, profile_for("mes/x.xml", SITE.files)
    )
    batch = res.tables["batch_records"].iloc[0]
    assert batch.batch_id == "BX10" and batch["product"] == "000399FG01"
    phases = res.tables["phase_records"]
    assert {"procedure", "unit_procedure", "operation", "phase"} <= set(phases.level)
    assert phases.end_ts.notna().all()
    assert any("derived" in n for n in res.notes)


def test_xml_with_an_entity_declaration_is_refused(tmp_path):
    evil = tmp_path / "evil.xml"
    evil.write_text(
        '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        "<BatchList><BatchListEntry><ID>&x;</ID></BatchListEntry></BatchList>"
    )
    with pytest.raises(SourceRejected, match="DTD or entities"):
        mes_xml.read_batchml(evil, sha256_of(evil), "mes/evil.xml", PROFILES["mes_batchml"])


def test_lims_marks_censored_results_and_quarantines_the_decimal_comma_line(plant_dir, truth):
    landing = plant_dir / "landing"
    fault = next(
        f
        for f in truth["faults"]
        if f["fault"] == "malformed_line" and f["file"].startswith("lims")
    )
    res = _read(lims.read_lims, landing / fault["file"], landing)
    assert res.rejects.source_row.tolist() == [fault["line"]]
    every = pd.concat(
        _read(lims.read_lims, p, landing).tables["samples"]
        for p in (landing / "lims").glob("*.csv")
    )
    censored = every[every.censored]
    assert len(censored) and censored.value.isna().all() and (censored.value_text == "<0.5").all()


def test_tag_dictionary_without_a_required_column_is_rejected(tmp_path):
    path = tmp_path / "tags.csv"
    path.write_text("tag,unit_id,parameter\nX,BR-1,temperature\n")
    with pytest.raises(SourceRejected, match="missing column"):
        tags.read_tags(path, sha256_of(path), "tags/tags.csv", PROFILES["tag_dictionary"])


def test_sources_yaml_defines_the_profiles_and_refuses_unknown_keys(tmp_path):
    (tmp_path / "sources.yaml").write_text(
        "files:\n  lims:\n    dataset: lims\n    glob: 'lims/*.csv'\n    delimiter: ';'\n"
        "    timezone: America/New_York\n"
    )
    files = load_site(tmp_path).files
    prof = profile_for("lims/x.csv", files)
    assert (prof.delimiter, prof.timezone, prof.dataset) == (";", "America/New_York", "lims")
    (tmp_path / "sources.yaml").write_text(
        "files:\n  lims:\n    dataset: lims\n    glob: 'lims/*.csv'\n    delimeter: ';'\n"
    )
    with pytest.raises(
        SiteConfigError, match=r"files\.lims|profile 'lims' has unknown key\(s\) delimeter"
    ):
        load_site(tmp_path)


def test_batchml_samples_become_sample_rows(plant_dir, truth):
    landing = plant_dir / "landing"
    res = _read(mes_xml.read_batchml, landing / "mes" / "B26-002.xml", landing)
    samples = res.tables["samples"].set_index("analyte")
    expected = next(b for b in truth["batches"] if b["batch_id"] == "B26-002")
    assert samples.loc["vcd", "value"] == pytest.approx(expected["initial_state"]["Xv"], rel=0.3)
    assert (
        samples.loc["vcd", "uom"] == "1e6 cells/mL"
        and samples.loc["viability", "sample_id"] == "B26-002-INOC"
    )
    assert (samples.reported_ts > samples.sampled_ts).all()
    assert samples.sampled_ts.iloc[0] > pd.Timestamp(expected["inoculation_ts"])


def test_tag_units_convert_to_canonical_and_an_unknown_unit_is_quarantined(tmp_path):
    path = tmp_path / "tags.csv"
    path.write_text(
        "tag,unit_id,parameter,uom,role,interpolation\n"
        "T1,BR-1,temperature,degF,pv,linear\n"
        "F1,BR-1,feed_rate,mL/min,pv,step\n"
        "X1,BR-1,temperature,furlong,pv,linear\n"
    )
    res = tags.read_tags(path, sha256_of(path), "tags/tags.csv", PROFILES["tag_dictionary"], SITE)
    t = res.tables["tags"].set_index("tag")
    assert t.loc["T1", "canonical_uom"] == "degC"
    assert 212.0 * t.loc["T1", "scale"] + t.loc["T1", "offset"] == pytest.approx(100.0)
    assert t.loc["F1", "scale"] == pytest.approx(0.06) and "X1" not in t.index
    assert res.rejects.iloc[0].check == "uom_conversion" and res.rejects.iloc[0].source_row == 4
    assert res.rejects.iloc[0].row_key == "X1" and res.rejects.iloc[0].reason.startswith(
        "tag 'X1': cannot convert 'furlong' to 'degC'"
    )


def test_a_record_re_exported_after_completion_is_newer_than_the_running_one(tmp_path):
    """The plant moves on: the same batch's record, exported again once the batch completed,
    carries a later LastChangedDate (its CreateDate is unchanged) and must supersede."""
    from demo.plant import PlantSize, generate

    generate(tmp_path / "a", PlantSize(batches=5, seconds_per_sample=600.0))
    generate(tmp_path / "b", PlantSize(batches=6, seconds_per_sample=600.0))
    old, new = (tmp_path / x / "landing" / "mes" / "B26-004.xml" for x in ("a", "b"))
    r_old = (
        mes_xml.read_batchml(old, sha256_of(old), "mes/B26-004.xml", PROFILES["mes_batchml"])
        .tables["batch_records"]
        .iloc[0]
    )
    r_new = (
        mes_xml.read_batchml(new, sha256_of(new), "mes/B26-004.xml", PROFILES["mes_batchml"])
        .tables["batch_records"]
        .iloc[0]
    )
    assert (r_old.status, r_new.status) == ("running", "complete")
    assert r_new.record_ts > r_old.record_ts and r_old.record_ts > r_old.start_ts


def test_a_dst_fold_in_a_naive_local_export_maps_to_the_right_utc_instants(tmp_path):
    """Autumn: 02:00–03:00 local happens twice. A wide export, one row per instant in time order,
    resolves the repeated hour by its order (sources.base.localize)."""
    path = tmp_path / "BR102_fold_wide.csv"
    stamps = [
        "25.10.2026 01:30:00",
        "25.10.2026 02:00:00",
        "25.10.2026 02:30:00",
        "25.10.2026 02:00:00",
        "25.10.2026 02:30:00",
        "25.10.2026 03:00:00",
    ]
    path.write_text(
        "Timestamp;BR102.PH01.PV\n" + "".join(f"{t};7,{i}\n" for i, t in enumerate(stamps))
    )
    res = historian_csv.read_wide(
        path,
        sha256_of(path),
        "historian/BR102_fold_wide.csv",
        profile_for("historian/x_wide.csv", SITE.files),
    )
    ts = (
        res.tables["historian_points"].sort_values("source_row")["ts"].dt.strftime("%H:%M").tolist()
    )
    assert ts == [
        "23:30",
        "00:00",
        "00:30",
        "01:00",
        "01:30",
        "02:00",
    ]  # UTC: 30 minutes apart, none lost
    assert res.tables["historian_points"]["value"].tolist() == pytest.approx(
        [7.0, 7.1, 7.2, 7.3, 7.4, 7.5]
    )


def test_a_decimal_comma_file_reads_the_same_numbers_as_a_decimal_point_file(tmp_path):
    from dataclasses import replace

    rows = [
        ("BR101.PH01.PV", "2026-03-01T00:00:00+0100", "7.012", "Good"),
        ("BR101.PH01.PV", "2026-03-01T00:01:00+0100", "6.998", "Good"),
    ]
    dot, comma = tmp_path / "dot.csv", tmp_path / "comma.csv"
    dot.write_text("Tag,Timestamp,Value,Status\n" + "".join(",".join(r) + "\n" for r in rows))
    comma.write_text(
        "Tag;Timestamp;Value;Status\n"
        + "".join(";".join((t, ts, v.replace(".", ","), s)) + "\n" for t, ts, v, s in rows)
    )
    base = profile_for("historian/x.csv", SITE.files)
    a = historian_csv.read_long(dot, sha256_of(dot), "historian/dot.csv", base).tables[
        "historian_points"
    ]
    b = historian_csv.read_long(
        comma, sha256_of(comma), "historian/comma.csv", replace(base, delimiter=";", decimal=",")
    ).tables["historian_points"]
    assert a["value"].tolist() == b["value"].tolist() == [7.012, 6.998]
    assert a["ts"].tolist() == b["ts"].tolist()


def test_a_file_in_the_wrong_folder_is_rejected_or_quarantined_never_crashes(tmp_path, plant_dir):
    import shutil

    from lake import ingest
    from lake.layout import Lake

    landing = tmp_path / "landing"
    (landing / "historian").mkdir(parents=True)
    shutil.copy(
        plant_dir / "landing" / "mes" / "B26-002.xml", landing / "historian" / "BR101_not_a_csv.csv"
    )
    shutil.copy(
        plant_dir / "landing" / "lims" / "lims_2026-03-16.csv",
        landing / "historian" / "BR101_lims_by_mistake.csv",
    )
    outcomes = [
        ingest.ingest_file(Lake(tmp_path / "lake"), landing, rel, prof)
        for rel, prof in ingest.landing_files(landing, SITE.files)
    ]
    assert {o.status for o in outcomes} == {"rejected"}
    for o in outcomes:
        assert o.log["error"].startswith(o.log["path"] + ": ") and "\n" not in o.log["error"]
        assert "missing column" in o.log["error"]


def _blank_lines_file(
    path: Path, header: str, rows: list[str], malformed: str, newline: str = "\n"
) -> dict[str, int]:
    """Write `rows` with empty lines between them (as concatenated exports have) and one
    malformed line; return the line number of each row's text and of the malformed line."""
    layout = [
        header,
        rows[0],
        "",
        "",
        rows[1],
        malformed,
        "",
        rows[2],
        rows[3],
        "",
        "",
        "",
        rows[4],
        "",
    ]
    path.write_bytes(newline.join(layout).encode())
    return {text: i for i, text in enumerate(layout, start=1) if text}


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_lineage_names_the_line_an_editor_shows_despite_empty_lines(tmp_path, newline):
    """CSV readers skip empty lines and count records; lineage must count lines."""
    hist = tmp_path / "BR101_blank.csv"
    rows = [f"BR101.TT01.PV,2026-03-16T10:0{i}:00+01:00,{36.5 + i / 10:.1f},Good" for i in range(5)]
    where = _blank_lines_file(
        hist, "Tag,Timestamp,Value,Status", rows, "BR101.TT01.PV,2026-03-16T10:09:00+01:00", newline
    )
    res = historian_csv.read_long(
        hist,
        sha256_of(hist),
        "historian/BR101_blank.csv",
        profile_for("historian/x.csv", SITE.files),
    )
    points = res.tables["historian_points"]
    assert [where[r] for r in rows] == points["source_row"].tolist() == [2, 5, 8, 9, 13]
    assert (
        res.rejects["source_row"].tolist()
        == [where["BR101.TT01.PV,2026-03-16T10:09:00+01:00"]]
        == [6]
    )

    lab = tmp_path / "lims_blank.csv"
    rows = [
        f"B1-D0{i},B1,glucose,{5 + i}.10,g/L,2026-03-16T13:16:00+01:00,2026-03-16T17:08:00+01:00"
        for i in range(5)
    ]
    where = _blank_lines_file(
        lab,
        "sample_id,batch_id,analyte,value,unit,sampled_at,reported_at",
        rows,
        "B1-D09,B1,glucose",
        newline,
    )
    res = lims.read_lims(
        lab, sha256_of(lab), "lims/lims_blank.csv", profile_for("lims/lims_blank.csv", SITE.files)
    )
    samples = res.tables["samples"].sort_values("source_row")
    assert samples["source_row"].tolist() == [where[r] for r in rows] == [2, 5, 8, 9, 13]
    assert samples["value"].tolist() == [5.1, 6.1, 7.1, 8.1, 9.1]
    assert res.rejects["source_row"].tolist() == [6]


def test_many_skipped_lines_are_numbered_in_one_pass(tmp_path):
    """Every other line empty or malformed: the line of each row still comes out right."""
    path = tmp_path / "BR101_holes.csv"
    lines, expect = ["Tag,Timestamp,Value,Status"], []
    for i in range(3000):
        lines.append("" if i % 3 else "BR101.TT01.PV,bad")
        ts = pd.Timestamp("2026-03-16T09:00:00Z") + pd.Timedelta(seconds=i)
        lines.append(f"BR101.TT01.PV,{ts.isoformat()},{i},Good")
        expect.append(len(lines))
    path.write_text("\n".join(lines) + "\n")
    res = historian_csv.read_long(
        path,
        sha256_of(path),
        "historian/BR101_holes.csv",
        profile_for("historian/x.csv", SITE.files),
    )
    points = res.tables["historian_points"].sort_values("value")
    assert points["source_row"].tolist() == expect
    assert points["value"].tolist() == list(range(3000))
    assert len(res.rejects) == 1000


NON_FINITE = ["inf", "-inf", "Infinity", "1e309", "NaN"]


def test_non_finite_numbers_are_quarantined_by_every_reader(tmp_path):
    """One rule in every path: a value that is not finite is no value (it would poison every
    mean)."""
    import sqlite3

    from lake import ingest
    from lake.layout import Lake
    from sources.base import VALUE_PARSE_REASON
    from sources.profiles import SqlProfile

    landing, lake = tmp_path / "landing", Lake(tmp_path / "lake")
    (landing / "historian").mkdir(parents=True)
    rows = [
        ("BR101.TT01.PV", f"2026-03-16T06:0{i}:00Z", v, "Good")
        for i, v in enumerate([*NON_FINITE, "36.8"])
    ]
    (landing / "historian" / "BR101_x.csv").write_text(
        "Tag,Timestamp,Value,Status\n" + "".join(",".join(r) + "\n" for r in rows)
    )
    long = ingest.ingest_file(lake, landing, "historian/BR101_x.csv", PROFILES["historian_long_pi"])
    (landing / "historian" / "BR102_x_wide.csv").write_text(
        "Timestamp;BR102.TT01.PV\n"
        + "".join(f"16.03.2026 07:0{i}:00;{v}\n" for i, v in enumerate([*NON_FINITE, "36,8"]))
    )
    wide = ingest.ingest_file(
        lake, landing, "historian/BR102_x_wide.csv", PROFILES["historian_wide_br102"]
    )
    with sqlite3.connect(tmp_path / "h.sqlite") as con:
        con.execute("CREATE TABLE history (name TEXT, ts TEXT, value, status INTEGER)")
        con.executemany(
            "INSERT INTO history VALUES ('BR201.TT01.PV', ?, ?, 0)",
            [
                (f"2026-03-16 08:0{i}:00", v)
                for i, v in enumerate(
                    [float("inf"), float("-inf"), "Infinity", "1e309", None, 36.8]
                )
            ],
        )
    pull = ingest.ingest_sql(lake, SqlProfile("ip21", f"sqlite:///{tmp_path / 'h.sqlite'}"))
    (landing / "lims").mkdir()
    (landing / "lims" / "l.csv").write_text(
        "sample_id,batch_id,analyte,value,unit,sampled_at,reported_at\n"
        + "".join(
            f"S{i},B1,glucose,{v},g/L,2026-03-16T06:00:00Z,2026-03-16T08:00:00Z\n"
            for i, v in enumerate([*NON_FINITE, "4.2"])
        )
    )
    lab = ingest.ingest_file(lake, landing, "lims/l.csv", PROFILES["lims"])
    for outcome in (long, wide, pull, lab):
        assert (
            outcome.log["rows_read"],
            outcome.log["rows_accepted"],
            outcome.log["rows_quarantined"],
        ) == (6, 1, 5), outcome.log
    q = duckdb.sql(
        f"SELECT * FROM read_parquet('{lake.silver('quarantine')}/*.parquet', union_by_name = true)"
    ).df()
    points = q[q["dataset"] != "lims"]
    assert (points["reason"] == VALUE_PARSE_REASON).all() and len(points) == 15
    assert (
        q.loc[q["dataset"] == "lims", "reason"]
        == "result is neither a finite number nor a censored value like '<0.5'"
    ).all()
    assert sorted(pd.read_parquet(lake.silver("historian_points"))["value"]) == [36.8, 36.8, 36.8]
