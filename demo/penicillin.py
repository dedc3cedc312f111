"""Werk Süd (PEN-SUED): the second demo site, a penicillin fed-batch plant in the US Midwest.

Three 50 m³ fermenters (F-301…F-303) make penicillin G (PEN-G) in 200–230 h fed-batch runs,
an IndPenSim-like process scaled down and simulated with a generic Monod model (`_rhs`). It
proves that onboarding a site is configuration, not code: every convention differs from the
first demo plant (`demo/plant.py`, CHO cells in Basel).

- historian: a PI "recorded values" export per fermenter (F-303's gzipped): long, `;`, decimal
  comma, German headers, month-first naive local time in America/Chicago (the US DST change of
  2026-03-08 falls inside the first batches), OPC quality numbers, digital states as values.
  Exception reporting (ExcDev, ExcMax 600 s) then swinging door (CompDev, CompMax 8 h): step
  tags keep one value every few hours. Temperature in K, dissolved oxygen in mg/L.
- tag dictionary: its own column names, latin-1, decimal comma, no max_gap_s column.
- MES: BatchML V0700, a file per batch, UTC times, pipe-separated paths, phases BATCH /
  FED_BATCH / HARVEST and no inoculation phase (BATCH start is t = 0); seed, precursor
  boluses and broth draw-offs as material actuals of WorkPerformance job responses.
- LIMS: German headers, `;`, decimal comma, `dd-Mon-yyyy HH:MM` local times, samples every
  12 h, viscosity in cP, substrate censored below 0.05 g/L, and a conflicting re-send.
- no SQL historian; `landing/sources.yaml` describes sources, units, analytes and limits.

`truth.json` holds the true parameters, each batch's phases, inputs and final state, every
injected fault, the compression settings with each tag's point counts, and the time-weighted
phase averages of the uncompressed signals (what a reader of the archive must reproduce).
Same seed, same bytes.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from string import Template
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.integrate import solve_ivp

from demo.compression import deadband, swinging_door
from demo.landing import DemoFiles, DemoSize
from models.base import FeedNow
from models.monod_fedbatch import MonodFedBatch
from schemas.units import conversion

SITE, SITE_NAME, SITE_TZ = "PEN-SUED", "Werk Süd", "America/Chicago"
PRODUCT, RECIPE, RECIPE_VERSION = "PEN-G", "PENG_FB_50M3", "7"
UNITS = ("F-301", "F-302", "F-303")
DEFAULT_SEED = 20260302
# F-301's and F-302's first batches run across the US spring DST change (2026-03-08 02:00 CST)
FIRST_START = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)
EPOCH = FIRST_START - timedelta(hours=12)  # the historian export starts here
DST = datetime(2026, 3, 8, 8, 0, tzinfo=UTC)
STREAMS = {"plan": 0, "sensors": 1, "lims": 2, "analyzer": 3}
NS = "http://www.mesa.org/xml/B2MML"  # BatchML V0700
TRUE_PARAMETERS = {  # name: (value, unit); the same every batch, only initial states vary
    "mu_max": (0.095, "1/h"),
    "K_S": (0.15, "g/L"),
    "Y_XS": (0.47, "g/g"),
    "m_S": (0.018, "g/(g*h)"),
    "alpha": (0.004, "g/g"),
    "beta": (0.005, "g/(g*h)"),
    "S_f": (500.0, "g/L"),
    "S_oil": (1500.0, "g/L"),  # sugar feed; oil as sugar equivalent
}
KIN = {k: v for k, (v, _) in TRUE_PARAMETERS.items()}  # the values, for the kinetics
MODEL = MonodFedBatch()  # the kinetics are the bundled model's: the fitter must recover KIN
STATE_UNITS = {"X": "g/L", "S": "g/L", "P": "g/L", "V": "L"}
SEED_L, PREHEAT_H, TEMP_TAU_S = 2500.0, 6.0, 1800.0
SUGAR_RECIPE = ((0.0, 40.0), (12.0, 55.0), (30.0, 65.0), (60.0, 75.0), (110.0, 70.0), (150.0, 65.0))
OIL_RECIPE = ((0.0, 4.0), (48.0, 6.0))  # both: (h after feed start, L/h)
PRECURSOR = ((0.5, 120.0), (72.0, 80.0))  # (h after feed start, kg phenylacetic acid)
DRAW_ABOVE_L, DRAW_TO_L = 43000.0, 39000.0  # checked daily from 48 h after feed start
# per phase: temperature set-point K, aeration m^3/min, head pressure bar(g)
SETPOINTS = {
    "BATCH": (298.15, 25.0, 0.5),
    "FED_BATCH": (297.15, 35.0, 0.8),
    "HARVEST": (283.15, 8.0, 0.2),
}
IDLE = (293.15, 0.0, 0.0)  # an empty vessel between batches
EXC_MAX_S, COMP_MAX_S = 600.0, 28800.0  # PI defaults: ExcMax 10 min, CompMax 8 h
ODE = {"method": "LSODA", "rtol": 1e-7, "atol": 1e-9}
# LIMS test: unit, assay CV, decimals, report delay (h, range)
ASSAYS = {
    "BIOMASS": ("g/L", 0.06, 1, (2.0, 3.0)),
    "PENICILLIN": ("g/L", 0.04, 2, (4.0, 6.0)),
    "VISCOSITY": ("cP", 0.08, 0, (0.5, 1.0)),
    "SUBSTRATE": ("g/L", 0.05, 2, (1.5, 2.5)),
}
SUBSTRATE_LOD = 0.05
# at-line analyzer: one row per sample, a column per analyte with its unit in the header
ANALYZER_FILE = "lims/analyzer/BioAn2_export.csv"
ANALYZER_ASSAYS = {"PAA (g/L)": ("paa", 0.03, 2), "NH4+ (mmol/L)": ("ammonium", 0.04, 1)}
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
HEADER = f"# {SITE_NAME} ({SITE}) penicillin demo site, written by demo/penicillin.py"


class Tag(NamedTuple):
    """One measurement of every fermenter, as the historian and its tag list know it."""

    code: str  # ISA loop code; {n} is the fermenter number
    parameter: str
    uom: str
    role: str  # as the site writes it (upper case); the reader lower-cases it
    interp: str
    noise: float  # instrument noise, engineering units
    decimals: int
    exc_dev: float  # PI ExcDev
    comp_dev: float  # PI CompDev, about the instrument's precision
    low: float | None  # instrument range
    high: float | None
    descriptor: str


TAGS = (
    Tag(
        "TI{n}1.PV",
        "temperature",
        "K",
        "PV",
        "LINEAR",
        0.02,
        2,
        0.05,
        0.1,
        263.15,
        373.15,
        "Temperatur Brühe",
    ),
    Tag(
        "TIC{n}1.SP",
        "temperature_sp",
        "K",
        "SP",
        "STEP",
        0,
        2,
        0.01,
        0.01,
        None,
        None,
        "Temperatur Sollwert",
    ),
    Tag("AI{n}2.PV", "ph", "pH", "PV", "LINEAR", 0.004, 3, 0.01, 0.02, 2.0, 12.0, "pH Brühe"),
    Tag(
        "AI{n}3.PV",
        "dissolved_oxygen",
        "mg/L",
        "PV",
        "LINEAR",
        0.03,
        2,
        0.05,
        0.1,
        0,
        25,
        "Gelöstsauerstoff",
    ),
    Tag("FIC{n}4.SP", "sugar_feed_rate", "L/h", "SP", "STEP", 0, 1, 0.5, 0.5, 0, 150, "Zuckerfeed"),
    Tag("FIC{n}5.SP", "oil_feed_rate", "L/h", "SP", "STEP", 0, 1, 0.2, 0.2, 0, 15, "Ölfeed"),
    Tag("FIC{n}6.SP", "aeration_rate", "m^3/min", "SP", "STEP", 0, 1, 0.5, 0.5, 0, 75, "Begasung"),
    Tag(
        "PIC{n}7.PV", "pressure", "bar", "PV", "STEP", 0.002, 2, 0.02, 0.02, -1.0, 2.5, "Kopfdruck"
    ),
    Tag(
        "JI{n}8.PV",
        "agitator_power",
        "kW",
        "PV",
        "LINEAR",
        0.4,
        1,
        1.0,
        2.0,
        0,
        110,
        "Rührerleistung",
    ),
    Tag("AI{n}9.PV", "offgas_co2", "%", "PV", "LINEAR", 0.01, 3, 0.02, 0.04, 0, 10, "Abgas CO2"),
    Tag("LI{n}0.PV", "volume", "m^3", "PV", "LINEAR", 0.03, 2, 0.1, 0.2, 0, 55, "Füllvolumen"),
)
BY_PARAMETER = {t.parameter: t for t in TAGS}
# the site's canonical unit of each parameter: temperatures are converted, the rest kept
SITE_UNITS = {t.parameter: ("degC" if t.uom == "K" else t.uom) for t in TAGS}


def tag_name(unit: str, tag: Tag) -> str:
    """PI point name of `tag` on fermenter `unit`, e.g. WS:TI3011.PV."""
    return "WS:" + tag.code.format(n=unit[2:])


@dataclass(frozen=True)
class PenicillinSize(DemoSize):
    """Werk Süd's defaults: 8 batches scanned every minute."""

    batches: int = 8
    seconds_per_sample: float = 60.0
    seed: int = DEFAULT_SEED


@dataclass
class Batch:
    """One batch's plan, inputs and simulated states (hours from the start of BATCH)."""

    batch_id: str
    unit: str
    seq: int
    start: datetime  # start of BATCH: t = 0
    y0: list[float]  # X, S, P, V
    harvest_h: float
    end_h: float
    feed_h: float = 0.0
    sugar: list = field(default_factory=list)  # (t_h, value) steps: L/h, L/h, m^3/min
    oil: list = field(default_factory=list)
    aeration: list = field(default_factory=list)
    draw_offs: list = field(default_factory=list)  # (t_h, L removed)
    grid_h: np.ndarray = field(default_factory=lambda: np.zeros(0))
    states: np.ndarray = field(default_factory=lambda: np.zeros((4, 0)))
    status: str = "complete"
    twa: dict | None = None  # phase -> parameter -> time-weighted average (complete batches)

    def bounds(self) -> dict[str, tuple[float, float]]:
        return {
            "BATCH": (0.0, self.feed_h),
            "FED_BATCH": (self.feed_h, self.harvest_h),
            "HARVEST": (self.harvest_h, self.end_h),
        }

    def at(self, h: float) -> datetime:
        return self.start + timedelta(hours=h)

    def s(self, h: float) -> float:
        """Seconds since EPOCH of batch hour `h`."""
        return (self.start - EPOCH).total_seconds() + h * 3600.0

    def state(self, h) -> np.ndarray:
        return np.array([np.interp(h, self.grid_h, row) for row in self.states])


def generate(
    root: Path,
    size: DemoSize = PenicillinSize(),
    progress: Callable[[str], None] = lambda _: None,
) -> dict:
    """Write `root/landing/…` (with sources.yaml) and `root/truth.json`; return the truth.

    Only this generator's files are touched (`demo.landing.DemoFiles`).
    """
    if size.batches < 4 or size.seconds_per_sample < 1.0:
        raise ValueError("Werk Süd needs at least 4 batches and seconds_per_sample >= 1")
    with DemoFiles(root, HEADER):
        return _generate(Path(root), size, progress)


def _generate(root: Path, size: DemoSize, progress: Callable[[str], None]) -> dict:
    landing = root / "landing"
    for sub in ("tags", "historian", "mes", "lims", "lims/analyzer"):
        (landing / sub).mkdir(parents=True, exist_ok=True)

    def write(rel: str, text: str, encoding: str = "utf-8") -> None:
        data = text.encode(encoding)
        if rel.endswith(".gz"):  # mtime 0 and no name in the header: the same bytes every run
            buf = io.BytesIO()
            with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as f:
                f.write(data)
            data = buf.getvalue()
        (landing / rel).write_bytes(data)

    batches = _plan(size.batches, _stream(size.seed, "plan"))
    as_of = batches[-1].at(100.0).replace(minute=0)  # the newest batch is 4 days in
    for b in batches:
        b.status = "complete" if b.at(b.end_h) <= as_of else "running"
    progress(f"simulated {len(batches)} batches")
    faults: list[dict] = []
    write("tags/PEN_Tagliste.csv", _tag_dictionary(), "latin-1")
    for b in batches:
        write(f"mes/PEN_{b.batch_id}.xml", _batch_xml(b, as_of))
    export, resend = _lims(batches, as_of, size.seed, faults)
    write("lims/PEN_LIMS_export.csv", export)
    write("lims/PEN_LIMS_resend.csv", resend)
    # Windows instrument software: UTF-16 with a byte-order mark
    write(ANALYZER_FILE, _analyzer(batches, as_of, size.seed, faults), "utf-16")
    progress("wrote the tag dictionary, MES records and LIMS results")
    t_s = np.unique(
        np.round(np.arange(0.0, (as_of - EPOCH).total_seconds() + 1e-6, size.seconds_per_sample))
    )
    tag_truth: dict[str, dict] = {}
    for i, unit in enumerate(UNITS):
        own = [b for b in batches if b.unit == unit]
        raw = _signals(own, t_s, size.seed, i)
        rel = f"historian/PEN_{unit.replace('-', '')}_recorded.csv" + (".gz" if i == 2 else "")
        arc = _faults(unit, own, _archive(unit, raw, t_s, tag_truth), raw, t_s, rel, faults)
        write(rel, _historian_csv(arc))
        _phase_twa(own, raw, t_s)
        progress(f"{unit}: {len(t_s):,} raw samples per tag, {len(arc):,} archived rows")
    write(
        "sources.yaml",
        SOURCES_YAML.substitute(header=HEADER, site=SITE, tz=SITE_TZ, max_gap=int(COMP_MAX_S)),
    )
    truth = _truth(batches, as_of, size, faults, tag_truth)
    (root / "truth.json").write_text(
        json.dumps(truth, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    return truth


def _stream(seed: int, purpose: str, *sub: int) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[purpose], *sub])


def _minutes(h: float) -> float:
    """Hours rounded to whole minutes: the MES and LIMS record minutes."""
    return round(float(h) * 60.0) / 60.0


def _steps(steps: list, h: np.ndarray) -> np.ndarray:
    """Value of a step profile at hours `h` (0 before its first step)."""
    # rounded alike, so a step at a whole minute takes effect at that minute, not one sample on
    idx = np.searchsorted(np.round([t for t, _ in steps], 9), np.round(h, 9), side="right") - 1
    return np.where(idx >= 0, np.array([v for _, v in steps])[np.clip(idx, 0, None)], 0.0)


def _z(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


# ------------------------------------------------------------------ kinetics


def _rhs(t, y, fs, fo):
    """The bundled `monod_fedbatch` model under both feeds: the soy-oil feed enters S as its
    sugar equivalent S_oil (one carbon pool) and adds its own volume."""
    total = fs + fo
    feed = (
        FeedNow(total, {"S": (fs * KIN["S_f"] + fo * KIN["S_oil"]) / total}) if total else FeedNow()
    )
    return MODEL.rhs(t, np.asarray(y, dtype=float), KIN, feed)


def _plan(n: int, rng: np.random.Generator) -> list[Batch]:
    """Lay `n` batches on the fermenters, started three days apart, and simulate each."""
    free = {u: FIRST_START + timedelta(hours=72.0 * i) for i, u in enumerate(UNITS)}
    out = []
    for seq in range(n):
        unit = min(UNITS, key=lambda u: (free[u], u))
        y0 = [
            float(rng.uniform(0.45, 0.6)),
            float(rng.uniform(14.0, 16.0)),
            0.0,
            float(rng.uniform(36000.0, 38000.0)),
        ]
        harvest = _minutes(rng.uniform(196.0, 224.0))
        b = Batch(
            f"PG26-{seq + 1:03d}",
            unit,
            seq,
            free[unit],
            y0,
            harvest,
            _minutes(harvest + rng.uniform(4.0, 6.0)),
        )
        _simulate(b)
        out.append(b)
        free[unit] = b.at(b.end_h + _minutes(rng.uniform(18.0, 30.0)))
    return out


class _SugarSpent:
    """`solve_ivp` event: the batch sugar falls through 0.5 g/L, which ends the integration."""

    terminal = True
    direction = -1

    def __call__(self, t: float, y: np.ndarray, *_: float) -> float:
        return y[1] - 0.5


def _simulate(b: Batch) -> None:
    """Integrate segment by segment between input changes; the feed start comes from the
    kinetics (an hour after the batch sugar is spent, when operators see the DO rise)."""
    sol = solve_ivp(_rhs, (0.0, 80.0), b.y0, args=(0.0, 0.0), events=_SugarSpent(), **ODE)
    b.feed_h = f = _minutes(sol.t_events[0][0] + 1.0)
    b.sugar = [(f + a, r) for a, r in SUGAR_RECIPE] + [(b.harvest_h, 0.0)]
    b.oil = [(f + a, r) for a, r in OIL_RECIPE] + [(b.harvest_h, 0.0)]
    b.aeration = [
        (0.0, SETPOINTS["BATCH"][1]),
        (f, SETPOINTS["FED_BATCH"][1]),
        (f + 60.0, 45.0),
        (b.harvest_h, SETPOINTS["HARVEST"][1]),
    ]
    checks = {f + 48.0 + 24.0 * k for k in range(8)}
    cuts = [c for c in sorted({0.0, *(t for t, _ in b.sugar + b.oil), *checks}) if c < b.harvest_h]
    grid = np.arange(0.0, b.harvest_h, 0.05)
    ts, ys, y = [], [], np.array(b.y0)
    for a, z in zip(cuts, [*cuts[1:], b.harvest_h], strict=True):
        if a in checks and y[3] > DRAW_ABOVE_L:  # broth drawn off before the vessel is too full
            b.draw_offs.append((a, round(float(y[3]) - DRAW_TO_L, -1)))
            y[3] -= b.draw_offs[-1][1]
        rates = (_steps(b.sugar, np.array([a]))[0], _steps(b.oil, np.array([a]))[0])
        sol = solve_ivp(
            _rhs, (a, z), y, t_eval=np.r_[a, grid[(grid > a) & (grid < z)], z], args=rates, **ODE
        )
        ts.append(sol.t)
        ys.append(sol.y)
        y = sol.y[:, -1].copy()
    # HARVEST: feeds off, broth cooled; the model holds the state until the vessel is empty
    b.grid_h = np.concatenate([*ts, [b.end_h]])
    b.states = np.concatenate([*ys, y[:, None]], axis=1)


# ------------------------------------------------------------------ historian


def _lag(t: np.ndarray, target: np.ndarray, tau: float) -> np.ndarray:
    """First-order response to a piecewise-constant target, exact segment by segment."""
    out = np.empty_like(target)
    edges = np.r_[0, np.flatnonzero(np.diff(target)) + 1, len(t)]
    y = target[0]
    for a, z in zip(edges[:-1], edges[1:], strict=True):
        out[a:z] = target[a] + (y - target[a]) * np.exp(-(t[a:z] - t[a]) / tau)
        if z < len(t):
            y = target[a] + (y - target[a]) * np.exp(-(t[z] - t[a]) / tau)
    return out


def _signals(own: list[Batch], t_s: np.ndarray, seed: int, unit_idx: int) -> dict[str, np.ndarray]:
    """Uncompressed signals of one fermenter by parameter, in tag units, rounded as sent."""
    n = len(t_s)
    temp_sp, air, bar = (np.full(n, v) for v in IDLE)
    x, s, v, sugar, oil = (np.zeros(n) for _ in range(5))
    ph = np.full(n, 7.0)  # idle: the probe sits in storage buffer
    run, harvest, pre = (np.zeros(n, dtype=bool) for _ in range(3))
    for b in own:
        h = np.round((t_s - b.s(0.0)) / 3600.0, 9)  # a phase starting at a minute starts there
        m = (h >= 0) & (h < round(b.end_h, 9))
        run |= m
        for phase, (a, z) in b.bounds().items():
            inside = (h >= round(a, 9)) & (h < round(z, 9))
            temp_sp[inside], bar[inside] = SETPOINTS[phase][0], SETPOINTS[phase][2]
        harvest |= m & (h >= round(b.harvest_h, 9))
        before = (h >= -PREHEAT_H) & (h < 0)  # medium charged and brought to temperature
        pre |= before
        temp_sp[before], v[before] = SETPOINTS["BATCH"][0], b.y0[3] - SEED_L
        air[m], sugar[m], oil[m] = (_steps(q, h[m]) for q in (b.aeration, b.sugar, b.oil))
        x[m], s[m], _, v[m] = b.state(h[m])
        cycle = 0.02 * np.sin(2 * np.pi * t_s[m] / 10800.0)  # the acid/base loop's limit cycle
        ph[m] = 6.5 + cycle + 0.05 * np.clip(h[m] - b.harvest_h, 0.0, None)
    mu = KIN["mu_max"] * np.maximum(s, 0) / (KIN["K_S"] + np.maximum(s, 0))
    q = (mu / KIN["Y_XS"] + KIN["m_S"]) * x * np.where(harvest, 0.2, 1.0)  # sugar uptake, g/L/h
    demand = q / (q + 0.35 * np.maximum(air, 1.0) / 35.0)  # share of the O2 transfer used
    cstar = 8.26 * (1.0 + bar / 1.013)  # saturation rises with head pressure
    # CO2: the sugar burnt (1/30 mol C per g) over the moles of air blown (22.4 L/mol), in %
    co2 = 100.0 * q * v / 30.0 / (np.maximum(air, 1e-9) * 60e3 / 22.4)
    power = np.where(run, 48.0 * np.sqrt(v / 40000.0) * (1.0 - air / 200.0), 0.0)
    clean = {
        "temperature": _lag(t_s, temp_sp, TEMP_TAU_S),
        "temperature_sp": temp_sp,
        "ph": ph,
        "dissolved_oxygen": np.where(run, cstar * (1.0 - 0.9 * demand), cstar),
        "sugar_feed_rate": sugar,
        "oil_feed_rate": oil,
        "aeration_rate": air,
        "pressure": bar,
        "agitator_power": np.where(harvest, 0.4, 1.0) * power + np.where(pre, 15.0, 0.0),
        "offgas_co2": 0.04 + np.where(air > 0, co2, 0.0),
        "volume": v / 1000.0,
    }
    out = {}
    for k, tag in enumerate(TAGS):
        noise = _stream(seed, "sensors", unit_idx, k).normal(0.0, tag.noise, n) if tag.noise else 0
        value = clean[tag.parameter] + noise
        if tag.parameter not in ("temperature", "temperature_sp", "ph", "pressure"):
            value = np.maximum(value, 0.0)
        out[tag.parameter] = np.round(value, tag.decimals) + 0.0  # + 0.0: no "-0,00"
    return out


def _archive(unit: str, raw: dict, t_s: np.ndarray, tag_truth: dict) -> pd.DataFrame:
    """Exception reporting, then swinging door: the points PI archives. Counts go to truth."""
    frames = []
    for tag in TAGS:
        v = raw[tag.parameter]
        exc = deadband(t_s, v, tag.exc_dev, EXC_MAX_S)
        kept = exc[swinging_door(t_s[exc], v[exc], tag.comp_dev, COMP_MAX_S)]
        name = tag_name(unit, tag)
        tag_truth[name] = {
            "unit_id": unit,
            "parameter": tag.parameter,
            "uom": tag.uom,
            "interpolation": tag.interp.lower(),
            "exc_dev": tag.exc_dev,
            "comp_dev": tag.comp_dev,
            "raw_points": int(len(t_s)),
            "exception_points": int(len(exc)),
            "archived_points": int(len(kept)),
            "max_archive_interval_s": float(np.diff(t_s[kept]).max()),
        }
        frames.append(
            pd.DataFrame(
                {
                    "tag": name,
                    "t": t_s[kept],
                    "value": v[kept],
                    "state": "",
                    "quality": 192,
                    "decimals": tag.decimals,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _faults(
    unit: str,
    own: list[Batch],
    arc: pd.DataFrame,
    raw: dict,
    t_s: np.ndarray,
    rel: str,
    faults: list[dict],
) -> pd.DataFrame:
    """Digital states and flagged values at recorded places of the fermenter's first batch."""
    b = own[0]

    def cut(tags, h0: float, h1: float, state: str | None, quality: int = 0, offset: float = 0.0):
        nonlocal arc
        i0, i1 = np.searchsorted(t_s, [b.s(h0), b.s(h1)])
        for tag in tags:
            name, v = tag_name(unit, tag), raw[tag.parameter]
            arc = arc[~((arc.tag == name) & (arc.t >= t_s[i0]) & (arc.t <= t_s[i1]))]
            if state is not None:  # the state, then the first good value when the signal returns
                rows = [(name, t_s[i0], np.nan, state, 0)]
            else:  # the interface flags every value it sends (a quality change is always archived)
                rows = [(name, t_s[j], v[j] + offset, "", quality) for j in range(i0, i1, 5)]
            rows.append((name, t_s[i1], v[i1], "", 192))
            new = pd.DataFrame(rows, columns=["tag", "t", "value", "state", "quality"])
            arc = pd.concat([arc, new.assign(decimals=tag.decimals)], ignore_index=True)
        names = [tag_name(unit, t) for t in tags]
        faults.append(
            {
                "fault": "digital_state"
                if state
                else "bad_quality"
                if quality == 0
                else "uncertain_quality",
                "file": rel,
                "batch_id": b.batch_id,
                **({"tag": names[0]} if len(names) == 1 else {"tags": names}),
                "start_ts": _z(EPOCH + timedelta(seconds=float(t_s[i0]))),
                "end_ts": _z(EPOCH + timedelta(seconds=float(t_s[i1]))),
                "detail": f"{state or f'quality {quality}'} for t_batch_h {h0}-{h1}",
            }
        )

    do, temp = BY_PARAMETER["dissolved_oxygen"], BY_PARAMETER["temperature"]
    if unit == "F-301":  # the DO transmitter lost its I/O card; the CO2 analyzer was calibrated
        cut([do], 70.0, 71.5, "I/O Timeout")
        cut([BY_PARAMETER["offgas_co2"]], 90.0, 96.0, "No Data")
    elif unit == "F-302":  # pH scanning switched off; a loose temperature wire read 5 K high
        cut([BY_PARAMETER["ph"]], 60.0, 64.0, "Scan Off")
        cut([temp], 80.0, 80.5, None, quality=0, offset=5.0)
    else:  # the interface node restarted: every tag shows Shutdown; later the DO probe drifted
        cut(TAGS, 50.0, 50.25, "Shutdown")
        cut([do], 80.0, 82.0, None, quality=64, offset=-0.4)
    for x in (x for x in own if x.start < DST < x.at(x.end_h)):
        faults.append(
            {
                "fault": "dst_change",
                "file": rel,
                "batch_id": x.batch_id,
                "detail": "local time jumps from 03/08/2026 01:59:59 to 03:00:00 (CST -> "
                f"CDT) at t_batch_h {(DST - x.start) / timedelta(hours=1):.2f}",
            }
        )
    return arc.sort_values(["tag", "t"], kind="stable").reset_index(drop=True)


def _historian_csv(arc: pd.DataFrame) -> str:
    """PI recorded values, tag by tag in time order, as the site's export tool writes them."""
    ts = pd.to_datetime(EPOCH.timestamp() + arc["t"].to_numpy(), unit="s", utc=True)
    stamps = ts.tz_convert(SITE_TZ).strftime("%m/%d/%Y %H:%M:%S")
    lines = ["Tagname;Zeitstempel;Wert;Qualitaet\n"]
    for r, stamp in zip(arc.itertuples(index=False), stamps, strict=True):
        value = r.state or f"{r.value:.{r.decimals}f}".replace(".", ",")
        lines.append(f"{r.tag};{stamp};{value};{r.quality}\n")
    return "".join(lines)


def _phase_twa(own: list[Batch], raw: dict, t_s: np.ndarray) -> None:
    """Time-weighted phase averages of the uncompressed signals, in the site's units."""
    for b in (b for b in own if b.status == "complete"):
        b.twa = {}
        for phase, (h0, h1) in b.bounds().items():
            m = (t_s >= b.s(h0)) & (t_s <= b.s(h1))
            t, b.twa[phase] = t_s[m], {}
            for tag in TAGS:
                scale, offset = conversion(tag.uom, SITE_UNITS[tag.parameter])
                v = raw[tag.parameter][m] * scale + offset
                area = (
                    np.trapezoid(v, t) if tag.interp == "LINEAR" else np.sum(v[:-1] * np.diff(t))
                )  # a step tag holds its value
                b.twa[phase][tag.parameter] = round(float(area / (t[-1] - t[0])), 6)


# ------------------------------------------------------------------ tag dictionary, MES, LIMS


def _tag_dictionary() -> str:
    def num(x):
        return "" if x is None else f"{x:g}".replace(".", ",")

    lines = ["Point;Equipment;Measurement;EngUnit;Type;Stepped;LoLimit;HiLimit;Descriptor\n"]
    lines += [
        f"{tag_name(u, t)};{u};{t.parameter};{t.uom};{t.role};{t.interp};{num(t.low)};"
        f"{num(t.high)};Fermenter {u} {t.descriptor}\n"
        for u in UNITS
        for t in TAGS
    ]
    return "".join(lines)


def _batch_xml(b: Batch, as_of: datetime) -> str:
    """BatchML V0700: batch list entries (batch → unit procedure → phases) and a production
    record whose job responses (one per phase) carry the material actuals."""
    from lxml import etree

    def E(parent, tag: str, text: str | None = None):
        el = etree.SubElement(parent, f"{{{NS}}}{tag}")
        el.text = text
        return el

    def entry(parent, ident, kind, status, start, end, extra=()):
        el = E(parent, "BatchListEntry")
        for k, v in (
            ("ID", ident),
            ("BatchListEntryType", kind),
            ("Status", status),
            *extra,
            ("ActualStartTime", _z(start)),
            ("ActualEndTime", end and _z(end)),
            ("ActualEquipmentID", b.unit),
        ):
            if v is not None:
                E(el, k, v)
        return el

    done = b.status == "complete"
    status, end = ("Complete", b.at(b.end_h)) if done else ("Running", None)
    root = etree.Element(f"{{{NS}}}BatchInformation", nsmap={None: NS})
    top = entry(
        E(root, "BatchList"),
        b.batch_id,
        "Batch",
        status,
        b.start,
        end,
        (
            ("RecipeID", RECIPE),
            ("RecipeVersion", RECIPE_VERSION),
            ("BatchID", b.batch_id),
            ("ProductID", PRODUCT),
        ),
    )
    up = entry(top, f"{b.batch_id}|FERMENTATION", "UnitProcedure", status, b.start, end)
    bpr = E(root, "BatchProductionRecord")
    for k, v in (
        ("ID", f"{b.batch_id}-BPR"),
        ("PublishedDate", _z(end + timedelta(hours=1) if end is not None else as_of)),
        ("BatchID", b.batch_id),
        ("RecordStatus", status),
        ("Version", "1"),
    ):
        E(bpr, k, v)
    resp = E(E(E(bpr, "WorkPerformances"), "WorkPerformance"), "WorkResponse")
    for phase, (h0, h1) in b.bounds().items():
        if b.at(h0) > as_of:
            break
        closed = b.at(h1) <= as_of
        entry(
            up,
            f"{b.batch_id}|FERMENTATION|{phase}",
            "Phase",
            "Complete" if closed else "Running",
            b.at(h0),
            b.at(h1) if closed else None,
        )
        job = E(resp, "JobResponse")
        E(job, "ID", f"{b.batch_id}|{phase}")
        for h, material, use, kind, qty, uom in _materials(b, phase):
            if b.at(h) > as_of or (kind == "feed_total" and not closed):
                continue
            ma = E(job, "MaterialActual")
            for k, v in (
                ("Description", kind),
                ("MaterialDefinitionID", material),
                ("MaterialLotID", f"{material}-{b.batch_id}"),
                ("MaterialUse", use),
            ):
                E(ma, k, v)
            quantity = E(ma, "Quantity")
            for k, v in (
                ("QuantityString", f"{qty:.1f}"),
                ("DataType", "double"),
                ("UnitOfMeasure", uom),
            ):
                E(quantity, k, v)
            prop = E(ma, "MaterialActualProperty")
            E(prop, "ID", "TimeStamp")
            value = E(prop, "Value")
            E(value, "ValueString", _z(b.at(h)))
            E(value, "DataType", "dateTime")
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True).decode()


def _materials(b: Batch, phase: str) -> list[tuple]:
    """(t_h, material, use, kind, quantity, uom) the MES records in `phase`."""
    if phase == "BATCH":
        return [(0.0, "SEED-PCH-WS2", "Consumed", "inoculum", SEED_L, "L")]
    if phase == "HARVEST":
        return [(b.end_h, "BROTH-PEN-G", "Produced", "harvest", b.states[3, -1], "L")]
    out = [(b.feed_h + h, "PAA-99", "Consumed", "precursor_bolus", kg, "kg") for h, kg in PRECURSOR]
    out += [(h, "BROTH-PEN-G", "Produced", "draw_off", litres, "L") for h, litres in b.draw_offs]
    for material, steps in (("SUGAR-500", b.sugar), ("SOY-OIL", b.oil)):
        # the last step switches the feed off, so the profile's pairs cover it all
        total = sum(r * (z - a) for (a, r), (z, _) in zip(steps, steps[1:], strict=False))
        out.append((b.harvest_h, material, "Consumed", "feed_total", total, "L"))
    return out


def _lims(batches: list[Batch], as_of: datetime, seed: int, faults: list[dict]) -> tuple[str, str]:
    """Twelve-hourly offline samples, released hours later. Returns the export and a re-send
    the lab's interface produced with one value changed."""
    rows = []
    for b in batches:
        rng = _stream(seed, "lims", b.seq)
        times = [
            0.25,
            *(12.0 * k + rng.uniform(-0.25, 0.25) for k in range(1, int(b.harvest_h // 12.0) + 1)),
            b.harvest_h + 0.5,
        ]
        for k, h in enumerate(_minutes(t) for t in times):
            x, s, p, _ = b.state(min(h, b.grid_h[-1]))
            true = {"BIOMASS": x, "PENICILLIN": p, "VISCOSITY": 1.0 + 0.045 * x * x, "SUBSTRATE": s}
            for analyte, (uom, cv, digits, delay) in ASSAYS.items():
                value = true[analyte] * rng.normal(1.0, cv)  # always drawn: streams stay aligned
                reported = b.at(h + _minutes(rng.uniform(*delay)))
                if reported > as_of:
                    continue
                text = f"{value:.{digits}f}"
                if analyte == "SUBSTRATE" and value < SUBSTRATE_LOD:
                    text = f"<{SUBSTRATE_LOD}"
                rows.append(
                    {
                        "Probe": f"{b.batch_id}-P{k:02d}",
                        "Charge": b.batch_id,
                        "Pruefung": analyte,
                        "Ergebnis": text.replace(".", ","),
                        "Einheit": uom,
                        "Entnahme": b.at(h),
                        "Freigabe": reported,
                    }
                )
    df = pd.DataFrame(rows)

    def fault(kind: str, b: Batch, k: int, analyte: str, column: str, new, file: str) -> int:
        i = df.index[(df.Probe == f"{b.batch_id}-P{k:02d}") & (df.Pruefung == analyte)][0]
        new = new(df.loc[i, column]) if callable(new) else new
        faults.append(
            {
                "fault": kind,
                "file": f"lims/{file}",
                "batch_id": b.batch_id,
                "sample_id": df.Probe[i],
                "analyte": analyte.lower(),
                "detail": f"{column} {df.loc[i, column]!r} -> {new!r}",
            }
        )
        df.loc[i, column] = new
        return i

    fault("negative_result", batches[0], 4, "BIOMASS", "Ergebnis", "-3,2", "PEN_LIMS_export.csv")
    fault("unknown_unit", batches[1], 3, "VISCOSITY", "Einheit", "furlongs", "PEN_LIMS_export.csv")
    export = df.copy()  # the re-send: same sample, analyte and release time, another value
    i = fault(
        "conflicting_resend",
        batches[0],
        6,
        "PENICILLIN",
        "Ergebnis",
        lambda old: f"{float(old.replace(',', '.')) * 1.07:.2f}".replace(".", ","),
        "PEN_LIMS_resend.csv",
    )
    export = export.sort_values(["Freigabe", "Probe", "Pruefung"], kind="stable")
    return _lims_csv(export), _lims_csv(df.loc[[i]])


def _analyzer(batches: list[Batch], as_of: datetime, seed: int, faults: list[dict]) -> str:
    """Daily at-line samples of the precursor (PAA) and ammonium, as a wide analyzer export
    behind a three-line instrument header. The precursor is dosed to stay near 1 g/L and is
    not modelled; ammonium rises with the nitrogen the culture releases."""
    rows = []
    for b in batches:
        rng = _stream(seed, "analyzer", b.seq)
        for k in range(1, int(b.harvest_h // 24.0) + 1):
            h = _minutes(24.0 * k + rng.uniform(-1.0, 1.0))
            true = {"paa": 1.0 + 0.3 * np.sin(h / 40.0), "ammonium": 12.0 + 0.04 * h}
            cells = {
                header: f"{true[name] * rng.normal(1.0, cv):.{digits}f}".replace(".", ",")
                for header, (name, cv, digits) in ANALYZER_ASSAYS.items()
            }
            if b.at(h) <= as_of:
                rows.append(
                    {
                        "Proben-ID": f"{b.batch_id}-A{k:02d}",
                        "Messzeitpunkt": b.at(h),
                        **cells,
                        "Bemerkung": "",
                    }
                )
    # the instrument's own failures: a result it could not measure, a sample it could not read
    rows[3]["PAA (g/L)"], rows[3]["Bemerkung"] = "ERROR", "Kalibrierung abgelaufen"
    rows[5].update({h: "" for h in ANALYZER_ASSAYS}, Bemerkung="Blase erkannt")
    for i, kind in ((3, "analyzer_error"), (5, "analyzer_no_result")):
        faults.append(
            {
                "fault": kind,
                "file": ANALYZER_FILE,
                "line": 5 + i,  # after the instrument header (3 lines) and the column names
                "sample_id": rows[i]["Proben-ID"],
                "detail": rows[i]["Bemerkung"],
            }
        )

    def local(ts: datetime) -> str:
        return pd.Timestamp(ts).tz_convert(SITE_TZ).strftime("%d.%m.%Y %H:%M:%S")

    df = pd.DataFrame(rows)
    head = f"Geraet;BioAnalyzer 2;SN 2231\nExport;{local(as_of)}\n\n"
    body = df.assign(Messzeitpunkt=df.Messzeitpunkt.map(local)).to_csv(
        sep=";", index=False, lineterminator="\n"
    )
    return head + body


def _lims_csv(df: pd.DataFrame) -> str:
    def local(ts: datetime) -> str:  # month names spelled here: strftime's %b follows the locale
        t = pd.Timestamp(ts).tz_convert(SITE_TZ)
        return f"{t.day:02d}-{MONTHS[t.month - 1]}-{t.year} {t.hour:02d}:{t.minute:02d}"

    out = df.assign(Entnahme=df.Entnahme.map(local), Freigabe=df.Freigabe.map(local))
    return out.to_csv(sep=";", index=False, lineterminator="\n")


# ------------------------------------------------------------------ sources.yaml, truth

SOURCES_YAML = Template("""$header
site: $site
files:
  pen_tags:        # PI AF tag list, exported from Excel
    {dataset: tags, glob: "tags/PEN_*.csv", delimiter: ";", decimal: ",", encoding: latin-1,
     columns: {tag: Point, unit_id: Equipment, parameter: Measurement, uom: EngUnit, role: Type,
               interpolation: Stepped, low: LoLimit, high: HiLimit, description: Descriptor}}
  pen_historian:   # PI recorded values, one file per fermenter
    {dataset: historian_long, glob: "historian/PEN_*.csv*", delimiter: ";", decimal: ",",
     timezone: $tz, timestamp_format: "%m/%d/%Y %H:%M:%S",
     columns: {tag: Tagname, ts: Zeitstempel, value: Wert, status: Qualitaet},
     quality: {"192": good, "0": bad, "64": uncertain},
     digital_states: ["No Data", Shutdown, "I/O Timeout", "Scan Off", "Pt Created", "Bad Input"]}
  pen_mes:         # BatchML V0700; the BATCH phase starts the clock
    {dataset: mes_xml, glob: "mes/PEN_*.xml", inoculation_phase: BATCH, site: $site}
  pen_analyzer:    # at-line analyzer: UTF-16, an instrument header, a column per analyte
    {dataset: lims_wide, glob: "lims/analyzer/*.csv", delimiter: ";", decimal: ",",
     header_line: 4, timezone: $tz, timestamp_format: "%d.%m.%Y %H:%M:%S",
     columns: {sample_id: Proben-ID, sampled_at: Messzeitpunkt},
     batch_from: {column: Proben-ID, pattern: '^(?P<batch>.+)-A[0-9]+$$'},
     header_unit: '(?P<analyte>[^(]+?)\\s*\\((?P<unit>[^)]+)\\)',
     exclude_columns: [Bemerkung],
     analyte_names: {PAA: paa, NH4+: ammonium}}
  pen_lims:
    {dataset: lims, glob: "lims/PEN_*.csv", delimiter: ";", decimal: ",", timezone: $tz,
     timestamp_format: "%d-%b-%Y %H:%M",
     columns: {sample_id: Probe, batch_id: Charge, analyte: Pruefung, value: Ergebnis,
               unit: Einheit, sampled_at: Entnahme, reported_at: Freigabe}}
historian:
  max_gap_s: $max_gap          # longest gap between archived values linear tags interpolate across
parameters:                 # canonical unit of each parameter at this site (pint syntax)
  temperature: degC         # tags are in K: converted
  temperature_sp: degC
  ph: pH
  dissolved_oxygen: mg/L    # kept in the site's unit (the first demo plant uses % saturation)
  sugar_feed_rate: L/h
  oil_feed_rate: L/h
  aeration_rate: "m^3/min"  # pint reads m^3, not the m3 some systems write
  pressure: bar             # gauge
  agitator_power: kW
  offgas_co2: "%"
  volume: "m^3"
analytes:                   # lab dictionary: canonical unit, accepted units, plausible range, spec
  biomass: {unit: g/L, units: [g/L, mg/mL], min: 0, max: 120}
  penicillin: {unit: g/L, min: 0, max: 60, spec_low: 15}
  viscosity: {unit: cP, units: [cP, "mPa*s"], min: 0, max: 5000}
  substrate: {unit: g/L, min: 0, max: 500}
  paa: {unit: g/L, min: 0, max: 20}             # phenylacetic acid, the side-chain precursor
  ammonium: {unit: mM, units: [mmol/L, mM], min: 0, max: 500}
limits:                     # normal operating limits per parameter and ISA-88 phase, site units
  temperature: {BATCH: [24.5, 25.5], FED_BATCH: [23.5, 24.5]}
  ph: {BATCH: [6.4, 6.6], FED_BATCH: [6.4, 6.6]}
  dissolved_oxygen: {BATCH: [2.0, 16.0], FED_BATCH: [2.0, 16.0]}
  pressure: {BATCH: [0.4, 0.6], FED_BATCH: [0.7, 0.9]}
kpis:                       # batch KPIs from these analytes and feed-rate parameters
  cell_density: biomass     # peak and integral biomass (no qP: biomass is not a cell count)
  product: penicillin
  feed_rates: [sugar_feed_rate, oil_feed_rate]
models:                     # what the lake's data are to the bundled monod_fedbatch model
  PEN-G:
    - model: monod_fedbatch
      clock: BATCH              # t = 0 at the start of BATCH (there is no inoculation phase)
      observables:              # assay CV and reporting resolution of each lab test
        biomass: {analyte: biomass, cv: 0.06, floor: 0.1}
        substrate: {analyte: substrate, cv: 0.05, floor: 0.01}
        product: {analyte: penicillin, cv: 0.04, floor: 0.01}
      feeds:                    # both feeds carry the carbon source (oil as sugar equivalent)
        sugar_feed_rate: {S: 500 g/L}
        oil_feed_rate: {S: 1500 g/L}
      draw_off_kinds: [draw_off]
      volume: [{parameter: volume}]   # the level transmitter, m^3 at t = 0
      # K_S too: the batch sugar runs down through it, and the first fit's probe found it
      # identifiable (fixed at the model's default it biased mu_max by 9 %)
      fitted: [mu_max, K_S, Y_XS, m_S, beta]
""")


def _truth(
    batches: list[Batch], as_of: datetime, size: DemoSize, faults: list[dict], tag_truth: dict
) -> dict:
    out = []
    for b in batches:
        final = dict(zip(STATE_UNITS, map(float, b.states[:, -1]), strict=True))
        out.append(
            {
                "batch_id": b.batch_id,
                "unit_id": b.unit,
                "product": PRODUCT,
                "status": b.status,
                "start_ts": _z(b.start),
                "end_ts": _z(b.at(b.end_h)) if b.status == "complete" else None,
                "planned_end_ts": _z(b.at(b.end_h)),
                "initial_state": dict(zip(STATE_UNITS, b.y0, strict=True)),
                "phases": {
                    k: {"start_ts": _z(b.at(a)), "end_ts": _z(b.at(z)), "start_h": a, "end_h": z}
                    for k, (a, z) in b.bounds().items()
                },
                "sugar_feed_l_h": b.sugar,
                "oil_feed_l_h": b.oil,
                "aeration_m3_min": b.aeration,
                "draw_offs_l": b.draw_offs,
                "precursor_kg": [(b.feed_h + h, kg) for h, kg in PRECURSOR],
                "final_state": final,
                "final_titer_g_l": final["P"],
                "phase_twa": b.twa,
            }
        )
    lab = {"assay_cv": 1, "unit": 0, "report_delay_h": 3}
    return {
        "site": SITE,
        "site_name": SITE_NAME,
        "site_tz": SITE_TZ,
        "product": PRODUCT,
        "as_of": _z(as_of),
        "export_start": _z(EPOCH),
        "size": asdict(size),
        "model": {
            "name": "monod_fedbatch_luedeking_piret",
            "states": STATE_UNITS,
            "equations": (
                "dX/dt = mu X - D X; dS/dt = -(mu/Y_XS + m_S) X + (F_s S_f + F_oil S_oil)/V - D S; "
                "dP/dt = (alpha mu + beta) X - D P; dV/dt = F_s + F_oil; mu = mu_max S/(K_S + S); "
                "D = (F_s + F_oil)/V; draw-offs remove volume only; "
                "the state holds through HARVEST; the precursor (PAA) is not modelled"
            ),
        },
        "true_parameters": {k: {"value": v, "unit": u} for k, (v, u) in TRUE_PARAMETERS.items()},
        "site_units": SITE_UNITS,
        "phase_twa_note": "time-weighted average of the uncompressed signal over [phase start, "
        "end], in site_units; step tags held, linear tags trapezoidal",
        "historian": {"exc_max_s": EXC_MAX_S, "comp_max_s": COMP_MAX_S, "tags": tag_truth},
        "lims": {
            **{k: {a.lower(): spec[i] for a, spec in ASSAYS.items()} for k, i in lab.items()},
            "detection_limit": {"substrate": SUBSTRATE_LOD},
            "sample_interval_h": 12.0,
            "viscosity_cp": "1 + 0.045 X^2 (X biomass in g/L)",
        },
        "batches": out,
        "faults": faults,
    }
