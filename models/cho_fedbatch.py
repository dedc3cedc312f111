"""Fed-batch CHO kinetics in the structure of Xing et al. (2010).

Monod growth on glucose and glutamine with lactate and ammonia inhibition, death driven by
lactate and ammonia, Luedeking–Piret product formation, and dilution by a continuous feed
plus bolus additions. Cell densities are carried in 1e6 cells/mL (= 1e9 cells/L) to keep
the states within a few orders of magnitude of each other for the stiff solver; yields and
specific rates keep their literature units (per cell) and are scaled inside `rhs`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from models.base import Model, Observable, Parameter, State

CELLS_PER_STATE_UNIT = 1e9  # 1e6 cells/mL expressed in cells/L
GLUCOSE_G_PER_MMOL = 0.18016
LACTATE_G_PER_MMOL = 0.09008


class ChoFedBatch(Model):
    name = "cho_fedbatch"
    states = (
        State("Xv", "1e6 cells/mL", "viable cell density"),
        State("Xd", "1e6 cells/mL", "dead cell density"),
        State("G", "mM", "glucose"),
        State("Q", "mM", "glutamine"),
        State("L", "mM", "lactate"),
        State("A", "mM", "ammonia"),
        State("P", "g/L", "product (titer)"),
        State("V", "L", "broth volume"),
    )
    # Bounds span what CHO literature reports; half-saturation and inhibition constants are
    # fixed by default because substrates sit far above them in a fed batch (not identifiable).
    parameters = (
        Parameter("mu_max", "1/h", 0.029, (0.005, 0.1), description="maximum specific growth rate"),
        Parameter(
            "mu_d_max", "1/h", 0.016, (0.001, 0.1), description="maximum specific death rate"
        ),
        Parameter(
            "K_G", "mM", 0.084, (0.01, 5.0), fixed=True, description="Monod constant, glucose"
        ),
        Parameter(
            "K_Q", "mM", 0.047, (0.01, 5.0), fixed=True, description="Monod constant, glutamine"
        ),
        Parameter(
            "KI_L", "mM", 43.0, (5.0, 500.0), fixed=True, description="lactate inhibition constant"
        ),
        Parameter(
            "KI_A", "mM", 6.51, (1.0, 100.0), fixed=True, description="ammonia inhibition constant"
        ),
        Parameter(
            "KD_L", "mM", 45.8, (5.0, 500.0), fixed=True, description="lactate death constant"
        ),
        Parameter(
            "KD_A", "mM", 6.51, (1.0, 100.0), fixed=True, description="ammonia death constant"
        ),
        Parameter("Y_XG", "cells/mmol", 1.69e8, (1e7, 1e10), description="cell yield on glucose"),
        Parameter("Y_XQ", "cells/mmol", 9.74e8, (1e8, 1e11), description="cell yield on glutamine"),
        Parameter("Y_LG", "mmol/mmol", 1.23, (0.05, 2.5), description="lactate yield on glucose"),
        Parameter("Y_AQ", "mmol/mmol", 0.67, (0.05, 1.5), description="ammonia yield on glutamine"),
        Parameter("m_G", "mmol/cell/h", 6.92e-11, (1e-13, 1e-9), description="glucose maintenance"),
        Parameter(
            "a1",
            "mmol/cell/h",
            3.2e-12,
            (1e-14, 1e-10),
            fixed=True,
            description="glutamine maintenance, max",
        ),
        Parameter(
            "a2",
            "mM",
            2.1,
            (0.1, 20.0),
            fixed=True,
            description="glutamine maintenance, half-saturation",
        ),
        Parameter(
            "r_A",
            "mmol/cell/h",
            6.3e-12,
            (1e-14, 1e-10),
            fixed=True,
            description="ammonia uptake rate",
        ),
        Parameter(
            "k_dQ",
            "1/h",
            7.2e-3,
            (1e-4, 5e-2),
            fixed=True,
            description="glutamine degradation rate",
        ),
        Parameter(
            "alpha", "g/cell", 1.0e-11, (1e-14, 1e-9), description="growth-associated productivity"
        ),
        Parameter(
            "beta",
            "g/cell/h",
            1.51e-12,
            (1e-14, 1e-10),
            description="non-growth-associated productivity",
        ),
        Parameter(
            "G_f",
            "mM",
            420.0,
            (0.0, 5000.0),
            fixed=True,
            description="glucose in the continuous feed",
        ),
        Parameter(
            "Q_f",
            "mM",
            110.0,
            (0.0, 500.0),
            fixed=True,
            description="glutamine in the continuous feed",
        ),
    )
    observables = (
        Observable("vcd", "1e6 cells/mL", "viable cell density"),
        Observable("viability", "%", "viable / total cells"),
        Observable("glucose", "g/L"),
        Observable("lactate", "g/L"),
        Observable("glutamine", "mM"),
        Observable("ammonia", "mM"),
        Observable("titer", "g/L"),
    )
    # G_f and Q_f describe the plant's feed medium (recipe data, not kinetics); the defaults
    # are the demo plant's medium, a site sets its own in the model config.
    feed_composition = {"G": "G_f", "Q": "Q_f"}

    def rhs(self, t: float, y: np.ndarray, p: Mapping[str, float], feed_l_h: float) -> np.ndarray:
        xv, xd, g, q, lac, amm, prod, vol = np.maximum(y, 0.0)
        cells = xv * CELLS_PER_STATE_UNIT  # cells/L
        mu = (
            p["mu_max"]
            * g
            / (p["K_G"] + g)
            * q
            / (p["K_Q"] + q)
            * p["KI_L"]
            / (p["KI_L"] + lac)
            * p["KI_A"]
            / (p["KI_A"] + amm)
        )
        mu_d = p["mu_d_max"] * lac / (p["KD_L"] + lac) * amm / (p["KD_A"] + amm)
        dil = feed_l_h / vol
        # maintenance stops when glucose runs out (otherwise glucose would go negative)
        glc_uptake = (mu / p["Y_XG"] + p["m_G"] * g / (p["K_G"] + g)) * cells
        m_q = p["a1"] * q / (p["a2"] + q)
        gln_uptake = (mu / p["Y_XQ"] + m_q) * cells
        return np.array(
            [
                (mu - mu_d) * xv - dil * xv,
                mu_d * xv - dil * xd,
                -glc_uptake + dil * (p["G_f"] - g),
                -gln_uptake - p["k_dQ"] * q + dil * (p["Q_f"] - q),
                p["Y_LG"] * glc_uptake - dil * lac,
                # ammonia uptake saturates at low ammonia so the state cannot go negative
                p["Y_AQ"] * mu / p["Y_XQ"] * cells
                - p["r_A"] * cells * amm / (1.0 + amm)
                + p["k_dQ"] * q
                - dil * amm,
                (p["alpha"] * mu + p["beta"]) * cells - dil * prod,
                # shaped like the states so an ensemble (states × members) stacks into one array
                feed_l_h * np.ones_like(vol),
            ]
        )

    def observe(self, y: np.ndarray) -> dict[str, np.ndarray]:
        xv, xd, g, q, lac, amm, prod, _ = y
        total = xv + xd
        return {
            "vcd": xv,
            "viability": np.where(total > 0, 100.0 * xv / np.where(total > 0, total, 1.0), np.nan),
            "glucose": g * GLUCOSE_G_PER_MMOL,
            "lactate": lac * LACTATE_G_PER_MMOL,
            "glutamine": q,
            "ammonia": amm,
            "titer": prod,
        }
