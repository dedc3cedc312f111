"""The simulated plant's process: schedule, recipe phases, kinetics and sensor signals.

Everything here is deterministic given the seed. `plan_batches` lays batches on the
bioreactors, `run_batch` integrates the CHO model under the recipe (continuous feed plus
glucose boluses decided from the daily lab sample, as operators do), and `sensor_signals`
turns a unit's batches into the raw signals its instruments would send to the historian.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import numpy as np

from models.base import Bolus, Feed, Inputs, simulate
from models.cho_fedbatch import GLUCOSE_G_PER_MMOL, ChoFedBatch

MODEL = ChoFedBatch()

# The demo cell line: the population kinetics the fitter must recover. Constants that are
# not listed keep the model's literature defaults.
TRUE_PARAMETERS: dict[str, float] = {
    **ChoFedBatch.defaults(),
    "mu_max": 0.042,
    "mu_d_max": 0.013,
    "Y_XG": 2.5e8,
    "Y_XQ": 1.2e9,
    "Y_LG": 0.45,
    "Y_AQ": 0.67,
    "m_G": 2.5e-11,
    "alpha": 1.0e-11,
    "beta": 2.2e-12,
}

UNITS = ("BR-101", "BR-102", "BR-201")
PRODUCT = "MAB-A"
RECIPE = "CHO_FB_2000L"
RECIPE_VERSION = "3.2"
SITE = "BASEL"
SITE_TZ = "Europe/Zurich"
GLUCOSE_BOLUS_MATERIAL = "GLC-450"  # 450 g/L glucose solution
GLUCOSE_BOLUS_MM = 450.0 / GLUCOSE_G_PER_MMOL
FEED_MATERIAL = "FEED-A"
FEED_COMPOSITION = {"G": 420.0, "Q": 110.0}  # mM glucose and glutamine in FEED-A
SEED_MATERIAL = "SEED-CHO-K1"
BASE_MEDIUM = "MED-BASAL-7"
GLUCOSE_TRIGGER_G_L = 3.0
GLUCOSE_TARGET_G_L = 5.5
TURNAROUND_H = (34.0, 46.0)
# the first batch on every unit runs across the spring DST change (2026-03-29, Europe/Zurich)
FIRST_START = datetime(2026, 3, 16, 5, 0, tzinfo=UTC)

# ISA-88 phases of the production unit procedure, in recipe order.
PHASES = ("PREPARATION", "INOCULATION", "GROWTH", "FED_BATCH", "PRODUCTION", "HARVEST")
SETPOINTS = {  # per phase: temperature °C, pH, DO %, agitation rpm
    "PREPARATION": (36.8, 7.00, 40.0, 90.0),
    "INOCULATION": (36.8, 7.00, 40.0, 90.0),
    "GROWTH": (36.8, 7.00, 40.0, 100.0),
    "FED_BATCH": (36.8, 7.00, 40.0, 110.0),
    "PRODUCTION": (33.0, 6.95, 40.0, 110.0),
    "HARVEST": (15.0, 6.95, 40.0, 60.0),
}
IDLE_SETPOINTS = (22.0, 7.00, 0.0, 0.0)


@dataclass
class BatchPlan:
    batch_id: str
    unit: str
    seq: int
    start: datetime  # start of PREPARATION
    inoculation: datetime
    phase_bounds_h: dict[str, tuple[float, float]]  # hours from inoculation, half-open
    y0: list[float]
    feed_times_h: list[float]
    feed_rates_l_h: list[float]
    record_format: str  # "xml" or "csv"
    status: str = "complete"
    boluses: list[Bolus] = field(default_factory=list)

    @property
    def end(self) -> datetime:
        return self.inoculation + timedelta(hours=self.phase_bounds_h["HARVEST"][1])

    @property
    def harvest_h(self) -> float:
        return self.phase_bounds_h["HARVEST"][0]

    def phase_at(self, t_h: np.ndarray) -> np.ndarray:
        """Phase index (position in PHASES) of each time; -1 outside the batch."""
        out = np.full(t_h.shape, -1, dtype=np.int64)
        for i, name in enumerate(PHASES):
            a, b = self.phase_bounds_h[name]
            out[(t_h >= a) & (t_h < b)] = i
        return out

    def inputs(self) -> Inputs:
        feed = Feed(FEED_MATERIAL, self.feed_times_h, self.feed_rates_l_h, FEED_COMPOSITION)
        return Inputs((feed,), tuple(self.boluses))


def plan_batches(n_batches: int, rng: np.random.Generator) -> list[BatchPlan]:
    """Lay `n_batches` back to back on the bioreactors, staggered so units overlap."""
    plans: list[BatchPlan] = []
    next_free = {u: FIRST_START + timedelta(days=5.3 * i) for i, u in enumerate(UNITS)}
    for seq in range(n_batches):
        unit = min(UNITS, key=lambda u: (next_free[u], u))
        start = next_free[unit]
        # the MES records whole seconds, so every planned time is a whole second
        prep_h = _seconds(rng.uniform(6.0, 9.0))
        inoc = start + timedelta(hours=prep_h)
        feed_start = _seconds(rng.uniform(68.0, 76.0))
        shift = _seconds(rng.uniform(140.0, 148.0))
        harvest = _seconds(rng.uniform(324.0, 336.0))
        bounds = {
            "PREPARATION": (-prep_h, 0.0),
            "INOCULATION": (0.0, 0.5),
            "GROWTH": (0.5, feed_start),
            "FED_BATCH": (feed_start, shift),
            "PRODUCTION": (shift, harvest),
            "HARVEST": (harvest, harvest + _seconds(rng.uniform(4.0, 6.0))),
        }
        base_rate = 1.6 * float(rng.normal(1.0, 0.06))
        feed_times = [feed_start + 24.0 * k for k in range(int((harvest - feed_start) // 24) + 1)]
        feed_rates = [round(base_rate * (1.0 + 0.02 * k), 3) for k in range(len(feed_times))]
        y0 = [
            float(rng.uniform(0.35, 0.5)),  # Xv, 1e6 cells/mL after inoculation
            float(rng.uniform(0.01, 0.03)),  # Xd
            float(rng.uniform(30.0, 36.0)),  # G mM
            float(rng.uniform(7.0, 9.0)),  # Q mM
            float(rng.uniform(0.0, 1.0)),  # L mM (carried over with the inoculum)
            float(rng.uniform(0.3, 0.8)),  # A mM
            0.0,  # P g/L
            float(rng.uniform(1380.0, 1420.0)),  # V L
        ]
        plans.append(
            BatchPlan(
                batch_id=f"B26-{seq + 1:03d}",
                unit=unit,
                seq=seq,
                start=start,
                inoculation=inoc,
                phase_bounds_h=bounds,
                y0=y0,
                feed_times_h=feed_times,
                feed_rates_l_h=feed_rates,
                record_format="csv" if unit == "BR-201" else "xml",
            )
        )
        end = inoc + timedelta(hours=bounds["HARVEST"][1])
        next_free[unit] = end + timedelta(hours=_seconds(rng.uniform(*TURNAROUND_H)))
    return plans


def _seconds(hours: float) -> float:
    return round(float(hours) * 3600.0) / 3600.0


@dataclass
class BatchRun:
    """A simulated batch: its lab sample times and the true states on a fine grid."""

    plan: BatchPlan
    grid_h: np.ndarray
    states: np.ndarray  # n_states × len(grid_h)
    sample_times_h: list[float]


def sample_times(plan: BatchPlan, rng: np.random.Generator) -> list[float]:
    """Lab sample times (h from inoculation): one right after inoculation, the daily
    in-process sample at the morning round (±0.4 h), and one just before harvest."""
    times = [0.6]
    day = 1
    while 24.0 * day < plan.harvest_h:
        times.append(24.0 * day + float(rng.uniform(-0.4, 0.4)))
        day += 1
    times.append(plan.harvest_h - 0.25)
    return times


def run_batch(plan: BatchPlan, rng: np.random.Generator, assay_noise) -> BatchRun:
    """Simulate the batch to harvest, adding a glucose bolus whenever the lab glucose is low.

    The bolus decision uses the *measured* glucose (with assay noise), as on the plant floor;
    the bolus itself then lands in the MES record as a material addition.
    """
    grid = np.arange(0.0, plan.harvest_h + 1e-9, 0.25)
    samples = sample_times(plan, rng)
    states: np.ndarray | None = simulate(MODEL, TRUE_PARAMETERS, plan.y0, plan.inputs(), grid)
    for ts in samples[1:-1]:
        y = simulate(MODEL, TRUE_PARAMETERS, plan.y0, plan.inputs(), [0.0, ts])[:, -1]
        measured_glc = float(MODEL.observe(y[:, None])["glucose"][0]) * assay_noise("glucose")
        if measured_glc < GLUCOSE_TRIGGER_G_L:
            volume = y[7] * (GLUCOSE_TARGET_G_L - measured_glc) / (450.0 - GLUCOSE_TARGET_G_L)
            plan.boluses.append(
                Bolus(
                    round(ts + 1.0, 4),
                    round(volume, 1),
                    GLUCOSE_BOLUS_MATERIAL,
                    {"G": GLUCOSE_BOLUS_MM},
                )
            )
            states = None  # the bolus changes the trajectory: simulate it again at the end
    if states is None:
        states = simulate(MODEL, TRUE_PARAMETERS, plan.y0, plan.inputs(), grid)
    return BatchRun(plan, grid, states, samples)


# ---------------------------------------------------------------- sensor signals


@dataclass(frozen=True)
class TagSpec:
    suffix: str
    parameter: str
    uom: str
    role: str
    interpolation: str
    low: float | None
    high: float | None
    noise: float  # instrument noise, engineering units
    dev: float  # archive compression deviation
    resolution: int  # decimals written by the historian
    max_gap_s: int
    description: str


TAG_SPECS = (
    TagSpec(
        "TT01.PV",
        "temperature",
        "degC",
        "pv",
        "linear",
        35.5,
        37.5,
        0.03,
        0.08,
        2,
        900,
        "Broth temperature",
    ),
    TagSpec(
        "TT01.SP",
        "temperature_sp",
        "degC",
        "sp",
        "step",
        None,
        None,
        0.0,
        0.0,
        2,
        86400,
        "Temperature set-point",
    ),
    TagSpec("PH01.PV", "ph", "pH", "pv", "linear", 6.85, 7.15, 0.006, 0.015, 3, 900, "Broth pH"),
    TagSpec("PH01.SP", "ph_sp", "pH", "sp", "step", None, None, 0.0, 0.0, 3, 86400, "pH set-point"),
    TagSpec(
        "DO01.PV",
        "dissolved_oxygen",
        "%",
        "pv",
        "linear",
        30.0,
        60.0,
        0.6,
        1.5,
        1,
        900,
        "Dissolved oxygen, % air saturation",
    ),
    TagSpec(
        "DO01.SP",
        "dissolved_oxygen_sp",
        "%",
        "sp",
        "step",
        None,
        None,
        0.0,
        0.0,
        1,
        86400,
        "DO set-point",
    ),
    TagSpec(
        "AG01.PV",
        "agitation",
        "rpm",
        "pv",
        "linear",
        50.0,
        150.0,
        0.4,
        1.0,
        1,
        900,
        "Agitator speed",
    ),
    TagSpec(
        "FI_AIR.PV",
        "air_flow",
        "L/min",
        "pv",
        "linear",
        0.0,
        60.0,
        0.15,
        0.4,
        2,
        900,
        "Sparge air flow",
    ),
    TagSpec(
        "FI_O2.PV",
        "o2_flow",
        "L/min",
        "pv",
        "linear",
        0.0,
        40.0,
        0.05,
        0.15,
        2,
        900,
        "Sparge oxygen flow",
    ),
    # a set-point-driven pump: archived on change plus an 8 h heartbeat, so its allowed gap is a day
    TagSpec(
        "FEED01.PV",
        "feed_rate",
        "mL/min",
        "pv",
        "step",
        0.0,
        60.0,
        0.0,
        0.2,
        2,
        86400,
        "Feed pump flow",
    ),
    TagSpec(
        "WT01.PV",
        "weight",
        "kg",
        "pv",
        "linear",
        0.0,
        2200.0,
        0.25,
        0.8,
        1,
        900,
        "Vessel weight (broth)",
    ),
    TagSpec(
        "AI_CO2.PV", "offgas_co2", "%", "pv", "linear", 0.0, 10.0, 0.01, 0.03, 3, 900, "Off-gas CO2"
    ),
)


def tag_name(unit: str, spec: TagSpec) -> str:
    """Historian tag of `spec` on `unit`, the unit's dash dropped: e.g. BR101.TT01.PV."""
    return f"{unit.replace('-', '')}.{spec.suffix}"


def _lag(t_s: np.ndarray, target: np.ndarray, tau_s: float) -> np.ndarray:
    """First-order response of a controlled variable to its set-point (exact for steps)."""
    out = np.empty_like(target)
    out[0] = target[0]
    alpha = 1.0 - np.exp(-np.diff(t_s) / tau_s)
    # a Python loop here costs ~0.1 µs per sample; recurrences do not vectorize in numpy
    prev = out[0]
    tl = target.tolist()
    al = alpha.tolist()
    res = [prev]
    for i in range(1, len(tl)):
        prev = prev + al[i - 1] * (tl[i] - prev)
        res.append(prev)
    return np.asarray(res)


def stable_noise(
    key: tuple[int, ...], stream: int, t_s: np.ndarray, std: float, block_s: float = 86400.0
) -> np.ndarray:
    """Gaussian noise that depends only on (key, stream, time): a longer or later export of the same
    plant repeats the earlier values exactly, as a real historian re-exporting its archive would."""
    if not std:
        return np.zeros(t_s.size)
    out = np.empty(t_s.size)
    blocks = np.floor(t_s / block_s).astype(np.int64)
    for b in np.unique(blocks):
        idx = np.flatnonzero(blocks == b)
        offsets = np.round(t_s[idx] - b * block_s).astype(np.int64)
        draws = np.random.default_rng([*key, stream, int(b)]).normal(0.0, std, int(block_s) + 1)
        out[idx] = draws[np.clip(offsets, 0, int(block_s))]
    return out


def sensor_signals(
    runs: list[BatchRun], t_s: np.ndarray, epoch: datetime, noise_key: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """Raw (uncompressed) signals of one unit on the time grid `t_s` (seconds since `epoch`).

    Between batches the vessel is empty and idle; within a batch the controlled variables
    follow their phase set-points and the gas/agitation cascade follows the cell mass.
    """
    n = t_s.size
    sp = {k: np.full(n, v) for k, v in zip(("T", "pH", "DO", "AG"), IDLE_SETPOINTS, strict=True)}
    xv = np.zeros(n)
    vol = np.zeros(n)
    feed_ml_min = np.zeros(n)
    in_batch = np.zeros(n, dtype=bool)
    for run in runs:
        plan = run.plan
        t_h = (t_s - (plan.inoculation - epoch).total_seconds()) / 3600.0
        phase = plan.phase_at(t_h)
        active = phase >= 0
        in_batch |= active
        for i, name in enumerate(PHASES):
            m = phase == i
            for key, value in zip(("T", "pH", "DO", "AG"), SETPOINTS[name], strict=True):
                sp[key][m] = value
        culture = active & (t_h >= 0)
        tt = np.clip(t_h[culture], 0.0, run.grid_h[-1])
        xv[culture] = np.interp(tt, run.grid_h, run.states[0])
        vol[culture] = np.interp(tt, run.grid_h, run.states[7])
        vol[active & (t_h < 0)] = plan.y0[7] - 40.0  # medium charged, inoculum not yet added
        fm = culture & (t_h < plan.harvest_h)
        feed_ml_min[fm] = (
            _piecewise(t_h[fm], plan.feed_times_h, plan.feed_rates_l_h) * 1000.0 / 60.0
        )
    unit_key = sum(ord(c) for c in runs[0].plan.unit) if runs else 0
    noise = {
        s.suffix: stable_noise(noise_key, unit_key * 100 + i, t_s, s.noise)
        for i, s in enumerate(TAG_SPECS)
    }
    temp = _lag(t_s, sp["T"], 1800.0)
    cell_mass = xv * vol / 1400.0  # relative oxygen demand, 1e6 cells/mL at nominal volume
    o2 = np.where(in_batch, np.clip(0.9 * cell_mass - 1.0, 0.0, 38.0), 0.0)
    air = np.where(in_batch, 20.0, 0.0)
    do = np.where(in_batch & (vol > 0), sp["DO"] + 55.0 * np.exp(-cell_mass / 0.8), 0.0)
    agitation = np.where(in_batch, sp["AG"] + np.clip(2.0 * cell_mass, 0.0, 30.0), 0.0)
    ph_drift = 0.035 * np.sin(t_s / 5400.0) * in_batch
    co2 = np.where(in_batch, 0.05 + 0.22 * cell_mass / np.maximum(air + o2, 1.0) * 10.0, 0.04)
    return {
        "TT01.PV": temp + noise["TT01.PV"],
        "TT01.SP": sp["T"],
        "PH01.PV": np.where(in_batch, sp["pH"] + ph_drift, 7.2) + noise["PH01.PV"],
        "PH01.SP": sp["pH"],
        "DO01.PV": do + noise["DO01.PV"] * in_batch,
        "DO01.SP": sp["DO"],
        "AG01.PV": agitation + noise["AG01.PV"] * in_batch,
        "FI_AIR.PV": air + noise["FI_AIR.PV"] * in_batch,
        "FI_O2.PV": np.maximum(o2 + noise["FI_O2.PV"] * in_batch, 0.0),
        "FEED01.PV": feed_ml_min,
        "WT01.PV": np.maximum(vol * 1.02 + noise["WT01.PV"], 0.0),
        "AI_CO2.PV": co2 + noise["AI_CO2.PV"],
    }


def _piecewise(t_h: np.ndarray, change_h: list[float], values: list[float]) -> np.ndarray:
    idx = np.searchsorted(np.asarray(change_h), t_h, side="right") - 1
    return np.where(idx >= 0, np.asarray(values)[np.clip(idx, 0, None)], 0.0)
