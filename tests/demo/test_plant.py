"""The demo plant: deterministic, realistic, and carrying every fault of DESIGN §9."""

import gzip
import hashlib
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from demo.plant import PlantSize, generate
from demo.process import TRUE_PARAMETERS
from models.cho_fedbatch import ChoFedBatch

FAULTS = {
    "digital_state",
    "bad_quality",
    "gap",
    "stuck_sensor",
    "duplicate_rows",
    "out_of_order_rows",
    "unknown_tag",
    "fahrenheit_unit",
    "amended_batch_record",
    "dst_change",
    "malformed_line",
}


def _digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _text(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode()


def test_same_seed_writes_identical_bytes(plant_dir, tmp_path):
    generate(tmp_path, PlantSize(batches=5, seconds_per_sample=60.0))
    assert _digest(tmp_path) == _digest(plant_dir)


def test_another_seed_writes_another_plant(plant_dir, tmp_path):
    generate(tmp_path, PlantSize(batches=5, seconds_per_sample=60.0, seed=7))
    ours, theirs = _digest(tmp_path), _digest(plant_dir)
    assert ours["truth.json"] != theirs["truth.json"]


def test_every_format_of_the_landing_zone_is_written(plant_dir):
    landing = plant_dir / "landing"
    names = {p.relative_to(landing).as_posix() for p in landing.rglob("*") if p.is_file()}
    assert any(n.startswith("mes/") and n.endswith(".xml") for n in names)
    assert any(n.startswith("mes/") and n.endswith("_journal.csv") for n in names)
    assert any(n.startswith("historian/") and n.endswith(".csv.gz") for n in names)
    assert any(n.startswith("historian/") and n.endswith("_wide.csv") for n in names)
    assert any(n.startswith("lims/") for n in names)
    assert "tags/tag_dictionary.csv" in names
    with sqlite3.connect(plant_dir / "sql" / "historian.sqlite") as con:
        assert con.execute("select count(*) from history").fetchone()[0] > 10_000


def test_truth_lists_every_fault_of_design_section_9(truth):
    assert FAULTS <= {f["fault"] for f in truth["faults"]}


def test_faults_are_really_in_the_files(plant_dir, truth):
    landing = plant_dir / "landing"
    long_text = "".join(_text(p) for p in sorted((landing / "historian").glob("BR101_*")))
    assert "I/O Timeout" in long_text and "Scan Off" in long_text and ",Questionable" in long_text
    assert "BR101.TT99.PV" in long_text
    lines = long_text.splitlines()
    assert len(lines) != len(set(lines)), "exact duplicate rows expected"
    assert any(len(line.split(",")) != 4 for line in lines), "a malformed (truncated) line expected"
    tags = pd.read_csv(landing / "tags" / "tag_dictionary.csv")
    assert "BR101.TT99.PV" not in set(tags.tag)
    assert tags.set_index("tag").loc["BR102.TT01.PV", "uom"] == "degF"
    wide = _text(landing / "historian" / "BR102_2026-03-22_wide.csv")
    assert (
        "29.03.2026 01:59:00" in wide
        and "29.03.2026 03:00:00" in wide
        and "29.03.2026 02:30:00" not in wide
    )
    assert any("Bad Input" in _text(p) for p in (landing / "historian").glob("BR102_*_wide.csv"))
    v1, v2 = (
        (landing / "mes" / "B26-001_v1.xml").read_text(),
        (landing / "mes" / "B26-001_v2.xml").read_text(),
    )
    assert "<Version>1</Version>" in v1 and "<Version>2</Version>" in v2 and v1 != v2
    stuck = next(f for f in truth["faults"] if f["fault"] == "stuck_sensor")
    inoc = pd.Timestamp(
        next(b for b in truth["batches"] if b["batch_id"] == stuck["batch_id"])["inoculation_ts"]
    )
    window = [(inoc + pd.Timedelta(hours=h)).strftime("%Y-%m-%d %H:%M:%S") for h in (150.5, 157.5)]
    with sqlite3.connect(plant_dir / "sql" / "historian.sqlite") as con:
        values = con.execute(
            "select distinct value from history where name = ? and ts between ? and ?",
            [stuck["tag"], *window],
        ).fetchall()
        bad = con.execute("select count(*) from history where status = 2").fetchone()[0]
    assert len(values) == 1 and bad > 0
    gap = next(f for f in truth["faults"] if f["fault"] == "gap")
    batch = next(b for b in truth["batches"] if b["batch_id"] == gap["batch_id"])
    inoc = pd.Timestamp(batch["inoculation_ts"])
    points = pd.read_csv(
        landing / "historian" / "BR101_2026-03-15.csv",
        names=["tag", "ts", "value", "status"],
        skiprows=1,
    )
    points = points[points.tag == gap["tag"]]
    ts = pd.to_datetime(points.ts, format="ISO8601", utc=True)
    inside = ts[(ts > inoc + pd.Timedelta(hours=90.1)) & (ts < inoc + pd.Timedelta(hours=92.9))]
    assert inside.empty


def test_truth_holds_parameters_batches_and_a_running_batch(truth):
    assert truth["parameters"] == pytest.approx(TRUE_PARAMETERS)
    assert set(truth["fitted_in_truth"]) == {p.name for p in ChoFedBatch.parameters if not p.fixed}
    statuses = [b["status"] for b in truth["batches"]]
    assert statuses.count("running") >= 1 and statuses.count("complete") >= 3
    for b in truth["batches"]:
        phases = sorted(b["phases"], key=lambda name: b["phases"][name]["start_h"])
        assert phases == [
            "PREPARATION",
            "INOCULATION",
            "GROWTH",
            "FED_BATCH",
            "PRODUCTION",
            "HARVEST",
        ]
        assert all(
            b["phases"][a]["end_h"] == b["phases"][c]["start_h"]
            for a, c in zip(phases, phases[1:], strict=False)
        )
        assert 5.0 < b["peak_vcd"] < 40.0 and 1.0 < b["final"]["titer"] < 12.0


def test_lims_titer_matches_the_simulated_truth_within_assay_noise(plant_dir, truth):
    lims = pd.concat(
        pd.read_csv(p, on_bad_lines="skip")
        for p in sorted((plant_dir / "landing" / "lims").glob("*.csv"))
    )
    for b in (b for b in truth["batches"] if b["status"] == "complete"):
        last = (
            lims[(lims.batch_id == b["batch_id"]) & (lims.analyte == "titer")]
            .sort_values("sampled_at")
            .iloc[-1]
        )
        assert float(last.value) == pytest.approx(b["final"]["titer"], rel=0.25)


def test_below_loq_results_are_text(plant_dir):
    lims = pd.concat(
        pd.read_csv(p, on_bad_lines="skip", dtype=str)
        for p in (plant_dir / "landing" / "lims").glob("*.csv")
    )
    assert (lims.value == "<0.5").any()


def test_too_small_a_plant_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least 4 batches"):
        generate(tmp_path, PlantSize(batches=2))
