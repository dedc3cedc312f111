"""The ODE solver must not keep memory between calls: a fit integrates thousands of times.

scipy 1.17's LSODA kept ~38 kB per call at 400 states (a 13-batch fit kept 600 MB and a
calibration run was killed for memory); the lock pins a release without the leak.
"""
import gc

import numpy as np

from models.base import Bolus, Inputs, simulate_many
from models.cho_fedbatch import ChoFedBatch
from models.fit import FIT_SOLVER


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


def test_repeated_ensemble_integrations_keep_no_memory():
    model = ChoFedBatch()
    members = 50  # 400 states in one solver call, as a fit's Jacobian ensemble
    y0 = np.repeat(np.array([0.4, 0.02, 33.0, 8.0, 0.5, 0.5, 0.0, 1400.0])[:, None], members, axis=1)
    params = {p.name: p.default for p in model.parameters}
    inputs = Inputs((72.0,), (1.6,), (Bolus(96.0, 8.0, "GLC-450", {"G": 2497.8}),))
    times = np.arange(0.0, 120.0, 24.0)

    def run(n: int) -> None:
        for _ in range(n):
            simulate_many(model, params, y0, inputs, times, FIT_SOLVER)
        gc.collect()

    run(30)  # allocator and import warm-up
    before = _rss_mb()
    run(400)
    grown = _rss_mb() - before
    assert grown < 15, f"{grown:.0f} MB kept after 400 ensemble integrations (scipy 1.17 kept ~30 MB)"
