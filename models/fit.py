"""Parameter estimation: all training batches at once, shared kinetics, per-batch initial state.

    fitter = Fitter(spec, seed=7, n_starts=3).fit(load_batches(lake, spec, ids))
    fitter.intervals_        # value, stderr, 95 % interval, identifiable, per parameter

`spec` is the site's catalog entry (models.catalog): which analytes are the model's
observables, the feeds and boluses, which parameters are fitted.

Weighted least squares on the offline samples: each residual is (model - observed) / sd,
with sd from the assay's coefficient of variation and a floor at the reporting resolution
(the catalog's `cv` and `floor`), so every analyte counts by its precision, not its unit. The
multistart uses sd from the observations; the best optimum is then polished once with sd
from the model's predictions (observation-scaled relative weights bias estimates low).
Kinetic parameters are fitted as logarithms within the model's bounds (they span orders of
magnitude and must stay positive), with scipy's trust-region reflective method and a fixed-
seed multistart (literature values first, then random points within a factor 3). Each
batch's initial state starts from its first sample and is fitted too (the model's
`fit_initial`), because a 3-7 % assay error there biases the yields.

The Jacobian comes from forward differences integrated as one ensemble per batch
(`models.base.simulate_many`): the perturbed runs share the base run's steps, so the
derivatives carry no step-size noise and a Jacobian costs about one simulation. Batches
are simulated in parallel by a small process pool (`workers`, default 2); results are
identical with any number of workers. Scripts that fit with workers > 1 need the usual
`if __name__ == "__main__":` guard (the pool spawns fresh interpreters).

Uncertainty: covariance = s² (JᵀJ)⁻¹ in log space (s² the reduced chi-square), intervals
exp(log θ ± 1.96 σ), the correlation matrix, and flags for parameters the data cannot
identify. With `profile`, each fitted parameter's likelihood profile is checked at the ends
of its interval: the parameter is fixed there and the others (and the initial states)
re-optimized; for an identifiable parameter the weighted cost rises by about 1.96² = 3.84
(in units of s²), a flat profile means the data do not pin it down whatever the covariance
says. Fixed parameters are probed at the optimum (would they be identifiable if freed?).
Validation: k-fold over batches, refitting without the held-out batches (warm-started) and
predicting them from their measured initial state.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, overload

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from models.base import Inputs, Model, SolverSettings, simulate_many
from models.catalog import ModelSpec, parse
from models.data import BatchData, fingerprint, training_frame

CORR_LIMIT = 0.95
SD_LOG_LIMIT = 0.1  # σ of log θ above this (±20 % at 95 %) means the data do not pin θ down
FD_STEP = 1e-6  # forward-difference step in log θ
# Initial states fitted per batch (the model's `fit_initial`, or the catalog's) move in log
# space within a factor IC_RANGE of the measured value, from at least the state's floor.
IC_RANGE = 3.0
# The fitter integrates with looser tolerances than the demo simulator: 1e-5 relative is
# three orders below the best assay CV, and it halves the cost of a fit.
FIT_SOLVER = SolverSettings(method="LSODA", rtol=1e-5, atol=1e-8, max_step_h=24.0)
PENALTY = 1e3  # residual for a run the solver could not integrate
# at an interval's end the profile rises by 3.84 for a quadratic likelihood; below half of that
# the interval is far too narrow (the likelihood is flat there) and the parameter is not
# identifiable
PROFILE_MIN_RISE = 1.92
PROFILE_MAX_NFEV = 30
MIN_BATCHES_FOR_POOL = 4  # below this, starting worker processes costs more than it saves


@dataclass(frozen=True)
class FitSettings:
    """Everything besides the data that determines a fit (stored with each registry version)."""

    fitted: tuple[str, ...]
    fixed: dict[str, float]
    seed: int
    n_starts: int
    fit_initial: tuple[str, ...]
    folds: int
    solver: SolverSettings
    assay_errors: dict[str, tuple[float, float]]  # observable -> (cv, floor)
    product: str = ""
    catalog: str = "{}"  # the catalog entry (JSON) that mapped the lake to the model
    profile: bool = False  # likelihood profiles checked at the interval ends

    def to_json(self) -> dict:
        d = asdict(self)
        d["assay_errors"] = {k: list(v) for k, v in self.assay_errors.items()}
        d["fitted"] = list(self.fitted)
        d["fit_initial"] = list(self.fit_initial)
        return d

    @classmethod
    def from_json(cls, d: Mapping) -> FitSettings:
        return cls(
            fitted=tuple(d["fitted"]),
            fixed={k: float(v) for k, v in d["fixed"].items()},
            seed=int(d["seed"]),
            n_starts=int(d["n_starts"]),
            fit_initial=tuple(d["fit_initial"]),
            folds=int(d["folds"]),
            solver=SolverSettings(**d["solver"]),
            assay_errors={k: tuple(v) for k, v in d["assay_errors"].items()},
            product=str(d.get("product", "")),
            catalog=str(d.get("catalog", "{}")),
            profile=bool(d.get("profile", False)),
        )

    def spec(self) -> ModelSpec:
        """The catalog entry this fit used, parsed again (a refit reads the lake through it)."""
        return parse(self.product, json.loads(self.catalog))


@dataclass
class FitResult:
    model: str
    product: str
    params: dict[str, float]  # every model parameter, fitted or fixed
    fitted: tuple[str, ...]
    bounds: dict[str, tuple[float, float]]
    units: dict[str, str]
    sd_log: dict[str, float]  # σ of log θ for fitted parameters
    corr: pd.DataFrame  # correlation of the fitted log-parameters
    identifiable: dict[str, bool]  # fitted and probed parameters
    probe: pd.DataFrame  # fixed parameters: would they be identifiable if freed?
    profile: pd.DataFrame  # name, rise_low, rise_high: the profile's rise at the interval ends
    initial: dict[str, dict[str, float]]  # batch -> fitted initial states
    cov_log: np.ndarray  # covariance of the fitted log-parameters (fitted order)
    cost: float
    n_obs: int
    metrics: dict
    settings: FitSettings
    training_batches: tuple[str, ...]
    data_fingerprint: str
    predictions: pd.DataFrame  # batch_id, analyte, t_batch_h, predicted, observed
    starts: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> pd.DataFrame:
        # fixed parameters that were not probed have no identifiability verdict (None)
        rows: list[tuple[str, float, float, float, float, bool, bool | None, str]] = []
        for name, value in self.params.items():
            if name in self.fitted:
                s = self.sd_log[name]
                lo, hi = value * np.exp(-1.96 * s), value * np.exp(1.96 * s)
                rows.append(
                    (
                        name,
                        value,
                        value * s,
                        lo,
                        hi,
                        False,
                        self.identifiable[name],
                        self.units[name],
                    )
                )
            else:
                rows.append(
                    (
                        name,
                        value,
                        np.nan,
                        np.nan,
                        np.nan,
                        True,
                        self.identifiable.get(name),
                        self.units[name],
                    )
                )
        return pd.DataFrame(
            rows,
            columns=[
                "name",
                "value",
                "stderr",
                "ci_low",
                "ci_high",
                "fixed",
                "identifiable",
                "uom",
            ],
        )

    def within_bounds(self, margin: float = 1e-3) -> list[str]:
        """Fitted parameters at (or beyond) a bound, within `margin` in log space."""
        out = []
        for n in self.fitted:
            lo, hi = self.bounds[n]
            x = np.log(self.params[n])
            if x <= np.log(lo) + margin or x >= np.log(hi) - margin:
                out.append(n)
        return out


@dataclass(frozen=True)
class _PreparedBatch:
    """One batch's observations as the residuals need them, computed once per problem."""

    times: np.ndarray  # distinct sample times on the model clock (h), sorted
    time_idx: np.ndarray  # per observation: its index into `times`
    analyte_idx: np.ndarray  # per observation: its index into the model's observables
    observed: np.ndarray  # per observation: the value, in the observable's unit
    sd: np.ndarray  # per observation: the assay error that scales its residual
    inputs: Inputs  # feed and boluses on the model clock
    samples: pd.DataFrame  # the sample rows behind the observations, in the same order


def _simulate_observe(
    model: Model,
    analytes: Sequence[str],
    p: dict,
    y0: np.ndarray,
    inputs: Inputs,
    times: np.ndarray,
    solver: SolverSettings,
) -> np.ndarray | None:
    """Observables (analytes × members × times) of one batch's ensemble, None if the solver failed.

    A module-level function so a process pool can run batches in parallel; it is pure, so
    the answer does not depend on which process computed it.
    """
    try:
        y = simulate_many(model, p, y0, inputs, times, solver)
    except RuntimeError:
        return None
    o = model.observe(y)
    return np.stack([np.asarray(o[a]) for a in analytes])


class _Problem:
    """The weighted residuals of a set of batches as a function of the log-parameters.

    x = [log kinetic parameters (settings.fitted), then per batch log initial states
    (settings.fit_initial)]. Residuals and Jacobian come from one ensemble per batch.
    """

    def __init__(
        self,
        model: Model,
        batches: Sequence[BatchData],
        settings: FitSettings,
        base: Mapping[str, float],
    ):
        self.model, self.batches, self.s = model, list(batches), settings
        self.base = dict(base)
        self.k = len(settings.fitted)
        names = model.state_names()
        self.ic_idx = [names.index(n) for n in settings.fit_initial]
        self.nic = len(self.ic_idx)
        analytes = [o.name for o in model.observables]
        self.prep: list[_PreparedBatch] = []
        for b in self.batches:
            smp = b.samples[b.samples["analyte"].isin(list(settings.assay_errors))]
            rel = np.clip(np.round(smp["t_batch_h"].to_numpy(float) - b.t0_h, 9), 0.0, None)
            times = np.unique(rel)
            ti = np.searchsorted(times, rel)
            ai = np.array([analytes.index(a) for a in smp["analyte"]], dtype=int)
            obs = smp["value"].to_numpy(float)
            cv = np.array([settings.assay_errors[a][0] for a in smp["analyte"]])
            floor = np.array([settings.assay_errors[a][1] for a in smp["analyte"]])
            sd = np.sqrt((cv * np.abs(obs)) ** 2 + floor**2)
            self.prep.append(_PreparedBatch(times, ti, ai, obs, sd, b.model_inputs(), smp))
        self.analytes = analytes
        self.n_obs = sum(len(p.observed) for p in self.prep)
        self._cache: tuple[tuple, np.ndarray, np.ndarray | None] | None = None
        self.pool: Executor | None = None  # batches are simulated in parallel when set

    def n_x(self) -> int:
        return self.k + self.nic * len(self.batches)

    def reweight(self, x: np.ndarray) -> None:
        """Assay errors from the model's predictions at x instead of the observations.

        Relative errors scaled by the observed value give low readings more weight and bias
        every estimate downwards (by about CV² per point, amplified through the glucose
        balance); one reweighting at the first optimum removes most of it.
        """
        preds = self.predictions(x)["predicted"].to_numpy()
        off, prep = 0, []
        for pb in self.prep:
            pr = preds[off : off + len(pb.observed)]
            off += len(pb.observed)
            cv = np.array([self.s.assay_errors[a][0] for a in pb.samples["analyte"]])
            floor = np.array([self.s.assay_errors[a][1] for a in pb.samples["analyte"]])
            prep.append(replace(pb, sd=np.sqrt((cv * np.abs(pr)) ** 2 + floor**2)))
        self.prep = prep
        self._cache = None

    def initial_guess(self) -> np.ndarray:
        """Measured initial states (floored), in log space, batch after batch."""
        names = self.model.state_names()
        return np.array(
            [
                np.log(max(b.y0[i], self.model.state(names[i]).floor))
                for b in self.batches
                for i in self.ic_idx
            ]
        )

    def params_of(self, x: np.ndarray) -> dict[str, float]:
        p = dict(self.base)
        p.update({n: float(np.exp(v)) for n, v in zip(self.s.fitted, x[: self.k], strict=True)})
        return p

    def y0_of(self, x: np.ndarray, bi: int) -> np.ndarray:
        y0 = self.batches[bi].y0.copy()
        if self.nic:
            y0[self.ic_idx] = np.exp(x[self.k + bi * self.nic : self.k + (bi + 1) * self.nic])
        return y0

    def _observe(self, y: np.ndarray) -> np.ndarray:
        o = self.model.observe(y)
        return np.stack([np.asarray(o[a]) for a in self.analytes])  # analytes × members × times

    @overload
    def evaluate(
        self, x: np.ndarray, jac: Literal[True], extra: Sequence[str] = ()
    ) -> tuple[np.ndarray, np.ndarray]: ...

    @overload
    def evaluate(
        self, x: np.ndarray, jac: Literal[False], extra: Sequence[str] = ()
    ) -> tuple[np.ndarray, None]: ...

    def evaluate(
        self, x: np.ndarray, jac: bool, extra: Sequence[str] = ()
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Residuals at x and, with `jac`, their Jacobian; `extra` (fixed parameter names) adds
        columns for d r / d log θ of parameters that are not fitted (the identifiability probe)."""
        key = (x.tobytes(), jac, tuple(extra))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        res_parts, jac_rows = [], []
        p0 = self.params_of(x)
        nx = self.n_x()
        tasks, cols_of = [], []
        for bi, pb in enumerate(self.prep):
            kin = list(range(self.k)) + [nx + e for e in range(len(extra))]
            ics = [self.k + bi * self.nic + j for j in range(self.nic)]
            cols = kin + ics if jac else []
            m = 1 + len(cols)
            p = {n: np.full(m, v) for n, v in p0.items()}
            y0 = np.repeat(self.y0_of(x, bi)[:, None], m, axis=1)
            for j, c in enumerate(cols, start=1):
                if c < self.k:
                    name = self.s.fitted[c]
                    p[name][j] = np.exp(x[c] + FD_STEP)
                elif c >= nx:
                    name = extra[c - nx]
                    p[name][j] = p0[name] * np.exp(FD_STEP)
                else:
                    state = self.ic_idx[(c - self.k) % self.nic]
                    y0[state, j] = np.exp(x[c] + FD_STEP)
            tasks.append((self.model, self.analytes, p, y0, pb.inputs, pb.times, self.s.solver))
            cols_of.append(cols)
        if self.pool is not None and len(tasks) > 1:
            outs = list(self.pool.map(_simulate_observe, *zip(*tasks, strict=True)))
        else:
            outs = [_simulate_observe(*t) for t in tasks]
        for pb, cols, o in zip(self.prep, cols_of, outs, strict=True):
            m = 1 + len(cols)
            n_obs = len(pb.observed)
            if o is None:
                r = np.full((n_obs, m), PENALTY)
            else:
                pred = o[pb.analyte_idx, :, pb.time_idx]  # observations × members
                r = (pred - pb.observed[:, None]) / pb.sd[:, None]
                r = np.where(np.isfinite(r), r, PENALTY)
            res_parts.append(r[:, 0])
            if jac:
                block = np.zeros((n_obs, nx + len(extra)))
                block[:, cols] = (r[:, 1:] - r[:, :1]) / FD_STEP
                jac_rows.append(block)
        res = np.concatenate(res_parts) if res_parts else np.zeros(0)
        J = np.vstack(jac_rows) if jac else None
        self._cache = (key, res, J)
        return res, J

    def fun(self, x):
        return self.evaluate(x, jac=True)[0]

    def jac(self, x):
        return self.evaluate(x, jac=True)[1]

    def predictions(self, x: np.ndarray) -> pd.DataFrame:
        p0 = self.params_of(x)
        frames = []
        for bi, (b, pb) in enumerate(zip(self.batches, self.prep, strict=True)):
            y = simulate_many(self.model, p0, self.y0_of(x, bi), pb.inputs, pb.times, self.s.solver)
            pred = self._observe(y)[pb.analyte_idx, 0, pb.time_idx]
            frames.append(
                pd.DataFrame(
                    {
                        "batch_id": b.batch_id,
                        "analyte": pb.samples["analyte"].to_numpy(),
                        "t_batch_h": pb.samples["t_batch_h"].to_numpy(float),
                        "predicted": pred,
                        "observed": pb.observed,
                        "weighted_residual": (pred - pb.observed) / pb.sd,
                    }
                )
            )
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


class Fitter:
    """Estimator of a model's kinetic parameters from a set of batches, shaped like a
    scikit-learn estimator: configuration in the constructor, `fit(batches)` returns the
    fitter, the result in `result_` (and `params_`, `intervals_` for a glance).

    `spec` (the site's catalog entry, models.catalog) says which parameters are fitted, the
    values of the fixed ones, the states fitted per batch and each observable's assay error;
    `probe`: fixed parameters whose identifiability is checked at the optimum (default all);
    `profile`: check each fitted parameter's likelihood profile (2 short refits per parameter).
    """

    def __init__(
        self,
        spec: ModelSpec,
        seed: int = 20260316,
        n_starts: int = 3,
        folds: int = 3,
        solver: SolverSettings = FIT_SOLVER,
        probe: Sequence[str] | None = None,
        workers: int | None = None,
        profile: bool = False,
    ):
        self.spec = spec
        self.model = spec.model
        # processes simulating batches in parallel (BATCHTWIN_FIT_WORKERS, default up to 2);
        # the result does not depend on it
        default = os.environ.get("BATCHTWIN_FIT_WORKERS") or min(2, os.cpu_count() or 1)
        self.workers = int(default if workers is None else workers)
        self._pool: Executor | None = None
        self.settings = FitSettings(
            fitted=tuple(spec.fitted),
            fixed=dict(spec.fixed),
            seed=int(seed),
            n_starts=max(int(n_starts), 1),
            fit_initial=tuple(spec.fit_initial),
            folds=int(folds),
            solver=solver,
            assay_errors={o: (m.cv, m.floor) for o, m in spec.observables.items()},
            product=spec.product,
            catalog=spec.entry_json(),
            profile=bool(profile),
        )
        self.probe = tuple(spec.fixed) if probe is None else tuple(probe)

    @classmethod
    def from_settings(cls, settings: FitSettings, probe: Sequence[str] | None = None) -> Fitter:
        """The fitter a recorded version used: its catalog entry, seed, starts and solver."""
        return cls(
            settings.spec(),
            seed=settings.seed,
            n_starts=settings.n_starts,
            folds=settings.folds,
            solver=settings.solver,
            probe=probe,
        )

    @property
    def params_(self) -> dict[str, float]:
        return self.result_.params

    @property
    def intervals_(self) -> pd.DataFrame:
        return self.result_.table()

    # ------------------------------------------------------------------ fitting

    def _problem(
        self, batches: Sequence[BatchData], settings: FitSettings | None = None, base=None
    ) -> _Problem:
        prob = _Problem(
            self.model,
            batches,
            settings or self.settings,
            base or {**self.model.defaults(), **self.settings.fixed},
        )
        prob.pool = self._pool
        return prob

    def _bounds(self, prob: _Problem) -> tuple[np.ndarray, np.ndarray]:
        lo = [np.log(self.model.parameter(n).bounds[0]) for n in self.settings.fitted]
        hi = [np.log(self.model.parameter(n).bounds[1]) for n in self.settings.fitted]
        ic = prob.initial_guess()
        return np.r_[lo, ic - np.log(IC_RANGE)], np.r_[hi, ic + np.log(IC_RANGE)]

    def _starts(
        self, prob: _Problem, lo, hi, n_starts: int, warm: np.ndarray | None
    ) -> list[np.ndarray]:
        rng = np.random.default_rng(self.settings.seed)
        base = np.array(
            [
                np.log(self.settings.fixed.get(n, self.model.parameter(n).default))
                for n in self.settings.fitted
            ]
        )
        ic = prob.initial_guess()
        starts = [np.r_[base, ic] if warm is None else warm]
        for _ in range(n_starts - 1):
            # literature values within a factor of 3 either way, inside the bounds
            starts.append(np.r_[base + rng.uniform(-np.log(3.0), np.log(3.0), size=base.size), ic])
        eps = 1e-9
        return [np.clip(s, lo + eps, hi - eps) for s in starts]

    def _solve(
        self, batches: Sequence[BatchData], n_starts: int, warm: np.ndarray | None = None
    ) -> tuple[_Problem, Any, list[dict[str, float | str]]]:
        """Multistart on observation-scaled weights, then one reweighted polish from the best.

        Returns the problem, scipy's `OptimizeResult` of the best start and one log entry per
        solve. A warm start skips the polish: its weights already come from the warm point.
        """
        prob = self._problem(batches)
        lo, hi = self._bounds(prob)
        best = None
        log: list[dict[str, float | str]] = []
        if warm is not None:
            prob.reweight(np.clip(warm, lo + 1e-9, hi - 1e-9))
        for i, x_start in enumerate(self._starts(prob, lo, hi, n_starts, warm)):
            sol = _lsq(prob, x_start, lo, hi)
            log.append(
                {
                    "start": i,
                    "cost": float(sol.cost),
                    "nfev": int(sol.nfev),
                    "status": int(sol.status),
                }
            )
            if best is None or sol.cost < best.cost:
                best = sol
        assert best is not None  # _starts always yields at least one start
        if warm is None:
            prob.reweight(best.x)
            best = _lsq(prob, best.x, lo, hi)
            log.append(
                {
                    "start": "reweighted",
                    "cost": float(best.cost),
                    "nfev": int(best.nfev),
                    "status": int(best.status),
                }
            )
        return prob, best, log

    def fit(self, batches: Sequence[BatchData]) -> Fitter:
        """Fit on `batches`; the result is `self.result_`."""
        self.result_ = self._fit_pooled(batches)
        return self

    def _fit_pooled(self, batches: Sequence[BatchData]) -> FitResult:
        if not batches:
            raise ValueError("no training batches")
        if self.workers > 1 and len(batches) >= MIN_BATCHES_FOR_POOL:
            # spawn, not fork: the caller (a Dagster step) may run threads
            with ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn")
            ) as pool:
                self._pool = pool
                try:
                    return self._fit(list(batches))
                finally:
                    self._pool = None
        return self._fit(list(batches))

    def _fit(self, batches: list[BatchData]) -> FitResult:
        started = time.perf_counter()
        prob, sol, starts = self._solve(batches, self.settings.n_starts)
        x = sol.x
        # one more ensemble at the optimum gives the Jacobian and the probe columns together
        res, Ja = prob.evaluate(x, jac=True, extra=self.probe)
        nx, kk = prob.n_x(), prob.k
        J = Ja[:, :nx]
        n = len(res)
        s2 = float(res @ res) / max(n - nx, 1)
        cov = s2 * np.linalg.pinv(J.T @ J)
        sd = np.sqrt(np.clip(np.diag(cov)[:kk], 0.0, None))
        cov_k = cov[:kk, :kk]
        corr = cov_k / np.outer(np.where(sd > 0, sd, 1.0), np.where(sd > 0, sd, 1.0))
        names = list(self.settings.fitted)
        ident = {}
        for i, nme in enumerate(names):
            others = np.abs(np.delete(corr[i], i))
            ident[nme] = bool(
                sd[i] <= SD_LOG_LIMIT and (others.size == 0 or others.max() <= CORR_LIMIT)
            )
        profile = (
            _profile(prob, x, sd, s2, *self._bounds(prob), 0.5 * float(res @ res))
            if self.settings.profile
            else pd.DataFrame(columns=["name", "rise_low", "rise_high"])
        )
        for r in profile.itertuples():
            ident[r.name] = ident[r.name] and min(r.rise_low, r.rise_high) >= PROFILE_MIN_RISE
        probe = _probe(Ja, nx, kk, s2, self.probe)
        ident.update({r.name: bool(r.identifiable) for r in probe.itertuples()})
        preds = prob.predictions(x)
        metrics = {
            "n_obs": int(n),
            "n_parameters": int(nx),
            "n_batches": len(batches),
            "cost": float(sol.cost),
            "reduced_chi2": s2,
            "rmse_weighted": float(np.sqrt(np.mean(res**2))),
            "rel_rmse": _rel_rmse(preds),
            "correlation": {
                a: dict(zip(names, map(float, row), strict=True))
                for a, row in zip(names, corr, strict=True)
            },
            "starts": starts,
        }
        metrics.update(self._validate(batches, x))
        states = self.model.state_names()
        return FitResult(
            model=self.model.name,
            product=self.spec.product,
            params=prob.params_of(x),
            fitted=tuple(names),
            bounds={p.name: p.bounds for p in self.model.parameters},
            units={p.name: p.unit for p in self.model.parameters},
            sd_log=dict(zip(names, map(float, sd), strict=True)),
            corr=pd.DataFrame(corr, index=names, columns=names),
            identifiable=ident,
            profile=profile,
            probe=probe,
            initial={
                b.batch_id: dict(zip(states, map(float, prob.y0_of(x, i)), strict=True))
                for i, b in enumerate(batches)
            },
            cov_log=cov_k,
            cost=float(sol.cost),
            n_obs=int(n),
            metrics=metrics,
            settings=self.settings,
            training_batches=tuple(b.batch_id for b in batches),
            data_fingerprint=fingerprint(training_frame(batches)),
            predictions=preds,
            starts=starts,
            seconds=time.perf_counter() - started,
        )

    def _validate(self, batches: Sequence[BatchData], x: np.ndarray) -> dict:
        """k-fold over batches: refit without each fold (warm-started), then predict the fold.

        The held-out batches start from their measured initial state: nothing of them is fitted.
        """
        k = min(self.settings.folds, len(batches))
        if k < 2:
            return {"validation_rmse_weighted": None, "validation_rel_rmse": None, "folds": 0}
        kk, nic = len(self.settings.fitted), len(self.settings.fit_initial)
        held_res, held_preds = [], []
        for fold in (list(range(i, len(batches), k)) for i in range(k)):
            keep = [i for i in range(len(batches)) if i not in fold]
            warm = np.r_[
                x[:kk], np.concatenate([x[kk + i * nic : kk + (i + 1) * nic] for i in keep])
            ]
            prob, sol, _ = self._solve([batches[i] for i in keep], 1, warm=warm)
            test = self._problem(
                [batches[i] for i in fold],
                replace(self.settings, fit_initial=()),
                prob.params_of(sol.x),
            )
            r, _ = test.evaluate(sol.x[:kk], jac=False)
            held_res.append(r)
            held_preds.append(test.predictions(sol.x[:kk]))
        r = np.concatenate(held_res)
        return {
            "validation_rmse_weighted": float(np.sqrt(np.mean(r**2))),
            "validation_rel_rmse": _rel_rmse(pd.concat(held_preds)),
            "folds": k,
        }


def _lsq(prob: _Problem, x0: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    return least_squares(
        prob.fun,
        x0,
        jac=prob.jac,
        bounds=(lo, hi),
        method="trf",
        x_scale="jac",
        ftol=1e-8,
        xtol=1e-8,
        gtol=1e-8,
        max_nfev=100,
    )


def _profile(
    prob: _Problem,
    x: np.ndarray,
    sd: np.ndarray,
    s2: float,
    lo: np.ndarray,
    hi: np.ndarray,
    cost: float,
) -> pd.DataFrame:
    """Each fitted parameter held at log θ ± 1.96 σ (inside its bounds), everything else
    re-optimized from the optimum: the rise of the weighted cost there, in units of s²."""
    rows = []
    for i, name in enumerate(prob.s.fitted):
        rises = []
        for sign in (-1.0, 1.0):
            at = float(np.clip(x[i] + sign * 1.96 * sd[i], lo[i] + 1e-9, hi[i] - 1e-9))

            def full(z: np.ndarray, i: int = i, at: float = at) -> np.ndarray:
                return np.insert(z, i, at)

            def fun(z: np.ndarray, full=full) -> np.ndarray:
                return prob.fun(full(z))

            def jac(z: np.ndarray, full=full, i: int = i) -> np.ndarray:
                return np.delete(prob.jac(full(z)), i, axis=1)

            z0 = np.delete(x, i)
            zlo, zhi = np.delete(lo, i), np.delete(hi, i)
            sol = least_squares(
                fun,
                np.clip(z0, zlo + 1e-9, zhi - 1e-9),
                jac=jac,
                bounds=(zlo, zhi),
                method="trf",
                x_scale="jac",
                max_nfev=PROFILE_MAX_NFEV,
            )
            rises.append(2.0 * (float(sol.cost) - cost) / s2)
        rows.append((name, *rises))
    return pd.DataFrame(rows, columns=["name", "rise_low", "rise_high"])


def _probe(Ja: np.ndarray, nx: int, kk: int, s2: float, names: Sequence[str]) -> pd.DataFrame:
    """Identifiability of fixed parameters at the optimum: σ(log θ) and the largest |corr| with a
    fitted parameter, each as if that one parameter were freed."""
    rows = []
    for e, name in enumerate(names):
        A = np.column_stack([Ja[:, :nx], Ja[:, nx + e]])
        cov = s2 * np.linalg.pinv(A.T @ A)
        sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
        c = (
            cov[-1, :kk] / (sd[-1] * np.where(sd[:kk] > 0, sd[:kk], 1.0))
            if sd[-1] > 0
            else np.zeros(kk)
        )
        mc = float(np.abs(c).max()) if c.size else 0.0
        rows.append((name, float(sd[-1]), mc, bool(sd[-1] <= SD_LOG_LIMIT and mc <= CORR_LIMIT)))
    return pd.DataFrame(rows, columns=["name", "sd_log", "max_abs_corr", "identifiable"])


def _rel_rmse(preds: pd.DataFrame) -> dict[str, float]:
    """Per analyte: RMS of (predicted - observed) / mean observed, a plain unit-free measure."""
    out = {}
    for a, g in preds.groupby("analyte"):
        scale = float(np.abs(g["observed"]).mean()) or 1.0
        out[a] = float(np.sqrt(np.mean((g["predicted"] - g["observed"]) ** 2)) / scale)
    return out
