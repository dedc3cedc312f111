"""The ODE solver must not keep memory between calls: a fit integrates thousands of times.

scipy 1.17's LSODA kept ~38 kB per call at 400 states (a 13-batch fit kept 600 MB and a
calibration run was killed for memory); the lock pins a release without the leak.
"""

import gc

import numpy as np

from models.base import Bolus, Feed, Inputs, simulate_many
from models.cho_fedbatch import ChoFedBatch
from models.fit import FIT_SOLVER


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(f.read().split("VmRSS:")[1].split()[0]) / 1024


def test_repeated_ensemble_integrations_keep_no_memory():
    model = ChoFedBatch()
    members = 50  # 400 states in one solver call, as a fit's Jacobian ensemble
    y0 = np.repeat(
        np.array([0.4, 0.02, 33.0, 8.0, 0.5, 0.5, 0.0, 1400.0])[:, None], members, axis=1
    )
    params = {p.name: p.default for p in model.parameters}
    feed = Feed("feed_rate", (72.0,), (1.6,), {"G": 420.0, "Q": 110.0})
    inputs = Inputs((feed,), (Bolus(96.0, 8.0, "GLC-450", {"G": 2497.8}),))
    times = np.arange(0.0, 120.0, 24.0)

    def run(n: int) -> None:
        for _ in range(n):
            simulate_many(model, params, y0, inputs, times, FIT_SOLVER)
        gc.collect()

    # a leak grows every window alike; the allocator settling (after other tests ran in this
    # process) grows one window once, so the smallest of three windows is what the solver keeps
    run(30)
    grown = []
    for _ in range(3):
        before = _rss_mb()
        run(200)
        grown.append(_rss_mb() - before)
    assert min(grown) < 8, (
        f"{min(grown):.0f} MB kept per 200 ensemble integrations, every time "
        f"(scipy 1.17 kept ~15 MB): {grown}"
    )
