"""Training and forecast data for a mechanistic model, read from the curated lake.

Everything comes through the catalog views (`batches`, `samples`, `phases`,
`material_events`, `process_values`), never from raw files, so a model sees exactly what an
analyst querying the lake would see: latest record versions, retests resolved, units
checked, times in UTC. What the data are to the model is the site's model catalog
(`models.catalog.ModelSpec`); nothing here names an analyte, state or material.

Per batch:
- offline samples of the catalog's analytes, renamed to the model's observables and
  converted to their units (`schemas.units.conversion` refuses what it cannot convert);
- `t_batch_h` counted from the catalog's clock phase (default: the batch's inoculation);
- each continuous feed as a piecewise-constant input, reconstructed from the change points of
  its process parameter (a set-point-driven pump is piecewise constant, and the historian
  archives a step tag on change, so its points are the change points);
- boluses from `material_events` of the catalog's materials, draw-offs from its event kinds;
- initial conditions from the first samples (the model's `initial_state`), the catalog's
  given values and the volume rule.

For a forecast, `as_of` hides every sample not yet reported and every process value or
material event after that time: the forecast sees what the plant knew then.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lake.layout import Lake
from lake.query import query
from models.base import Bolus, Feed, Inputs
from models.catalog import ModelSpec
from schemas.units import conversion

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
    inoculation_ts: pd.Timestamp  # the clock's origin (t_batch_h = 0)
    t0_h: float
    y0: np.ndarray
    inputs: Inputs  # times in t_batch_h
    samples: pd.DataFrame  # analyte (the model's observable), t_batch_h, value (model units), …
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
    feeds = []
    for f in inputs.feeds:
        times = np.asarray(f.times_h, dtype=float) - t0_h
        rates = np.asarray(f.rates_l_h, dtype=float)
        keep = times > 0
        if (~keep).any():
            times = np.concatenate([[0.0], times[keep]])
            rates = np.concatenate([[rates[~keep][-1]], rates[keep]])
        feeds.append(Feed(f.name, tuple(times.tolist()), tuple(rates.tolist()), f.composition))
    boluses = tuple(
        Bolus(b.t_h - t0_h, b.volume_l, b.material, dict(b.concentrations))
        for b in inputs.boluses
        if b.t_h - t0_h > 0
    )
    return Inputs(tuple(feeds), boluses)


def clock_cte(batches: str = "b.batch_id IN (SELECT unnest($ids))") -> str:
    """`WITH clock AS (batch_id, t0)`: each selected batch's t = 0, the start of the catalog's
    clock phase (`$phase`), else its inoculation, else its start. The one definition of the
    model clock; `batches` is the SQL condition on `batches b` that selects them."""
    return f"""WITH clock AS (
        SELECT b.batch_id, coalesce(
            (SELECT min(p.start_ts) FROM phases p WHERE p.batch_id = b.batch_id
               AND p.level = 'phase' AND p.phase = $phase),
            b.inoculation_ts, b.start_ts) AS t0
        FROM batches b WHERE {batches})"""


def _ts_param(value) -> pd.Timestamp | None:
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def load_batches(
    lake: Lake, spec: ModelSpec, batch_ids: Sequence[str], as_of=None
) -> list[BatchData]:
    """Load `batch_ids` (in that order) as `spec` maps them; KeyError if a batch is not in the
    lake, ValueError (naming the batch) if its initial state cannot be built."""
    ids = list(dict.fromkeys(batch_ids))
    if not ids:
        return []
    as_of = _ts_param(as_of)
    clock = clock_cte()
    params = {"ids": ids, "phase": spec.clock}
    hdr = query(
        lake,
        f"{clock} SELECT b.batch_id, b.status, b.product, c.t0 "
        "FROM batches b JOIN clock c USING (batch_id)",
        params,
    ).set_index("batch_id")
    missing = [b for b in ids if b not in hdr.index]
    if missing:
        raise KeyError(f"batches not in the lake: {', '.join(missing)}")
    hours = "(epoch_us({ts}) - epoch_us(c.t0)) / 3.6e9"
    cut = "" if as_of is None else " AND s.reported_ts <= $as_of"
    analyte_of = {m.analyte: o for o, m in spec.observables.items()}
    samples = query(
        lake,
        f"""{clock}
        SELECT s.batch_id, s.sample_id, s.analyte, s.value, s.value_text, s.censored, s.uom,
               s.sampled_ts, s.reported_ts, {hours.format(ts="s.sampled_ts")} AS t_batch_h
        FROM samples s JOIN clock c USING (batch_id)
        WHERE s.analyte IN (SELECT unnest($analytes)){cut}
        ORDER BY s.batch_id, s.sampled_ts, s.analyte""",
        {**params, "analytes": list(analyte_of)} | ({} if as_of is None else {"as_of": as_of}),
    )
    cut_ts = "" if as_of is None else " AND v.ts <= $as_of"
    extra = {} if as_of is None else {"as_of": as_of}
    rule_params = [r.parameter for r in spec.volume if r.parameter]
    pvs = query(
        lake,
        f"""{clock}
        SELECT v.batch_id, v.parameter, v.uom, v.value, {hours.format(ts="v.ts")} AS t_batch_h
        FROM process_values v JOIN clock c USING (batch_id)
        WHERE v.parameter IN (SELECT unnest($parameters)){cut_ts}
        ORDER BY v.batch_id, v.parameter, v.ts""",
        {**params, "parameters": [*spec.feeds, *rule_params], **extra},
    )
    events = query(
        lake,
        f"""{clock}
        SELECT m.batch_id, m.material, m.quantity, m.uom, m.kind,
               {hours.format(ts="m.ts")} AS t_batch_h
        FROM material_events m JOIN clock c USING (batch_id)
        WHERE m.ts IS NOT NULL{cut_ts.replace("v.ts", "m.ts")}
        ORDER BY m.batch_id, m.ts""",
        {**params, **extra},
    )

    units = {o: spec.model.observable(o).uom for o in spec.observables}
    out = []
    for bid in ids:
        notes: list[str] = []
        s = samples[samples.batch_id == bid].copy()
        s["analyte"] = s["analyte"].map(analyte_of)
        factors = (conversion(u, units[a]) for u, a in zip(s["uom"], s["analyte"], strict=True))
        s["value"] = [
            v * sc + off if v == v else np.nan
            for v, (sc, off) in zip(s["value"], factors, strict=True)
        ]
        pv = pvs[pvs.batch_id == bid]
        ev = events[events.batch_id == bid]
        inputs = Inputs(
            tuple(_feed(pv[pv.parameter == p], p, comp) for p, comp in spec.feeds.items()),
            tuple(_boluses(ev, spec)),
        )
        try:
            t0_h, y0 = initial_state(spec, s, ev, pv, notes)
        except ValueError as err:
            raise ValueError(f"batch {bid}: {err}") from None
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


def load_usable(
    lake: Lake, spec: ModelSpec, batch_ids: Sequence[str]
) -> tuple[list[BatchData], dict[str, str]]:
    """The batches a model can start from, and why each other one cannot (batch -> reason): one
    batch without a usable first sample does not stop a fit on the rest."""
    try:
        return load_batches(lake, spec, batch_ids), {}
    except ValueError:
        pass
    usable, skipped = [], {}
    for bid in dict.fromkeys(batch_ids):
        try:
            usable += load_batches(lake, spec, [bid])
        except ValueError as err:
            skipped[bid] = str(err).removeprefix(f"batch {bid}: ")
    return usable, skipped


def _feed(pv: pd.DataFrame, name: str, composition) -> Feed:
    """Change points of a feed pump (times in t_batch_h, rates in L/h)."""
    if pv.empty:
        return Feed(name, (), (), dict(composition))
    scale, offset = conversion(str(pv["uom"].iloc[0]), "L/h")
    t = pv["t_batch_h"].to_numpy(float)
    v = pv["value"].to_numpy(float) * scale + offset
    change = np.r_[True, np.abs(np.diff(v)) > FEED_CHANGE_TOL_L_H]
    times, rates = t[change], np.round(v[change], 6)
    keep = times >= 0
    if (~keep).any():  # the rate already running at t = 0 holds from t = 0
        times = np.r_[[0.0], times[keep]]
        rates = np.r_[[rates[~keep][-1]], rates[keep]]
    return Feed(name, tuple(times.tolist()), tuple(rates.tolist()), dict(composition))


def _boluses(ev: pd.DataFrame, spec: ModelSpec) -> list[Bolus]:
    """The catalog's bolus materials as additions, its draw-off kinds as broth taken out."""
    out = []
    for r in ev.itertuples():
        adds, draws = r.material in spec.boluses, r.kind in spec.draw_off_kinds
        if adds or draws:
            litres = float(r.quantity) * conversion(r.uom, "L")[0]
            comp = spec.boluses[r.material] if adds else {}
            out.append(
                Bolus(float(r.t_batch_h), litres if adds else -litres, str(r.material), comp)
            )
    return out


def initial_state(
    spec: ModelSpec,
    samples: pd.DataFrame,
    events: pd.DataFrame,
    pvs: pd.DataFrame,
    notes: list[str],
) -> tuple[float, np.ndarray]:
    """(t0_h, y0): the first samples' observables (a censored result at half its limit), the
    volume from the catalog's first applicable rule, the catalog's given states, through the
    model's `initial_state`."""
    model = spec.model
    if samples.empty:
        raise ValueError(
            "no samples of "
            + ", ".join(m.analyte for m in spec.observables.values())
            + ": initial conditions come from the first samples"
        )
    t0 = float(samples["t_batch_h"].min())
    first_rows = samples[samples["t_batch_h"] <= t0 + FIRST_SAMPLE_WINDOW_H]
    first: dict[str, float] = {}
    for r in first_rows.itertuples():
        if r.analyte in first:
            continue
        if r.value == r.value and not r.censored:
            first[r.analyte] = float(r.value)
        elif (limit := _censored_limit(r.value_text)) is not None:
            first[r.analyte] = CENSORED_FRACTION * limit
    absent = [o for o in spec.observables if o not in first]
    if absent:
        notes.append(f"not in the first sample: {', '.join(absent)}")
    volume = _initial_volume(spec, t0, events, pvs, notes)
    y = model.initial_state(first, volume, spec.initial)
    return t0, np.array([y[n] for n in model.state_names()], dtype=float)


def _initial_volume(
    spec: ModelSpec, t0: float, events: pd.DataFrame, pvs: pd.DataFrame, notes: list[str]
) -> float:
    tried = []
    for rule in spec.volume:
        if rule.kinds:
            ev = events[events["kind"].isin(rule.kinds) & (events["t_batch_h"] <= t0)]
            if set(rule.kinds) <= set(ev["kind"]):
                return float(
                    sum(
                        q * conversion(u, "L")[0]
                        for q, u in zip(ev["quantity"], ev["uom"], strict=True)
                    )
                )
            tried.append(f"material events {', '.join(rule.kinds)}")
        else:
            pv = pvs[pvs["parameter"] == rule.parameter]
            if len(pv):
                uom = str(pv["uom"].iloc[0])
                value = float(np.interp(t0, pv["t_batch_h"], pv["value"]))
                if rule.density_kg_l:
                    litres = value * conversion(uom, "kg")[0] / rule.density_kg_l
                else:
                    litres = value * conversion(uom, "L")[0]
                if tried:
                    notes.append(f"initial volume from {rule.parameter} ({'; '.join(tried)}: none)")
                return litres
            tried.append(f"process values of {rule.parameter}")
    if spec.model.volume_state in spec.initial:
        return spec.initial[spec.model.volume_state]
    raise ValueError(
        "no initial volume: "
        + ("; ".join(tried) + " not found" if tried else "the catalog has no `volume` rule")
    )


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
        for f in sorted(b.inputs.feeds, key=lambda f: f.name):  # the same data in any order
            for t, v in zip(f.times_h, f.rates_l_h, strict=True):
                rows.append((b.batch_id, "feed", f.name, float(t), float(v)))
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
