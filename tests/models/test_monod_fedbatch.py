"""The bundled microbial model: balances checked by hand, and parameter recovery on the second
demo site (Werk Süd's penicillin fed batch, simulated with this model), fitted through the
site's own catalog entry."""

import json

import numpy as np
import pytest

from demo.penicillin import PenicillinSize, generate
from lake.layout import Lake
from models.base import Bolus, Feed, Inputs, simulate
from models.catalog import parse
from models.data import load_batches, load_usable
from models.fit import PROFILE_MIN_RISE, Fitter
from models.monod_fedbatch import MonodFedBatch
from models.registry import Registry, completed_batches, fit_and_register
from pipelines.runner import materialize_all
from sources.site import load_site

pytestmark = pytest.mark.slow  # runs the pipeline or a fit: scheduled first

MODEL = MonodFedBatch()
P = {**MODEL.defaults(), "mu_max": 0.1, "K_S": 0.1, "Y_XS": 0.5, "m_S": 0.0}
Y0 = [1.0, 20.0, 0.0, 1000.0]


def test_without_maintenance_biomass_formed_is_yield_times_substrate_used():
    y = simulate(MODEL, P, Y0, Inputs(), [0.0, 10.0, 20.0])
    grown, used = y[0] - Y0[0], Y0[1] - y[1]
    np.testing.assert_allclose(grown, 0.5 * used, rtol=1e-5)
    assert y[0, 2] > y[0, 1] > y[0, 0] and y[3, 2] == pytest.approx(1000.0)


def test_a_substrate_feed_adds_its_mass_and_its_volume():
    # no cells: only mixing; 50 L/h of 400 g/L for 10 h into 1000 L of 20 g/L
    no_cells = [0.0, 20.0, 0.0, 1000.0]
    y = simulate(MODEL, P, no_cells, Inputs([Feed("sugar", [0.0], [50.0], {"S": 400.0})]), [10.0])
    assert y[3, 0] == pytest.approx(1500.0, rel=1e-6)
    assert y[1, 0] == pytest.approx((20.0 * 1000.0 + 400.0 * 500.0) / 1500.0, rel=1e-5)


def test_a_draw_off_lowers_the_volume_only():
    no_cells = [0.0, 20.0, 3.0, 1000.0]
    y = simulate(MODEL, P, no_cells, Inputs(boluses=[Bolus(1.0, -250.0, "BROTH")]), [2.0])
    assert y[:, 0] == pytest.approx([0.0, 20.0, 3.0, 750.0])


def test_a_latent_substrate_takes_the_catalogs_value():
    y = MODEL.initial_state({"biomass": 0.5}, 1000.0, {"S": 15.0})
    assert y == {"X": 0.5, "S": 15.0, "P": 0.0, "V": 1000.0}
    with pytest.raises(ValueError, match="substrate"):
        MODEL.initial_state({"biomass": 0.5}, 1000.0, {})


@pytest.fixture(scope="module")
def werk_sued_fit(tmp_path_factory):
    """Six completed batches of Werk Süd, ingested and curated by the pipeline, fitted through
    the site's catalog entry with alpha freed too and the likelihood profiled (no k-fold: the
    estimates, intervals and profiles are what is under test)."""
    data = tmp_path_factory.mktemp("werk_sued")
    truth = generate(data, PenicillinSize(batches=8, seconds_per_sample=600.0))
    assert materialize_all(data, models=False).success
    lake = Lake(data / "lake")
    (entry,) = load_site(data / "landing").models["PEN-G"]
    # alpha too: growth-associated productivity is small beside beta once growth slows
    spec = parse("PEN-G", {**entry, "fitted": [*entry["fitted"], "alpha"]})
    batches = load_batches(lake, spec, completed_batches(lake, "PEN-G"))
    # two worker processes: the fitter's process pool is exercised here (results do not depend on
    # it; the rest of the suite fits in process)
    fit = Fitter(spec, n_starts=2, folds=0, profile=True, workers=2).fit(batches).result_
    true = {k: v["value"] for k, v in truth["true_parameters"].items()}
    return fit, true, truth, batches, lake


SITE_FITTED = {"mu_max", "K_S", "Y_XS", "m_S", "beta"}  # Werk Süd's catalog entry


def test_werk_sued_batches_load_through_the_catalog(werk_sued_fit):
    _, _, truth, batches, _ = werk_sued_fit
    by_id = {b["batch_id"]: b for b in truth["batches"]}
    for b in batches:
        want = by_id[b.batch_id]
        # the clock is BATCH's start; the volume is the level transmitter's m^3 at t = 0
        y0 = dict(zip(MODEL.state_names(), b.y0, strict=True))
        assert y0["V"] == pytest.approx(want["initial_state"]["V"], rel=0.01)
        assert y0["X"] == pytest.approx(want["initial_state"]["X"], rel=0.25)
        sugar, oil = b.inputs.feeds
        assert (sugar.name, sugar.composition, oil.composition) == (
            "sugar_feed_rate",
            {"S": 500.0},
            {"S": 1500.0},
        )
        on = [t for t, r in zip(sugar.times_h, sugar.rates_l_h, strict=True) if r > 0]
        assert on[0] == pytest.approx(want["sugar_feed_l_h"][0][0], abs=0.2)
        draws = [(round(x.t_h, 2), -x.volume_l) for x in b.inputs.boluses]
        assert draws == [(round(t, 2), v) for t, v in want["draw_offs_l"]]


def test_identifiable_parameters_are_recovered_within_10_percent(werk_sued_fit):
    fit, true, _, _, _ = werk_sued_fit
    assert {n for n in fit.fitted if fit.identifiable[n]} == SITE_FITTED
    for name in SITE_FITTED:
        assert fit.params[name] == pytest.approx(true[name], rel=0.10), name
    assert 0.5 < fit.metrics["reduced_chi2"] < 2.0  # the assay CVs explain the scatter


def test_the_95_percent_intervals_hold_the_truth(werk_sued_fit):
    fit, true, _, _, _ = werk_sued_fit
    z = {n: np.log(fit.params[n] / true[n]) / fit.sd_log[n] for n in SITE_FITTED}
    # five intervals at 95 %: all five hold the truth in 77 % of plants, four or more in 98 %
    assert sum(abs(v) <= 1.96 for v in z.values()) >= 4, z
    assert json.loads(fit.settings.catalog)["model"] == "monod_fedbatch"


def test_the_likelihood_profile_separates_pinned_from_flat_parameters(werk_sued_fit):
    fit, _, _, _, _ = werk_sued_fit
    rise = fit.profile.set_index("name")
    # a quadratic likelihood rises by 1.96² = 3.84 at the ends of the 95 % interval
    pinned = rise.loc[sorted(SITE_FITTED)]
    assert pinned.to_numpy() == pytest.approx(3.84, rel=0.25), pinned
    assert min(rise.loc["alpha"]) < PROFILE_MIN_RISE  # flat on one side: not pinned down
    assert not fit.identifiable["alpha"] and fit.settings.profile


def test_batches_without_a_starting_point_are_named_and_not_fitted(werk_sued_fit):
    fit, _, _, batches, lake = werk_sued_fit
    # Werk Süd's MES records no charge: a volume rule that needs one has nothing to start from
    entry = {**json.loads(fit.settings.catalog), "volume": [{"materials": ["charge"]}]}
    spec = parse("PEN-G", entry)
    ids = [b.batch_id for b in batches]
    usable, skipped = load_usable(lake, spec, ids)
    assert usable == [] and list(skipped) == ids
    assert set(skipped.values()) == {"no initial volume: material events charge not found"}
    with pytest.raises(ValueError, match=f"{ids[0]}: no initial volume"):
        fit_and_register(lake, spec, ids)
    assert Registry(lake).versions().empty  # nothing was recorded
