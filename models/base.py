"""The model interface shared by the demo simulator and the fitter.

A mechanistic model declares its states, parameters, inputs and observables up front and
provides a right-hand side. Everything that integrates a model (the demo plant, the fitter,
forecasts) goes through :func:`simulate`, so a model is defined exactly once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from scipy.integrate import solve_ivp


@dataclass(frozen=True)
class Parameter:
    """A model parameter: literature default, plausible bounds, and whether it is fitted."""

    name: str
    unit: str
    default: float
    bounds: tuple[float, float]
    fixed: bool = False
    description: str = ""


@dataclass(frozen=True)
class State:
    """A state variable; `floor` is the smallest initial value a fit starts from (a state
    measured as zero still needs a positive start in log space); `molar_mass_g_mol` lets a
    site give a molar state's concentrations in g/L."""

    name: str
    unit: str
    description: str = ""
    floor: float = 1e-6
    molar_mass_g_mol: float | None = None


@dataclass(frozen=True)
class Observable:
    """A model quantity a lab can measure, in `uom`; the site's catalog says which analyte of
    `samples` it is (models.catalog)."""

    name: str
    uom: str
    description: str = ""


@dataclass(frozen=True)
class Bolus:
    """An instantaneous addition (MES material event) at model time `t_h`.

    `concentrations` maps state names to the concentration of the added liquid, in the
    state's unit (e.g. glucose in mM). A negative `volume_l` is broth drawn off: the volume
    falls and every concentration stays.
    """

    t_h: float
    volume_l: float
    material: str
    concentrations: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Feed:
    """A continuous feed: a piecewise-constant rate and the liquid's composition.

    The rate is `rates_l_h[i]` from `times_h[i]` until the next change point; before the
    first change point the feed is off. Pumps are set-point driven, so piecewise-constant is
    the physical truth, not an approximation. `composition` maps state names to their
    concentration in the feed, in the state's unit.
    """

    name: str
    times_h: Sequence[float] = ()
    rates_l_h: Sequence[float] = ()
    composition: Mapping[str, float] = field(default_factory=dict)

    def rate(self, t_h: float) -> float:
        times = np.asarray(self.times_h, dtype=float)
        idx = int(np.searchsorted(times, t_h, side="right")) - 1
        return float(self.rates_l_h[idx]) if idx >= 0 else 0.0


@dataclass(frozen=True)
class FeedNow:
    """What flows in during one stretch of constant rates: the total rate and the mixed
    liquid's concentration of each state (0 for states the feeds do not carry)."""

    rate_l_h: float = 0.0
    conc: Mapping[str, float] = field(default_factory=dict)

    def of(self, state: str) -> float:
        return float(self.conc.get(state, 0.0))


@dataclass(frozen=True)
class Inputs:
    """Known inputs of one batch: continuous feeds and bolus additions (or draw-offs)."""

    feeds: Sequence[Feed] = ()
    boluses: Sequence[Bolus] = ()

    def at(self, t_h: float) -> FeedNow:
        rates = [(f.rate(t_h), f.composition) for f in self.feeds]
        total = sum(r for r, _ in rates)
        if total <= 0:
            return FeedNow()
        states = {s for _, comp in rates for s in comp}
        return FeedNow(
            total, {s: sum(r * comp.get(s, 0.0) for r, comp in rates) / total for s in states}
        )

    def breakpoints(self) -> list[float]:
        times = {float(t) for f in self.feeds for t in f.times_h}
        return sorted(times | {float(b.t_h) for b in self.boluses})


class Model(ABC):
    """Base class: subclasses fill the ClassVars and implement `rhs`, `observe` and
    `initial_state`. A model names its own states, parameters and observables; what they are
    at a site (analytes, feeds, materials) is the site's model catalog (models.catalog)."""

    name: ClassVar[str]
    states: ClassVar[tuple[State, ...]]
    parameters: ClassVar[tuple[Parameter, ...]]
    observables: ClassVar[tuple[Observable, ...]]
    fit_initial: ClassVar[tuple[str, ...]] = ()
    """States whose initial value a fit estimates per batch (the first sample carries assay
    error); the others are taken as measured."""
    volume_state: ClassVar[str] = "V"

    @classmethod
    def state_names(cls) -> list[str]:
        return [s.name for s in cls.states]

    @classmethod
    def state(cls, name: str) -> State:
        return _named(cls.states, name, f"{cls.name} has no state")

    @classmethod
    def parameter(cls, name: str) -> Parameter:
        return _named(cls.parameters, name, f"{cls.name} has no parameter")

    @classmethod
    def observable(cls, name: str) -> Observable:
        return _named(cls.observables, name, f"{cls.name} has no observable")

    @classmethod
    def defaults(cls) -> dict[str, float]:
        return {p.name: p.default for p in cls.parameters}

    @abstractmethod
    def rhs(self, t: float, y: np.ndarray, p: Mapping[str, float], feed: FeedNow) -> np.ndarray:
        """Time derivative of the states under the continuous feed `feed`."""

    @abstractmethod
    def observe(self, y: np.ndarray) -> dict[str, np.ndarray]:
        """Map a state trajectory (n_states × …) to every observable, in its `uom`."""

    @abstractmethod
    def initial_state(
        self, first: Mapping[str, float], volume_l: float, given: Mapping[str, float]
    ) -> dict[str, float]:
        """Initial states from the first sample's observables (`first`, in their units; an
        observable not measured is absent), the broth volume, and values the site's catalog
        gives (`given`, per state). ValueError naming what is missing."""

    def apply_bolus(self, y: np.ndarray, bolus: Bolus) -> np.ndarray:
        """Mix a bolus into the broth: volume adds, every concentration dilutes; a draw-off
        (negative volume) takes broth out and leaves the concentrations."""
        names = self.state_names()
        v_idx = names.index(self.volume_state)
        v_old = y[v_idx]
        v_new = np.maximum(v_old + bolus.volume_l, 0.0)
        if bolus.volume_l < 0:
            out = y.copy()
            out[v_idx] = v_new
            return out
        out = y * (v_old / v_new)
        out[v_idx] = v_new
        for state, conc in bolus.concentrations.items():
            out[names.index(state)] += conc * bolus.volume_l / v_new
        return out


def _named(items, name: str, missing: str):
    """The item called `name`; KeyError '<missing> <name>' otherwise."""
    for item in items:
        if item.name == name:
            return item
    raise KeyError(f"{missing} {name!r}")


def _with_end(points: np.ndarray, end: float) -> np.ndarray:
    # the segment's end state seeds the next segment, so it is always evaluated
    return points if points.size and points[-1] == end else np.append(points, end)


@dataclass(frozen=True)
class SolverSettings:
    """Recorded with every fit so that it can be reproduced exactly."""

    method: str = "LSODA"
    rtol: float = 1e-6
    atol: float = 1e-9
    max_step_h: float = 2.0


def simulate(
    model: Model,
    params: Mapping[str, float],
    y0: Sequence[float],
    inputs: Inputs,
    t_eval_h: Sequence[float] | np.ndarray,
    solver: SolverSettings = SolverSettings(),
) -> np.ndarray:
    """Integrate `model` from t=0 and return states at `t_eval_h` (n_states × n_times).

    Integration restarts at every feed change and bolus so the stiff solver never steps
    across a discontinuity; a bolus at time t is applied before any state reported at t.
    """
    return simulate_many(
        model, params, np.asarray(y0, dtype=float)[:, None], inputs, t_eval_h, solver
    )[:, 0, :]


def simulate_many(
    model: Model,
    params: Mapping[str, np.ndarray | float],
    y0: np.ndarray,
    inputs: Inputs,
    t_eval_h: Sequence[float] | np.ndarray,
    solver: SolverSettings = SolverSettings(),
) -> np.ndarray:
    """Integrate an ensemble of `m` members of one batch at once: n_states × m × n_times.

    `params` values and `y0` (n_states × m) may differ per member; the inputs are shared.
    One solver call carries every member, so the members share one step sequence: finite
    differences between members (the fitter's Jacobian) are then free of step-size noise,
    and an ensemble costs little more than a single run. The model's `rhs` must broadcast
    over a trailing member axis (numpy arithmetic on rows does).
    """
    y = np.array(y0, dtype=float)
    if y.ndim == 1:
        y = y[:, None]
    n_states, m = y.shape
    t_eval = np.asarray(t_eval_h, dtype=float)
    out = np.full((n_states, m, t_eval.size), np.nan)
    if t_eval.size == 0:
        return out
    if np.any(np.diff(t_eval) < 0) or t_eval[0] < 0:
        raise ValueError("t_eval_h must be non-negative and sorted")
    p = {k: (np.asarray(v, dtype=float) if np.ndim(v) else float(v)) for k, v in params.items()}
    t_end = float(t_eval[-1])
    cuts = [0.0] + [b for b in inputs.breakpoints() if 0.0 < b < t_end] + [t_end]
    boluses_at: dict[float, list[Bolus]] = {}
    for bolus in inputs.boluses:
        boluses_at.setdefault(float(bolus.t_h), []).append(bolus)

    def rhs(t, flat, feed):
        return model.rhs(t, flat.reshape(n_states, m), p, feed).reshape(-1)

    for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True)):
        for bolus in boluses_at.get(a, []):
            y = model.apply_bolus(y, bolus)
        out[:, :, t_eval == a] = y[:, :, None]
        if b <= a:
            continue
        feed = inputs.at(a)
        last = i == len(cuts) - 2
        mask = (t_eval > a) & ((t_eval <= b) if last else (t_eval < b))
        sol = solve_ivp(
            rhs,
            (a, b),
            y.reshape(-1),
            method=solver.method,
            t_eval=_with_end(t_eval[mask], b),
            rtol=solver.rtol,
            atol=solver.atol,
            max_step=solver.max_step_h,
            args=(feed,),
        )
        if not sol.success:
            raise RuntimeError(f"{model.name}: integration failed on [{a}, {b}] h: {sol.message}")
        n = int(mask.sum())
        ys = sol.y.reshape(n_states, m, -1)
        out[:, :, mask] = ys[:, :, :n]
        y = np.maximum(ys[:, :, -1], 0.0)
    return out
