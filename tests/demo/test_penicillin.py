"""Werk Süd, the second demo site: deterministic, really compressed, and readable by the readers
through nothing but its sources.yaml."""

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from demo.penicillin import BY_PARAMETER, PenicillinSize, generate, tag_name
from lake import ingest
from lake.layout import Lake
from sources.site import load_site

SMALL = PenicillinSize(batches=4, seconds_per_sample=60.0)
DST = pd.Timestamp("2026-03-08T08:00:00Z")  # 02:00 CST became 03:00 CDT
SUGAR = BY_PARAMETER["sugar_feed_rate"]


def load_site_profiles(landing: Path):
    """(file profiles, site) from landing/sources.yaml."""
    site = load_site(landing)
    return site.files, site


def _ingest(lake: Lake, landing: Path, rel: str, profile, tags_known, site):
    return ingest.ingest_file(lake, landing, rel, profile, tags_known=tags_known, site=site)


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pen")
    generate(root, SMALL)
    return root


@pytest.fixture(scope="module")
def truth(site_dir) -> dict:
    return json.loads((site_dir / "truth.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ingested(site_dir, tmp_path_factory):
    """Every landing file through the readers into a fresh lake: (lake, outcomes by path, site)."""
    landing = site_dir / "landing"
    profiles, site = load_site_profiles(landing)
    lake = Lake(tmp_path_factory.mktemp("lake"))
    files = ingest.landing_files(landing, profiles)
    outcomes = {
        rel: _ingest(lake, landing, rel, p, None, site) for rel, p in files if p.dataset == "tags"
    }
    tags_known = ingest.known_tags(lake)
    for rel, p in files:
        if p.dataset != "tags":
            outcomes[rel] = _ingest(lake, landing, rel, p, tags_known, site)
    return lake, outcomes, site


def _silver(lake: Lake, table: str) -> pd.DataFrame:
    parts = [pd.read_parquet(p) for p in sorted(lake.silver(table).glob("*.parquet"))]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _historian(landing: Path) -> pd.DataFrame:
    return pd.concat(
        [
            pd.read_csv(p, sep=";", dtype=str, compression="infer")
            for p in sorted((landing / "historian").glob("PEN_*"))
        ],
        ignore_index=True,
    )


def _complete(truth: dict) -> list[dict]:
    return [b for b in truth["batches"] if b["status"] == "complete"]


def test_same_seed_same_bytes_another_seed_another_site(site_dir, tmp_path):
    generate(tmp_path / "a", SMALL)
    assert _digest(tmp_path / "a") == _digest(site_dir)
    generate(tmp_path / "b", PenicillinSize(batches=4, seconds_per_sample=60.0, seed=7))
    ours, theirs = _digest(tmp_path / "b"), _digest(site_dir)
    assert ours.keys() == theirs.keys()
    for rel in (
        "truth.json",
        "landing/lims/PEN_LIMS_export.csv",
        "landing/historian/PEN_F301_recorded.csv",
        "landing/mes/PEN_PG26-001.xml",
    ):
        assert ours[rel] != theirs[rel], rel


def test_regeneration_touches_only_its_own_files(tmp_path):
    landing = tmp_path / "landing"
    (landing / "mes").mkdir(parents=True)
    (landing / "mes" / "other_site.xml").write_text("<x/>")
    generate(tmp_path, PenicillinSize(batches=5, seconds_per_sample=300.0))
    assert (landing / "mes" / "PEN_PG26-005.xml").exists()
    generate(tmp_path, PenicillinSize(batches=4, seconds_per_sample=300.0))
    assert (landing / "mes" / "other_site.xml").read_text() == "<x/>"
    assert not (landing / "mes" / "PEN_PG26-005.xml").exists()  # its own stale file is gone
    (landing / "sources.yaml").write_text("site: SOMEONE-ELSE\n")
    with pytest.raises(FileExistsError):
        generate(tmp_path, PenicillinSize(batches=4, seconds_per_sample=300.0))


def test_the_historian_is_exception_reported_and_compressed(site_dir, truth):
    tags = truth["historian"]["tags"]
    assert truth["historian"]["exc_max_s"] == 600 and truth["historian"]["comp_max_s"] == 28800
    archived = sum(t["archived_points"] for t in tags.values())
    assert archived / sum(t["raw_points"] for t in tags.values()) < 0.02
    for t in tags.values():
        assert t["archived_points"] < t["exception_points"] <= t["raw_points"]
    # in the file: a step tag keeps one value every few hours (CompMax 8 h), never fewer
    points = _historian(site_dir / "landing")
    sugar = points[points.Tagname == tag_name("F-301", SUGAR)]
    gaps = pd.to_datetime(sugar.Zeitstempel, format="%m/%d/%Y %H:%M:%S").diff().dt.total_seconds()
    assert 3600.0 < gaps.max() <= 28800.0 + 3600.0  # + 1 h: the DST jump of local times
    assert (gaps > 3600.0).sum() > 10


def test_files_follow_the_site_conventions(site_dir):
    landing = site_dir / "landing"
    head = gzip.decompress((landing / "historian" / "PEN_F303_recorded.csv.gz").read_bytes())
    assert head.decode().splitlines()[0] == "Tagname;Zeitstempel;Wert;Qualitaet"
    points = _historian(landing)
    assert {"No Data", "Shutdown", "I/O Timeout", "Scan Off"} <= set(points.Wert)
    assert set(points.Qualitaet) == {"192", "0", "64"}
    assert points.Wert.str.contains(",").mean() > 0.9  # decimal comma
    assert not points.Zeitstempel.str.startswith("03/08/2026 02:").any()  # skipped by DST
    tags = (landing / "tags" / "PEN_Tagliste.csv").read_bytes().decode("latin-1")
    assert "Brühe" in tags and "max_gap" not in tags.lower()
    assert "http://www.mesa.org/xml/B2MML" in (landing / "mes" / "PEN_PG26-001.xml").read_text()


def test_every_file_is_read_and_only_the_injected_lab_faults_are_quarantined(ingested, truth):
    lake, outcomes, site = ingested
    by_dataset: dict[str, dict] = {}
    for rel, out in outcomes.items():
        assert out.status == "ingested", (rel, out.log["error"])
        by_dataset.setdefault(out.log["dataset"], {})[rel] = out.log
    assert {d: len(v) for d, v in by_dataset.items()} == {
        "tags": 1,
        "historian_long": 3,
        "mes_xml": 4,
        "lims": 2,
        "lims_wide": 1,
    }
    assert by_dataset["tags"]["tags/PEN_Tagliste.csv"]["rows_accepted"] == 33
    for rel, log in {
        **by_dataset["tags"],
        **by_dataset["historian_long"],
        **by_dataset["mes_xml"],
    }.items():
        assert log["rows_quarantined"] == 0, (rel, outcomes[rel].reasons)
    historian = by_dataset["historian_long"].values()
    read, accepted = (sum(log[k] for log in historian) for k in ("rows_read", "rows_accepted"))
    assert read == accepted == len(_silver(lake, "historian_points"))
    export = by_dataset["lims"]["lims/PEN_LIMS_export.csv"]
    resend = by_dataset["lims"]["lims/PEN_LIMS_resend.csv"]
    samples = _silver(lake, "samples")
    assert (export["rows_quarantined"], resend["rows_quarantined"]) == (2, 1)
    quarantine = _silver(lake, "quarantine")
    lab = quarantine[quarantine.source_path.str.startswith("lims/")].set_index("row_key")
    faults = {f["fault"]: f for f in truth["faults"]}
    neg, unit, dup = (faults[k] for k in ("negative_result", "unknown_unit", "conflicting_resend"))
    assert "below the plausible minimum" in lab.loc[f"{neg['sample_id']}/biomass", "reason"]
    assert "furlongs" in lab.loc[f"{unit['sample_id']}/viscosity", "reason"]
    resent = lab.loc[f"{dup['sample_id']}/penicillin"]
    assert (resent["check"], resent["source_path"]) == ("conflicting_result", dup["file"])
    kept = samples[(samples.sample_id == dup["sample_id"]) & (samples.analyte == "penicillin")]
    assert kept.source_path.tolist() == ["lims/PEN_LIMS_export.csv"]
    # the at-line analyzer (UTF-16, an instrument header, a column per analyte): its 'ERROR'
    # cell is quarantined by its line and column, the sample it could not read is a note
    analyzer = by_dataset["lims_wide"]["lims/analyzer/BioAn2_export.csv"]
    error, unread = faults["analyzer_error"], faults["analyzer_no_result"]
    bad = quarantine[quarantine.source_path == error["file"]]
    assert bad[["source_row", "column", "failure_value"]].values.tolist() == [
        [error["line"], "PAA (g/L)", "ERROR"]
    ]
    assert analyzer["notes"] == "1 sample row(s) without any result"
    assert unread["sample_id"] not in set(samples.sample_id)
    at_line = samples[samples.source_path == error["file"]]
    assert analyzer["rows_accepted"] == len(at_line) and analyzer["rows_quarantined"] == 1
    assert set(at_line.analyte) == {"paa", "ammonium"}
    assert set(at_line.uom) == {"g/L", "mmol/L"} and set(at_line.canonical_uom) == {"g/L", "mM"}
    # the batch comes from the sample id: PG26-001-A04 belongs to PG26-001
    assert (at_line.batch_id == at_line.sample_id.str.rsplit("-", n=1).str[0]).all()


def test_local_times_across_the_dst_change_are_read_as_the_right_instants(ingested, truth):
    """Every feed step of a complete batch is archived at its true UTC instant, before and
    after the change from CST (UTC-6) to CDT (UTC-5)."""
    points = _silver(ingested[0], "historian_points")
    crossing = 0
    for b in _complete(truth):
        tag = points[points.tag == tag_name(b["unit_id"], SUGAR)].set_index("ts")
        start = pd.Timestamp(b["start_ts"])
        for t_h, rate in b["sugar_feed_l_h"]:
            at = (start + pd.Timedelta(hours=t_h)).round("s")
            assert tag.loc[at, "value"] == pytest.approx(rate), (b["batch_id"], t_h)
            local = pd.to_datetime(tag.loc[at, "ts_text"], format="%m/%d/%Y %H:%M:%S")
            assert local - at.tz_localize(None) == pd.Timedelta(hours=-5 if at > DST else -6)
            crossing += start < DST < at
    assert crossing > 0, "a complete batch has a feed step after the DST change it started before"


def _archive_average(points: pd.DataFrame, tag: str, start: str, end: str, step: bool) -> float:
    """Time-weighted average of the good archived points over [start, end]: linear
    interpolation between them, or each held until the next (a step tag)."""
    p = points[(points.tag == tag) & (points.quality == "good")].sort_values("ts")
    t = (p.ts - DST).dt.total_seconds().to_numpy()
    a, z = ((pd.Timestamp(x) - DST).total_seconds() for x in (start, end))
    grid = np.arange(a, z + 1.0, 60.0)
    if step:
        v = p.value.to_numpy()[np.searchsorted(t, grid, side="right") - 1]
        return float(np.sum(v[:-1] * np.diff(grid)) / (z - a))
    return float(np.trapezoid(np.interp(grid, t, p.value.to_numpy()), grid) / (z - a))


def test_the_archive_reproduces_the_phase_averages_of_the_uncompressed_signal(ingested, truth):
    points = _silver(ingested[0], "historian_points")
    for b in _complete(truth):
        twa, phases = b["phase_twa"], b["phases"]
        assert twa["BATCH"]["temperature_sp"] == 25.0 and twa["FED_BATCH"]["temperature_sp"] == 24.0
        assert twa["BATCH"]["temperature"] == pytest.approx(25.0, abs=0.02)
        assert twa["FED_BATCH"]["temperature"] == pytest.approx(24.0, abs=0.02)
        assert twa["BATCH"]["sugar_feed_rate"] == 0.0 and twa["FED_BATCH"]["sugar_feed_rate"] > 40
        for parameter, phase, tol in (
            ("temperature", "BATCH", 0.1),
            ("dissolved_oxygen", "FED_BATCH", 0.1),
            ("sugar_feed_rate", "FED_BATCH", 1e-6),
        ):  # tol ~ CompDev
            spec = BY_PARAMETER[parameter]
            got = _archive_average(
                points,
                tag_name(b["unit_id"], spec),
                phases[phase]["start_ts"],
                phases[phase]["end_ts"],
                step=spec.interp == "STEP",
            )
            got -= 273.15 if spec.uom == "K" else 0.0  # the site's unit is degC
            assert got == pytest.approx(twa[phase][parameter], abs=tol), (b["batch_id"], parameter)


def test_mes_records_carry_phases_from_batch_start_and_the_material_events(ingested, truth):
    lake = ingested[0]
    records = _silver(lake, "batch_records").set_index("batch_id")
    phases = _silver(lake, "phase_records")
    materials = _silver(lake, "material_event_records")
    as_of = pd.Timestamp(truth["as_of"])
    for b in truth["batches"]:
        rec = records.loc[b["batch_id"]]
        assert (rec["status"], rec["site"], rec["product"]) == (b["status"], "PEN-SUED", "PEN-G")
        assert rec["inoculation_ts"] == rec["start_ts"] == pd.Timestamp(b["start_ts"])
        mine = phases[(phases.batch_id == b["batch_id"]) & (phases.level == "phase")]
        assert mine.phase.tolist() == [
            k for k, ph in b["phases"].items() if pd.Timestamp(ph["start_ts"]) <= as_of
        ]
        start = pd.Timestamp(b["start_ts"])
        expected = [((start + pd.Timedelta(hours=h)).round("s"), q) for h, q in b["draw_offs_l"]]
        draws = materials[(materials.batch_id == b["batch_id"]) & (materials.kind == "draw_off")]
        assert list(zip(draws.ts, draws.quantity, strict=True)) == [
            (t, q) for t, q in expected if t <= as_of
        ]
    assert records.loc[truth["batches"][-1]["batch_id"], "status"] == "running"  # the newest runs


def test_lab_results_follow_the_true_batch_within_assay_noise(ingested, truth):
    samples = _silver(ingested[0], "samples")
    assert samples.censored.sum() > 0 and set(samples[samples.censored].value_text) == {"<0,05"}
    lims = samples[samples.source_path.str.startswith("lims/PEN_")]
    assert (lims.reported_ts > lims.sampled_ts).all()
    assert (lims.reported_ts <= pd.Timestamp(truth["as_of"])).all()
    assert set(lims.analyte) == {"biomass", "penicillin", "viscosity", "substrate"}
    # the analyzer reports nothing but its measurement time
    at_line = samples[~samples.source_path.str.startswith("lims/PEN_")]
    assert at_line.reported_ts.isna().all() and set(at_line.analyte) == {"paa", "ammonium"}
    paa, ammonium = (at_line[at_line.analyte == a].value for a in ("paa", "ammonium"))
    assert paa.between(0.6, 1.4).all() and ammonium.between(11.0, 23.0).all()
    for b in _complete(truth):
        titer = samples[(samples.batch_id == b["batch_id"]) & (samples.analyte == "penicillin")]
        assert titer.sort_values("sampled_ts").value.iloc[-1] == pytest.approx(
            b["final_titer_g_l"], rel=0.2
        )
        assert 15.0 < b["final_titer_g_l"] < 35.0


def test_truth_holds_parameters_batches_and_phases(truth):
    params = truth["true_parameters"]
    assert {"mu_max", "K_S", "Y_XS", "m_S", "alpha", "beta"} <= set(params)
    assert params["mu_max"] == {"value": 0.095, "unit": "1/h"}
    assert truth["site_units"]["temperature"] == "degC"
    assert truth["site_units"]["dissolved_oxygen"] == "mg/L"
    for b in truth["batches"]:
        ph = b["phases"]
        assert list(ph) == ["BATCH", "FED_BATCH", "HARVEST"] and ph["BATCH"]["start_h"] == 0.0
        assert ph["BATCH"]["end_h"] == ph["FED_BATCH"]["start_h"]
        assert ph["FED_BATCH"]["end_h"] == ph["HARVEST"]["start_h"]
        assert 200.0 <= ph["HARVEST"]["end_h"] <= 230.0
        assert (b["phase_twa"] is None) == (b["status"] == "running")
        # the volume balance closes: the kinetics saw the feed steps the historian and MES show
        harvest = ph["HARVEST"]["start_h"]
        fed = sum(
            r * (min(z, harvest) - a)
            for steps in (b["sugar_feed_l_h"], b["oil_feed_l_h"])
            for (a, r), (z, _) in zip(steps, steps[1:], strict=False)
        )
        balance = b["initial_state"]["V"] + fed - sum(q for _, q in b["draw_offs_l"])
        assert b["final_state"]["V"] == pytest.approx(balance, rel=1e-6)
    faults = {f["fault"] for f in truth["faults"]}
    assert {
        "digital_state",
        "bad_quality",
        "uncertain_quality",
        "dst_change",
        "negative_result",
        "unknown_unit",
        "conflicting_resend",
    } <= faults


def test_too_small_a_site_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 4 batches"):
        generate(tmp_path, PenicillinSize(batches=3))
