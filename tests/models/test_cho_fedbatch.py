"""The CHO model and the shared integrator: mass balances that can be checked by hand."""

import numpy as np
import pytest

from models.base import Bolus, Inputs, simulate
from models.cho_fedbatch import GLUCOSE_G_PER_MMOL, ChoFedBatch

MODEL = ChoFedBatch()
Y0 = [0.4, 0.02, 33.0, 8.0, 0.5, 0.5, 0.0, 1400.0]


def test_without_feed_the_volume_stays_and_cells_grow_while_glucose_falls():
    y = simulate(MODEL, MODEL.defaults(), Y0, Inputs(), [0.0, 24.0, 48.0])
    assert y[7] == pytest.approx([1400.0] * 3)
    assert y[0, 2] > y[0, 1] > y[0, 0]
    assert y[2, 2] < y[2, 1] < y[2, 0]


def test_a_continuous_feed_adds_exactly_rate_times_time():
    inputs = Inputs(feed_times_h=[10.0, 20.0], feed_rates_l_h=[2.0, 0.5])
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
    assert {o.analyte for o in MODEL.observables} == set(obs)


def test_unsorted_times_are_refused():
    with pytest.raises(ValueError, match="sorted"):
        simulate(MODEL, MODEL.defaults(), Y0, Inputs(), [0.0, 5.0, 2.0])


def test_half_saturation_constants_are_fixed_by_default():
    fixed = {p.name for p in MODEL.parameters if p.fixed}
    assert {"K_G", "K_Q", "KI_L", "KI_A"} <= fixed
    assert all(p.bounds[0] <= p.default <= p.bounds[1] for p in MODEL.parameters)
