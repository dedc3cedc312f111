"""A generic microbial fed batch: Monod growth on one limiting substrate, Luedeking–Piret product.

States in mass concentrations (biomass X, substrate S, product P, g/L) and the broth volume V
(L). Feeds carry substrate (their composition is the site's: models.catalog), boluses add
liquid, draw-offs take broth out. Maintenance is drawn from the substrate pool, so S can dip
slightly below zero in the hour between a spent batch sugar and the first feed; the substrate
observable reads that as none. The substrate may go unmeasured: it is then a latent state, its
initial value given by the catalog and its course set by the feeds.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from models.base import FeedNow, Model, Observable, Parameter, State


class MonodFedBatch(Model):
    name = "monod_fedbatch"
    states = (
        State("X", "g/L", "biomass (dry weight)", floor=0.01),
        State("S", "g/L", "limiting substrate", floor=0.01),
        State("P", "g/L", "product"),
        State("V", "L", "broth volume"),
    )
    # The half-saturation constant acts at substrate levels below a typical assay's detection
    # limit in a fed batch, and growth-associated productivity is small beside the
    # non-growth-associated term once growth slows: both fixed by default, probed by every fit.
    parameters = (
        Parameter("mu_max", "1/h", 0.1, (0.005, 2.0), description="maximum specific growth rate"),
        Parameter(
            "K_S", "g/L", 0.1, (0.001, 20.0), fixed=True, description="Monod constant, substrate"
        ),
        Parameter("Y_XS", "g/g", 0.5, (0.05, 1.5), description="biomass yield on substrate"),
        Parameter("m_S", "g/(g*h)", 0.02, (1e-4, 0.5), description="substrate maintenance"),
        Parameter(
            "alpha",
            "g/g",
            0.005,
            (1e-6, 1.0),
            fixed=True,
            description="growth-associated product yield",
        ),
        Parameter(
            "beta", "g/(g*h)", 0.005, (1e-6, 0.5), description="non-growth-associated productivity"
        ),
    )
    observables = (
        Observable("biomass", "g/L", "biomass dry weight"),
        Observable("substrate", "g/L", "limiting substrate"),
        Observable("product", "g/L", "product concentration"),
    )
    fit_initial = ("X", "S")

    def rhs(self, t: float, y: np.ndarray, p: Mapping[str, float], feed: FeedNow) -> np.ndarray:
        x, s, prod, vol = y
        s_pos = np.maximum(s, 0.0)
        mu = p["mu_max"] * s_pos / (p["K_S"] + s_pos)
        dil = feed.rate_l_h / vol
        return np.array(
            [
                mu * x - dil * x,
                -(mu / p["Y_XS"] + p["m_S"]) * x + dil * (feed.of("S") - s),
                (p["alpha"] * mu + p["beta"]) * x - dil * prod,
                # shaped like the states so an ensemble (states × members) stacks into one array
                feed.rate_l_h * np.ones_like(vol),
            ]
        )

    def observe(self, y: np.ndarray) -> dict[str, np.ndarray]:
        x, s, prod, _ = y
        return {"biomass": x, "substrate": np.maximum(s, 0.0), "product": prod}

    def initial_state(
        self, first: Mapping[str, float], volume_l: float, given: Mapping[str, float]
    ) -> dict[str, float]:
        """X from biomass, S from substrate (or the catalog's value when S is latent), P from
        the product (0 before it is measured)."""
        need = {"X": "biomass", "S": "substrate"}
        missing = [o for st, o in need.items() if o not in first and st not in given]
        if missing:
            raise ValueError(
                f"no first-sample {', '.join(missing)} for the initial state "
                "(a latent state takes its value from the catalog's `initial`)"
            )
        y = {
            "X": first.get("biomass", 0.0),
            "S": first.get("substrate", 0.0),
            "P": first.get("product", 0.0),
            "V": volume_l,
        }
        return {**y, **given}
