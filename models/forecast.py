"""Forecasts for running batches from the champion model, with parameter uncertainty.

For a running batch at time `as_of` (default: the latest data the lake holds for it):
1. load the batch as the plant knew it then (samples reported by as_of, inputs up to as_of);
2. estimate its initial state from all of those samples with the champion's kinetics fixed
   (the same weighted least squares as the fit, over the initial states only), so the
   forecast starts from what the batch has shown so far rather than from one noisy sample;
3. draw `n_draws` kinetic parameter sets from the champion's multivariate normal in log
   space and initial states from the estimate's covariance (fixed seed), and integrate every
   draw as one ensemble: known inputs up to as_of, then the recipe's future inputs: each
   feed's schedule continued (same interval, same step ratio) and the catalog's bolus rule
   (`bolus_rule`: the dosing operators apply at the routine sample), if it has one;
4. report p10 / p50 / p90 per observable (named by its lab analyte) on a grid up to the
   planned harvest, the median culture duration (clock start to HARVEST start) of completed
   batches of the product
   (rows of kind 'trajectory'), and at harvest (one row per analyte of kind 'at_harvest'):
   since harvest day varies, each draw is harvested at the duration of a completed batch
   drawn at random, so the final-titer band includes the harvest-time spread.

The band is the uncertainty of the model's parameters and of the batch's state; it does not
include assay noise (it is a band for the true value, not for the next lab result).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from lake.layout import Lake
from lake.query import query
from models.base import Bolus, Feed, Inputs, Model, simulate_many
from models.catalog import BolusRule, ModelSpec
from models.data import BatchData, clock_cte, load_batches, shift_inputs
from models.fit import FitSettings, _Problem
from models.registry import Registry
from schemas.tables import ENDED_STATUSES

GRID_H = 6.0
DEFAULT_DRAWS = 200
DEFAULT_SEED = 20260316


@dataclass
class Forecast:
    batch_id: str
    product: str
    model: str
    version: int
    as_of: pd.Timestamp
    now_h: float  # t_batch_h of as_of
    harvest_h: float
    bands: pd.DataFrame  # analyte, kind, t_batch_h, p10, p50, p90, observed
    units: dict[str, str]  # analyte -> unit of its bands
    samples: pd.DataFrame  # the observations used
    draws_final: dict[str, np.ndarray]  # analyte -> values at each draw's harvest time

    def final(self, analyte: str) -> tuple[float, float, float]:
        """(p10, p50, p90) of the analyte at harvest."""
        b = self.bands[
            (self.bands["analyte"] == analyte) & (self.bands["kind"] == "at_harvest")
        ].iloc[0]
        return float(b.p10), float(b.p50), float(b.p90)


def harvest_durations(lake: Lake, product: str, clock: str | None = None) -> np.ndarray:
    """Hours from t = 0 (the catalog's `clock` phase, default inoculation) to the HARVEST phase
    start of every completed batch of `product`."""
    df = query(
        lake,
        f"""{clock_cte("b.product = $product AND b.status = 'complete'")}
        SELECT (epoch_us(p.start_ts) - epoch_us(c.t0)) / 3.6e9 AS h
        FROM phases p JOIN clock c USING (batch_id)
        WHERE p.level = 'phase' AND p.phase = 'HARVEST'
        ORDER BY p.batch_id""",
        {"product": product, "phase": clock},
    )
    h = df["h"].dropna().to_numpy(float)
    if h.size == 0:
        raise ValueError(
            f"no completed batch of {product} with a HARVEST phase: cannot plan the harvest"
        )
    return h


def running_batches(lake: Lake, products: Sequence[str] | None = None) -> list[str]:
    """Batches still running (of `products`, when given)."""
    return query(
        lake,
        """SELECT batch_id FROM batches WHERE NOT list_contains($ended, status)
             AND ($products IS NULL OR list_contains($products, product)) ORDER BY 1""",
        {
            "products": list(products) if products is not None else None,
            "ended": list(ENDED_STATUSES),
        },
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
    model: str | None = None,
    version: int | None = None,
    as_of=None,
    n_draws: int = DEFAULT_DRAWS,
    seed: int = DEFAULT_SEED,
    harvest_h: float | None = None,
) -> Forecast:
    """p10 / p50 / p90 bands of one batch up to its harvest, from its product's champion (or
    `model`'s newest version, or `model` `version`).

    `as_of` defaults to the batch's latest data; `harvest_h` fixes the harvest time instead of
    drawing it from completed batches. The steps are those of the module docstring.
    """
    reg = Registry(lake)
    product = _product_of(lake, batch_id)
    if model is None:
        rec = reg.champion(product)
        if rec is None:
            raise LookupError(
                f"no champion model for {product} (batch {batch_id}): "
                "its catalog entry is missing or no fit was promoted yet (`batchtwin status`)"
            )
    elif version is None:  # the model's newest version for this product
        versions = reg.versions(product, model)
        if versions.empty:
            raise LookupError(f"no version of {model!r} for {product} in the registry")
        rec = versions.iloc[-1].to_dict()
    else:
        rec = reg.version(product, model, version)
    model, version = str(rec["model"]), int(rec["version"])
    settings = reg.settings_of(product, model, version)
    spec = settings.spec()
    m = spec.model
    pt = reg.parameters(product, model, version)
    params = dict(zip(pt["name"], pt["value"].astype(float), strict=True))
    fitted = list(settings.fitted)
    sd = pt.set_index("name").loc[fitted, "sd_log"].to_numpy(float)
    corr = _corr_of(rec, fitted)
    cov_k = corr * np.outer(sd, sd)

    as_of_ts = latest_data_ts(lake, batch_id) if as_of is None else _utc(as_of)
    (batch,) = load_batches(lake, spec, [batch_id], as_of=as_of_ts)
    if batch.samples.empty:
        raise ValueError(f"batch {batch_id} has no samples reported by {as_of_ts}")
    # "final" means at harvest, and when the harvest happens varies: each draw is harvested at
    # the culture duration of a completed batch drawn at random (a fixed harvest_h: no spread)
    durations = (
        np.array([harvest_h])
        if harvest_h is not None
        else harvest_durations(lake, product, spec.clock)
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
    y = _integrate(spec, p, y0, batch, full, now_h, float(full[-1]))
    obs = {spec.analyte(o): np.asarray(v) for o, v in m.observe(y).items()}
    on_grid = np.searchsorted(full, grid)
    at_harvest = np.searchsorted(full, harvest_at)
    rows = []
    for analyte, v in obs.items():
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
    samples = batch.samples.assign(analyte=batch.samples["analyte"].map(spec.analyte))
    return Forecast(
        batch_id,
        product,
        model,
        version,
        as_of_ts,
        now_h,
        end_h,
        bands,
        {spec.analyte(o.name): o.uom for o in m.observables},
        samples,
        {a: v[np.arange(n_draws), at_harvest] for a, v in obs.items()},
    )


def _product_of(lake: Lake, batch_id: str) -> str:
    df = query(lake, "SELECT product FROM batches WHERE batch_id = ?", [batch_id])
    if df.empty:
        raise KeyError(f"batch {batch_id!r} is not in the lake")
    product = df["product"].iloc[0]
    if product is None or pd.isna(product):
        raise ValueError(f"batch {batch_id} has no product: no model applies to it")
    return str(product)


def _integrate(
    spec: ModelSpec,
    p,
    y0,
    batch: BatchData,
    grid: np.ndarray,
    now_h: float,
    end_h: float,
) -> np.ndarray:
    """States (n_states × draws × grid) from t0 to end_h: known inputs, then the future: each
    feed continues its schedule, boluses follow the catalog's rule."""
    m = spec.model
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
    feeds = []
    for f in known.feeds:
        ft, fr = _future_feed(f.times_h, f.rates_l_h, cut_h, end_h)
        feeds.append(Feed(f.name, (cut_h, *ft), (f.rate(cut_h), *fr), f.composition))
    future = Inputs(tuple(feeds))
    rule = spec.bolus_rule
    last_sample = float(batch.samples["t_batch_h"].max())
    checks = (
        [
            t
            for t in np.arange(last_sample + rule.every_h, end_h, rule.every_h)
            if t > cut_h and t + rule.delay_h < end_h
        ]
        if rule
        else []
    )
    events = sorted({*checks, *(c + rule.delay_h for c in checks if rule), end_h})
    pending = None
    a = cut_h
    for b in events:
        seg = grid[(grid > a) & (grid <= b)]
        t_eval = np.unique(np.r_[seg, b]) - a
        y = simulate_many(m, p, state, shift_inputs(future, a), t_eval)
        if seg.size:
            out[:, :, np.searchsorted(grid, seg)] = y[:, :, np.searchsorted(t_eval + a, seg)]
        state = np.maximum(y[:, :, -1], 0.0)
        if rule is not None and pending is not None and np.isclose(b, pending[0]):
            state = _dose(m, state, pending[1], spec, rule)
            pending = None
        if rule is not None and any(np.isclose(b, c) for c in checks):
            pending = (b + rule.delay_h, _dose_volume(m, state, spec, rule))
        a = b
    return out


def _bolus_level(m: Model, spec: ModelSpec, rule: BolusRule) -> float:
    """The observable's value in the bolus liquid itself (its composition as a state), which
    the dosing arithmetic needs; the observable is taken as proportional to its states."""
    names = m.state_names()
    y = np.zeros((len(names), 1))
    for state, conc in spec.boluses[rule.material].items():
        y[names.index(state), 0] = conc
    y[names.index(m.volume_state), 0] = 1.0
    return float(np.asarray(m.observe(y)[rule.observable])[0])


def _dose_volume(m: Model, state: np.ndarray, spec: ModelSpec, rule: BolusRule) -> np.ndarray:
    """Per draw, the volume of the rule's material that brings the observable to `to` (0 where
    it is not below `below`)."""
    level = _bolus_level(m, spec, rule)
    if level <= rule.to:
        return np.zeros(state.shape[1])
    now = np.asarray(m.observe(state[:, :, None])[rule.observable])[:, 0]
    vol = state[m.state_names().index(m.volume_state)]
    return np.where(now < rule.below, vol * (rule.to - now) / (level - rule.to), 0.0)


def _dose(
    m: Model, state: np.ndarray, volumes: np.ndarray, spec: ModelSpec, rule: BolusRule
) -> np.ndarray:
    """Mix each draw's dose (one volume per draw) into the broth."""
    comp = spec.boluses[rule.material]
    out = state.copy()
    for j, vol in enumerate(volumes):
        if vol > 0:
            out[:, j : j + 1] = m.apply_bolus(state[:, j : j + 1], Bolus(0.0, float(vol), "", comp))
    return out


def _corr_of(rec: dict, fitted: list[str]) -> np.ndarray:
    """The fitted parameters' correlation, stored in the version's metrics."""
    metrics = json.loads(rec["metrics"])
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
        product=fc.product,
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
        "product",
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
    Registry(lake).write_forecast(df[cols], fc.product, fc.model, fc.version, fc.batch_id, fc.as_of)
    return len(df)


def forecast_running(
    lake: Lake,
    products: Sequence[str],
    n_draws: int = DEFAULT_DRAWS,
    seed: int = DEFAULT_SEED,
) -> tuple[list[Forecast], list[str]]:
    """Forecast and record every running batch of `products` that has a champion. Returns the
    forecasts and one line per batch that could not be forecast, with the reason."""
    reg = Registry(lake)
    out, skipped = [], []
    for product in products:
        if reg.champion(product) is None:
            continue
        for b in running_batches(lake, [product]):
            try:
                fc = forecast_batch(lake, b, n_draws=n_draws, seed=seed)
            except (ValueError, LookupError, ArithmeticError, RuntimeError) as err:
                skipped.append(f"{b}: {' '.join(str(err).split())[:200]}")
                continue
            write_forecast(lake, fc)
            out.append(fc)
    return out, skipped
