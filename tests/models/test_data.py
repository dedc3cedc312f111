"""Training data read from the curated lake match what the demo plant really did."""

import numpy as np
import pandas as pd
import pytest

from demo.plant import MODEL_CATALOG_ENTRY
from demo.process import FEED_COMPOSITION
from lake.layout import Lake
from models.catalog import parse
from models.cho_fedbatch import GLUCOSE_G_PER_MMOL
from models.data import fingerprint, load_batches, training_frame

SPEC = parse("MAB-A", MODEL_CATALOG_ENTRY)
MODEL = SPEC.model


@pytest.fixture(scope="module")
def loaded(pipeline_run, truth):
    data, _ = pipeline_run
    ids = [b["batch_id"] for b in truth["batches"]]
    return {b.batch_id: b for b in load_batches(Lake(data / "lake"), SPEC, ids)}, {
        b["batch_id"]: b for b in truth["batches"]
    }


def test_feed_rate_is_reconstructed_from_its_change_points(loaded):
    batches, truth = loaded
    for bid, b in batches.items():
        (feed,) = b.inputs.feeds
        assert feed.name == "feed_rate" and feed.composition == FEED_COMPOSITION
        times, rates = np.array(feed.times_h), np.array(feed.rates_l_h)
        on = rates > 0
        t_true, r_true = truth[bid]["feed_times_h"], truth[bid]["feed_rates_l_h"]
        n = int(on.sum())
        assert n >= 1 and n <= len(t_true)
        # the historian archives the pump in mL/min with two decimals and at its scan interval
        np.testing.assert_allclose(times[on], t_true[:n], atol=0.02)
        np.testing.assert_allclose(rates[on], r_true[:n], atol=1e-3)
        assert rates[0] == 0.0 or times[0] > 60  # no feed during the growth phase


def test_boluses_come_from_the_mes_with_their_glucose(loaded):
    batches, truth = loaded
    for bid, b in batches.items():
        got = [(round(x.t_h, 3), x.volume_l) for x in b.inputs.boluses]
        want = [(round(x["t_h"], 3), x["volume_l"]) for x in truth[bid]["boluses"]]
        assert got == want[: len(got)] and len(got) >= 1
        # the catalog gives 450 g/L; the model's glucose state is in mM
        assert all(
            x.concentrations["G"] * GLUCOSE_G_PER_MMOL == pytest.approx(450.0)
            for x in b.inputs.boluses
        )


def test_initial_state_is_the_first_samples_in_model_units(loaded):
    batches, truth = loaded
    names = MODEL.state_names()
    for bid, b in batches.items():
        y0 = dict(zip(names, b.y0, strict=True))
        true = truth[bid]["initial_state"]
        assert b.t0_h == pytest.approx(0.6, abs=0.5)
        assert y0["V"] == pytest.approx(true["V"], abs=0.1)  # MES charge + inoculum
        assert y0["Xv"] == pytest.approx(true["Xv"], rel=0.3)
        assert y0["G"] == pytest.approx(true["G"], rel=0.15)  # g/L -> mM
        assert y0["Q"] == pytest.approx(true["Q"], rel=0.25)
        assert y0["P"] == 0.0


def test_samples_are_in_model_units_and_hours_since_inoculation(loaded):
    batches, truth = loaded
    s = pd.concat([b.samples.assign(batch_id=k) for k, b in batches.items()])
    assert set(s["analyte"]) == {o.name for o in MODEL.observables}
    assert s["t_batch_h"].min() >= 0 and s["t_batch_h"].max() < 340
    # glutamine and ammonia arrive as mmol/L; the model says mM: same numbers
    assert s.loc[s.analyte == "glutamine", "value"].between(0.0, 15.0).all()
    assert s["value"].notna().all()  # censored '<0.5' ammonia results are not fitted as numbers


def test_as_of_hides_results_reported_later(pipeline_run, truth):
    data, _ = pipeline_run
    lake = Lake(data / "lake")
    bid = truth["batches"][0]["batch_id"]
    (full,) = load_batches(lake, SPEC, [bid])
    cut = full.samples["reported_ts"].sort_values().iloc[len(full.samples) // 2]
    (early,) = load_batches(lake, SPEC, [bid], as_of=cut)
    assert 0 < len(early.samples) < len(full.samples)
    assert (early.samples["reported_ts"] <= cut).all()
    assert early.inputs.feeds[0].times_h[-1] <= (cut - early.inoculation_ts).total_seconds() / 3600


def test_fingerprint_is_of_the_exact_data(loaded):
    batches, _ = loaded
    frame = training_frame(list(batches.values()))
    assert fingerprint(frame) == fingerprint(frame.copy())
    changed = frame.copy()
    changed.loc[0, "value"] *= 1 + 1e-12
    assert fingerprint(changed) != fingerprint(frame)


def test_unknown_batches_are_refused(pipeline_run):
    data, _ = pipeline_run
    with pytest.raises(KeyError, match="NOPE"):
        load_batches(Lake(data / "lake"), SPEC, ["NOPE"])
