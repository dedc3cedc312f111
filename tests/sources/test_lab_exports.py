"""Lab analyzer exports (one row per sample, one column per analyte) and the CSV conventions of
files nobody here wrote: byte-order marks, foreign encodings, header-only files.

The files are written here in the layouts the vendors document for their exports (Vi-CELL BLU
cell counter, BioProfile FLEX2 chemistry analyzer); no third-party file is copied.
"""

import codecs
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lake import catalog, ingest
from lake.layout import Lake
from lake.query import query
from sources.site import SiteConfigError, load_site

VICELL_HEADER = (
    "Sample ID,Analysis date/time,Cell type,Dilution,Viability (%),Total (x10^6) cells/mL,"
    "Viable (x10^6) cells/mL,Average diameter (μm),Status"
)
VICELL_ROWS = [
    "B31-007_D03,11/3/2026 2:15:04 PM,CHO-K1,1,97.3,4.65,4.52,14.1,Completed",
    "B31-007_D04,11/4/2026 9:02:51 AM,CHO-K1,2,96.8,8.93,8.64,14.6,Completed",
    "B31-008_D01,11/4/2026 9:10:12 AM,CHO-K1,1,,,,,Error: bubble detected",
    "B31-008_D02,11/4/2026 9:12:40 AM,CHO-K1,1,95.0,ERROR,0.91,13.2,Completed",
    "no-batch-here,11/4/2026 9:20:00 AM,CHO-K1,1,96.0,1.10,1.06,13.0,Completed",
]
VICELL_PROFILE = {
    "dataset": "lims_wide",
    "glob": "lims/vicell/*.csv",
    "columns": {"sample_id": "Sample ID", "sampled_at": "Analysis date/time"},
    "batch_from": {"column": "Sample ID", "pattern": r"^(?P<batch>B\d+-\d+)_"},
    "timestamp_format": "%m/%d/%Y %I:%M:%S %p",
    "timezone": "America/New_York",
    "analyte_columns": {
        "Viability (%)": "viability",
        "Total (x10^6) cells/mL": "total_cells",
        "Viable (x10^6) cells/mL": "vcd",
    },
    "units": {
        "Viability (%)": "%",
        "Total (x10^6) cells/mL": "1e6 cells/mL",
        "Viable (x10^6) cells/mL": "1e6 cells/mL",
    },
}
FLEX2_TEXT = (
    "Sample ID;Batch;Sample Date Time;Gln (mmol/L);Gluc (g/L);Lac (g/L);NH4+ (mmol/L);"
    "Osm (mOsm/kg);Operator\n"
    "D05;B31-007;2026-11-05 08:31;3,12;5,88;1,02;4,1;310;jdoe\n"
    "D06;B31-007;2026-11-06 08:29;2,40;>10,0;1,31;<0,5;322;jdoe\n"
)
FLEX2_PROFILE = {
    "dataset": "lims_wide",
    "glob": "lims/flex2/*.csv",
    "delimiter": ";",
    "decimal": ",",
    "columns": {"sample_id": "Sample ID", "batch_id": "Batch", "sampled_at": "Sample Date Time"},
    "timestamp_format": "%Y-%m-%d %H:%M",
    "timezone": "Europe/Berlin",
    "header_unit": r"(?P<analyte>[^(]+?)\s*\((?P<unit>[^)]+)\)",
    "exclude_columns": ["Operator", "Sample Type"],
    "analyte_names": {
        "Gln": "glutamine",
        "Gluc": "glucose",
        "Lac": "lactate",
        "NH4+": "ammonia",
        "Osm": "osmolality",
    },
}
ANALYTES = {
    "vcd": {"unit": "1e6 cells/mL", "min": 0, "max": 100},
    "total_cells": {"unit": "1e6 cells/mL", "min": 0, "max": 100},
    "viability": {"unit": "%", "min": 0, "max": 100},
    "glucose": {"unit": "g/L", "min": 0, "max": 50},
    "lactate": {"unit": "g/L", "min": 0, "max": 20},
    "glutamine": {"unit": "mM", "units": ["mmol/L", "mM"], "min": 0, "max": 50},
    "ammonia": {"unit": "mM", "units": ["mmol/L", "mM"], "min": 0, "max": 50},
    "osmolality": {"unit": "mOsm/kg", "min": 150, "max": 600},
}


def _site(landing: Path, **files) -> Path:
    landing.mkdir(parents=True, exist_ok=True)
    doc = {"files": files, "analytes": ANALYTES}
    (landing / "sources.yaml").write_text(yaml.safe_dump(doc, allow_unicode=True))
    return landing


def _ingest(tmp_path: Path, rel: str, data: bytes, **files):
    landing = _site(tmp_path / "landing", **files)
    (landing / rel).parent.mkdir(parents=True, exist_ok=True)
    (landing / rel).write_bytes(data)
    site = load_site(landing)
    lake = Lake(tmp_path / "lake")
    prof = next(p for p in site.files if p.matches(rel))
    outcome = ingest.ingest_file(lake, landing, rel, prof, site=site)
    catalog.rebuild(lake)
    return lake, outcome


def _vicell(encoding: str) -> bytes:
    text = "\r\n".join([VICELL_HEADER, *VICELL_ROWS]) + "\r\n"
    if encoding == "utf-16":  # what Windows instrument software writes: little-endian, a BOM
        return codecs.BOM_UTF16_LE + text.encode("utf-16-le")
    return text.encode(encoding)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_a_vicell_export_becomes_one_result_per_cell_with_its_unit(tmp_path, encoding):
    lake, out = _ingest(tmp_path, "lims/vicell/run1.csv", _vicell(encoding), vicell=VICELL_PROFILE)
    assert out.status == "ingested", out.log["error"]
    samples = query(lake, "SELECT * FROM samples ORDER BY sample_id, analyte")
    first = samples[samples.sample_id == "B31-007_D03"].set_index("analyte")
    assert first.loc["viability", "value"] == pytest.approx(97.3)
    assert first.loc["viability", "uom"] == "%"
    assert first.loc["vcd", "value"] == pytest.approx(4.52)
    assert first.loc["vcd", "canonical_uom"] == "1e6 cells/mL"
    assert set(first["batch_id"]) == {"B31-007"}
    # 2:15:04 PM in New York (EST, UTC-5 in November)
    assert first.loc["vcd", "sampled_ts"] == pd.Timestamp("2026-11-03 19:15:04", tz="UTC")
    assert first["source_row"].tolist() == [2, 2, 2]  # the line, header = 1
    # the failed count has no results (a note), 'ERROR' and the unmatched batch are quarantined
    assert "1 sample row(s) without any result" in out.log["notes"]
    q = query(
        lake, 'SELECT source_row, "column", failure_value, "check" FROM quarantine ORDER BY 1'
    )
    assert q.to_dict("records") == [
        {
            "source_row": 5,
            "column": "Total (x10^6) cells/mL",
            "failure_value": "ERROR",
            "check": "value_parse",
        },
        *[
            {
                "source_row": 6,
                "column": "Sample ID",
                "failure_value": "no-batch-here",
                "check": "batch_id",
            }
            for _ in range(3)
        ],
    ]
    # every filled cell is a row read: 3 + 3 + 3 + 3, none lost
    assert out.log["rows_read"] == 12 == out.log["rows_accepted"] + out.log["rows_quarantined"]


def test_a_flex2_export_takes_units_from_its_headers_and_keeps_censored_results(tmp_path):
    lake, out = _ingest(
        tmp_path,
        "lims/flex2/2026-11-06.csv",
        FLEX2_TEXT.encode(),
        flex2={**FLEX2_PROFILE},
    )
    assert out.status == "ingested", out.log["error"]
    s = query(lake, "SELECT * FROM samples").set_index(["sample_id", "analyte"])
    assert s.loc[("D05", "glutamine"), "value"] == pytest.approx(3.12)
    assert s.loc[("D05", "glutamine"), "uom"] == "mmol/L"
    assert s.loc[("D05", "glutamine"), "canonical_value"] == pytest.approx(3.12)  # mmol/L = mM
    assert s.loc[("D05", "osmolality"), "uom"] == "mOsm/kg"
    high = s.loc[("D06", "glucose")]
    assert bool(high["censored"]) and high["value_text"] == ">10,0" and pd.isna(high["value"])
    assert bool(s.loc[("D06", "ammonia"), "censored"])
    assert s.loc[("D05", "glucose"), "sampled_ts"] == pd.Timestamp("2026-11-05 07:31", tz="UTC")
    assert len(s) == 10 and out.log["rows_quarantined"] == 0


def test_a_wide_lab_column_of_no_known_unit_rejects_the_file_naming_it(tmp_path):
    profile = {
        k: v for k, v in FLEX2_PROFILE.items() if k not in ("exclude_columns", "analyte_names")
    }
    lake, out = _ingest(tmp_path, "lims/flex2/a.csv", FLEX2_TEXT.encode(), flex2=profile)
    assert out.status == "rejected"
    assert out.log["error"].startswith("lims/flex2/a.csv: no unit for result column(s) 'Operator'")
    assert out.log["error"].count("lims/flex2/a.csv") == 1
    # excluded, the other columns are results by their headers' units
    profile["exclude_columns"] = ["Operator"]
    lake, out = _ingest(tmp_path / "again", "lims/flex2/a.csv", FLEX2_TEXT.encode(), flex2=profile)
    assert out.status == "ingested"
    # named by their headers, the analytes are not the site's: its dictionary holds them back
    reasons = query(lake, "SELECT DISTINCT reason FROM quarantine")["reason"]
    held = sorted(reasons.str.extract(r"analyte '([^']+)' is not in the site's")[0])
    assert held == ["gln", "gluc", "lac", "nh4+", "osm"]
    assert out.log["rows_quarantined"] == 10 and out.log["rows_accepted"] == 0


@pytest.mark.parametrize(
    ("batch_from", "expected"),
    [
        ({"path": r"(?P<batch>B\d+-\d+)"}, {"B31-009"}),
        ({"value": "B31-010"}, {"B31-010"}),
        ({"column": "Batch"}, {"B31-007"}),
    ],
)
def test_the_batch_id_comes_from_a_column_the_file_path_or_a_constant(
    tmp_path, batch_from, expected
):
    profile = {**FLEX2_PROFILE, "batch_from": batch_from}
    lake, out = _ingest(tmp_path, "lims/flex2/B31-009_day5.csv", FLEX2_TEXT.encode(), flex2=profile)
    assert out.status == "ingested", out.log["error"]
    assert set(query(lake, "SELECT batch_id FROM samples")["batch_id"]) == expected


def test_a_batch_path_pattern_that_finds_nothing_rejects_the_file(tmp_path):
    profile = {**FLEX2_PROFILE, "batch_from": {"path": r"(?P<batch>B\d+-\d+)"}}
    _, out = _ingest(tmp_path, "lims/flex2/day5.csv", FLEX2_TEXT.encode(), flex2=profile)
    assert out.status == "rejected" and "batch_from.path" in out.log["error"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch_from": {"column": "A", "value": "B"}}, "exactly one of column, path or value"),
        ({"batch_from": {"file": "x"}}, "unknown key(s) file"),
        ({"header_unit": r"(?P<analyte>\w+)"}, "needs the named group(s) (?P<unit>…)"),
        ({"header_unit": "(unclosed"}, "not a regular expression"),
        ({"units": ["a"]}, "a mapping of texts"),
    ],
)
def test_a_wrong_lab_profile_key_is_one_line_naming_it(tmp_path, change, message):
    _site(tmp_path, flex2={**FLEX2_PROFILE, **change})
    with pytest.raises(SiteConfigError) as err:
        load_site(tmp_path)
    assert message in str(err.value) and "files.flex2" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_latin1_file_read_as_utf8_names_the_encoding_key(tmp_path):
    lims = {"dataset": "lims", "glob": "lims/*.csv"}
    text = (
        "sample_id,batch_id,analyte,value,unit,sampled_at,reported_at\n"
        "S1,B1,glucose,5.1,g/L,2026-11-05T08:00:00Z,2026-11-05T09:00:00Z\n"
        "S1,B1,Glukose-Zählung,5.1,g/L,2026-11-05T08:00:00Z,2026-11-05T09:00:00Z\n"
    )
    _, out = _ingest(tmp_path, "lims/x.csv", text.encode("latin-1"), lims=lims)
    assert out.status == "rejected"
    # the line an editor shows (pyarrow's own message counts records, from 0)
    assert out.log["error"] == (
        "lims/x.csv: line 3 is not utf8 text: set the profile's `encoding` "
        "(e.g. latin-1, cp1252, utf-16)"
    )
    # with the key set, it reads
    _, out = _ingest(
        tmp_path / "b", "lims/x.csv", text.encode("latin-1"), lims={**lims, "encoding": "latin-1"}
    )
    assert out.status == "ingested" and out.log["rows_read"] == 2


def test_a_header_only_file_is_ingested_with_a_note_never_silently(tmp_path):
    lims = {"dataset": "lims", "glob": "lims/*.csv"}
    header = b"sample_id,batch_id,analyte,value,unit,sampled_at,reported_at\n"
    lake, out = _ingest(tmp_path, "lims/empty.csv", header, lims=lims)
    assert out.status == "ingested" and out.log["rows_read"] == 0
    assert out.log["notes"].startswith("no data:")
    log = query(lake, "SELECT status, rows_read, notes FROM ingest_log")
    assert log["notes"].notna().all() and (log["notes"] != "").all()


def test_a_missing_column_is_reported_with_the_path_once(tmp_path):
    lims = {"dataset": "lims", "glob": "lims/*.csv"}
    _, out = _ingest(tmp_path, "lims/x.csv", b"sample_id,value\nS1,5\n", lims=lims)
    assert out.log["error"].startswith("lims/x.csv: missing column(s) 'analyte', 'unit'")
    assert out.log["error"].count("lims/x.csv") == 1


def test_a_cedex_style_export_is_a_lims_export_with_the_batch_in_its_file_name(tmp_path):
    cedex = {
        "dataset": "lims",
        "glob": "lims/cedex/*.csv",
        "delimiter": "\t",
        "columns": {
            "sample_id": "Sample ID",
            "analyte": "Test",
            "value": "Result",
            "unit": "Unit",
            "sampled_at": "Sample Time",
            "reported_at": "Result Time",
        },
        "batch_from": {"path": r"(?P<batch>B\d+-\d+)"},
    }
    text = (
        "Sample ID\tTest\tResult\tUnit\tSample Time\tResult Time\n"
        "D07\tGLC2B\t4.71\tg/L\t2026-11-07T08:00:00Z\t2026-11-07T08:41:00Z\n"
        "D07\tLAC2B\t1.38\tg/L\t2026-11-07T08:00:00Z\t2026-11-07T08:43:00Z\n"
    )
    lake, out = _ingest(
        tmp_path,
        "lims/cedex/B31-007_2026-11-07.csv",
        text.encode(),
        cedex=cedex,
    )
    assert out.status == "ingested", out.log["error"]
    # the Cedex test codes are not the site's analyte names: held back, named, until mapped
    reasons = query(lake, "SELECT reason FROM quarantine")["reason"]
    assert reasons.str.contains("analyte 'glc2b' is not in the site's analyte dictionary").any()
    assert out.log["rows_read"] == 2 and out.log["rows_quarantined"] == 2
    cedex["analyte_names"] = {"GLC2B": "glucose", "LAC2B": "lactate"}
    lake, out = _ingest(
        tmp_path / "mapped", "lims/cedex/B31-007_2026-11-07.csv", text.encode(), cedex=cedex
    )
    s = query(lake, "SELECT batch_id, analyte, value, uom FROM samples ORDER BY analyte")
    assert s.to_dict("records") == [
        {"batch_id": "B31-007", "analyte": "glucose", "value": 4.71, "uom": "g/L"},
        {"batch_id": "B31-007", "analyte": "lactate", "value": 1.38, "uom": "g/L"},
    ]


def test_a_wide_units_trouble_is_quarantined_naming_the_header_it_came_from(tmp_path):
    """A unit pint must not evaluate, read from a header, names that header; a header ending
    in the delimiter (an empty last column) is no result column."""
    text = (
        "Sample ID;Batch;Sample Date Time;Gln (10**10**10);Gluc (g/L);\n"
        "D05;B31-007;2026-11-05 08:31;3,12;5,88;\n"
    )
    lake, out = _ingest(tmp_path, "lims/flex2/odd.csv", text.encode(), flex2=FLEX2_PROFILE)
    assert out.status == "ingested", out.log["error"]
    q = query(lake, 'SELECT "column", "check", failure_value FROM quarantine')
    assert q.values.tolist() == [["Gln (10**10**10)", "uom_syntax", "10**10**10"]]
