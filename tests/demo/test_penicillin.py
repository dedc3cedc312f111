"""Werk Süd, the second demo site: deterministic, really compressed, and readable by the readers
through nothing but its sources.yaml."""
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from demo.penicillin import TAGS, PenicillinSize, generate, tag_name
from lake import ingest
from lake.layout import Lake

SMALL = PenicillinSize(batches=4, seconds_per_sample=60.0)
DST = pd.Timestamp("2026-03-08T08:00:00Z")  # 02:00 CST became 03:00 CDT


def load_site_profiles(landing: Path):
    """(file profiles, site or None) from landing/sources.yaml — the one place that knows the
    loader: `sources.site.load_site` where it exists, `sources.profiles.load_profiles` before."""
    try:
        from sources.site import load_site
    except ImportError:
        from sources.profiles import load_profiles

        return load_profiles(landing, "sqlite://")[0], None
    site = load_site(landing)
    return site.files, site


def _ingest(lake: Lake, landing: Path, rel: str, profile, tags_known, site):
    extra = {"site": site} if site is not None else {}
    return ingest.ingest_file(lake, landing, rel, profile, tags_known=tags_known, **extra)


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
    outcomes = {rel: _ingest(lake, landing, rel, p, None, site) for rel, p in files if p.dataset == "tags"}
    tags_known = ingest.known_tags(lake)
    for rel, p in files:
        if p.dataset != "tags":
            outcomes[rel] = _ingest(lake, landing, rel, p, tags_known, site)
    return lake, outcomes, site


def _silver(lake: Lake, table: str) -> pd.DataFrame:
    parts = [pd.read_parquet(p) for p in sorted(lake.silver(table).glob("*.parquet"))]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _text(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8")


def _historian(landing: Path) -> pd.DataFrame:
    frames = [pd.read_csv(p, sep=";", dtype=str, compression="infer")
              for p in sorted((landing / "historian").glob("PEN_*"))]
    return pd.concat(frames, ignore_index=True)


def test_same_seed_same_bytes_another_seed_another_site(site_dir, tmp_path):
    generate(tmp_path / "a", SMALL)
    assert _digest(tmp_path / "a") == _digest(site_dir)
    generate(tmp_path / "b", PenicillinSize(batches=4, seconds_per_sample=60.0, seed=7))
    ours, theirs = _digest(tmp_path / "b"), _digest(site_dir)
    assert ours.keys() == theirs.keys()
    for rel in ("truth.json", "landing/lims/PEN_LIMS_export.csv", "landing/historian/PEN_F301_recorded.csv"):
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
    raw = sum(t["raw_points"] for t in tags.values())
    archived = sum(t["archived_points"] for t in tags.values())
    assert archived / raw < 0.02
    for t in tags.values():
        assert t["archived_points"] < t["exception_points"] <= t["raw_points"]
    # in the files: a step tag keeps one value every few hours (CompMax 8 h), never fewer
    points = _historian(site_dir / "landing")
    sugar = points[points.Tagname == tag_name("F-301", TAGS[4])]
    ts = pd.to_datetime(sugar.Zeitstempel, format="%m/%d/%Y %H:%M:%S")
    gaps = ts.diff().dt.total_seconds().dropna()
    assert gaps.max() > 3600.0 and gaps.max() <= 28800.0 + 3600.0  # + 1 h: the DST jump
    assert (gaps > 3600.0).sum() > 10


def test_files_follow_the_site_conventions(site_dir):
    landing = site_dir / "landing"
    head = _text(landing / "historian" / "PEN_F303_recorded.csv.gz").splitlines()[0]
    assert head == "Tagname;Zeitstempel;Wert;Qualitaet"
    points = _historian(landing)
    assert {"No Data", "Shutdown", "I/O Timeout", "Scan Off"} <= set(points.Wert)
    assert set(points.Qualitaet) == {"192", "0", "64"}
    assert points.Wert.str.contains(",").mean() > 0.9  # decimal comma
    assert not points.Zeitstempel.str.startswith("03/08/2026 02:").any()  # skipped by DST
    tags = (landing / "tags" / "PEN_Tagliste.csv").read_bytes().decode("latin-1")
    assert "Brühe" in tags and "max_gap" not in tags.lower()
    assert "B2MML" in (landing / "mes" / "PEN_PG26-001.xml").read_text()


def test_every_file_is_read_and_only_the_injected_lab_faults_are_quarantined(ingested, truth):
    lake, outcomes, site = ingested
    by_dataset: dict[str, list] = {}
    for rel, out in outcomes.items():
        assert out.status == "ingested", (rel, out.log["error"])
        by_dataset.setdefault(out.log["dataset"], []).append((rel, out))
    assert {d: len(v) for d, v in by_dataset.items()} == {"tags": 1, "historian_long": 3, "mes_xml": 4, "lims": 2}
    (_, tags), = by_dataset["tags"]
    assert tags.log["rows_accepted"] == 33 and tags.log["rows_quarantined"] == 0
    for rel, out in by_dataset["historian_long"] + by_dataset["mes_xml"]:
        assert out.log["rows_quarantined"] == 0, (rel, out.reasons)
    accepted = sum(o.log["rows_accepted"] for _, o in by_dataset["historian_long"])
    assert accepted == len(_silver(lake, "historian_points")) == sum(o.log["rows_read"] for _, o in by_dataset["historian_long"])
    lims = dict(by_dataset["lims"])
    export, resend = lims["lims/PEN_LIMS_export.csv"], lims["lims/PEN_LIMS_resend.csv"]
    quarantine = _silver(lake, "quarantine")
    samples = _silver(lake, "samples")
    faults = {f["fault"]: f for f in truth["faults"]}
    if site is None:  # a loader without an analyte dictionary: the faults reach silver unchanged
        assert export.log["rows_quarantined"] == 0 and resend.log["rows_quarantined"] == 0
        assert (samples.value == -3.2).sum() == 1 and (samples.uom == "furlongs").sum() == 1
        return
    assert export.log["rows_quarantined"] == 2 and resend.log["rows_quarantined"] == 1
    lab = quarantine[quarantine.source_path.str.startswith("lims/")].set_index("row_key")
    neg, unit, dup = (faults[k] for k in ("negative_result", "unknown_unit", "conflicting_resend"))
    assert "below the plausible minimum" in lab.loc[f"{neg['sample_id']}/biomass", "reason"]
    assert "furlongs" in lab.loc[f"{unit['sample_id']}/viscosity", "reason"]
    assert lab.loc[f"{dup['sample_id']}/penicillin", "check"] == "conflicting_result"
    assert lab.loc[f"{dup['sample_id']}/penicillin", "source_path"] == dup["file"]
    kept = samples[(samples.sample_id == dup["sample_id"]) & (samples.analyte == "penicillin")]
    assert len(kept) == 1 and kept.source_path.iloc[0] == "lims/PEN_LIMS_export.csv"


def test_local_times_across_the_dst_change_are_read_as_the_right_instants(ingested, truth):
    """Every feed step of a complete batch is archived at its true UTC instant, before and
    after the change from CST (UTC-6) to CDT (UTC-5)."""
    lake, _, _ = ingested
    points = _silver(lake, "historian_points")
    crossing = 0
    for b in (b for b in truth["batches"] if b["status"] == "complete"):
        tag = points[points.tag == tag_name(b["unit_id"], TAGS[4])].set_index("ts")
        start = pd.Timestamp(b["start_ts"])
        for t_h, rate in b["sugar_feed_l_h"]:
            at = (start + pd.Timedelta(hours=t_h)).round("s")
            assert tag.loc[at, "value"] == pytest.approx(rate), (b["batch_id"], t_h)
            crossing += start < DST < at
            offset = pd.to_datetime(tag.loc[at, "ts_text"], format="%m/%d/%Y %H:%M:%S") - at.tz_localize(None)
            assert offset == pd.Timedelta(hours=-5 if at > DST else -6)
    assert crossing > 0, "a complete batch has a feed step after the DST change it started before"


def test_the_archive_reproduces_the_phase_averages_of_the_uncompressed_signal(ingested, truth):
    lake, _, _ = ingested
    points = _silver(lake, "historian_points")
    for b in (b for b in truth["batches"] if b["status"] == "complete"):
        twa = b["phase_twa"]
        assert twa["BATCH"]["temperature_sp"] == 25.0 and twa["FED_BATCH"]["temperature_sp"] == 24.0
        assert twa["BATCH"]["temperature"] == pytest.approx(25.0, abs=0.02)
        assert twa["FED_BATCH"]["temperature"] == pytest.approx(24.0, abs=0.02)
        assert twa["BATCH"]["sugar_feed_rate"] == 0.0 and twa["FED_BATCH"]["sugar_feed_rate"] > 40.0
        for k, phase, interp, tol in ((0, "BATCH", "linear", 0.1), (4, "FED_BATCH", "step", 1e-6),
                                      (3, "FED_BATCH", "linear", 0.1)):
            spec = TAGS[k]
            p = points[(points.tag == tag_name(b["unit_id"], spec)) & (points.quality == "good")]
            p = p.sort_values("ts")
            t = (p.ts - pd.Timestamp("2026-01-01", tz="UTC")).dt.total_seconds().to_numpy()
            a, z = (((pd.Timestamp(b["phases"][phase][k2]) - pd.Timestamp("2026-01-01", tz="UTC"))
                     .total_seconds()) for k2 in ("start_ts", "end_ts"))
            grid = np.arange(a, z + 1.0, 60.0)
            if interp == "linear":
                v = np.interp(grid, t, p.value.to_numpy())
            else:
                v = p.value.to_numpy()[np.searchsorted(t, grid, side="right") - 1]
            v = v - 273.15 if spec.uom == "K" else v
            area = np.trapezoid(v, grid) if interp == "linear" else np.sum(v[:-1] * np.diff(grid))
            assert area / (grid[-1] - grid[0]) == pytest.approx(twa[phase][spec.parameter], abs=tol), (
                b["batch_id"], phase, spec.parameter)


def test_mes_records_carry_phases_from_batch_start_and_the_material_events(ingested, truth):
    lake, _, _ = ingested
    records = _silver(lake, "batch_records").set_index("batch_id")
    phases = _silver(lake, "phase_records")
    materials = _silver(lake, "material_event_records")
    as_of = pd.Timestamp(truth["as_of"])
    for b in truth["batches"]:
        rec = records.loc[b["batch_id"]]
        assert (rec["status"], rec["site"], rec["product"]) == (b["status"], "PEN-SUED", "PEN-G")
        assert rec["inoculation_ts"] == rec["start_ts"] == pd.Timestamp(b["start_ts"])
        mine = phases[(phases.batch_id == b["batch_id"]) & (phases.level == "phase")]
        started = [k for k in ("BATCH", "FED_BATCH", "HARVEST") if pd.Timestamp(b["phases"][k]["start_ts"]) <= as_of]
        assert mine.phase.tolist() == started
        draws = materials[(materials.batch_id == b["batch_id"]) & (materials.kind == "draw_off")]
        start = pd.Timestamp(b["start_ts"])
        expected = [(start + pd.Timedelta(hours=h)).round("s") for h, _ in b["draw_offs_l"]]
        assert draws.ts.tolist() == [t for t in expected if t <= as_of]
        assert draws.quantity.tolist() == [q for (h, q), t in zip(b["draw_offs_l"], expected) if t <= as_of]
    assert records.loc[truth["batches"][-1]["batch_id"], "status"] == "running"  # the newest runs


def test_lab_results_follow_the_true_batch_within_assay_noise(ingested, truth):
    lake, _, _ = ingested
    samples = _silver(lake, "samples")
    assert samples.censored.sum() > 0 and set(samples[samples.censored].value_text) == {"<0,05"}
    assert (samples.reported_ts > samples.sampled_ts).all()
    assert (samples.reported_ts <= pd.Timestamp(truth["as_of"])).all()
    assert set(samples.analyte) == {"biomass", "penicillin", "viscosity", "substrate"}
    assert set(samples[samples.analyte == "viscosity"].uom) <= {"cP", "furlongs"}
    for b in (b for b in truth["batches"] if b["status"] == "complete"):
        titer = samples[(samples.batch_id == b["batch_id"]) & (samples.analyte == "penicillin")]
        last = titer.sort_values("sampled_ts").value.iloc[-1]
        assert last == pytest.approx(b["final_titer_g_l"], rel=0.2)
        assert 15.0 < b["final_titer_g_l"] < 35.0


def test_truth_holds_parameters_batches_and_phases(truth):
    params = truth["true_parameters"]
    assert {"mu_max", "K_S", "Y_XS", "m_S", "alpha", "beta"} <= set(params)
    assert params["mu_max"] == {"value": 0.095, "unit": "1/h"}
    assert truth["site_units"]["temperature"] == "degC" and truth["site_units"]["dissolved_oxygen"] == "mg/L"
    for b in truth["batches"]:
        ph = b["phases"]
        assert list(ph) == ["BATCH", "FED_BATCH", "HARVEST"] and ph["BATCH"]["start_h"] == 0.0
        assert ph["BATCH"]["end_h"] == ph["FED_BATCH"]["start_h"] and ph["FED_BATCH"]["end_h"] == ph["HARVEST"]["start_h"]
        assert 200.0 <= ph["HARVEST"]["end_h"] <= 230.0
        assert set(b["initial_state"]) == {"X", "S", "P", "V"}
        assert (b["phase_twa"] is None) == (b["status"] == "running")
    faults = {f["fault"] for f in truth["faults"]}
    assert {"digital_state", "bad_quality", "uncertain_quality", "dst_change", "negative_result",
            "unknown_unit", "conflicting_resend"} <= faults


def test_too_small_a_site_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 4 batches"):
        generate(tmp_path, PenicillinSize(batches=3))
