"""Per-source profiles: how one site's exports look. Onboarding a site means writing a profile.

Profiles come from the site's `landing/sources.yaml` (`sources.site`); none is built in. Files
are matched to the first profile whose glob matches their path relative to the landing zone
(the most specific glob first).
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields

# PI system digital states seen in historian exports (a subset of the 300+; profiles extend it)
PI_DIGITAL_STATES = (
    "Pt Created",
    "I/O Timeout",
    "No Data",
    "Bad Input",
    "Shutdown",
    "Scan Off",
    "Scan On",
    "Calc Failed",
    "Over Range",
    "Under Range",
    "Intf Shut",
    "Arc Off-line",
    "Comm Fail",
    "Configure",
    "Bad",
    "Equip Fail",
    "No Sample",
    "Not Connect",
    "Out of Serv",
    "Invalid Data",
)
QUALITY_WORDS = {
    "good": "good",
    "questionable": "uncertain",
    "uncertain": "uncertain",
    "suspect": "uncertain",
    "bad": "bad",
    "substituted": "substituted",
    "annotated": "good",
    "doubtful": "uncertain",
    # OPC DA quality codes, as numbers in the status column
    "192": "good",
    "216": "substituted",
    "64": "uncertain",
    "0": "bad",
}
# B2MML / BatchML namespaces of the versions the MES reader understands (V0401…V0700; MESA dropped
# the version from the namespace with V0700). A document in any other namespace is rejected, not
# read by element names that may mean something else there; a profile can name a vendor's own.
B2MML_NAMESPACES = (
    "http://www.wbf.org/xml/B2MML-V0401",
    "http://www.wbf.org/xml/B2MML-V04",
    "http://www.wbf.org/xml/B2MML-V0500",
    "http://www.wbf.org/xml/B2MML-V0600",
    "http://www.mesa.org/xml/B2MML-V0600",
    "http://www.mesa.org/xml/B2MML",
    "http://www.wbf.org/xml/BatchML-V0401",
    "http://www.wbf.org/xml/BatchML-V0500",
    "http://www.wbf.org/xml/BatchML-V0600",
    "http://www.mesa.org/xml/BatchML",
)
IP21_QUALITY = {
    "0": "good",
    "1": "uncertain",
    "2": "bad",
    "4": "substituted",
    "5": "uncertain",
    "6": "bad",
}
DATASETS = (
    "tags",
    "historian_long",
    "historian_wide",
    "lims",
    "lims_wide",
    "mes_xml",
    "mes_journal",
)
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Profile names end up in file names under the lake (watermarks/<name>.json,
# sql_quarantined/<name>/) and in lineage (`sql:<name>`): a name from sources.yaml must not carry
# '/', '..', NUL or a leading dot.
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


def _check_name(name) -> None:
    if not isinstance(name, str) or not _PROFILE_NAME.fullmatch(name):
        raise ValueError(
            f"source profile name {str(name)[:120]!r} must be letters, digits, '_', '-' or '.' "
            "(not starting with '.' or '-', at most 100 characters)"
        )


@dataclass(frozen=True)
class FileProfile:
    """How to read one family of landing files."""

    name: str
    dataset: str
    glob: str
    delimiter: str = ","
    decimal: str = "."
    encoding: str = "utf8"
    header_line: int = 1  # the line of column names; lines before it are a preamble; 0: none
    column_names: tuple[str, ...] = ()  # a file without a header: its columns by position
    columns: dict[str, str] = field(default_factory=dict)
    tag_template: str | None = None  # long historian: the tag from columns, "{StreamId}.{Field}"
    timestamp_format: str | None = None  # strptime format; None means ISO 8601
    timezone: str = "UTC"  # zone of naive timestamps
    quality: dict[str, str] = field(default_factory=lambda: dict(QUALITY_WORDS))
    digital_states: tuple[str, ...] = PI_DIGITAL_STATES
    inoculation_phase: str = "INOCULATION"  # MES phase whose start is t_batch_h = 0
    namespaces: tuple[str, ...] = B2MML_NAMESPACES  # XML namespaces an MES document may use
    # MES elements (regex on the name) whose children run side by side, not one after another
    parallel_elements: str | None = r"(?i)parallel"
    site: str | None = None
    # lab results: where the batch id comes from when not a column of its own
    batch_from: dict[str, str] = field(default_factory=dict)
    # lab results: the analyte a source's name means (a test code, a header's analyte)
    analyte_names: dict[str, str] = field(default_factory=dict)
    # wide lab exports (one row per sample): which columns are results, of what, in which unit
    analyte_columns: dict[str, str] = field(default_factory=dict)  # header -> analyte
    exclude_columns: tuple[str, ...] = ()
    header_unit: str | None = None  # regex with groups `analyte` and `unit`, matched on headers
    units: dict[str, str] = field(default_factory=dict)  # header -> unit, over header_unit's

    def __post_init__(self) -> None:
        _check_name(self.name)

    def column(self, canonical: str) -> str:
        return self.columns.get(canonical, canonical)

    def matches(self, rel_path: str) -> bool:
        return fnmatch.fnmatch(rel_path, self.glob)


@dataclass(frozen=True)
class SqlProfile:
    """An SQL historian reached through SQLAlchemy, pulled incrementally by timestamp."""

    name: str
    url: str  # may contain ${ENV_VAR}; passwords belong in the environment, not in the file
    table: str = "history"
    columns: dict[str, str] = field(
        default_factory=lambda: {"tag": "name", "ts": "ts", "value": "value", "status": "status"}
    )
    timezone: str = "UTC"
    quality: dict[str, str] = field(default_factory=lambda: dict(IP21_QUALITY))
    digital_states: tuple[str, ...] = PI_DIGITAL_STATES  # value texts that are system states
    lookback_s: float = 3600.0  # re-read this far behind the watermark so late rows are picked up

    def __post_init__(self) -> None:
        _check_name(self.name)
        # table and column names are quoted by SQLAlchemy, and still only plain identifiers are
        # accepted: nothing from sources.yaml is ever formatted into SQL text
        for ident in (self.table, *self.columns.values()):
            if not isinstance(ident, str) or not _IDENTIFIER.fullmatch(
                ident
            ):  # fullmatch: `$` would accept a trailing newline
                raise ValueError(f"SQL profile {self.name!r}: {ident!r} is not a plain identifier")

    def resolved_url(self) -> str:
        return os.path.expandvars(self.url)


def unknown_keys(given: Iterable, known: Iterable[str]) -> str:
    """'unknown key(s) a, b (known: x, y)' for the keys of `given` not in `known`, '' if none:
    the one wording of a configuration key nobody reads."""
    known = list(known)
    unknown = sorted(map(str, set(given) - set(known)))
    return f"unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})" if unknown else ""


def build_profile(cls, name: str, spec: dict):
    """A FileProfile or SqlProfile from its sources.yaml entry; unknown keys are an error."""
    if msg := unknown_keys(spec, sorted({f.name for f in fields(cls)} - {"name"})):
        raise ValueError(f"profile {name!r} has {msg}")
    for key in ("digital_states", "namespaces", "exclude_columns", "column_names"):
        if key in spec:
            spec = {**spec, key: tuple(spec[key])}
    if "quality" in spec:
        spec = {**spec, "quality": {str(k).lower(): v for k, v in spec["quality"].items()}}
    return cls(name=name, **spec)


def profile_for(rel_path: str, profiles: list[FileProfile]) -> FileProfile | None:
    """The first profile (in sources.yaml order) whose glob matches `rel_path`; None leaves the
    file unread."""
    return next((p for p in profiles if p.matches(rel_path)), None)
