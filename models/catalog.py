"""The model catalog: which models a site fits for each product, and what the lake's data are
to each model.

A model names its own states, parameters and observables; everything it knows about a site
comes from the `models:` section of the site's sources.yaml (README "Models per product"):

    models:
      MAB-A:                                   # product (batches.product)
        - model: cho_fedbatch                  # a bundled model or an import path module:Class
          observables:                         # model observable: lab analyte, assay error
            vcd: {analyte: vcd, cv: 0.07, floor: 0.01}
          feeds:                               # process parameter (a rate): what the feed carries
            feed_rate: {G: 420 mM, Q: 110 mM}
          boluses:                             # MES material: what the added liquid carries
            GLC-450: {G: 450 g/L}
          draw_off_kinds: [draw_off]           # material events that take broth out
          volume:                              # initial broth volume, first rule that applies
            - {materials: [charge, inoculum]}  #   sum of these material-event kinds before t0
            - {parameter: weight, density: 1.02 kg/L}  # or a process value at t0
          clock: INOCULATION                   # phase whose start is t = 0 (default inoculation)
          initial: {S: 15 g/L}                 # states not measured (latent), in any unit
          fitted: [mu_max, Y_XS]               # default: the model's non-fixed parameters
          fixed: {K_S: 0.15}                   # values of fixed parameters (default: the model's)
          fit_initial: [X, S]                  # states fitted per batch (default: the model's)
          bolus_rule:                          # how operators dose in a forecast's future
            {material: GLC-450, observable: glucose, below: 3.0, to: 5.5, every_h: 24, delay_h: 1}

Every error is one line naming the key (`models.MAB-A[0].feeds.feed_rate.G: …`).
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.base import Model, State
from schemas.units import UnitError, conversion, registry
from sources.profiles import unknown_keys

# bundled models; a site names any other one by its import path "module:Class"
BUNDLED = {
    "cho_fedbatch": "models.cho_fedbatch:ChoFedBatch",
    "monod_fedbatch": "models.monod_fedbatch:MonodFedBatch",
}
ENTRY_KEYS = (
    "model",
    "observables",
    "feeds",
    "boluses",
    "draw_off_kinds",
    "volume",
    "clock",
    "initial",
    "fitted",
    "fixed",
    "fit_initial",
    "bolus_rule",
)


class CatalogError(ValueError):
    """A model catalog entry that cannot be used; the message is one line naming the key."""


def load_model(name: str) -> Model:
    """A fresh instance of the bundled model `name`, or of the class at import path
    'module:Class'. CatalogError (naming what is known) otherwise."""
    path = BUNDLED.get(name, name)
    if ":" not in path:
        raise CatalogError(
            f"unknown model {name!r}: bundled are {', '.join(BUNDLED)}, "
            "or give an import path 'module:Class'"
        )
    module, cls = path.split(":", 1)
    try:
        model = getattr(importlib.import_module(module), cls)()
    except Exception as err:  # noqa: BLE001 - a user's module may fail with any error
        first = " ".join(str(err).split())[:200]
        raise CatalogError(
            f"model {name!r} cannot be imported and built: {type(err).__name__}: {first}"
        ) from None
    if not isinstance(model, Model):
        raise CatalogError(f"model {name!r} is not a models.base.Model")
    return model


@dataclass(frozen=True)
class Measured:
    """A model observable as the lab reports it: the analyte and its assay error (relative CV
    and an absolute floor, the reporting resolution, in the observable's unit)."""

    analyte: str
    cv: float
    floor: float


@dataclass(frozen=True)
class VolumeRule:
    """Initial volume from material events (`kinds`) or from a process value (`parameter`,
    divided by `density_kg_l` when it is a mass)."""

    kinds: tuple[str, ...] = ()
    parameter: str | None = None
    density_kg_l: float | None = None


@dataclass(frozen=True)
class BolusRule:
    """The recipe's dosing rule, for forecasts: every `every_h` after the last sample, when the
    observable is below `below`, `material` is added `delay_h` later to bring it to `to` (in
    the observable's unit)."""

    material: str
    observable: str
    below: float
    to: float
    every_h: float = 24.0
    delay_h: float = 1.0


@dataclass(frozen=True)
class ModelSpec:
    """One catalog entry, checked against its model: everything in model units."""

    product: str
    model: Model
    observables: Mapping[str, Measured]
    feeds: Mapping[str, Mapping[str, float]]  # process parameter -> state -> concentration
    boluses: Mapping[str, Mapping[str, float]]  # material -> state -> concentration
    draw_off_kinds: tuple[str, ...]
    volume: tuple[VolumeRule, ...]
    clock: str | None
    initial: Mapping[str, float]  # state -> value
    fitted: tuple[str, ...]
    fixed: Mapping[str, float]
    fit_initial: tuple[str, ...]
    bolus_rule: BolusRule | None = None
    entry: Mapping = field(default_factory=dict)  # as written: recorded with every fit

    @property
    def name(self) -> str:
        return self.model.name

    def analyte(self, observable: str) -> str:
        """The lab analyte of an observable (a latent observable keeps its own name)."""
        m = self.observables.get(observable)
        return m.analyte if m else observable

    def observable(self, analyte: str) -> str | None:
        """The observable the catalog maps `analyte` to, if any."""
        return next((o for o, m in self.observables.items() if m.analyte == analyte), None)

    def entry_json(self) -> str:
        # in the order written: a refit reads the feeds in the order the fit did
        return json.dumps(self.entry, default=str)


def specs(models: Mapping[str, Sequence[Mapping]]) -> list[ModelSpec | CatalogError]:
    """Every entry of a site's catalog (`Site.models`): its spec, or the error that makes it
    unusable (a wrong entry stops only itself)."""
    out: list[ModelSpec | CatalogError] = []
    for product, entries in sorted(models.items()):
        for i, entry in enumerate(entries):
            try:
                out.append(parse(product, entry, where=f"models.{product}[{i}]"))
            except CatalogError as err:
                out.append(err)
    return out


def parse(product: str, entry: Mapping, where: str = "") -> ModelSpec:
    """A catalog entry checked against its model; CatalogError naming the key otherwise."""
    where = where or f"models.{product}"
    if not isinstance(entry, Mapping) or not isinstance(entry.get("model"), str):
        raise CatalogError(f"{where}: a mapping with at least `model: <name or module:Class>`")
    if msg := unknown_keys(entry, ENTRY_KEYS):
        raise CatalogError(f"{where}: {msg}")
    try:
        model = load_model(entry["model"])
    except CatalogError as err:
        raise CatalogError(f"{where}.model: {err}") from None
    states = {s.name: s for s in model.states}
    params = {p.name for p in model.parameters}

    def state_of(key: str, name) -> State:
        if name not in states:
            raise CatalogError(
                f"{key}: {model.name} has no state {name!r} (states: {', '.join(states)})"
            )
        return states[name]

    def composition(key: str, value) -> dict[str, float]:
        return {
            str(s): _in_unit(f"{key}.{s}", q, state_of(f"{key}.{s}", s))
            for s, q in _mapping(key, value).items()
        }

    observables = {}
    for obs, spec in _mapping(f"{where}.observables", entry.get("observables")).items():
        key = f"{where}.observables.{obs}"
        if obs not in {o.name for o in model.observables}:
            known = ", ".join(o.name for o in model.observables)
            raise CatalogError(f"{key}: {model.name} has no observable {obs!r} (known: {known})")
        observables[str(obs)] = _measured(key, spec)
    if not observables:
        raise CatalogError(
            f"{where}.observables: map at least one of {model.name}'s observables "
            f"({', '.join(o.name for o in model.observables)}) to a lab analyte"
        )
    feeds = {
        str(p): composition(f"{where}.feeds.{p}", c)
        for p, c in _mapping(f"{where}.feeds", entry.get("feeds")).items()
    }
    boluses = {
        str(m): composition(f"{where}.boluses.{m}", c)
        for m, c in _mapping(f"{where}.boluses", entry.get("boluses")).items()
    }
    initial = composition(f"{where}.initial", entry.get("initial"))
    fitted = _names(f"{where}.fitted", entry.get("fitted"), params, "parameter")
    if fitted is None:
        fitted = tuple(p.name for p in model.parameters if not p.fixed)
    fixed_values = _mapping(f"{where}.fixed", entry.get("fixed"))
    for name in fixed_values:
        if name not in params:
            raise CatalogError(f"{where}.fixed.{name}: {model.name} has no parameter {name!r}")
        if name in fitted:
            raise CatalogError(f"{where}.fixed.{name}: also listed in `fitted`")
    fixed = {
        p.name: _number(f"{where}.fixed.{p.name}", fixed_values.get(p.name, p.default))
        for p in model.parameters
        if p.name not in fitted
    }
    fit_initial = _names(f"{where}.fit_initial", entry.get("fit_initial"), set(states), "state")
    clock = entry.get("clock")
    if clock is not None and not isinstance(clock, str):
        raise CatalogError(f"{where}.clock: the name of the phase whose start is t = 0")
    return ModelSpec(
        product=str(product),
        model=model,
        observables=observables,
        feeds=feeds,
        boluses=boluses,
        draw_off_kinds=_strings(f"{where}.draw_off_kinds", entry.get("draw_off_kinds")),
        volume=_volume(f"{where}.volume", entry.get("volume")),
        clock=clock,
        initial=initial,
        fitted=fitted,
        fixed=fixed,
        fit_initial=model.fit_initial if fit_initial is None else fit_initial,
        bolus_rule=_bolus_rule(f"{where}.bolus_rule", entry.get("bolus_rule"), model, boluses),
        entry=dict(entry),
    )


def _mapping(key: str, value) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CatalogError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def _strings(key: str, value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise CatalogError(f"{key}: a list of names")
    return tuple(value)


def _names(key: str, value, known: set[str], what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = _strings(key, value)
    wrong = [n for n in names if n not in known]
    if wrong:
        raise CatalogError(
            f"{key}: no {what}(s) {', '.join(wrong)} (known: {', '.join(sorted(known))})"
        )
    return names


def _number(key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CatalogError(f"{key}: a finite number, not {value!r}")
    return float(value)


def _quantity(key: str, text) -> tuple[float, str]:
    """(magnitude, unit) of '450 g/L'; a bare number is dimensionless."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return _number(key, text), ""
    if not isinstance(text, str):
        raise CatalogError(f"{key}: a quantity with its unit, e.g. '450 g/L', not {text!r}")
    try:
        q: Any = registry().Quantity(text.strip().replace("mmol/L", "mM"))
    except Exception:  # noqa: BLE001 - pint fails on garbage with many error types
        raise CatalogError(f"{key}: {text!r} is not a quantity pint reads") from None
    magnitude = float(q.magnitude)
    if not math.isfinite(magnitude) or magnitude < 0:
        raise CatalogError(f"{key}: {text!r} must be finite and not negative")
    return magnitude, "" if q.dimensionless else format(q.units)


def _in_unit(key: str, text, state: State) -> float:
    """A quantity in `state`'s unit; a mass concentration of a molar state goes through the
    state's molar mass."""
    value, unit = _quantity(key, text)
    if not unit:
        raise CatalogError(f"{key}: give the unit, e.g. '{value:g} {state.unit}'")
    try:
        scale, offset = conversion(unit, state.unit)
        return value * scale + offset
    except UnitError:
        if state.molar_mass_g_mol is None:
            raise CatalogError(
                f"{key}: {text!r} does not convert to {state.unit} (state {state.name})"
            ) from None
    try:
        to_g_l, _ = conversion(unit, "g/L")
        per_mol, _ = conversion("mol/L", state.unit)
    except UnitError:
        raise CatalogError(
            f"{key}: {text!r} converts neither to {state.unit} nor to g/L (state {state.name})"
        ) from None
    return value * to_g_l / state.molar_mass_g_mol * per_mol


def _measured(key: str, spec) -> Measured:
    if isinstance(spec, str):
        raise CatalogError(f"{key}: give the assay error too: {{analyte: {spec}, cv: 0.05}}")
    spec = _mapping(key, spec)
    unknown = set(spec) - {"analyte", "cv", "floor"}
    if unknown or not isinstance(spec.get("analyte"), str):
        raise CatalogError(f"{key}: {{analyte: <lab analyte>, cv: <relative>, floor: <absolute>}}")
    cv = _number(f"{key}.cv", spec.get("cv", 0.0))
    floor = _number(f"{key}.floor", spec.get("floor", 0.0))
    if cv < 0 or floor < 0 or cv == floor == 0:
        raise CatalogError(f"{key}: cv and floor are >= 0 and not both 0 (they weight residuals)")
    return Measured(spec["analyte"], cv, floor)


def _volume(key: str, value) -> tuple[VolumeRule, ...]:
    if value is None:
        return ()
    rules = value if isinstance(value, list) else [value]
    out = []
    for i, item in enumerate(rules):
        k = f"{key}[{i}]"
        rule = _mapping(k, item)
        if "materials" in rule and set(rule) == {"materials"}:
            out.append(VolumeRule(kinds=_strings(f"{k}.materials", rule["materials"])))
        elif isinstance(rule.get("parameter"), str) and set(rule) <= {"parameter", "density"}:
            density = None
            if "density" in rule:
                d, unit = _quantity(f"{k}.density", rule["density"])
                try:
                    density = d * conversion(unit or "kg/L", "kg/L")[0]
                except UnitError:
                    raise CatalogError(
                        f"{k}.density: not a density ({rule['density']!r})"
                    ) from None
                if density <= 0:
                    raise CatalogError(f"{k}.density: must be positive, not {rule['density']!r}")
            out.append(VolumeRule(parameter=rule["parameter"], density_kg_l=density))
        else:
            raise CatalogError(
                f"{k}: {{materials: [<event kinds>]}} or {{parameter: <name>, density: <kg/L>}}"
            )
    return tuple(out)


def _bolus_rule(key: str, value, model: Model, boluses: Mapping) -> BolusRule | None:
    if value is None:
        return None
    spec = _mapping(key, value)
    fields = ("material", "observable", "below", "to", "every_h", "delay_h")
    unknown = set(spec) - set(fields)
    if unknown or not {"material", "observable", "below", "to"} <= set(spec):
        raise CatalogError(
            f"{key}: {{material, observable, below, to[, every_h, delay_h]}} "
            f"(unknown: {', '.join(sorted(map(str, unknown))) or 'none'})"
        )
    if spec["material"] not in boluses:
        raise CatalogError(f"{key}.material: {spec['material']!r} is not in `boluses`")
    if spec["observable"] not in {o.name for o in model.observables}:
        raise CatalogError(f"{key}.observable: {model.name} has no {spec['observable']!r}")
    numbers = {k: _number(f"{key}.{k}", spec[k]) for k in fields[2:] if k in spec}
    return BolusRule(str(spec["material"]), str(spec["observable"]), **numbers)
