"""The registry records every fit and promotes by the rule: validation no worse (within
tolerance), parameters inside bounds."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from demo.plant import MODEL_CATALOG_ENTRY
from lake import catalog
from lake.layout import Lake
from lake.query import query
from models.catalog import parse
from models.data import load_batches
from models.fit import Fitter
from models.registry import Registry

SPEC = parse("MAB-A", MODEL_CATALOG_ENTRY)
MODEL = SPEC.model


@pytest.fixture(scope="module")
def small_fit(pipeline_run, truth):
    data, _ = pipeline_run
    ids = [b["batch_id"] for b in truth["batches"] if b["status"] == "complete"]
    return (
        Fitter(SPEC, n_starts=1, folds=2, seed=3)
        .fit(load_batches(Lake(data / "lake"), SPEC, ids))
        .result_
    )


def _with_validation(result, factor):
    m = dict(result.metrics)
    m["validation_rmse_weighted"] = result.metrics["validation_rmse_weighted"] * factor
    return replace(result, metrics=m)


def test_a_fit_records_what_reproduces_it(small_fit, tmp_path):
    lake = Lake(tmp_path / "lake")
    d = Registry(lake).register(small_fit, code_version="test")
    assert (d.version, d.status) == (1, "champion")
    v = Registry(lake).version("MAB-A", "cho_fedbatch", 1)
    assert json.loads(v["training_batches"]) == list(small_fit.training_batches)
    assert (
        v["data_fingerprint"] == small_fit.data_fingerprint
        and v["seed"] == 3
        and v["code_version"] == "test"
    )
    assert json.loads(v["solver"]) == {
        "method": "LSODA",
        "rtol": 1e-5,
        "atol": 1e-8,
        "max_step_h": 24.0,
    }
    settings = json.loads(v["settings"])
    assert settings["n_starts"] == 1 and settings["fitted"] == list(small_fit.fitted)
    assert settings["product"] == "MAB-A"
    assert json.loads(settings["catalog"]) == MODEL_CATALOG_ENTRY  # what mapped the lake
    assert json.loads(v["metrics"])["validation_rmse_weighted"] == pytest.approx(
        v["validation_error"]
    )
    # the four tables are catalog views
    catalog.rebuild(lake)
    assert query(lake, "SELECT count(*) AS n FROM model_versions")["n"].iloc[0] == 1
    p = query(lake, "SELECT * FROM model_parameters WHERE NOT fixed").set_index("name")
    assert (p["ci_low"] < p["value"]).all() and (p["value"] < p["ci_high"]).all()
    assert p.loc["mu_max", "value"] == pytest.approx(small_fit.params["mu_max"])
    assert (
        query(lake, "SELECT count(*) AS n FROM model_predictions")["n"].iloc[0] == small_fit.n_obs
    )
    assert query(lake, "SELECT count(*) AS n FROM forecasts")["n"].iloc[0] == 0


def test_a_worse_candidate_is_rejected_with_the_reason(small_fit, tmp_path):
    reg = Registry(Lake(tmp_path / "lake"), tolerance=0.05)
    reg.register(small_fit, code_version="test")
    worse = reg.register(_with_validation(small_fit, 1.5), code_version="test")
    assert worse.status == "rejected"
    assert "validation error" in worse.reason and "> champion cho_fedbatch v1" in worse.reason
    assert reg.champion("MAB-A")["version"] == 1
    assert reg.version("MAB-A", "cho_fedbatch", 2)["reason"] == worse.reason
    trail = pd.concat(
        pd.read_parquet(p) for p in (tmp_path / "lake" / "audit").glob("*.parquet")
    ).sort_values("ts")
    assert trail[["action", "object", "new_value"]].values.tolist() == [
        ["model_promoted", "MAB-A cho_fedbatch v1", "champion"],
        ["model_rejected", "MAB-A cho_fedbatch v2", "rejected"],
    ]
    assert trail["reason"].iloc[1] == worse.reason


def test_a_candidate_within_tolerance_is_promoted_and_the_old_champion_retired(small_fit, tmp_path):
    reg = Registry(Lake(tmp_path / "lake"), tolerance=0.05)
    reg.register(small_fit, code_version="test")
    slightly_worse = reg.register(_with_validation(small_fit, 1.04), code_version="test")
    assert slightly_worse.status == "champion"
    assert slightly_worse.retired == ("cho_fedbatch", 1)
    statuses = reg.versions("MAB-A", "cho_fedbatch").set_index("version")["status"].to_dict()
    assert statuses == {1: "retired", 2: "champion"}
    assert "retired: cho_fedbatch v2 promoted" in reg.version("MAB-A", "cho_fedbatch", 1)["reason"]


def test_a_candidate_at_a_bound_is_rejected_even_if_better(small_fit, tmp_path):
    reg = Registry(Lake(tmp_path / "lake"))
    reg.register(small_fit, code_version="test")
    lo, _ = MODEL.parameter("mu_d_max").bounds
    at_bound = replace(
        _with_validation(small_fit, 0.5), params={**small_fit.params, "mu_d_max": lo}
    )
    d = reg.register(at_bound, code_version="test")
    assert d.status == "rejected" and "mu_d_max" in d.reason and "bound" in d.reason
    assert reg.champion("MAB-A")["version"] == 1


def test_the_fit_reports_correlations_and_fold_validation(small_fit):
    corr = small_fit.corr
    assert list(corr.index) == list(small_fit.fitted)
    np.testing.assert_allclose(np.diag(corr), 1.0)
    assert (corr.abs().to_numpy() <= 1 + 1e-9).all()
    assert small_fit.metrics["folds"] == 2 and small_fit.metrics["validation_rmse_weighted"] > 0
    # the held-out batches start from their measured state, so they fit worse than the training set
    assert small_fit.metrics["validation_rmse_weighted"] > small_fit.metrics["rmse_weighted"]
