"""End to end on the second demo site (Werk Süd): onboarded by its sources.yaml alone, no SQL
historian; its compressed archive is curated to the truth of the uncompressed signals. (Its
model step, fit and forecasts through its catalog entry: tests/models/test_user_model.py.)"""

import pandas as pd
import pytest

from demo.penicillin import PenicillinSize, generate
from lake.layout import Lake
from lake.query import query
from pipelines.runner import materialize_all


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("werk_sued")
    truth = generate(root, PenicillinSize(batches=5, seconds_per_sample=60.0))
    run = materialize_all(root, models=False)
    return root, truth, run, Lake(root / "lake")


def _fault_windows(truth) -> list[tuple[str, pd.Timestamp, pd.Timestamp]]:
    """(tag, start, end) of every stretch the source marked bad."""
    out = []
    for f in truth["faults"]:
        if "start_ts" in f:
            for tag in f.get("tags", [f.get("tag")]):
                out.append((tag, pd.Timestamp(f["start_ts"]), pd.Timestamp(f["end_ts"])))
    return out


def test_the_site_runs_green_with_no_sql_historian(site):
    root, truth, run, lake = site
    assert run.success, run.failures()
    log = query(
        lake,
        "SELECT dataset, count(*) AS files, sum(rows_quarantined) AS q FROM ingest_log "
        "GROUP BY 1 ORDER BY 1",
    )
    assert log["dataset"].tolist() == ["historian_long", "lims", "lims_wide", "mes_xml", "tags"]
    assert query(lake, "SELECT count(*) AS n FROM batches")["n"].iloc[0] == len(truth["batches"])


def test_compressed_phase_averages_match_the_uncompressed_truth(site):
    """Where the source marked nothing bad: coverage ≥ 0.99 and the TWA within the archive's own
    resolution (exception plus compression deviation of the tag: a swinging-door archive is
    exact to that, and no reader can do better)."""
    root, truth, _, lake = site
    tags = truth["historian"]["tags"]
    ps = query(lake, "SELECT batch_id, phase, parameter, twa, coverage, uom FROM phase_summary")
    ps = ps.set_index(["batch_id", "phase", "parameter"])
    bad = _fault_windows(truth)
    checked, worst_temp = 0, 0.0
    for b in truth["batches"]:
        if b["status"] != "complete":
            continue
        for phase, by_parameter in b["phase_twa"].items():
            a, z = (
                pd.Timestamp(b["phases"][phase]["start_ts"]),
                pd.Timestamp(b["phases"][phase]["end_ts"]),
            )
            for parameter, true_twa in by_parameter.items():
                tag, spec = next(
                    (t, s)
                    for t, s in tags.items()
                    if s["unit_id"] == b["unit_id"] and s["parameter"] == parameter
                )
                if any(t == tag and s < z and e > a for t, s, e in bad):
                    continue
                twa, coverage, _ = ps.loc[(b["batch_id"], phase, parameter)]
                tolerance = spec["exc_dev"] + spec["comp_dev"]  # K and °C share a degree
                assert coverage >= 0.99, (b["batch_id"], phase, parameter, coverage)
                assert twa == pytest.approx(true_twa, abs=tolerance), (
                    b["batch_id"],
                    phase,
                    parameter,
                )
                checked += 1
                if parameter == "temperature":
                    worst_temp = max(worst_temp, abs(twa - true_twa))
    assert checked > 50 and worst_temp < 0.1


def test_site_units_are_converted_or_kept_and_shown(site):
    _, _, _, lake = site
    units = dict(
        query(lake, "SELECT DISTINCT parameter, uom FROM phase_summary").itertuples(index=False)
    )
    assert (
        units["temperature"] == "degC"
        and units["dissolved_oxygen"] == "mg/L"
        and units["volume"] == "m^3"
    )
    batch_temp = query(
        lake,
        "SELECT avg(twa) AS t FROM phase_summary "
        "WHERE parameter = 'temperature' AND phase = 'BATCH'",
    )["t"].iloc[0]
    assert batch_temp == pytest.approx(25.0, abs=0.1)  # 298.15 K


def test_pct_in_limits_follows_the_phase_limits_of_the_site(site):
    _, _, _, lake = site
    rows = query(
        lake,
        """SELECT phase, min(limit_low) AS lo, max(limit_high) AS hi, min(pct_in_limits) AS pct
           FROM phase_summary WHERE parameter = 'temperature' GROUP BY 1 ORDER BY 1""",
    ).set_index("phase")
    assert (rows.loc["BATCH", "lo"], rows.loc["BATCH", "hi"]) == (24.5, 25.5)
    assert (rows.loc["FED_BATCH", "lo"], rows.loc["FED_BATCH", "hi"]) == (23.5, 24.5)
    assert rows.loc["FED_BATCH", "pct"] > 95.0 and pd.isna(rows.loc["HARVEST", "pct"])


def test_lab_faults_are_quarantined_with_their_reasons(site):
    _, truth, _, lake = site
    q = query(
        lake, "SELECT row_key, reason FROM quarantine WHERE dataset = 'lims' ORDER BY row_key"
    )
    faults = {f["fault"]: f for f in truth["faults"]}
    reasons = dict(q.itertuples(index=False))
    assert (
        reasons[f"{faults['negative_result']['sample_id']}/biomass"]
        == "biomass -3.2 g/L is below the plausible minimum 0 g/L"
    )
    assert (
        reasons[f"{faults['unknown_unit']['sample_id']}/viscosity"]
        == "unit 'furlongs' is not a known unit of viscosity (cP, mPa*s)"
    )
    assert reasons[f"{faults['conflicting_resend']['sample_id']}/penicillin"].startswith(
        "conflicting re-send for sample"
    )


def _steps_integral(steps: list[list[float]], end_h: float) -> float:
    """Litres from a step profile [[t_h, rate L/h], …] held until the next step, up to end_h."""
    edges = [t for t, _ in steps] + [end_h]
    return sum(
        rate * (max(min(b, end_h), a) - a) for (a, rate), b in zip(steps, edges[1:], strict=True)
    )


def test_batch_kpis_come_from_the_analytes_and_feeds_the_site_names(site):
    _, truth, _, lake = site
    kpis = query(lake, "SELECT * FROM batch_kpis").set_index("batch_id")
    for b in (b for b in truth["batches"] if b["status"] == "complete"):
        k = kpis.loc[b["batch_id"]]
        end_h = b["phases"]["HARVEST"]["end_h"]
        feed = _steps_integral(b["sugar_feed_l_h"], end_h) + _steps_integral(
            b["oil_feed_l_h"], end_h
        )
        assert k["feed_added_l"] == pytest.approx(
            feed, rel=0.01
        )  # two step tags, compressed, integrated
        # the harvest sample, with the assay's 4 % CV: four sigma
        assert k["final_titer"] == pytest.approx(b["final_titer_g_l"], rel=0.16)
        assert k["peak_vcd"] == pytest.approx(
            b["final_state"]["X"], rel=0.15
        )  # biomass peaks at harvest here
        assert pd.isna(k["qp"]) and pd.isna(
            k["harvest_viability"]
        )  # no cell count, no viability assay
