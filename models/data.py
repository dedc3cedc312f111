"""Training and forecast data for a mechanistic model, read from the curated lake.

Everything comes through the catalog views (`batches`, `samples`, `phases`,
`material_events`, `process_values`), never from raw files, so a model sees exactly what an
analyst querying the lake would see: latest record versions, retests resolved, units
checked, times in UTC.

Per batch:
- offline samples in the model's observable units (LIMS "mmol/L" is the model's "mM";
  `schemas.units.conversion` does the arithmetic and refuses what it cannot convert);
- `t_batch_h` counted from the batch's `inoculation_ts`;
- the continuous feed as a piecewise-constant input, reconstructed from the change points of
  the `feed_rate` process values (a set-point-driven pump is piecewise constant, and the
  historian archives a step tag on change, so its points are the change points);
- bolus additions from `material_events` (kind 'bolus'), with their composition from
  `BOLUS_MATERIALS`;
- initial conditions from the first samples (see `initial_state`).

For a forecast, `as_of` hides every sample not yet reported and every process value or
material event after that time: the forecast sees what the plant knew then.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lake.layout import Lake
from lake.query import query
from models.base import Bolus, Inputs, Model
from models.cho_fedbatch import GLUCOSE_G_PER_MMOL, LACTATE_G_PER_MMOL
from schemas.units import conversion

# material id -> {state: concentration of that state in the added liquid, in the state's unit}.
# A site adds its own materials here (or passes `bolus_materials=`); an unknown bolus
# material still adds volume (it dilutes) but no substrate, and is listed in `BatchData.notes`.
BOLUS_MATERIALS: dict[str, dict[str, float]] = {
    "GLC-450": {"G": 450.0 / GLUCOSE_G_PER_MMOL},  # 450 g/L glucose solution
}
BROTH_DENSITY_KG_L = 1.02
# censored results ("<0.5") enter initial conditions at half the quantitation limit
CENSORED_FRACTION = 0.5
# samples this close to the first one count as "the first sample" (the MES inoculation
# check and the first LIMS sample are drawn minutes apart)
FIRST_SAMPLE_WINDOW_H = 2.0
FEED_CHANGE_TOL_L_H = 1e-3


@dataclass(frozen=True)
class BatchData:
    """One batch, ready for simulation: model time 0 is the first sample (`t0_h`)."""

    batch_id: str
    status: str
    product: str | None
    inoculation_ts: pd.Timestamp
    t0_h: float
    y0: np.ndarray
    inputs: Inputs  # times in t_batch_h (hours since inoculation)
    samples: pd.DataFrame  # analyte, t_batch_h, value (model units), sampled_ts, reported_ts
    as_of: pd.Timestamp | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def model_inputs(self) -> Inputs:
        """The inputs on model time (hours since the first sample)."""
        return shift_inputs(self.inputs, self.t0_h)

    @property
    def last_data_h(self) -> float:
        return float(self.samples["t_batch_h"].max()) if len(self.samples) else self.t0_h


def shift_inputs(inputs: Inputs, t0_h: float) -> Inputs:
    """Inputs on a clock starting at `t0_h`; a rate running at t0 holds from 0, earlier boluses drop
    (the initial state was measured after them)."""
    times = np.asarray(inputs.feed_times_h, dtype=float) - t0_h
    rates = np.asarray(inputs.feed_rates_l_h, dtype=float)
    keep = times > 0
    if (~keep).any():
        times = np.concatenate([[0.0], times[keep]])
        rates = np.concatenate([[rates[~keep][-1]], rates[keep]])
    boluses = tuple(
        Bolus(b.t_h - t0_h, b.volume_l, b.material, dict(b.concentrations))
        for b in inputs.boluses
        if b.t_h - t0_h > 0
    )
    return Inputs(tuple(times.tolist()), tuple(rates.tolist()), boluses)


def _ts_param(value) -> pd.Timestamp | None:
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def load_batches(
    lake: Lake,
    model: Model,
    batch_ids: Sequence[str],
    as_of=None,
    bolus_materials: Mapping[str, Mapping[str, float]] | None = None,
) -> list[BatchData]:
    """Load `batch_ids` (in that order) for `model`; KeyError if a batch is not in the lake."""
    ids = list(dict.fromkeys(batch_ids))
    if not ids:
        return []
    as_of = _ts_param(as_of)
    materials = BOLUS_MATERIALS if bolus_materials is None else bolus_materials
    hdr = query(
        lake,
        "SELECT batch_id, status, product, coalesce(inoculation_ts, start_ts) AS t0 FROM batches "
        "WHERE batch_id IN (SELECT unnest(?))",
        [ids],
    ).set_index("batch_id")
    missing = [b for b in ids if b not in hdr.index]
    if missing:
        raise KeyError(f"batches not in the lake: {', '.join(missing)}")
    cut = "" if as_of is None else " AND s.reported_ts <= ?"
    samples = query(
        lake,
        f"""
        SELECT s.batch_id, s.sample_id, s.analyte, s.value, s.value_text, s.censored, s.uom,
               s.sampled_ts, s.reported_ts,
               (epoch_us(s.sampled_ts) - epoch_us(coalesce(b.inoculation_ts, b.start_ts)))
               / 3.6e9 AS t_batch_h
        FROM samples s JOIN batches b USING (batch_id)
        WHERE s.batch_id IN (SELECT unnest(?)){cut}
        ORDER BY s.batch_id, s.sampled_ts, s.analyte""",
        [ids] + ([as_of] if as_of is not None else []),
    )
    cut_ts = "" if as_of is None else " AND ts <= ?"
    extra = [as_of] if as_of is not None else []
    feed = query(
        lake,
        f"""SELECT batch_id, t_batch_h, value FROM process_values
                           WHERE parameter = 'feed_rate' AND batch_id IN (SELECT unnest(?)){cut_ts}
                           ORDER BY batch_id, ts""",
        [ids] + extra,
    )
    events = query(
        lake,
        f"""
        SELECT m.batch_id, m.material, m.quantity, m.uom, m.kind,
               (epoch_us(m.ts) - epoch_us(coalesce(b.inoculation_ts, b.start_ts)))
               / 3.6e9 AS t_batch_h
        FROM material_events m JOIN batches b USING (batch_id)
        WHERE m.batch_id IN (SELECT unnest(?)) AND m.ts IS NOT NULL{cut_ts.replace("ts", "m.ts")}
        ORDER BY m.batch_id, m.ts""",
        [ids] + extra,
    )
    weight = query(
        lake,
        f"""SELECT batch_id, t_batch_h, value FROM process_values
                             WHERE parameter = 'weight' AND t_batch_h >= 0 AND t_batch_h < 24
                               AND batch_id IN (SELECT unnest(?)){cut_ts} ORDER BY batch_id, ts""",
        [ids] + extra,
    )

    units = {o.analyte: o.uom for o in model.observables}
    out = []
    for bid in ids:
        notes: list[str] = []
        s = samples[(samples.batch_id == bid) & samples.analyte.isin(list(units))].copy()
        factors = (conversion(u, units[a]) for u, a in zip(s["uom"], s["analyte"], strict=True))
        s["value"] = [
            v * sc + off if v == v else np.nan
            for v, (sc, off) in zip(s["value"], factors, strict=True)
        ]
        inputs = Inputs(
            *_feed_steps(feed[feed.batch_id == bid]),
            boluses=tuple(_boluses(events[events.batch_id == bid], materials, notes)),
        )
        t0_h, y0 = initial_state(
            model, s, events[events.batch_id == bid], weight[weight.batch_id == bid], notes
        )
        obs = s[s["value"].notna() & ~s["censored"].astype(bool)]
        obs = obs[
            ["analyte", "t_batch_h", "value", "sampled_ts", "reported_ts", "sample_id"]
        ].reset_index(drop=True)
        h = hdr.loc[bid]
        out.append(
            BatchData(
                bid,
                str(h.status),
                None if pd.isna(h["product"]) else str(h["product"]),
                pd.Timestamp(h.t0),
                t0_h,
                y0,
                inputs,
                obs,
                as_of,
                tuple(notes),
            )
        )
    return out


def _feed_steps(pv: pd.DataFrame) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Change points of the feed pump: (times, rates) in t_batch_h and L/h."""
    if pv.empty:
        return (), ()
    t = pv["t_batch_h"].to_numpy(float)
    v = pv["value"].to_numpy(float)
    change = np.r_[True, np.abs(np.diff(v)) > FEED_CHANGE_TOL_L_H]
    times, rates = t[change], np.round(v[change], 6)
    keep = times >= 0
    if (~keep).any():  # the rate already running at inoculation holds from t=0
        times = np.r_[[0.0], times[keep]]
        rates = np.r_[[rates[~keep][-1]], rates[keep]]
    return tuple(times.tolist()), tuple(rates.tolist())


def _boluses(ev: pd.DataFrame, materials, notes: list[str]) -> list[Bolus]:
    out = []
    for r in ev[ev["kind"] == "bolus"].itertuples():
        scale, _ = conversion(r.uom, "L")
        comp = materials.get(r.material)
        if comp is None:
            notes.append(
                f"bolus material {r.material!r} has no composition in BOLUS_MATERIALS: volume only"
            )
        out.append(
            Bolus(float(r.t_batch_h), float(r.quantity) * scale, str(r.material), dict(comp or {}))
        )
    return out


def initial_state(
    model: Model,
    samples: pd.DataFrame,
    events: pd.DataFrame,
    weight: pd.DataFrame,
    notes: list[str],
) -> tuple[float, np.ndarray]:
    """(t0_h, y0) from the first samples: Xv from vcd, Xd from viability, G/L from g/L, Q, A
    in mM, P from titer (0 before the first titer), V from the MES charge + inoculum (else
    weight / density).

    Written for the CHO model's states; a model without these states needs its own loader.
    """
    names = model.state_names()
    if samples.empty:
        raise ValueError("no samples: initial conditions come from the first samples")
    t0 = float(samples["t_batch_h"].min())
    first = samples[samples["t_batch_h"] <= t0 + FIRST_SAMPLE_WINDOW_H]

    def first_value(analyte: str, default: float | None = None) -> float:
        rows = first[first["analyte"] == analyte]
        for r in rows.itertuples():
            if r.value == r.value and not r.censored:
                return float(r.value)
            limit = _censored_limit(r.value_text)
            if limit is not None:
                return CENSORED_FRACTION * limit
        if default is None:
            raise ValueError(f"no first-sample {analyte} for the initial state")
        notes.append(f"no first-sample {analyte}: initial value {default}")
        return default

    xv = first_value("vcd")
    via = min(max(first_value("viability", 97.0), 1.0), 100.0)
    charge = events[events["kind"].isin(["charge", "inoculum"]) & (events["t_batch_h"] <= t0)]
    if {"charge", "inoculum"} <= set(charge["kind"]):
        vol = float(
            sum(
                q * conversion(u, "L")[0]
                for q, u in zip(charge["quantity"], charge["uom"], strict=True)
            )
        )
    elif len(weight):
        vol = float(weight["value"].median()) / BROTH_DENSITY_KG_L
        notes.append("initial volume from the weight tag")
    else:
        raise ValueError("no MES charge/inoculum volumes and no weight data for the initial volume")
    y = {
        "Xv": xv,
        "Xd": xv * (100.0 / via - 1.0),
        "G": first_value("glucose") / GLUCOSE_G_PER_MMOL,
        "Q": first_value("glutamine"),
        "L": first_value("lactate", 0.0) / LACTATE_G_PER_MMOL,
        "A": first_value("ammonia", 0.0),
        "P": first_value("titer", 0.0) if (first["analyte"] == "titer").any() else 0.0,
        "V": vol,
    }
    return t0, np.array([y[n] for n in names], dtype=float)


def _censored_limit(text) -> float | None:
    if not isinstance(text, str):
        return None
    t = text.strip().lstrip("<>≤≥= ")
    try:
        return float(t)
    except ValueError:
        return None


def training_frame(batches: Sequence[BatchData]) -> pd.DataFrame:
    """Everything a fit sees, as one long frame: samples, inputs and initial states per batch."""
    rows = []
    for b in batches:
        for r in b.samples.itertuples():
            rows.append((b.batch_id, "sample", r.analyte, float(r.t_batch_h), float(r.value)))
        for t, v in zip(b.inputs.feed_times_h, b.inputs.feed_rates_l_h, strict=True):
            rows.append((b.batch_id, "feed_rate", "", float(t), float(v)))
        for bo in b.inputs.boluses:
            rows.append((b.batch_id, "bolus", bo.material, float(bo.t_h), float(bo.volume_l)))
        rows.append((b.batch_id, "t0", "", float(b.t0_h), 0.0))
        for i, v in enumerate(b.y0):
            rows.append((b.batch_id, "initial", str(i), float(b.t0_h), float(v)))
    return pd.DataFrame(rows, columns=["batch_id", "kind", "name", "t_batch_h", "value"])


def fingerprint(frame: pd.DataFrame) -> str:
    """sha256 of the exact data (values written with full precision, fixed row order)."""
    text = frame.to_csv(index=False, float_format="%.17g", lineterminator="\n")
    return hashlib.sha256(text.encode()).hexdigest()
