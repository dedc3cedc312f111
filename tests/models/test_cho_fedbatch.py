"""The CHO model and the shared integrator: mass balances that can be checked by hand."""

import numpy as np
import pytest

from models.base import Bolus, Feed, Inputs, simulate
from models.cho_fedbatch import GLUCOSE_G_PER_MMOL, ChoFedBatch

MODEL = ChoFedBatch()
Y0 = [0.4, 0.02, 33.0, 8.0, 0.5, 0.5, 0.0, 1400.0]


def test_without_feed_the_volume_stays_and_cells_grow_while_glucose_falls():
    y = simulate(MODEL, MODEL.defaults(), Y0, Inputs(), [0.0, 24.0, 48.0])
    assert y[7] == pytest.approx([1400.0] * 3)
    assert y[0, 2] > y[0, 1] > y[0, 0]
    assert y[2, 2] < y[2, 1] < y[2, 0]


def test_a_continuous_feed_adds_exactly_rate_times_time():
    inputs = Inputs([Feed("feed", [10.0, 20.0], [2.0, 0.5], {"G": 420.0})])
    y = simulate(MODEL, MODEL.defaults(), Y0, inputs, [0.0, 10.0, 20.0, 30.0])
    assert y[7] == pytest.approx([1400.0, 1400.0, 1420.0, 1425.0], rel=1e-6)


def test_a_bolus_mixes_its_glucose_into_the_broth():
    params = {
        **MODEL.defaults(),
        "mu_max": 1e-9,
        "m_G": 1e-18,
        "mu_d_max": 1e-9,
        "k_dQ": 0.0,
        "a1": 0.0,
    }
    bolus = Bolus(5.0, 100.0, "GLC", {"G": 2500.0})
    y = simulate(MODEL, params, Y0, Inputs(boluses=[bolus]), [0.0, 5.0, 6.0])
    expected = (33.0 * 1400.0 + 2500.0 * 100.0) / 1500.0
    assert y[7, 1] == pytest.approx(1500.0)
    assert y[2, 1] == pytest.approx(expected, rel=1e-4)
    assert y[0, 1] == pytest.approx(0.4 * 1400.0 / 1500.0, rel=1e-4)


def test_observables_are_in_lab_units():
    y = np.array(Y0)[:, None]
    obs = MODEL.observe(y)
    assert obs["glucose"][0] == pytest.approx(33.0 * GLUCOSE_G_PER_MMOL)
    assert obs["viability"][0] == pytest.approx(100 * 0.4 / 0.42)
    assert {o.name for o in MODEL.observables} == set(obs)


def test_unsorted_times_are_refused():
    with pytest.raises(ValueError, match="sorted"):
        simulate(MODEL, MODEL.defaults(), Y0, Inputs(), [0.0, 5.0, 2.0])


def test_half_saturation_constants_are_fixed_by_default():
    fixed = {p.name for p in MODEL.parameters if p.fixed}
    assert {"K_G", "K_Q", "KI_L", "KI_A"} <= fixed
    assert all(p.bounds[0] <= p.default <= p.bounds[1] for p in MODEL.parameters)


def test_two_feeds_mix_their_compositions_by_rate():
    # glucose-free broth, no cells: the glucose balance is the feeds' mixing alone
    params = {**MODEL.defaults(), "mu_max": 1e-9, "m_G": 1e-18, "mu_d_max": 1e-9}
    y0 = [1e-9, 0.0, 0.0, 8.0, 0.0, 0.0, 0.0, 1000.0]
    feeds = [Feed("a", [0.0], [10.0], {"G": 1000.0}), Feed("b", [0.0], [30.0], {"Q": 100.0})]
    y = simulate(MODEL, params, y0, Inputs(feeds), [0.0, 10.0])
    assert y[7, 1] == pytest.approx(1400.0, rel=1e-6)
    assert y[2, 1] == pytest.approx(1000.0 * 100.0 / 1400.0, rel=1e-4)  # 100 L of 1000 mM


def test_a_draw_off_takes_volume_and_keeps_the_concentrations():
    params = {**MODEL.defaults(), "mu_max": 1e-9, "m_G": 1e-18, "mu_d_max": 1e-9, "k_dQ": 0.0}
    params["a1"] = 0.0
    y = simulate(MODEL, params, Y0, Inputs(boluses=[Bolus(5.0, -400.0, "BROTH")]), [0.0, 6.0])
    assert y[7, 1] == pytest.approx(1000.0)
    assert y[2, 1] == pytest.approx(33.0, rel=1e-4) and y[0, 1] == pytest.approx(0.4, rel=1e-4)


def test_the_initial_state_inverts_the_observables():
    first = {"vcd": 0.5, "viability": 95.0, "glucose": 6.0, "glutamine": 8.0}
    y = MODEL.initial_state(first, 1400.0, {})
    assert y["Xd"] == pytest.approx(0.5 * (100 / 95 - 1))
    assert y["G"] == pytest.approx(6.0 / GLUCOSE_G_PER_MMOL) and y["L"] == 0.0 and y["V"] == 1400
    assert MODEL.initial_state(first, 1400.0, {"L": 2.0})["L"] == 2.0  # the catalog's value
    with pytest.raises(ValueError, match="glutamine"):
        MODEL.initial_state({"vcd": 0.5, "glucose": 6.0}, 1400.0, {})
