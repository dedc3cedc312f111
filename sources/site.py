"""A site's configuration: `landing/sources.yaml`, the only place a site's conventions live.

Nothing about any plant is built into the code. A site describes its source profiles (how
each export looks), the canonical unit of each process parameter, a dictionary of its lab
analytes, its operating limits per ISA-88 phase, the longest gap its compressed historian
leaves between archived values, and which models apply to which product. README
"Onboarding a site" documents every key with its default.
"""

from __future__ import annotations

import math
import re
import string
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
import yaml

from schemas.units import UnitError, check_unit, conversion
from sources.profiles import DATASETS, FileProfile, SqlProfile, build_profile, unknown_keys

SITE_FILE = "sources.yaml"
# PI's CompMax default: a steady signal may have one archived value every 8 hours, and that
# is data, not a gap. Linear tags interpolate across up to this (plus a margin for the
# exception-report delay); step tags hold their value until the next archived one, however long.
DEFAULT_MAX_GAP_S = 8 * 3600.0 + 600.0
TOP_LEVEL_KEYS = (
    "site",
    "files",
    "sql",
    "historian",
    "parameters",
    "analytes",
    "limits",
    "kpis",
    "models",
)
KPI_KEYS = ("cell_density", "product", "viability", "feed_rates")


class SiteConfigError(ValueError):
    """sources.yaml is missing or wrong (message: one line naming the key)."""


@dataclass(frozen=True)
class Analyte:
    """One lab analyte of the site: its canonical unit, accepted units and plausible range."""

    name: str
    unit: str
    units: tuple[str, ...] | None = None  # accepted reported units; None: any unit pint converts
    min: float | None = None  # plausible range, in `unit`: outside it a result is quarantined
    max: float | None = None
    spec_low: float | None = None  # specification limits, in `unit` (informative)
    spec_high: float | None = None

    def accepts(self, uom: str) -> str | None:
        """None when a result reported in `uom` can be used, else the reason it cannot."""
        if self.units is not None and uom not in self.units:
            return f"unit {uom!r} is not a known unit of {self.name} ({', '.join(self.units)})"
        try:
            conversion(uom, self.unit)
        except UnitError as err:
            return f"{self.name}: {err}"
        return None


@dataclass(frozen=True)
class KpiInputs:
    """Which of the site's analytes and parameters the batch KPIs are computed from."""

    cell_density: str | None = None  # analyte: peak_vcd, ivcd, and with `product` qp
    product: str | None = None  # analyte: final_titer
    viability: str | None = None  # analyte: harvest_viability
    feed_rates: tuple[str, ...] = ()  # parameters (a volume per time) integrated into feed_added_l


@dataclass(frozen=True)
class Site:
    """Everything a site's sources.yaml says, resolved against its landing zone."""

    landing: Path
    name: str | None = None
    files: list[FileProfile] = field(default_factory=list)
    sqls: list[SqlProfile] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)  # parameter -> canonical unit
    analytes: dict[str, Analyte] = field(default_factory=dict)
    # (parameter, phase) -> (low, high) in the parameter's canonical unit
    limits: dict[tuple[str, str], tuple[float | None, float | None]] = field(default_factory=dict)
    max_gap_s: float = DEFAULT_MAX_GAP_S
    # product -> its model catalog entries, as written (models.catalog checks them)
    models: dict[str, tuple[dict, ...]] = field(default_factory=dict)
    kpis: KpiInputs = KpiInputs()

    def canonical_unit(self, parameter: str, uom: str) -> str:
        """The site's unit of `parameter`; a parameter the site does not list keeps `uom`."""
        return self.parameters.get(parameter, uom)

    def limit_rows(self) -> list[dict]:
        return [
            {"parameter": p, "phase": ph, "low": lo, "high": hi}
            for (p, ph), (lo, hi) in sorted(self.limits.items())
        ]


def load_site(landing: Path) -> Site:
    """The site described by `landing/sources.yaml`; SiteConfigError (one line) when it is
    missing or wrong."""
    landing = Path(landing)
    path = landing / SITE_FILE
    if not path.is_file():
        raise SiteConfigError(
            f"{path} not found: describe the site there (at least `files:` with one profile per "
            'export, e.g. `historian: {dataset: historian_long, glob: "historian/*.csv"}`); '
            "see README 'Onboarding a site'"
        )
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        first = " ".join(str(err).split())[:200]
        raise SiteConfigError(f"{path}: not valid YAML: {first}") from None
    return parse_site(doc or {}, landing)


def parse_site(doc: dict, landing: Path) -> Site:
    """Build a Site from a parsed sources.yaml document."""
    where = f"{Path(landing) / SITE_FILE}"
    if not isinstance(doc, dict):
        raise SiteConfigError(f"{where}: expected a mapping of {', '.join(TOP_LEVEL_KEYS)}")
    if msg := unknown_keys(doc, TOP_LEVEL_KEYS):
        raise SiteConfigError(f"{where}: {msg}")
    try:
        name = doc.get("site")
        files = list(_profiles(doc, "files", FileProfile, name))
        sqls = [_resolve_sql(p, landing) for p in _profiles(doc, "sql", SqlProfile, None)]
        parameters = _parameters(_section(doc, "parameters"))
        analytes = _analytes(_section(doc, "analytes"))
        return Site(
            landing=Path(landing),
            name=None if name is None else str(name),
            files=sorted(files, key=lambda p: -len(p.glob.replace("*", ""))),
            sqls=sqls,
            parameters=parameters,
            analytes=analytes,
            limits=_limits(_section(doc, "limits"), parameters),
            max_gap_s=_max_gap(_section(doc, "historian")),
            models=_models(_section(doc, "models")),
            kpis=_kpis(_section(doc, "kpis"), parameters, analytes),
        )
    except (TypeError, ValueError, AttributeError) as err:
        raise SiteConfigError(f"{where}: {' '.join(str(err).split())}") from None


def _section(doc: dict, key: str) -> dict:
    value = doc.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"`{key}` must be a mapping, not a {type(value).__name__}")
    return value


REQUIRED_PROFILE_KEYS = {FileProfile: ("dataset", "glob"), SqlProfile: ("url",)}
TEXT_PROFILE_KEYS = (
    "dataset",
    "glob",
    "url",
    "delimiter",
    "decimal",
    "encoding",
    "timestamp_format",
    "timezone",
    "inoculation_phase",
    "table",
    "site",
    "header_unit",
    "parallel_elements",
    "tag_template",
)
LIST_PROFILE_KEYS = ("digital_states", "namespaces", "exclude_columns", "column_names")
MAPPING_PROFILE_KEYS = (
    "columns",
    "quality",
    "batch_from",
    "analyte_names",
    "analyte_columns",
    "units",
)
BATCH_FROM_KEYS = ("column", "path", "value", "pattern")


def _profiles(doc: dict, key: str, cls, site_name):
    """The enabled profiles of one section, each checked key by key."""
    for name, spec in _section(doc, key).items():
        where = f"{key}.{name}"
        if spec is None:  # `name: null` switches a source off
            continue
        if not isinstance(spec, dict):
            raise ValueError(f"{where} must be a mapping of profile keys")
        spec = dict(spec)
        if not spec.pop("enabled", True):
            continue
        missing = [k for k in REQUIRED_PROFILE_KEYS[cls] if k not in spec]
        if missing:
            raise ValueError(f"{where}: missing required key(s) {', '.join(missing)}")
        for k, v in spec.items():
            if k in TEXT_PROFILE_KEYS and v is not None and not isinstance(v, str):
                raise ValueError(f"{where}.{k}: a text, not {v!r}")
            if k in LIST_PROFILE_KEYS and not (
                isinstance(v, list) and all(isinstance(x, str) for x in v)
            ):
                raise ValueError(f'{where}.{k}: a list of texts, e.g. ["No Data", Shutdown]')
            if k in MAPPING_PROFILE_KEYS and not (
                isinstance(v, dict) and all(isinstance(x, str) for x in v.values())
            ):
                raise ValueError(f"{where}.{k}: a mapping of texts, e.g. {{canonical: header}}")
        _check_batch_from(where, spec.get("batch_from", {}))
        _check_patterns(where, spec)
        _check_header_keys(where, spec)
        if cls is FileProfile and site_name is not None:
            spec.setdefault("site", str(site_name))
        try:
            profile = build_profile(cls, str(name), spec)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        if cls is FileProfile and profile.dataset not in DATASETS:
            raise ValueError(
                f"{where}: unknown dataset {profile.dataset!r} (one of {', '.join(DATASETS)})"
            )
        yield profile


def _check_header_keys(where: str, spec: dict) -> None:
    """`header_line` is a line number; a file without one (0) names its columns; a tag
    template names columns."""
    line = spec.get("header_line", 1)
    if isinstance(line, bool) or not isinstance(line, int) or not 0 <= line <= 1000:
        raise ValueError(
            f"{where}.header_line: the line of the column names (1 = the first; 0 = the file "
            f"has none), not {line!r}"
        )
    template = spec.get("tag_template")
    if template is not None:
        try:
            fields = [
                (name, fmt, conv) for _, name, fmt, conv in string.Formatter().parse(template)
            ]
        except ValueError as err:
            raise ValueError(f"{where}.tag_template: {err}") from None
        if not any(name for name, _, _ in fields) or any(
            name is not None and (not name or fmt or conv) for name, fmt, conv in fields
        ):
            raise ValueError(
                f"{where}.tag_template: column names in braces and text between them, e.g. "
                '"{StreamId}.{Field}"'
            )
    names = spec.get("column_names", [])
    if line == 0 and not names:
        raise ValueError(
            f"{where}: a file without a header (header_line: 0) needs `column_names`, its "
            "columns by position"
        )
    if line != 0 and names:
        raise ValueError(f"{where}.column_names: only for a file without a header (header_line: 0)")
    if len(set(names)) != len(names):
        raise ValueError(f"{where}.column_names: a name is given twice")


def _check_batch_from(where: str, batch_from: dict) -> None:
    """`batch_from` names one source of the batch id."""
    if msg := unknown_keys(batch_from, BATCH_FROM_KEYS):
        raise ValueError(f"{where}.batch_from: {msg}")
    sources = [k for k in ("column", "path", "value") if k in batch_from]
    if batch_from and len(sources) != 1:
        raise ValueError(
            f"{where}.batch_from: exactly one of column, path or value "
            "(e.g. {column: Sample ID, pattern: '^(?P<batch>[^_]+)_'})"
        )


def _check_patterns(where: str, spec: dict) -> None:
    """The profile's regular expressions compile, with the named groups their readers use."""
    batch_from = spec.get("batch_from", {})
    for key, pattern, groups in (
        ("batch_from.pattern", batch_from.get("pattern"), ("batch",)),
        ("batch_from.path", batch_from.get("path"), ("batch",)),
        ("header_unit", spec.get("header_unit"), ("analyte", "unit")),
        ("parallel_elements", spec.get("parallel_elements"), ()),
    ):
        if pattern is None:
            continue
        try:
            found = re.compile(pattern).groupindex
        except re.error as err:
            raise ValueError(f"{where}.{key}: not a regular expression: {err}") from None
        if missing := [g for g in groups if g not in found]:
            raise ValueError(
                f"{where}.{key}: the pattern needs the named group(s) "
                + ", ".join(f"(?P<{g}>…)" for g in missing)
            )


def _resolve_sql(profile: SqlProfile, landing: Path) -> SqlProfile:
    """A relative SQLite path in a URL resolves against the landing zone, never the working
    directory (a site run from another folder must read the same database)."""
    from dataclasses import replace

    if "${" in profile.url or "$" in profile.url.split("://", 1)[0]:
        return profile  # from the environment: taken as it is at pull time
    try:
        url = sa.engine.make_url(profile.url)
    except (sa.exc.ArgumentError, ValueError):
        return profile  # the pull reports an unparseable URL, without quoting it
    db = url.database
    if (
        url.get_backend_name() == "sqlite"
        and db
        and db != ":memory:"
        and not db.startswith("file:")
    ):
        if not Path(db).is_absolute():
            resolved = (Path(landing) / db).resolve()
            return replace(
                profile, url=url.set(database=str(resolved)).render_as_string(hide_password=False)
            )
    return profile


def _parameters(section: dict) -> dict[str, str]:
    out = {}
    for parameter, unit in section.items():
        if isinstance(unit, dict):
            unit = unit.get("unit")
        if not isinstance(unit, str) or not unit.strip():
            raise ValueError(f"parameters.{parameter}: give the canonical unit, e.g. `degC`")
        _check_unit(unit, f"parameters.{parameter}")
        out[str(parameter)] = unit.strip()
    return out


ANALYTE_KEYS = ("unit", "units", "min", "max", "spec_low", "spec_high")


def _analytes(section: dict) -> dict[str, Analyte]:
    out: dict[str, Analyte] = {}
    for name, spec in section.items():
        key = f"analytes.{name}"
        if str(name).lower() in out:  # readers lower-case analyte names
            raise ValueError(
                f"{key}: names the same analyte as {str(name).lower()!r}"
                " (analyte names ignore case)"
            )
        if isinstance(spec, str):
            spec = {"unit": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("unit"), str):
            raise ValueError(f"{key}: give at least `unit`, e.g. {{unit: g/L, min: 0}}")
        if msg := unknown_keys(spec, ANALYTE_KEYS):
            raise ValueError(f"{key}: {msg}")
        _check_unit(spec["unit"], f"{key}.unit")
        units = spec.get("units")
        if isinstance(units, str):
            units = [units]
        if units is not None:
            if not isinstance(units, list):
                raise ValueError(f"{key}.units: a list of units, e.g. [g/L, mg/mL]")
            units = tuple(str(u).strip() for u in units)
            for u in units:
                try:
                    conversion(u, spec["unit"])
                except UnitError as err:
                    raise ValueError(f"{key}.units: {err}") from None
        analyte = Analyte(
            str(name).lower(),
            spec["unit"].strip(),
            units,
            *(_number(spec.get(k), f"{key}.{k}") for k in ANALYTE_KEYS[2:]),
        )
        if analyte.min is not None and analyte.max is not None and analyte.min > analyte.max:
            raise ValueError(f"{key}: min {analyte.min} is above max {analyte.max}")
        out[analyte.name] = analyte
    return out


def _limits(
    section: dict, parameters: dict[str, str]
) -> dict[tuple[str, str], tuple[float | None, float | None]]:
    out = {}
    for parameter, phases in section.items():
        if not isinstance(phases, dict):
            raise ValueError(f"limits.{parameter}: a mapping of phase -> [low, high]")
        if parameter not in parameters:
            # without a site unit each tag keeps its own,
            # and °C limits would be applied to °F values
            raise ValueError(
                f"limits.{parameter}: give {parameter} its unit under `parameters`"
                " (limits are in that unit)"
            )
        for phase, bounds in phases.items():
            key = f"limits.{parameter}.{phase}"
            if isinstance(bounds, dict):
                if msg := unknown_keys(bounds, ("low", "high")):
                    raise ValueError(f"{key}: {msg}")
                bounds = [bounds.get("low"), bounds.get("high")]
            if not isinstance(bounds, (list, tuple)) or len(bounds) != 2:
                raise ValueError(f"{key}: give [low, high] (null for an open side)")
            low, high = (_number(b, key) for b in bounds)
            if low is not None and high is not None and low > high:
                raise ValueError(f"{key}: low {low} is above high {high}")
            out[(str(parameter), str(phase))] = (low, high)
    return out


def _max_gap(section: dict) -> float:
    if msg := unknown_keys(section, ("max_gap_s",)):
        raise ValueError(f"historian: {msg}")
    value = _number(section.get("max_gap_s"), "historian.max_gap_s")
    if value is None:
        return DEFAULT_MAX_GAP_S
    if value <= 0:
        raise ValueError(f"historian.max_gap_s must be positive, not {value}")
    return value


def _models(section: dict) -> dict[str, tuple[dict, ...]]:
    """product -> catalog entries; a bare name is an entry with only `model:` (models.catalog
    checks each entry against its model when the model assets run)."""
    out = {}
    for product, entries in section.items():
        entries = entries if isinstance(entries, list) else [entries]
        parsed = []
        for i, e in enumerate(entries):
            e = {"model": e} if isinstance(e, str) else e
            if not isinstance(e, dict) or not isinstance(e.get("model"), str):
                raise ValueError(
                    f"models.{product}[{i}]: a mapping with `model: <name or module:Class>` "
                    "and its catalog keys (README 'Models per product')"
                )
            parsed.append(e)
        out[str(product)] = tuple(parsed)
    return out


def _kpis(section: dict, parameters: dict[str, str], analytes: dict[str, Analyte]) -> KpiInputs:
    if msg := unknown_keys(section, KPI_KEYS):
        raise ValueError(f"kpis: {msg}")
    feeds = section.get("feed_rates") or []
    feeds = [feeds] if isinstance(feeds, str) else feeds
    for p in feeds:
        if p not in parameters:
            raise ValueError(
                f"kpis.feed_rates: give {p!r} its unit under `parameters`"
                " (a volume per time, e.g. L/h)"
            )
        try:
            conversion(parameters[p], "L/h")
        except UnitError as err:
            raise ValueError(f"kpis.feed_rates: {p}: {err}") from None
    names = {k: section.get(k) for k in KPI_KEYS[:3]}
    for k, v in names.items():
        if v is not None and not isinstance(v, str):
            raise ValueError(f"kpis.{k}: an analyte name, not {v!r}")
        if v is not None and v.lower() not in analytes:
            # a KPI mixes whatever units results came in unless the dictionary names one
            raise ValueError(
                f"kpis.{k}: {v!r} is not in `analytes` (its unit and range come from there)"
            )
    return KpiInputs(
        **{k: v.lower() if v else None for k, v in names.items()}, feed_rates=tuple(map(str, feeds))
    )


def _number(value, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key}: {value!r} is not a finite number")
    return float(value)


def _check_unit(unit: str, key: str) -> None:
    try:
        check_unit(unit)
    except UnitError as err:
        raise ValueError(f"{key}: {err}") from None
