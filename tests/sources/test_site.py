"""A site's sources.yaml: nothing built in, every source can be switched off, paths resolve
against the landing zone, and mistakes are one line naming the key."""

import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import yaml

from demo.plant import demo_site, site_config
from lake import ingest
from lake.layout import Lake
from sources.site import DEFAULT_MAX_GAP_S, SiteConfigError, load_site


def _write(landing: Path, doc: dict) -> Path:
    landing.mkdir(parents=True, exist_ok=True)
    (landing / "sources.yaml").write_text(yaml.safe_dump(doc))
    return landing


def test_a_landing_zone_without_sources_yaml_gets_one_line_naming_what_to_write(tmp_path):
    with pytest.raises(SiteConfigError) as err:
        load_site(tmp_path)
    message = str(err.value)
    assert (
        "\n" not in message
        and "sources.yaml not found" in message
        and "files:" in message
        and "Onboarding a site" in message
    )


def test_every_source_can_be_switched_off(tmp_path):
    doc = site_config()
    doc["files"]["lims"] = None
    doc["files"]["mes_journal"]["enabled"] = False
    doc["sql"]["ip21_br201"]["enabled"] = False
    site = load_site(_write(tmp_path / "landing", doc))
    assert {p.name for p in site.files} == {
        "tag_dictionary",
        "mes_batchml",
        "historian_wide_br102",
        "historian_long_pi",
    }
    assert site.sqls == []


def test_a_relative_sqlite_path_resolves_against_the_landing_zone_not_the_working_directory(
    tmp_path, monkeypatch
):
    landing = _write(tmp_path / "site" / "landing", site_config())
    monkeypatch.chdir(tmp_path)
    (url,) = [p.url for p in load_site(landing).sqls]
    assert url == f"sqlite:///{(tmp_path / 'site' / 'sql' / 'historian.sqlite').resolve()}"
    doc = {
        "sql": {"env": {"url": "${BATCHTWIN_SQL_URL}"}, "abs": {"url": "sqlite:////data/h.sqlite"}}
    }
    assert {p.name: p.url for p in load_site(_write(tmp_path / "l2", doc)).sqls} == {
        "env": "${BATCHTWIN_SQL_URL}",
        "abs": "sqlite:////data/h.sqlite",
    }


@pytest.mark.parametrize(
    "doc,needle",
    [
        ({"filez": {}}, "unknown key(s) filez"),
        (
            {"files": {"h": {"dataset": "historian_long", "glob": "h/*.csv", "delimeter": ";"}}},
            "profile 'h' has unknown key(s) delimeter",
        ),
        (
            {"files": {"h": {"dataset": "historian", "glob": "h/*.csv"}}},
            "files.h: unknown dataset 'historian'",
        ),
        ({"parameters": {"temperature": "blorps"}}, "parameters.temperature"),
        (
            {"analytes": {"biomass": {"unit": "g/L", "units": ["g/L", "mM"]}}},
            "analytes.biomass.units: cannot convert 'mM' to 'g/L'",
        ),
        (
            {"analytes": {"biomass": {"unit": "g/L", "minimum": 0}}},
            "analytes.biomass: unknown key(s) minimum",
        ),
        (
            {"parameters": {"ph": "pH"}, "limits": {"ph": {"BATCH": [7.2, 6.8]}}},
            "limits.ph.BATCH: low 7.2 is above high 6.8",
        ),
        (
            {"parameters": {"ph": "pH"}, "limits": {"ph": {"BATCH": 7.0}}},
            "limits.ph.BATCH: give [low, high]",
        ),
        (
            {"parameters": {"ph": "pH"}, "limits": {"ph": {"BATCH": {"lo": 6.8, "hi": 7.2}}}},
            "limits.ph.BATCH: unknown key(s) hi, lo",
        ),
        (
            {"limits": {"temperature": {"BATCH": [36, 38]}}},
            "limits.temperature: give temperature its unit under `parameters`",
        ),
        ({"parameters": ["temperature"]}, "`parameters` must be a mapping, not a list"),
        ({"historian": 900}, "`historian` must be a mapping, not a int"),
        ({"files": {"h": {"dataset": "historian_long"}}}, "files.h: missing required key(s) glob"),
        (
            {
                "files": {
                    "h": {"dataset": "historian_long", "glob": "*.csv", "digital_states": "No Data"}
                }
            },
            "files.h.digital_states: a list",
        ),
        (
            {"files": {"h": {"dataset": "historian_long", "glob": "*.csv", "quality": ["good"]}}},
            "files.h.quality: a mapping",
        ),
        ({"sql": {"h": {"url": 5}}}, "sql.h.url: a text, not 5"),
        (
            {"analytes": {"Glucose": "g/L", "glucose": "mM"}},
            "analytes.glucose: names the same analyte as 'glucose'",
        ),
        (
            {"analytes": {"vcd": "1e6 cells/mL"}, "kpis": {"product": "titer"}},
            "kpis.product: 'titer' is not in `analytes`",
        ),
        ({"historian": {"max_gap_s": -5}}, "historian.max_gap_s must be positive"),
        ({"models": {"MAB-A": [1]}}, "models.MAB-A"),
    ],
)
def test_configuration_mistakes_are_one_line_naming_the_key(tmp_path, doc, needle):
    with pytest.raises(SiteConfigError) as err:
        load_site(_write(tmp_path, doc))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_single_accepted_unit_may_be_written_without_a_list(tmp_path):
    site = load_site(_write(tmp_path, {"analytes": {"glucose": {"unit": "g/L", "units": "mg/dL"}}}))
    assert site.analytes["glucose"].units == ("mg/dL",)


def test_defaults_and_a_complete_site(tmp_path):
    site = load_site(
        _write(tmp_path, {"files": {"h": {"dataset": "historian_long", "glob": "h/*.csv"}}})
    )
    assert (
        site.max_gap_s == DEFAULT_MAX_GAP_S == 8 * 3600 + 600
        and site.parameters == {}
        and site.limits == {}
    )
    demo = demo_site()
    assert (
        demo.limits[("temperature", "PRODUCTION")] == (32.5, 33.5)
        and demo.parameters["dissolved_oxygen"] == "%"
    )
    assert demo.analytes["titer"].spec_low == 4.0
    assert [e["model"] for e in demo.models["MAB-A"]] == ["cho_fedbatch"]


# ---------------------------------------------------------------- the site's dictionaries at ingest

LIMS_HEADER = "sample_id,batch_id,analyte,value,unit,sampled_at,reported_at\n"


def _lims(landing: Path, name: str, rows: list[str]) -> str:
    (landing / "lims").mkdir(parents=True, exist_ok=True)
    (landing / "lims" / name).write_text(LIMS_HEADER + "".join(r + "\n" for r in rows))
    return f"lims/{name}"


def _ingest(lake: Lake, landing: Path, rel: str, site):
    prof = next(p for p in site.files if p.matches(rel))
    return ingest.ingest_file(lake, landing, rel, prof, site=site)


def _quarantine(lake: Lake) -> pd.DataFrame:
    return (
        pd.read_parquet(lake.silver("quarantine")).sort_values("source_row").reset_index(drop=True)
    )


def test_lab_results_outside_the_analyte_dictionary_are_quarantined_with_the_reason(tmp_path):
    doc = site_config()
    doc["analytes"]["biomass"] = {"unit": "g/L", "units": ["g/L", "mg/mL"], "min": 0, "max": 120}
    landing = _write(tmp_path / "landing", doc)
    site, lake = load_site(landing), Lake(tmp_path / "lake")
    t = "2026-03-20T08:00:00Z,2026-03-20T12:00:00Z"
    rel = _lims(
        landing,
        "l1.csv",
        [
            f"S1,B1,biomass,-3.2,g/L,{t}",
            f"S1,B1,lactate,-5,g/L,{t}",
            f"S1,B1,ammonia,2.1,furlongs,{t}",
            f"S1,B1,biomass,12.5,mg/mL,{t}",
            f"S1,B1,glucose,4.1,g/L,{t}",
            f"S1,B1,viscosity,800,cP,{t}",
        ],
    )
    out = _ingest(lake, landing, rel, site)
    assert (out.log["rows_read"], out.log["rows_accepted"], out.log["rows_quarantined"]) == (
        6,
        2,
        4,
    )
    q = _quarantine(lake)
    assert q["reason"].tolist() == [
        "biomass -3.2 g/L is below the plausible minimum 0 g/L",
        "lactate -5 g/L is below the plausible minimum 0 g/L",
        "unit 'furlongs' is not a known unit of ammonia (mmol/L, mM)",
        "analyte 'viscosity' is not in the site's analyte dictionary (sources.yaml `analytes`)",
    ]
    assert q["source_row"].tolist() == [2, 3, 4, 7] and q["row_key"].tolist()[0] == "S1/biomass"
    samples = pd.read_parquet(lake.silver("samples")).set_index("analyte")
    assert (
        samples.loc["biomass", "canonical_value"] == pytest.approx(12.5)
        and samples.loc["biomass", "canonical_uom"] == "g/L"
    )
    assert (
        samples.loc["biomass", "value"] == pytest.approx(12.5)
        and samples.loc["biomass", "uom"] == "mg/mL"
    )


def test_a_conflicting_re_send_is_quarantined_with_both_values(tmp_path):
    landing = _write(tmp_path / "landing", site_config())
    site, lake = load_site(landing), Lake(tmp_path / "lake")
    t = "2026-03-20T08:00:00Z,2026-03-20T12:00:00Z"
    first = _ingest(
        lake,
        landing,
        _lims(
            landing,
            "a.csv",
            [
                f"S1,B1,glucose,4.10,g/L,{t}",
                f"S2,B1,glucose,3.00,g/L,{t}",
                f"S4,B1,lactate,1.5,g/L,{t}",
                f"S5,B1,titer,2.0,g/L,{t}",
            ],
        ),
        site,
    )
    again = _ingest(
        lake,
        landing,
        _lims(
            landing,
            "b.csv",
            [
                f"S1,B1,glucose,4.60,g/L,{t}",  # another value: conflicts with a.csv
                f"S2,B1,glucose,300,mg/dL,{t}",  # the same result in another unit: harmless
                f"S3,B1,titer,1.1,g/L,{t}",
                f"S3,B1,titer,1.3,g/L,{t}",  # two values in one file
                f"S4,B1,lactate,1.5,mg/dL,{t}",  # the same number in another unit: 100 times less
                # S5: conflicting inside and against a.csv: each row quarantined once
                f"S5,B1,titer,2.1,g/L,{t}",
                f"S5,B1,titer,2.2,g/L,{t}",
            ],
        ),
        site,
    )
    assert first.log["rows_accepted"] == 4 and (
        again.log["rows_accepted"],
        again.log["rows_quarantined"],
    ) == (1, 6)
    q = _quarantine(lake)
    assert len(q) == again.log["rows_quarantined"]  # one quarantine row per quarantined line
    reasons = dict(zip(q["row_key"] + ":" + q["source_row"].astype(str), q["reason"], strict=True))
    assert reasons["S1/glucose:2"] == (
        "conflicting re-send for sample S1, glucose, reported 2026-03-20 12:00:00+00:00: "
        "4.6 g/L here, 4.1 g/L already held from lims/a.csv line 2; the first stays"
    )
    assert (
        reasons["S4/lactate:6"].startswith("conflicting re-send")
        and "0.015 g/L here, 1.5 g/L already held" in reasons["S4/lactate:6"]
    )
    assert (
        "conflicting results in one file for sample S3, titer" in reasons["S3/titer:4"]
        and "1.1 g/L (line 4), 1.3 g/L (line 5)" in reasons["S3/titer:4"]
    )
    assert reasons["S5/titer:7"].startswith("conflicting results in one file") and reasons[
        "S5/titer:8"
    ].startswith("conflicting results in one file")
    kept = pd.read_parquet(lake.silver("samples"))
    assert sorted(kept["source_path"] + ":" + kept["value_text"]) == [
        "lims/a.csv:1.5",
        "lims/a.csv:2.0",
        "lims/a.csv:3.00",
        "lims/a.csv:4.10",
        "lims/b.csv:300",
    ]


def test_a_tag_whose_unit_the_site_cannot_use_is_quarantined_and_its_points_name_it(
    tmp_path, plant_dir
):
    doc = site_config()
    doc["parameters"]["dissolved_oxygen"] = (
        "mg/L"  # % saturation cannot become a concentration without a model
    )
    landing = _write(tmp_path / "landing", doc)
    (landing / "tags").mkdir()
    (landing / "tags" / "tag_dictionary.csv").write_bytes(
        (plant_dir / "landing" / "tags" / "tag_dictionary.csv").read_bytes()
    )
    (landing / "historian").mkdir()
    (landing / "historian" / "BR101.csv").write_text(
        "Tag,Timestamp,Value,Status\n"
        "BR101.DO01.PV,2026-03-16T06:00:00Z,41.0,Good\n"
        "BR101.TT01.PV,2026-03-16T06:00:00Z,36.8,Good\n"
        "BR101.NOPE.PV,2026-03-16T06:00:00Z,1.0,Good\n"
    )
    site, lake = load_site(landing), Lake(tmp_path / "lake")
    tags_out = _ingest(lake, landing, "tags/tag_dictionary.csv", site)
    assert tags_out.log["rows_quarantined"] == 3  # the DO tag of each of the three units
    dictionary = ingest.known_tags(lake)
    reason = dictionary.unusable["BR101.DO01.PV"]
    assert (
        reason.startswith("tag 'BR101.DO01.PV': cannot convert '%' to 'mg/L'")
        and "the site's unit of dissolved_oxygen" in reason
    )
    out = ingest.ingest_file(
        lake,
        landing,
        "historian/BR101.csv",
        next(p for p in site.files if p.matches("historian/BR101.csv")),
        tags_known=dictionary,
        site=site,
    )
    assert (out.log["rows_accepted"], out.log["rows_quarantined"]) == (1, 2)
    q = _quarantine(lake)
    q = q[q["dataset"] == "historian_long"].set_index("source_row")["reason"]
    assert (
        q[2] == f"the tag dictionary's entry for this tag was quarantined: {reason}"
        and q[4] == "tag is not in the tag dictionary"
    )


def test_the_demo_never_deletes_a_file_it_did_not_write(tmp_path):
    from demo.plant import PlantSize, generate

    generate(tmp_path, PlantSize(batches=6, seconds_per_sample=600.0))
    mine = tmp_path / "landing" / "lims" / "from_the_lab.csv"
    mine.write_text(LIMS_HEADER)
    stale = tmp_path / "landing" / "mes" / "B26-006.xml"
    assert stale.exists() or (tmp_path / "landing" / "mes" / "B26-006_journal.csv").exists()
    generate(tmp_path, PlantSize(batches=4, seconds_per_sample=600.0))
    assert mine.read_text() == LIMS_HEADER
    assert (
        not stale.exists() and not (tmp_path / "landing" / "mes" / "B26-006_journal.csv").exists()
    )
    (tmp_path / "landing" / "sources.yaml").write_text("files: {}\n")  # the user's own site file
    with pytest.raises(FileExistsError, match="never replaces a file it did not write"):
        generate(tmp_path, PlantSize(batches=4, seconds_per_sample=600.0))
    assert (tmp_path / "landing" / "sources.yaml").read_text() == "files: {}\n"


def test_a_sqlite_historian_is_found_from_any_working_directory(tmp_path, monkeypatch):
    landing = _write(tmp_path / "landing", {"sql": {"h": {"url": "sqlite:///../sql/h.sqlite"}}})
    (tmp_path / "sql").mkdir()
    with sqlite3.connect(tmp_path / "sql" / "h.sqlite") as con:
        con.execute("CREATE TABLE history (name TEXT, ts TEXT, value REAL, status INTEGER)")
        con.execute("INSERT INTO history VALUES ('T1', '2026-03-16 06:00:00', 1.5, 0)")
    monkeypatch.chdir(tmp_path / "landing")
    out = ingest.ingest_sql(Lake(tmp_path / "lake"), load_site(landing).sqls[0])
    assert out.status == "ingested" and out.log["rows_accepted"] == 1
