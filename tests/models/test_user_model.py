"""A site's own model, named in sources.yaml by its import path, runs through the whole pipeline
with no change to batchtwin's code: it is fitted beside the bundled model, competes for the
product's champion, is recorded reproducibly and can forecast. In the same run a broken
catalog entry and a product without any entry are rows of `model_fit`'s metadata, the run green.

One pipeline run on a small Werk Süd (5 batches at 600 s scans: 3 completed, 2 running), whose
catalog gives PEN-G three entries: the bundled monod_fedbatch as generated, the user's model
(tests/models/user_models.py, importable as `user_models` under pytest) and an entry mapping an
observable monod_fedbatch lacks. The last running batch is relabelled as product PEN-V, which
has no entry.
"""

import json
import re

import numpy as np
import pytest
import yaml
from user_models import IMPORT_PATH, LogisticProduct

from demo.penicillin import PRODUCT, PenicillinSize, generate
from lake.layout import Lake
from lake.query import query
from models.base import Inputs, simulate
from models.catalog import CatalogError, parse
from models.forecast import forecast_batch
from models.registry import Registry
from pipelines.runner import materialize_all

pytestmark = pytest.mark.slow  # runs the pipeline or a fit: scheduled first

SIZE = PenicillinSize(batches=5, seconds_per_sample=600.0)
OTHER = "PEN-V"  # a product the catalog has no entry for
USER_ENTRY = {
    "model": IMPORT_PATH,
    "clock": "BATCH",
    "observables": {  # the model's own names, mapped to the site's lab analytes
        "cells": {"analyte": "biomass", "cv": 0.06, "floor": 0.1},
        "titer": {"analyte": "penicillin", "cv": 0.04, "floor": 0.01},
    },
    "feeds": {"sugar_feed_rate": {}, "oil_feed_rate": {}},  # they dilute; no substrate here
    "draw_off_kinds": ["draw_off"],
    "volume": [{"parameter": "volume"}],
}
BROKEN_ENTRY = {
    "model": "monod_fedbatch",
    "observables": {"viscosity": {"analyte": "viscosity", "cv": 0.08, "floor": 1.0}},
}
# valid, but no batch can start: Werk Süd's MES records no charge, so the fit fails
FAILING_ENTRY = {**USER_ENTRY, "volume": [{"materials": ["charge"]}]}


def _catalog_error(entry: dict, where: str) -> str:
    with pytest.raises(CatalogError) as err:
        parse(PRODUCT, entry, where=where)
    return str(err.value)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(data dir, truth, pipeline run, lake) of the edited site, run once."""
    root = tmp_path_factory.mktemp("pen_user_model")
    truth = generate(root, SIZE)
    landing = root / "landing"
    path = landing / "sources.yaml"
    header, _, body = path.read_text(encoding="utf-8").partition("\n")
    doc = yaml.safe_load(body)
    (bundled,) = doc["models"][PRODUCT]  # as generated
    doc["models"][PRODUCT] = [bundled, USER_ENTRY, BROKEN_ENTRY, FAILING_ENTRY]
    path.write_text(header + "\n" + yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    last = truth["batches"][-1]
    assert last["status"] == "running"
    mes = landing / "mes" / f"PEN_{last['batch_id']}.xml"
    xml = mes.read_text(encoding="utf-8")
    assert xml.count(f"<ProductID>{PRODUCT}</ProductID>") == 1
    mes.write_text(_relabel(xml), encoding="utf-8")
    run = materialize_all(root)
    return root, truth, run, Lake(root / "lake")


def _relabel(xml: str) -> str:
    return xml.replace(f"<ProductID>{PRODUCT}</ProductID>", f"<ProductID>{OTHER}</ProductID>")


def _materializations(run, node: str) -> list:
    return [
        m
        for r in run.results
        if r.job_def.has_node_named(node)
        for m in r.asset_materializations_for_node(node)
    ]


def test_the_users_model_integrates_as_its_closed_form():
    """Without a feed, logistic growth has a closed form and P = q_P ∫X dt: the helper model is
    what the pipeline test takes it to be, and base.simulate runs a model from outside."""
    p = {"mu_max": 0.08, "X_max": 40.0, "q_P": 0.005}
    x0, t = 0.5, np.array([0.0, 24.0, 60.0, 120.0, 200.0])
    y = simulate(LogisticProduct(), p, [x0, 0.0, 37000.0], Inputs(), t)
    growth = np.exp(p["mu_max"] * t)
    x = p["X_max"] * x0 * growth / (p["X_max"] + x0 * (growth - 1.0))
    integral = p["X_max"] / p["mu_max"] * np.log(1.0 + x0 * (growth - 1.0) / p["X_max"])
    assert y[0] == pytest.approx(x, rel=1e-4)
    assert y[1] == pytest.approx(p["q_P"] * integral, rel=1e-4, abs=1e-8)
    assert y[2] == pytest.approx(np.full(t.size, 37000.0))


def test_the_users_entry_maps_its_observables_to_the_sites_analytes():
    spec = parse(PRODUCT, USER_ENTRY)
    assert isinstance(spec.model, LogisticProduct) and spec.name == "logistic_product"
    assert (spec.analyte("cells"), spec.analyte("titer")) == ("biomass", "penicillin")
    assert spec.fitted == ("mu_max", "X_max", "q_P") and spec.fixed == {}
    assert spec.feeds == {"sugar_feed_rate": {}, "oil_feed_rate": {}}


def test_the_users_model_is_fitted_beside_the_bundled_one(site):
    _, truth, run, lake = site
    assert run.success, run.failures()
    assert all(r.success for r in run.results)
    reg = Registry(lake)
    versions = reg.versions(PRODUCT)
    assert sorted(zip(versions["model"], versions["version"], strict=True)) == [
        ("logistic_product", 1),
        ("monod_fedbatch", 1),
    ]
    user = reg.version(PRODUCT, "logistic_product", 1)
    completed = [b["batch_id"] for b in truth["batches"] if b["status"] == "complete"]
    assert json.loads(user["training_batches"]) == completed and len(completed) == 3
    # the version records the entry by its import path: a refit (or a forecast) finds the model
    recorded = json.loads(json.loads(user["settings"])["catalog"])
    assert recorded["model"] == IMPORT_PATH == "user_models:LogisticProduct"
    params = reg.parameters(PRODUCT, "logistic_product", 1).set_index("name")
    assert set(params.index) == {"mu_max", "X_max", "q_P"} and not params["fixed"].any()
    # late in a batch growth has stopped and the true product rate is beta: a titer fitted to
    # the wrong analyte (or a model not run at all) would not come near it
    beta = truth["true_parameters"]["beta"]["value"]
    assert params.loc["q_P", "value"] == pytest.approx(beta, rel=0.1)
    predictions = reg.predictions(PRODUCT, "logistic_product", 1)
    assert set(predictions["analyte"]) == {"biomass", "penicillin"}
    assert set(predictions["batch_id"]) == set(completed)
    assert np.isfinite(predictions["predicted"]).all()
    # recorded reproducibly: the refit from the registry alone gives the same parameters
    again = reg.refit(PRODUCT, "logistic_product", 1, check_data=False)
    assert again.params == pytest.approx(params["value"].to_dict(), rel=1e-9)


def test_a_recorded_version_refits_with_its_data_check(site):
    _, _, _, lake = site
    reg = Registry(lake)
    params = reg.parameters(PRODUCT, "logistic_product", 1).set_index("name")["value"]
    again = reg.refit(PRODUCT, "logistic_product", 1)
    assert again.params == pytest.approx(params.to_dict(), rel=1e-9)


def test_one_champion_of_the_product_with_its_reason(site):
    _, _, _, lake = site
    reg = Registry(lake)
    versions = reg.versions(PRODUCT).set_index("model")
    champions = versions[versions["status"] == "champion"]
    assert len(champions) == 1
    champion = reg.champion(PRODUCT)
    assert champion is not None and champion["model"] == champions.index[0]
    # the data were simulated with monod_fedbatch: the logistic model, which has no
    # substrate, predicts held-out batches worse and is rejected against it
    assert champion["model"] == "monod_fedbatch"
    assert champion["reason"] == "first version with every fitted parameter inside its bounds"
    user = versions.loc["logistic_product"]
    assert user["validation_error"] > 1.05 * champion["validation_error"]
    assert user["status"] == "rejected"
    assert re.fullmatch(
        r"validation error [0-9.e+-]+ > champion monod_fedbatch v1 [0-9.e+-]+ x \(1 \+ 0\.05\)",
        user["reason"],
    ), user["reason"]


def test_forecasts_of_the_running_batch_come_from_the_champion(site):
    _, truth, run, lake = site
    champion = Registry(lake).champion(PRODUCT)
    assert champion is not None
    running = query(
        lake,
        "SELECT batch_id FROM batches WHERE status = 'running' AND product = ? ORDER BY 1",
        [PRODUCT],
    )["batch_id"].tolist()
    assert running == [truth["batches"][-2]["batch_id"]]  # the last one is PEN-V's now
    fc = query(
        lake,
        "SELECT product, model, version, batch_id, analyte, kind, t_batch_h, p10, p50, p90 "
        "FROM forecasts",
    )
    assert set(fc["batch_id"]) == set(running)
    assert set(zip(fc["product"], fc["model"], fc["version"], strict=True)) == {
        (PRODUCT, champion["model"], champion["version"])
    }
    assert set(fc["analyte"]) == {"biomass", "substrate", "penicillin"}
    assert (fc["p10"] <= fc["p50"] + 1e-12).all() and (fc["p50"] <= fc["p90"] + 1e-12).all()
    final = fc[(fc["kind"] == "at_harvest") & (fc["analyte"] == "penicillin")]
    assert len(final) == 1
    # the champion is the true model: the median titer at harvest is the batch's true titer
    batch = next(b for b in truth["batches"] if b["batch_id"] == running[0])
    assert final["p50"].iloc[0] == pytest.approx(batch["final_titer_g_l"], rel=0.1)
    (meta,) = _materializations(run, "forecasts")
    assert meta.metadata["batches"].value == 1


def test_the_users_model_forecasts_by_its_import_path(site):
    _, truth, _, lake = site
    batch_id = truth["batches"][-2]["batch_id"]
    fc = forecast_batch(lake, batch_id, model="logistic_product", version=1, n_draws=20)
    assert (fc.model, fc.version, fc.product) == ("logistic_product", 1, PRODUCT)
    assert fc.units == {"biomass": "g/L", "penicillin": "g/L"}
    assert set(fc.bands["analyte"]) == {"biomass", "penicillin"}
    p10, p50, p90 = fc.final("penicillin")
    assert p10 <= p50 <= p90
    assert fc.harvest_h > fc.now_h > 0
    # titer only grows in this model between the last sample and harvest (q_P X > dilution)
    last = fc.samples[fc.samples["analyte"] == "penicillin"]["value"].iloc[-1]
    assert p50 > last


def test_a_broken_entry_and_a_product_without_one_leave_the_run_green(site):
    _, truth, run, lake = site
    assert run.success, run.failures()
    (fit,) = _materializations(run, "model_fit")
    reason = fit.metadata["reason"].value
    broken = _catalog_error(BROKEN_ENTRY, where=f"models.{PRODUCT}[2]")
    assert broken.startswith(
        "models.PEN-G[2].observables.viscosity: monod_fedbatch has no observable 'viscosity'"
    )
    assert broken in reason
    assert re.search(rf"(?:^|; ){OTHER}\s*: [^;]*no model", reason), reason
    # the good entries of the same product were fitted all the same
    assert f"{PRODUCT} monod_fedbatch: " in reason
    assert f"{PRODUCT} logistic_product: " in reason
    # a fit that fails is its own line, naming each batch and why
    failed = re.search(rf"{PRODUCT} logistic_product: the fit failed on 3 batches: ([^;]*)", reason)
    assert failed and "no initial volume: material events charge not found" in failed.group(1)
    assert fit.metadata["fitted"].value == 2
    # nothing was recorded for the broken entry or the product without one
    versions = Registry(lake).versions()
    assert set(versions["product"]) == {PRODUCT} and len(versions) == 2
    other = query(lake, "SELECT batch_id, status FROM batches WHERE product = ?", [OTHER])
    assert other.values.tolist() == [[truth["batches"][-1]["batch_id"], "running"]]
    fc = query(lake, "SELECT DISTINCT batch_id FROM forecasts")
    assert truth["batches"][-1]["batch_id"] not in set(fc["batch_id"])
