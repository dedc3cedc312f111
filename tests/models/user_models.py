"""A site's own model, outside the package: what a user writes and names in sources.yaml by its
import path (`user_models:LogisticProduct`), with no change to batchtwin's code.

Logistic growth of biomass towards a carrying capacity, a product made at a constant specific
rate, and dilution by the continuous feed (whatever it carries: the model has no substrate).

Under pytest this directory is on sys.path (it holds a conftest.py and the repository's tests
are not a package), so the module imports as `user_models`; a process pool the fitter starts
inherits that path.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from models.base import FeedNow, Model, Observable, Parameter, State

IMPORT_PATH = "user_models:LogisticProduct"


class LogisticProduct(Model):
    name = "logistic_product"
    states = (
        State("X", "g/L", "biomass", floor=0.01),
        State("P", "g/L", "product"),
        State("V", "L", "broth volume"),
    )
    parameters = (
        Parameter("mu_max", "1/h", 0.1, (0.005, 2.0), description="initial specific growth rate"),
        Parameter("X_max", "g/L", 40.0, (1.0, 500.0), description="carrying capacity"),
        Parameter("q_P", "g/(g*h)", 0.005, (1e-5, 0.5), description="specific productivity"),
    )
    observables = (
        Observable("cells", "g/L", "biomass dry weight"),
        Observable("titer", "g/L", "product concentration"),
    )
    fit_initial = ("X",)

    def rhs(self, t: float, y: np.ndarray, p: Mapping[str, float], feed: FeedNow) -> np.ndarray:
        x, prod, vol = y
        dil = feed.rate_l_h / vol
        return np.array(
            [
                p["mu_max"] * x * (1.0 - x / p["X_max"]) - dil * x,
                p["q_P"] * x - dil * prod,
                feed.rate_l_h * np.ones_like(vol),
            ]
        )

    def observe(self, y: np.ndarray) -> dict[str, np.ndarray]:
        x, prod, _ = y
        return {"cells": x, "titer": prod}

    def initial_state(
        self, first: Mapping[str, float], volume_l: float, given: Mapping[str, float]
    ) -> dict[str, float]:
        if "cells" not in first and "X" not in given:
            raise ValueError("no first-sample cells for the initial state")
        y = {"X": first.get("cells", 0.0), "P": first.get("titer", 0.0), "V": volume_l}
        return {**y, **given}
