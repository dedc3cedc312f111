"""Forecasts for running batches from the champion model, with parameter uncertainty.

For a running batch at time `as_of` (default: the latest data the lake holds for it):
1. load the batch as the plant knew it then (samples reported by as_of, inputs up to as_of);
2. estimate its initial state from all of those samples with the champion's kinetics fixed
   (the same weighted least squares as the fit, over the initial states only), so the
   forecast starts from what the batch has shown so far rather than from one noisy sample;
3. draw `n_draws` kinetic parameter sets from the champion's multivariate normal in log
   space and initial states from the estimate's covariance (fixed seed), and integrate every
   draw as one ensemble: known inputs up to as_of, then the recipe's future inputs
   (`FuturePolicy`): the feed schedule continued (same interval, same step ratio) and the
   glucose bolus rule operators apply at the daily sample;
4. report p10 / p50 / p90 per analyte on a grid up to the planned harvest, which is the
   median culture duration (inoculation to HARVEST start) of completed batches of the product
   (rows of kind 'trajectory'), and at harvest (one row per analyte of kind 'at_harvest'):
   since harvest day varies, each draw is harvested at the duration of a completed batch
   drawn at random, so the final-titer band includes the harvest-time spread.

The band is the uncertainty of the model's parameters and of the batch's state; it does not
include assay noise (it is a band for the true value, not for the next lab result).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from lake.layout import Lake
from lake.query import query
from models.base import Inputs, Model, simulate_many
from models.cho_fedbatch import GLUCOSE_G_PER_MMOL
from models.data import BOLUS_MATERIALS, BatchData, load_batches, shift_inputs
from models.fit import FitSettings, _Problem
from models.registry import Registry, load_model

GRID_H = 6.0
DEFAULT_DRAWS = 200
DEFAULT_SEED = 20260316


@dataclass(frozen=True)
class FuturePolicy:
    """How the recipe drives a batch after as_of (the demo plant's recipe; a site sets its own).

    Glucose bolus rule: at each daily sample (every `sample_every_h` after the last sample),
    if glucose is below `trigger_g_l`, add `material` `bolus_delay_h` later to bring glucose
    back to `target_g_l`. The continuous feed keeps its schedule: a change every median
    interval, each step the median ratio of the past steps.
    """

    material: str = "GLC-450"
    trigger_g_l: float = 3.0
    target_g_l: float = 5.5
    sample_every_h: float = 24.0
    bolus_delay_h: float = 1.0


@dataclass
class Forecast:
    batch_id: str
    model: str
    version: int
    as_of: pd.Timestamp
    now_h: float  # t_batch_h of as_of
    harvest_h: float
    bands: pd.DataFrame  # analyte, kind, t_batch_h, p10, p50, p90, observed
    samples: pd.DataFrame  # the observations used
    draws_final: dict[str, np.ndarray]  # analyte -> values at each draw's harvest time

    def final(self, analyte: str) -> tuple[float, float, float]:
        """(p10, p50, p90) of the analyte at harvest."""
        b = self.bands[
            (self.bands["analyte"] == analyte) & (self.bands["kind"] == "at_harvest")
        ].iloc[0]
        return float(b.p10), float(b.p50), float(b.p90)


def harvest_durations(lake: Lake, product: str | None) -> np.ndarray:
    """Hours from inoculation to the HARVEST phase start of every completed batch of `product`."""
    where = "AND b.product = ?" if product else ""
    df = query(
        lake,
        f"""
        SELECT (epoch_us(p.start_ts) - epoch_us(coalesce(b.inoculation_ts, b.start_ts)))
               / 3.6e9 AS h
        FROM phases p JOIN batches b USING (batch_id)
        WHERE p.level = 'phase' AND p.phase = 'HARVEST' AND b.status = 'complete' {where}
        ORDER BY b.batch_id""",
        [product] if product else [],
    )
    h = df["h"].dropna().to_numpy(float)
    if h.size == 0:
        raise ValueError(
            f"no completed batch of {product or 'any product'} with a HARVEST phase: "
            "cannot plan the harvest"
        )
    return h


def running_batches(lake: Lake, products: Sequence[str] | None = None) -> list[str]:
    """Batches still running (of `products`, when given)."""
    return query(
        lake,
        """SELECT batch_id FROM batches WHERE status NOT IN ('complete', 'aborted', 'stopped')
             AND ($products IS NULL OR list_contains($products, product)) ORDER BY 1""",
        {"products": list(products) if products is not None else None},
    )["batch_id"].tolist()


def latest_data_ts(lake: Lake, batch_id: str) -> pd.Timestamp:
    """Time (UTC) of the newest sample report or process value the lake holds for the batch.

    The default as-of of a forecast: the batch as the plant knows it now. ValueError if none.
    """
    df = query(
        lake,
        """SELECT greatest((SELECT max(reported_ts) FROM samples WHERE batch_id = $b),
                           (SELECT max(ts) FROM process_values WHERE batch_id = $b)) AS t""",
        {"b": batch_id},
    )
    t = df["t"].iloc[0]
    if t is None or pd.isna(t):
        raise ValueError(f"no data for batch {batch_id!r} in the lake")
    return (
        pd.Timestamp(t).tz_convert("UTC")
        if pd.Timestamp(t).tzinfo
        else pd.Timestamp(t).tz_localize("UTC")
    )


def _future_feed(
    inputs_times: Sequence[float], rates: Sequence[float], now_h: float, end_h: float
) -> tuple[list[float], list[float]]:
    """Change points after now_h continuing the recipe's schedule (t_batch_h)."""
    t = np.asarray(inputs_times, float)
    r = np.asarray(rates, float)
    pos = r > 0
    if not pos.any():
        return [], []
    tp, rp = t[pos], r[pos]
    if len(tp) >= 2:
        dt = float(np.median(np.diff(tp)))
        ratio = float(np.median(rp[1:] / rp[:-1]))
    else:
        dt, ratio = 24.0, 1.0
    times, vals = [], []
    nxt, rate = tp[-1] + dt, rp[-1]
    while nxt < end_h:
        rate *= ratio
        if nxt > now_h:
            times.append(float(nxt))
            vals.append(float(rate))
        nxt += dt
    return times, vals


def _estimate_state(
    model: Model, batch: BatchData, params: dict[str, float], settings: FitSettings
):
    """Initial states of a running batch from its samples so far, kinetics fixed."""
    s = replace(settings, fitted=())
    prob = _Problem(model, [batch], s, params)
    x0 = prob.initial_guess()
    lo, hi = x0 - np.log(3.0), x0 + np.log(3.0)
    sol = least_squares(
        prob.fun,
        x0,
        jac=prob.jac,
        bounds=(lo, hi),
        method="trf",
        x_scale="jac",
        ftol=1e-8,
        xtol=1e-8,
        max_nfev=50,
    )
    prob.reweight(sol.x)
    sol = least_squares(
        prob.fun,
        sol.x,
        jac=prob.jac,
        bounds=(lo, hi),
        method="trf",
        x_scale="jac",
        ftol=1e-8,
        xtol=1e-8,
        max_nfev=50,
    )
    res, J = prob.evaluate(sol.x, jac=True)
    s2 = max(float(res @ res) / max(len(res) - len(sol.x), 1), 1.0)
    cov = s2 * np.linalg.pinv(J.T @ J)
    return sol.x, cov, prob


def forecast_batch(
    lake: Lake,
    batch_id: str,
    model: str = "cho_fedbatch",
    version: int | None = None,
    as_of=None,
    n_draws: int = DEFAULT_DRAWS,
    seed: int = DEFAULT_SEED,
    policy: FuturePolicy = FuturePolicy(),
    harvest_h: float | None = None,
) -> Forecast:
    """p10 / p50 / p90 bands of one batch up to its harvest, from the champion (or `version`).

    `as_of` defaults to the batch's latest data; `harvest_h` fixes the harvest time instead of
    drawing it from completed batches. The steps are those of the module docstring.
    """
    reg = Registry(lake)
    rec = reg.champion(model) if version is None else reg.version(model, version)
    if rec is None:
        raise LookupError(f"no champion of {model!r} in the registry: run `batchtwin fit` first")
    version = int(rec["version"])
    m = load_model(model)
    settings = reg.settings_of(model, version)
    pt = reg.parameters(model, version)
    params = dict(zip(pt["name"], pt["value"].astype(float), strict=True))
    fitted = list(settings.fitted)
    sd = pt.set_index("name").loc[fitted, "sd_log"].to_numpy(float)
    corr = _corr_of(reg, model, version, fitted)
    cov_k = corr * np.outer(sd, sd)

    as_of_ts = latest_data_ts(lake, batch_id) if as_of is None else _utc(as_of)
    (batch,) = load_batches(lake, m, [batch_id], as_of=as_of_ts)
    if batch.samples.empty:
        raise ValueError(f"batch {batch_id} has no samples reported by {as_of_ts}")
    # "final" means at harvest, and when the harvest happens varies: each draw is harvested at
    # the culture duration of a completed batch drawn at random (a fixed harvest_h: no spread)
    durations = (
        np.array([harvest_h]) if harvest_h is not None else harvest_durations(lake, batch.product)
    )
    end_h = float(np.median(durations))
    now_h = (as_of_ts - batch.inoculation_ts).total_seconds() / 3600.0
    x_ic, cov_ic, prob = _estimate_state(m, batch, params, settings)

    rng = np.random.default_rng(seed)
    k = len(fitted)
    z_k = (
        rng.multivariate_normal(np.zeros(k), cov_k, size=n_draws, method="svd")
        if k
        else np.zeros((n_draws, 0))
    )
    z_ic = rng.multivariate_normal(np.zeros(len(x_ic)), cov_ic, size=n_draws, method="svd")
    z_k[0], z_ic[0] = 0.0, 0.0  # member 0 is the point forecast
    p = {n: np.full(n_draws, v) for n, v in params.items()}
    for j, n in enumerate(fitted):
        p[n] = params[n] * np.exp(z_k[:, j])
    y0 = np.repeat(batch.y0[:, None], n_draws, axis=1)
    y0[prob.ic_idx, :] = np.exp(x_ic[:, None] + z_ic.T)

    grid = np.unique(
        np.r_[
            np.arange(np.ceil(batch.t0_h / GRID_H) * GRID_H, end_h, GRID_H),
            batch.t0_h,
            min(now_h, end_h),
            end_h,
        ]
    )
    grid = grid[(grid >= batch.t0_h) & (grid <= end_h)]
    harvest_at = np.maximum(rng.choice(durations, size=n_draws), batch.t0_h)
    full = np.unique(np.r_[grid, harvest_at])
    y = _integrate(m, p, y0, batch, full, now_h, float(full[-1]), policy)
    obs = m.observe(y)  # analyte -> members × times
    on_grid = np.searchsorted(full, grid)
    at_harvest = np.searchsorted(full, harvest_at)
    rows = []
    for analyte, v in obs.items():
        v = np.asarray(v)
        q = np.nanpercentile(v[:, on_grid], [10, 50, 90], axis=0)
        for i, t in enumerate(grid):
            rows.append(
                (
                    analyte,
                    "trajectory",
                    float(t),
                    float(q[0, i]),
                    float(q[1, i]),
                    float(q[2, i]),
                    bool(t <= now_h),
                )
            )
        fin = v[np.arange(n_draws), at_harvest]
        qf = np.nanpercentile(fin, [10, 50, 90])
        rows.append((analyte, "at_harvest", end_h, float(qf[0]), float(qf[1]), float(qf[2]), False))
    bands = pd.DataFrame(
        rows, columns=["analyte", "kind", "t_batch_h", "p10", "p50", "p90", "observed"]
    )
    return Forecast(
        batch_id,
        model,
        version,
        as_of_ts,
        now_h,
        end_h,
        bands,
        batch.samples,
        {a: np.asarray(v)[np.arange(n_draws), at_harvest] for a, v in obs.items()},
    )


def _integrate(
    m: Model,
    p,
    y0,
    batch: BatchData,
    grid: np.ndarray,
    now_h: float,
    end_h: float,
    policy: FuturePolicy,
) -> np.ndarray:
    """States (n_states × draws × grid) from t0 to end_h: known inputs, then the future policy."""
    t0 = batch.t0_h
    known = batch.inputs
    cut_h = min(max(now_h, t0), end_h)
    # known past: simulate to the as-of time on the model clock (from t0)
    past = grid[grid <= cut_h]
    t_eval = np.unique(np.r_[past, cut_h]) - t0
    y = simulate_many(m, p, y0, shift_inputs(known, t0), t_eval)
    out = np.full((y.shape[0], y.shape[1], grid.size), np.nan)
    idx = np.searchsorted(t_eval + t0, past)
    out[:, :, : past.size] = y[:, :, idx]
    state = np.maximum(y[:, :, -1], 0.0)
    if cut_h >= end_h:
        return out
    # future: the feed continues its schedule; boluses follow the glucose rule
    ft, fr = _future_feed(known.feed_times_h, known.feed_rates_l_h, cut_h, end_h)
    rate_now = known.feed_rate(cut_h)
    feed_times = [cut_h, *ft]
    feed_rates = [rate_now, *fr]
    last_sample = float(batch.samples["t_batch_h"].max())
    checks = [
        t
        for t in np.arange(last_sample + policy.sample_every_h, end_h, policy.sample_every_h)
        if t > cut_h
    ]
    comp = BOLUS_MATERIALS.get(policy.material, {})
    conc_g_l = comp.get("G", 0.0) * GLUCOSE_G_PER_MMOL
    names = m.state_names()
    gi, vi = names.index("G"), names.index("V")
    events = sorted(
        {
            *(checks),
            *(c + policy.bolus_delay_h for c in checks if c + policy.bolus_delay_h < end_h),
            end_h,
        }
    )
    pending = None
    a = cut_h
    for b in events:
        seg = grid[(grid > a) & (grid <= b)]
        t_eval = np.unique(np.r_[seg, b]) - a
        fi = Inputs(
            tuple(max(t - a, 0.0) for t in feed_times if t < b),
            tuple(r for t, r in zip(feed_times, feed_rates, strict=True) if t < b),
        )
        # the rate running at a holds from the segment start
        times = np.asarray(fi.feed_times_h)
        rates = np.asarray(fi.feed_rates_l_h)
        run = times <= 0
        if run.any():
            times = np.r_[0.0, times[~run]]
            rates = np.r_[rates[run][-1], rates[~run]]
        y = simulate_many(m, p, state, Inputs(tuple(times), tuple(rates)), t_eval)
        if seg.size:
            out[:, :, np.searchsorted(grid, seg)] = y[:, :, np.searchsorted(t_eval + a, seg)]
        state = np.maximum(y[:, :, -1], 0.0)
        if pending is not None and np.isclose(b, pending[0]):
            vol = pending[1]
            v_new = state[vi] + vol
            state = state * (state[vi] / v_new)
            state[vi] = v_new
            state[gi] += comp.get("G", 0.0) * vol / v_new
            pending = None
        if any(np.isclose(b, c) for c in checks) and conc_g_l > policy.target_g_l:
            g = state[gi] * GLUCOSE_G_PER_MMOL
            vol = np.where(
                g < policy.trigger_g_l,
                state[vi] * (policy.target_g_l - g) / (conc_g_l - policy.target_g_l),
                0.0,
            )
            pending = (b + policy.bolus_delay_h, vol)
        a = b
    return out


def _corr_of(reg: Registry, model: str, version: int, fitted: list[str]) -> np.ndarray:
    """The fitted parameters' correlation, stored in the version's metrics."""
    import json

    metrics = json.loads(reg.version(model, version)["metrics"])
    c = metrics.get("correlation")
    if not c:
        return np.eye(len(fitted))
    df = pd.DataFrame(c)
    return df.loc[fitted, fitted].to_numpy(float)


def _utc(value) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def write_forecast(lake: Lake, fc: Forecast) -> int:
    """Append the forecast to the `forecasts` table (one file per version, batch and as-of)."""
    df = fc.bands.assign(
        model=fc.model,
        version=fc.version,
        batch_id=fc.batch_id,
        as_of=fc.as_of,
        created_at=pd.Timestamp.now(tz="UTC"),
    )
    df["as_of"] = pd.to_datetime(df["as_of"], utc=True).astype("datetime64[us, UTC]")
    df["created_at"] = pd.to_datetime(df["created_at"], utc=True).astype("datetime64[us, UTC]")
    df["version"] = df["version"].astype("int64")
    cols = [
        "model",
        "version",
        "batch_id",
        "as_of",
        "analyte",
        "kind",
        "t_batch_h",
        "p10",
        "p50",
        "p90",
        "observed",
        "created_at",
    ]
    Registry(lake).write_forecast(df[cols], fc.model, fc.version, fc.batch_id, fc.as_of)
    return len(df)


def forecast_running(
    lake: Lake,
    model: str = "cho_fedbatch",
    n_draws: int = DEFAULT_DRAWS,
    seed: int = DEFAULT_SEED,
    products: Sequence[str] | None = None,
) -> list[Forecast]:
    """Forecast and record every running batch with samples (of `products`, when given)."""
    out = []
    for b in running_batches(lake, products):
        try:
            fc = forecast_batch(lake, b, model, n_draws=n_draws, seed=seed)
        except ValueError:
            continue  # no samples yet: nothing to start from
        write_forecast(lake, fc)
        out.append(fc)
    return out
