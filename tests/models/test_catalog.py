"""The model catalog (models.catalog): every kind of mistake in a site's `models:` entry is one
line naming its key; a good entry is in model units, with the model's defaults filled in."""

import pytest
import yaml

from models.catalog import (
    BUNDLED,
    ENTRY_KEYS,
    BolusRule,
    CatalogError,
    Measured,
    ModelSpec,
    VolumeRule,
    load_model,
    parse,
    specs,
)
from models.cho_fedbatch import GLUCOSE_G_PER_MMOL, ChoFedBatch
from models.monod_fedbatch import MonodFedBatch

WHERE = "models.PEN-G[0]"
# a minimal good entry of each bundled model; each case below changes one thing
MONOD = {
    "model": "monod_fedbatch",
    "observables": {
        "biomass": {"analyte": "biomass", "cv": 0.06, "floor": 0.1},
        "product": {"analyte": "penicillin", "cv": 0.04, "floor": 0.01},
    },
    "feeds": {"sugar_feed_rate": {"S": "500 g/L"}},
    "volume": [{"parameter": "volume"}],
}
CHO = {
    "model": "cho_fedbatch",
    "observables": {"glucose": {"analyte": "glucose", "cv": 0.03, "floor": 0.01}},
    "boluses": {"GLC-450": {"G": "450 g/L"}},
}
GLUCOSE_MOLAR_MASS = GLUCOSE_G_PER_MMOL * 1000  # 180.16 g/mol


def _error(entry, product="PEN-G", where=WHERE) -> str:
    with pytest.raises(CatalogError) as err:
        parse(product, entry, where=where)
    msg = str(err.value)
    assert "\n" not in msg, msg  # one line, as the model_fit metadata row shows it
    return msg


def _with(base: dict, **changes) -> dict:
    return {**base, **changes}


# (entry, the key the message names, what it says about the mistake)
MISTAKES = {
    "unknown top-level key": (
        _with(MONOD, feed={"sugar_feed_rate": {"S": "500 g/L"}}),
        WHERE,
        "unknown key(s) feed (known: model, observables, feeds,",
    ),
    "unknown model name": (
        _with(MONOD, model="monod"),
        f"{WHERE}.model",
        "unknown model 'monod': bundled are cho_fedbatch, monod_fedbatch, or give an import path",
    ),
    "import path whose module does not import": (
        _with(MONOD, model="no_such_site_module:Kinetics"),
        f"{WHERE}.model",
        "model 'no_such_site_module:Kinetics' cannot be imported and built: "
        "ModuleNotFoundError: No module named 'no_such_site_module'",
    ),
    "import path whose class is not in the module": (
        _with(MONOD, model="models.monod_fedbatch:Monod"),
        f"{WHERE}.model",
        "cannot be imported and built: AttributeError: module 'models.monod_fedbatch' has no "
        "attribute 'Monod'",
    ),
    "import path to a class that is not a Model": (
        _with(MONOD, model="collections:OrderedDict"),
        f"{WHERE}.model",
        "model 'collections:OrderedDict' is not a models.base.Model",
    ),
    "model that is not a name": (
        _with(MONOD, model=3),
        WHERE,
        "a mapping with at least `model: <name or module:Class>`",
    ),
    "observable the model lacks": (
        _with(MONOD, observables={"viscosity": {"analyte": "viscosity", "cv": 0.08}}),
        f"{WHERE}.observables.viscosity",
        "monod_fedbatch has no observable 'viscosity' (known: biomass, substrate, product)",
    ),
    "observable given as a bare analyte": (
        _with(MONOD, observables={"biomass": "biomass"}),
        f"{WHERE}.observables.biomass",
        "give the assay error too: {analyte: biomass, cv: 0.05}",
    ),
    "cv and floor both 0": (
        _with(MONOD, observables={"biomass": {"analyte": "biomass", "cv": 0, "floor": 0.0}}),
        f"{WHERE}.observables.biomass",
        "cv and floor are >= 0 and not both 0",
    ),
    "cv and floor both left out": (
        _with(MONOD, observables={"biomass": {"analyte": "biomass"}}),
        f"{WHERE}.observables.biomass",
        "cv and floor are >= 0 and not both 0",
    ),
    "negative cv": (
        _with(MONOD, observables={"biomass": {"analyte": "biomass", "cv": -0.1, "floor": 0.1}}),
        f"{WHERE}.observables.biomass",
        "cv and floor are >= 0",
    ),
    "cv as text": (
        _with(MONOD, observables={"biomass": {"analyte": "biomass", "cv": "6 %"}}),
        f"{WHERE}.observables.biomass.cv",
        "a finite number, not '6 %'",
    ),
    "no observable mapped": (
        _with(MONOD, observables={}),
        f"{WHERE}.observables",
        "map at least one of monod_fedbatch's observables (biomass, substrate, product)",
    ),
    "feed composition naming a state the model lacks": (
        _with(MONOD, feeds={"sugar_feed_rate": {"G": "500 g/L"}}),
        f"{WHERE}.feeds.sugar_feed_rate.G",
        "monod_fedbatch has no state 'G' (states: X, S, P, V)",
    ),
    "composition without a unit": (
        _with(MONOD, feeds={"sugar_feed_rate": {"S": 500}}),
        f"{WHERE}.feeds.sugar_feed_rate.S",
        "give the unit, e.g. '500 g/L'",
    ),
    "composition in a unit that does not convert": (
        _with(MONOD, feeds={"sugar_feed_rate": {"S": "500 mL"}}),
        f"{WHERE}.feeds.sugar_feed_rate.S",
        "'500 mL' does not convert to g/L (state S)",
    ),
    "composition pint cannot read": (
        _with(MONOD, feeds={"sugar_feed_rate": {"S": "plenty g/L"}}),
        f"{WHERE}.feeds.sugar_feed_rate.S",
        "'plenty g/L' is not a quantity pint reads",
    ),
    "feed composition that is not a mapping": (
        _with(MONOD, feeds={"sugar_feed_rate": "500 g/L"}),
        f"{WHERE}.feeds.sugar_feed_rate",
        "expected a mapping, got str",
    ),
    "molar state in neither a molar nor a mass concentration": (
        _with(CHO, boluses={"GLC-450": {"G": "450 kg"}}),
        f"{WHERE}.boluses.GLC-450.G",
        "'450 kg' converts neither to mM nor to g/L (state G)",
    ),
    "mass concentration of a state without a molar mass": (
        _with(CHO, initial={"Xv": "0.5 g/L"}),
        f"{WHERE}.initial.Xv",
        "'0.5 g/L' does not convert to 1e6 cells/mL (state Xv)",
    ),
    "fixed parameter also listed in fitted": (
        _with(MONOD, fitted=["mu_max", "K_S"], fixed={"K_S": 0.15}),
        f"{WHERE}.fixed.K_S",
        "also listed in `fitted`",
    ),
    "unknown fitted parameter": (
        _with(MONOD, fitted=["mu_max", "mu"]),
        f"{WHERE}.fitted",
        "no parameter(s) mu (known:",
    ),
    "unknown fixed parameter": (
        _with(MONOD, fixed={"Ks": 0.15}),
        f"{WHERE}.fixed.Ks",
        "monod_fedbatch has no parameter 'Ks'",
    ),
    "fixed value that is not a number": (
        _with(MONOD, fixed={"K_S": "0.15 g/L"}),
        f"{WHERE}.fixed.K_S",
        "a finite number, not '0.15 g/L'",
    ),
    "unknown state fitted per batch": (
        _with(MONOD, fit_initial=["X", "G"]),
        f"{WHERE}.fit_initial",
        "no state(s) G (known:",
    ),
    "clock that is not a phase name": (
        _with(MONOD, clock=0),
        f"{WHERE}.clock",
        "the name of the phase whose start is t = 0",
    ),
    "bolus_rule material not in boluses": (
        _with(
            CHO,
            bolus_rule={"material": "GLC-500", "observable": "glucose", "below": 3, "to": 5.5},
        ),
        f"{WHERE}.bolus_rule.material",
        "'GLC-500' is not in `boluses`",
    ),
    "bolus_rule observable the model lacks": (
        _with(
            CHO,
            bolus_rule={"material": "GLC-450", "observable": "sugar", "below": 3, "to": 5.5},
        ),
        f"{WHERE}.bolus_rule.observable",
        "cho_fedbatch has no 'sugar'",
    ),
    "bolus_rule without its target": (
        _with(CHO, bolus_rule={"material": "GLC-450", "observable": "glucose", "below": 3}),
        f"{WHERE}.bolus_rule",
        "{material, observable, below, to[, every_h, delay_h]} (unknown: none)",
    ),
    "volume rule with both shapes": (
        _with(MONOD, volume=[{"materials": ["charge"], "parameter": "volume"}]),
        f"{WHERE}.volume[0]",
        "{materials: [<event kinds>]} or {parameter: <name>, density: <kg/L>}",
    ),
    "second volume rule with an unknown key": (
        _with(MONOD, volume=[{"parameter": "volume"}, {"kinds": ["charge"]}]),
        f"{WHERE}.volume[1]",
        "{materials: [<event kinds>]} or {parameter: <name>, density: <kg/L>}",
    ),
    "volume rule that is a bare name": (
        _with(MONOD, volume=["volume"]),
        f"{WHERE}.volume[0]",
        "expected a mapping, got str",
    ),
    "density that is not a density": (
        _with(MONOD, volume=[{"parameter": "weight", "density": "1.02 m"}]),
        f"{WHERE}.volume[0].density",
        "not a density ('1.02 m')",
    ),
}


@pytest.mark.parametrize("case", list(MISTAKES), ids=list(MISTAKES))
def test_each_mistake_is_one_line_naming_its_key(case):
    entry, key, says = MISTAKES[case]
    msg = _error(entry)
    assert msg.startswith(f"{key}: "), msg
    assert says in msg, msg


def test_the_message_names_the_product_and_entry_given():
    msg = _error(
        _with(MONOD, feeds={"oil_feed_rate": {"S": "1500"}}),
        where="models.PEN-G[3]",
    )
    # a string without a unit is asked for its unit, as a bare number is
    assert msg.startswith("models.PEN-G[3].feeds.oil_feed_rate.S: give the unit")
    # without `where`, the key starts at the product
    with pytest.raises(CatalogError, match=r"^models\.MAB-B\.model: unknown model 'x'"):
        parse("MAB-B", {"model": "x"})


def test_an_import_path_to_a_class_that_cannot_be_built_is_a_catalog_error():
    (out,) = specs({"PEN-G": [_with(MONOD, model="models.base:Model")]})
    assert isinstance(out, CatalogError)
    assert str(out).startswith(f"{WHERE}.model: ")


# ------------------------------------------------------------------ good entries


def test_a_mass_concentration_of_a_molar_state_goes_through_its_molar_mass():
    entry = _with(
        CHO,
        feeds={"feed_rate": {"G": "420 mM", "Q": "110 mmol/L", "A": "0.002 mol/L"}},
        boluses={"GLC-450": {"G": "450 g/L"}, "GLN-200": {"Q": "29.2 g/L"}},
        initial={"L": "0.45 g/L", "P": "250 mg/L"},
    )
    spec = parse("MAB-A", entry)
    assert ChoFedBatch.state("G").molar_mass_g_mol == pytest.approx(180.16)
    assert spec.boluses["GLC-450"]["G"] == pytest.approx(450 / 0.18016)  # 2497.8 mM
    assert spec.boluses["GLC-450"]["G"] == pytest.approx(450 / GLUCOSE_MOLAR_MASS * 1000)
    assert spec.boluses["GLN-200"]["Q"] == pytest.approx(29.2 / 146.14 * 1000)
    assert spec.feeds["feed_rate"] == {"G": 420.0, "Q": 110.0, "A": pytest.approx(2.0)}
    assert spec.initial == {"L": pytest.approx(0.45 / 0.09008), "P": pytest.approx(0.25)}


def test_mass_concentrations_convert_and_the_density_reads_in_kg_per_l():
    entry = _with(
        MONOD,
        feeds={"sugar_feed_rate": {"S": "0.5 kg/L"}, "oil_feed_rate": {"S": "1500 mg/mL"}},
        initial={"S": "15000 mg/L"},
        volume=[
            {"materials": ["charge", "inoculum"]},
            {"parameter": "weight", "density": "0.5 kg/L"},
            {"parameter": "mass", "density": "1020 kg/m^3"},
            {"parameter": "volume"},
        ],
    )
    spec = parse("PEN-G", entry)
    assert spec.feeds == {"sugar_feed_rate": {"S": 500.0}, "oil_feed_rate": {"S": 1500.0}}
    assert spec.initial == {"S": pytest.approx(15.0)}
    assert spec.volume[0] == VolumeRule(kinds=("charge", "inoculum"))
    assert spec.volume[1] == VolumeRule(parameter="weight", density_kg_l=0.5)
    assert spec.volume[2].density_kg_l == pytest.approx(1.02)
    assert spec.volume[3] == VolumeRule(parameter="volume", density_kg_l=None)


def test_defaults_come_from_the_model():
    spec = parse("PEN-G", MONOD)
    assert isinstance(spec, ModelSpec) and isinstance(spec.model, MonodFedBatch)
    assert spec.name == "monod_fedbatch" and spec.product == "PEN-G"
    # fitted: the model's non-fixed parameters; fixed: the model's defaults of the rest
    assert spec.fitted == ("mu_max", "Y_XS", "m_S", "beta")
    assert spec.fixed == {"K_S": 0.1, "alpha": 0.005}
    assert spec.fit_initial == ("X", "S")
    assert spec.clock is None and spec.bolus_rule is None and spec.initial == {}
    assert spec.boluses == {} and spec.draw_off_kinds == ()
    assert spec.observables["product"] == Measured("penicillin", 0.04, 0.01)
    assert spec.analyte("product") == "penicillin" and spec.analyte("substrate") == "substrate"
    assert spec.observable("penicillin") == "product" and spec.observable("viscosity") is None
    assert yaml.safe_load(spec.entry_json()) == MONOD  # recorded with every fit, as written


def test_fitted_and_fixed_as_the_entry_gives_them():
    spec = parse(
        "PEN-G",
        _with(MONOD, fitted=["mu_max", "K_S"], fixed={"alpha": 0.004}, fit_initial=["X"]),
    )
    assert spec.fitted == ("mu_max", "K_S")
    # a fixed value given replaces the default, the others keep theirs
    assert spec.fixed == {"Y_XS": 0.5, "m_S": 0.02, "alpha": 0.004, "beta": 0.005}
    assert spec.fit_initial == ("X",)
    everything = parse("PEN-G", _with(MONOD, fitted=[]))
    assert everything.fitted == () and everything.fixed == MonodFedBatch.defaults()


def test_bolus_rule_and_draw_offs():
    entry = _with(
        CHO,
        draw_off_kinds="draw_off",
        clock="PRODUCTION",
        bolus_rule={"material": "GLC-450", "observable": "glucose", "below": 3, "to": 5.5},
    )
    spec = parse("MAB-A", entry)
    assert spec.bolus_rule == BolusRule("GLC-450", "glucose", 3.0, 5.5, every_h=24.0, delay_h=1.0)
    assert spec.draw_off_kinds == ("draw_off",) and spec.clock == "PRODUCTION"


def test_the_demo_sites_entries_parse():
    from demo.penicillin import SOURCES_YAML
    from demo.plant import MODEL_CATALOG_ENTRY

    plant = parse("MAB-A", MODEL_CATALOG_ENTRY)
    assert plant.feeds == {"feed_rate": {"G": 420.0, "Q": 110.0}}
    assert plant.boluses == {"GLC-450": {"G": pytest.approx(2497.78, abs=0.01)}}
    assert plant.volume[1].density_kg_l == pytest.approx(1.02)
    doc = yaml.safe_load(SOURCES_YAML.substitute(header="#", site="S", tz="UTC", max_gap=1))
    (pen,) = doc["models"]["PEN-G"]
    spec = parse("PEN-G", pen)
    assert spec.feeds == {"sugar_feed_rate": {"S": 500.0}, "oil_feed_rate": {"S": 1500.0}}
    assert spec.fitted == ("mu_max", "K_S", "Y_XS", "m_S", "beta")
    assert spec.fixed == {"alpha": 0.005} and spec.clock == "BATCH"


def test_load_model_gives_a_fresh_instance_by_name_or_import_path():
    a, b = load_model("monod_fedbatch"), load_model("monod_fedbatch")
    assert isinstance(a, MonodFedBatch) and a is not b
    assert isinstance(load_model("models.cho_fedbatch:ChoFedBatch"), ChoFedBatch)
    assert set(BUNDLED) == {"cho_fedbatch", "monod_fedbatch"}
    assert ENTRY_KEYS[0] == "model"


def test_specs_put_the_error_in_place_of_a_bad_entry_only():
    bad = _with(MONOD, observables={"biomass": "biomass"})
    out = specs(
        {
            "PEN-G": [MONOD, bad, _with(MONOD, fitted=["mu_max"])],
            "MAB-A": [_with(CHO, model="cho")],
        }
    )
    assert [type(o).__name__ for o in out] == [
        "CatalogError",
        "ModelSpec",
        "CatalogError",
        "ModelSpec",
    ]
    # products in order, each entry named by its own index
    assert str(out[0]).startswith("models.MAB-A[0].model: unknown model 'cho'")
    assert str(out[2]).startswith("models.PEN-G[1].observables.biomass: give the assay error")
    good, other = out[1], out[3]
    assert isinstance(good, ModelSpec) and isinstance(other, ModelSpec)
    assert good.product == "PEN-G" and good.fitted == ("mu_max", "Y_XS", "m_S", "beta")
    assert other.fitted == ("mu_max",)  # the entry after the bad one is still its own
    assert specs({}) == []


@pytest.mark.parametrize(
    ("change", "key", "says"),
    [
        ({"feeds": {"sugar_feed_rate": {"S": "nan g/L"}}}, "feeds.sugar_feed_rate.S", "finite"),
        ({"feeds": {"sugar_feed_rate": {"S": "-5 g/L"}}}, "feeds.sugar_feed_rate.S", "negative"),
        ({"volume": [{"parameter": "volume", "density": "0 kg/L"}]}, "volume[0].density", "pos"),
        ({"fixed": {"alpha": float("nan")}}, "fixed.alpha", "finite number"),
    ],
)
def test_values_that_cannot_be_physical_are_refused(change, key, says):
    msg = _error(_with(MONOD, **change))
    assert msg.startswith(f"{WHERE}.{key}: ") and says in msg, msg
