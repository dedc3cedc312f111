"""One pandera model per silver table. Field descriptions are the data dictionary.

Every timestamp is UTC (`datetime64[us, UTC]`, DuckDB `TIMESTAMP WITH TIME ZONE`); where a
source gave local text, the original is kept in a `*_text` column because DST makes local
hours repeat. Lineage columns (`schemas.lineage`) tie every row to its file and row.
"""

from __future__ import annotations

from typing import Annotated

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from schemas.keys import Duplicates, Prefer

UtcTimestamp = Annotated[pd.DatetimeTZDtype, "us", "UTC"]

# best first: the order that resolves two archived values of one tag at one time
QUALITIES = ("good", "substituted", "uncertain", "bad")
ROLES = ("pv", "sp", "out", "calc")
INTERPOLATIONS = ("linear", "step")
LEVELS = ("procedure", "unit_procedure", "operation", "phase")
# batch statuses after which a batch takes no more data of its own; any other status is running
ENDED_STATUSES = ("complete", "aborted", "stopped")


class Lineage(pa.DataFrameModel):
    source_sha256: Series[str] = pa.Field(
        str_length={"min_value": 64, "max_value": 64},
        description="SHA-256 of the source file (or SQL pull) the row came from",
    )
    source_row: Series[int] = pa.Field(
        ge=1,
        description=(
            "line number in the source file (header is line 1); row ordinal for XML and SQL sources"
        ),
    )
    source_path: Series[str] = pa.Field(
        description="path of the source file relative to the landing zone, or sql:<source>"
    )


class Tag(Lineage):
    """Tag dictionary: which tag measures what, where (e.g. a PI AF export)."""

    tag: Series[str] = pa.Field(
        str_length={"min_value": 1, "max_value": 200}, description="historian tag name"
    )
    unit_id: Series[str] = pa.Field(description="equipment unit the tag belongs to (ISA-88 unit)")
    parameter: Series[str] = pa.Field(description="canonical parameter name, e.g. temperature, ph")
    uom: Series[str] = pa.Field(description="engineering unit as configured in the historian")
    role: Series[str] = pa.Field(
        isin=ROLES, description="pv (measurement), sp (set-point), out (controller output), calc"
    )
    interpolation: Series[str] = pa.Field(
        isin=INTERPOLATIONS, description="linear for measurements, step for set-points and states"
    )
    low: Series[float] = pa.Field(
        nullable=True, description="lower end of the instrument range (engineering unit)"
    )
    high: Series[float] = pa.Field(
        nullable=True, description="upper end of the instrument range (engineering unit)"
    )
    max_gap_s: Series[float] = pa.Field(
        gt=0,
        nullable=True,
        description=(
            "longest interval between archived values a linear tag interpolates across (NULL: the "
            "site's historian.max_gap_s); step tags hold their value however long"
        ),
    )
    description: Series[str] = pa.Field(nullable=True, description="free-text tag description")
    canonical_uom: Series[str] = pa.Field(
        description="unit of the parameter in curated (gold) tables"
    )
    scale: Series[float] = pa.Field(description="canonical value = value * scale + offset (pint)")
    offset: Series[float] = pa.Field(description="see scale; non-zero for temperatures only")

    class Config:
        unique = ["tag"]
        metadata = {
            "duplicates": Duplicates(
                (Prefer("source_row", descending=True),),
                "duplicate tag: the later definition in the file wins",
            )
        }


class HistorianPoint(Lineage):
    """A raw archived historian value, as recorded (compressed, irregular)."""

    tag: Series[str] = pa.Field(
        str_length={"min_value": 1, "max_value": 200}, description="historian tag name"
    )
    ts: Series[UtcTimestamp] = pa.Field(description="time of the value, UTC")
    value: Series[float] = pa.Field(
        nullable=True,
        description=(
            "numeric value in the tag's engineering unit; NULL when the historian recorded a "
            "digital state"
        ),
    )
    state: Series[str] = pa.Field(
        nullable=True,
        description="digital state text (I/O Timeout, Bad Input, …) when the value is not a number",
    )
    quality: Series[str] = pa.Field(
        isin=QUALITIES,
        description=(
            "good / uncertain / bad / substituted, mapped from the source's quality convention"
        ),
    )
    ts_text: Series[str] = pa.Field(
        nullable=True, description="timestamp exactly as the source wrote it"
    )

    class Config:
        unique = ["tag", "ts"]
        metadata = {
            "duplicates": Duplicates(
                (Prefer("quality", ranking=QUALITIES), Prefer("source_row", descending=True)),
                "duplicate (tag, ts): the best-quality value wins, then the later row in the file"
                " (the historian's last write)",
            )
        }


class BatchRecord(Lineage):
    """One version of a batch's header, from an MES record. The `batches` view keeps the latest."""

    batch_id: Series[str] = pa.Field(str_length={"min_value": 1, "max_value": 100})
    product: Series[str] = pa.Field(nullable=True)
    site: Series[str] = pa.Field(nullable=True)
    unit_id: Series[str] = pa.Field(nullable=True)
    recipe_id: Series[str] = pa.Field(nullable=True)
    status: Series[str] = pa.Field(
        description="MES status, lower case: complete, running, aborted, …"
    )
    start_ts: Series[UtcTimestamp] = pa.Field(nullable=True)
    end_ts: Series[UtcTimestamp] = pa.Field(nullable=True, description="NULL while the batch runs")
    inoculation_ts: Series[UtcTimestamp] = pa.Field(
        nullable=True, description="start of the INOCULATION phase; t_batch_h counts from here"
    )
    record_version: Series[int] = pa.Field(
        ge=1, description="version of the batch record; a higher version supersedes"
    )
    record_ts: Series[UtcTimestamp] = pa.Field(
        nullable=True, description="when the MES last changed this record version"
    )
    derived: Series[str] = pa.Field(
        nullable=True,
        description="fields the record did not state and how they were derived; NULL: none",
    )

    @pa.dataframe_check(error="end_ts before start_ts")
    def ends_after_start(cls, df: pd.DataFrame) -> Series[bool]:
        return df["end_ts"].isna() | df["start_ts"].isna() | (df["end_ts"] >= df["start_ts"])


class Phase(Lineage):
    """A procedural element of a batch (ISA-88), as a half-open interval [start_ts, end_ts)."""

    batch_id: Series[str]
    unit_id: Series[str] = pa.Field(nullable=True)
    level: Series[str] = pa.Field(isin=LEVELS)
    path: Series[str] = pa.Field(
        description="procedural path, e.g. B26-001:PRODUCTION:CULTURE:FED_BATCH"
    )
    phase: Series[str] = pa.Field(description="element name, e.g. FED_BATCH")
    seq: Series[int] = pa.Field(ge=1, description="order of the element within its batch and level")
    start_ts: Series[UtcTimestamp] = pa.Field(nullable=True)
    end_ts: Series[UtcTimestamp] = pa.Field(
        nullable=True, description="NULL while the element runs"
    )
    record_version: Series[int] = pa.Field(ge=1)
    derived: Series[str] = pa.Field(
        nullable=True,
        description="which times the record did not state and how they were derived; NULL: none",
    )

    @pa.dataframe_check(error="end_ts before start_ts")
    def ends_after_start(cls, df: pd.DataFrame) -> Series[bool]:
        return df["end_ts"].isna() | df["start_ts"].isna() | (df["end_ts"] >= df["start_ts"])


class MaterialEvent(Lineage):
    """A material addition or consumption recorded by the MES (bolus feeds, inoculum, media)."""

    batch_id: Series[str]
    ts: Series[UtcTimestamp] = pa.Field(nullable=True)
    material: Series[str]
    lot_id: Series[str] = pa.Field(
        nullable=True, description="material lot (and sublot, as LOT/SUBLOT) the MES recorded"
    )
    quantity: Series[float] = pa.Field(ge=0)
    uom: Series[str]
    kind: Series[str] = pa.Field(
        nullable=True, description="charge, inoculum, bolus, feed_total, … as the MES describes it"
    )
    record_version: Series[int] = pa.Field(ge=1)
    derived: Series[str] = pa.Field(
        nullable=True,
        description="fields the record did not state and how they were derived; NULL: none",
    )


class BatchEvent(Lineage):
    """What the MES recorded happening to a batch besides its steps: operator exceptions,
    comments and electronic signatures, with who, when and what they refer to."""

    batch_id: Series[str]
    event_id: Series[str] = pa.Field(description="the record's ID of the event")
    kind: Series[str] = pa.Field(isin=("exception", "event", "comment", "signature"))
    ts: Series[UtcTimestamp] = pa.Field(nullable=True)
    person: Series[str] = pa.Field(nullable=True, description="who raised, wrote or signed it")
    text: Series[str] = pa.Field(
        nullable=True, description="the message, comment or what was signed"
    )
    refers_to: Series[str] = pa.Field(
        nullable=True, description="the procedural element or event it concerns"
    )
    category: Series[str] = pa.Field(
        nullable=True, description="the event's category, or a signature's meaning"
    )
    status: Series[str] = pa.Field(nullable=True)
    risk: Series[str] = pa.Field(nullable=True)
    record_version: Series[int] = pa.Field(ge=1)


class Sample(Lineage):
    """An offline lab result (LIMS)."""

    batch_id: Series[str]
    sample_id: Series[str]
    analyte: Series[str]
    value: Series[float] = pa.Field(
        nullable=True, description="numeric result; NULL when censored (see value_text)"
    )
    value_text: Series[str] = pa.Field(description="result exactly as reported, e.g. '<0.5'")
    censored: Series[bool] = pa.Field(description="result below/above a quantitation limit")
    uom: Series[str] = pa.Field(description="unit as reported")
    canonical_value: Series[float] = pa.Field(
        nullable=True,
        description=(
            "value in the site's unit of the analyte (sources.yaml `analytes`); NULL when censored"
        ),
    )
    canonical_uom: Series[str] = pa.Field(
        description=(
            "the site's unit of the analyte; the reported unit for an analyte the site does not "
            "list"
        )
    )
    sampled_ts: Series[UtcTimestamp] = pa.Field(
        description="when the sample was drawn: models and contextualization use this"
    )
    reported_ts: Series[UtcTimestamp] = pa.Field(
        nullable=True,
        description=(
            "when the lab released the result: forecasts may only use results reported before "
            "their as-of time"
        ),
    )

    @pa.dataframe_check(error="reported_ts before sampled_ts")
    def reported_after_sampled(cls, df: pd.DataFrame) -> Series[bool]:
        return df["reported_ts"].isna() | (df["reported_ts"] >= df["sampled_ts"])

    class Config:
        unique = ["batch_id", "sample_id", "analyte"]
        metadata = {
            "duplicates": Duplicates(
                (Prefer("reported_ts", descending=True), Prefer("source_row", descending=True)),
                "duplicate (batch_id, sample_id, analyte): the latest reported result supersedes"
                " (a lab retest)",
            )
        }


class QuarantineRow(pa.DataFrameModel):
    """One rejected source row and the reason; rows are never dropped silently."""

    dataset: Series[str]
    source_sha256: Series[str]
    source_row: Series[int] = pa.Field(nullable=True)
    source_path: Series[str]
    column: Series[str] = pa.Field(nullable=True)
    check: Series[str]
    failure_value: Series[str] = pa.Field(nullable=True)
    reason: Series[str]
    row_key: Series[str] = pa.Field(
        nullable=True,
        description=(
            "what the rejected row was about, where the reader knows it (the tag of a dictionary "
            "row)"
        ),
    )
    ingested_at: Series[UtcTimestamp]


class AuditEvent(pa.DataFrameModel):
    """The append-only audit trail (lake/audit): who did what to the lake, when, and why."""

    ts: Series[UtcTimestamp]
    actor: Series[str] = pa.Field(description="user or service account, @host")
    action: Series[str] = pa.Field(
        description=(
            "file_ingested, file_rejected, file_unchanged, record_superseded, asset_materialized, "
            "model_promoted, …"
        )
    )
    object: Series[str] = pa.Field(
        description="what the event is about: a file path, a batch, a model version"
    )
    old_value: Series[str] = pa.Field(nullable=True)
    new_value: Series[str] = pa.Field(nullable=True)
    reason: Series[str] = pa.Field(nullable=True)
    run_id: Series[str] = pa.Field(nullable=True)


class IngestLogEntry(pa.DataFrameModel):
    """One row per source file or SQL pull: what was read, accepted and quarantined."""

    source: Series[str]
    path: Series[str]
    sha256: Series[str]
    bytes: Series[int] = pa.Field(ge=0)
    dataset: Series[str]
    rows_read: Series[int] = pa.Field(ge=0)
    rows_accepted: Series[int] = pa.Field(ge=0)
    rows_quarantined: Series[int] = pa.Field(ge=0)
    status: Series[str] = pa.Field(
        isin=("ingested", "rejected", "unchanged", "failed"),
        description=(
            "failed: the source could not be read at all (e.g. an unreachable SQL historian)"
        ),
    )
    error: Series[str] = pa.Field(
        nullable=True, description="one-line reason a file was rejected or a source failed"
    )
    notes: Series[str] = pa.Field(
        nullable=True,
        description=(
            "what the reader derived rather than read (e.g. start times missing from a vendor "
            "record)"
        ),
    )
    run_id: Series[str] = pa.Field(nullable=True)
    code_version: Series[str]
    started_at: Series[UtcTimestamp]
    finished_at: Series[UtcTimestamp]

    @pa.dataframe_check(error="rows_read != rows_accepted + rows_quarantined")
    def rows_conserved(cls, df: pd.DataFrame) -> Series[bool]:
        return df["rows_read"] == df["rows_accepted"] + df["rows_quarantined"]


def table_description(model: type[pa.DataFrameModel]) -> str:
    """The first paragraph of a table's docstring, on one line: what the table holds."""
    return " ".join((model.__doc__ or "").strip().split("\n\n")[0].split())


SILVER_MODELS: dict[str, type[pa.DataFrameModel]] = {
    "tags": Tag,
    "historian_points": HistorianPoint,
    "batch_records": BatchRecord,
    "phase_records": Phase,
    "material_event_records": MaterialEvent,
    "batch_event_records": BatchEvent,
    "samples": Sample,
}


# ------------------------------------------------------------------ gold (contextualized) tables


class ProcessValue(pa.DataFrameModel):
    """A good historian point placed in its batch and phase, in canonical units."""

    batch_id: Series[str]
    unit_id: Series[str]
    phase: Series[str] = pa.Field(
        description="ISA-88 phase whose half-open interval [start, end) contains ts"
    )
    parameter: Series[str] = pa.Field(
        description="canonical parameter name from the tag dictionary"
    )
    ts: Series[UtcTimestamp]
    t_batch_h: Series[float] = pa.Field(
        description="hours since inoculation (batch start where there is none)"
    )
    t_phase_h: Series[float] = pa.Field(ge=0, description="hours since the phase started")
    value: Series[float] = pa.Field(description="value in the canonical unit")
    uom: Series[str] = pa.Field(description="canonical unit")
    quality: Series[str] = pa.Field(isin=("good", "substituted"))
    tag: Series[str]
    source_sha256: Series[str]
    source_row: Series[int]


class BatchTrajectory(pa.DataFrameModel):
    """A batch's parameter on a regular grid of t_batch_h: time-weighted average per window."""

    batch_id: Series[str]
    phase: Series[str] = pa.Field(
        nullable=True,
        description="ISA-88 phase the window starts in (NULL outside every phase of the batch)",
    )
    parameter: Series[str]
    t_batch_h: Series[float] = pa.Field(description="window start, hours since inoculation")
    value: Series[float] = pa.Field(
        nullable=True,
        description="time-weighted mean over the window; NULL unless fully covered by valid data",
    )
    n_points: Series[int] = pa.Field(ge=0, description="good archived points inside the window")
    coverage: Series[float] = pa.Field(
        ge=0, le=1, description="fraction of the window covered by valid segments"
    )
    uom: Series[str]


class PhaseSummary(pa.DataFrameModel):
    """Time-weighted statistics of a parameter over one phase of one batch."""

    batch_id: Series[str]
    phase: Series[str]
    parameter: Series[str]
    duration_h: Series[float] = pa.Field(ge=0)
    twa: Series[float] = pa.Field(
        nullable=True, description="time-weighted average over the covered part of the phase"
    )
    min: Series[float] = pa.Field(nullable=True)
    max: Series[float] = pa.Field(nullable=True)
    std: Series[float] = pa.Field(
        nullable=True, ge=0, description="time-weighted standard deviation"
    )
    pct_in_limits: Series[float] = pa.Field(
        nullable=True,
        ge=0,
        le=100.000001,
        description=(
            "% of covered time inside the site's limits for this parameter and phase; NULL where "
            "the site sets none"
        ),
    )
    limit_low: Series[float] = pa.Field(
        nullable=True,
        description=(
            "lower limit of the parameter in this phase (sources.yaml `limits`), canonical unit"
        ),
    )
    limit_high: Series[float] = pa.Field(
        nullable=True, description="upper limit of the parameter in this phase, canonical unit"
    )
    coverage: Series[float] = pa.Field(nullable=True, ge=0, le=1.000001)
    uom: Series[str]
    phase_seq: Series[int]


class BatchKpi(pa.DataFrameModel):
    """Batch-level key performance indicators."""

    batch_id: Series[str]
    product: Series[str] = pa.Field(nullable=True)
    unit_id: Series[str] = pa.Field(nullable=True)
    status: Series[str]
    duration_h: Series[float] = pa.Field(
        ge=0, description="batch start to end (to as-of time while running)"
    )
    culture_h: Series[float] = pa.Field(description="inoculation to end")
    peak_vcd: Series[float] = pa.Field(nullable=True, description="1e6 cells/mL")
    ivcd: Series[float] = pa.Field(
        nullable=True,
        ge=0,
        description="integral of VCD over time, 1e6 cells·h/mL (trapezoid over samples)",
    )
    final_titer: Series[float] = pa.Field(nullable=True, description="g/L, last titer sample")
    qp: Series[float] = pa.Field(
        nullable=True, description="specific productivity, slope of titer vs IVCD, pg/cell/day"
    )
    harvest_viability: Series[float] = pa.Field(
        nullable=True, description="%, last viability sample"
    )
    feed_added_l: Series[float] = pa.Field(
        ge=0, description="continuous feed, integral of the feed-rate tag (L)"
    )
    bolus_added_l: Series[float] = pa.Field(
        ge=0, description="bolus additions recorded by the MES (L)"
    )
    total_feed_added_l: Series[float] = pa.Field(ge=0)


class GoldenProfile(pa.DataFrameModel):
    """The reference trajectory of a product: mean ± k·σ over chosen good batches."""

    product: Series[str] = pa.Field(nullable=True)
    parameter: Series[str]
    t_batch_h: Series[float]
    mean: Series[float]
    std: Series[float] = pa.Field(nullable=True, ge=0)
    lower: Series[float] = pa.Field(nullable=True)
    upper: Series[float] = pa.Field(nullable=True)
    n_batches: Series[int] = pa.Field(ge=2)
    uom: Series[str] = pa.Field(nullable=True)


GOLD_MODELS: dict[str, type[pa.DataFrameModel]] = {
    "process_values": ProcessValue,
    "batch_trajectories": BatchTrajectory,
    "phase_summary": PhaseSummary,
    "batch_kpis": BatchKpi,
    "golden_profiles": GoldenProfile,
}


# ------------------------------------------------------------------ model registry tables


class ModelVersion(pa.DataFrameModel):
    """One fit of a model: enough to reproduce it (data, code, settings, seed) and why it was
    (not) promoted."""

    product: Series[str] = pa.Field(description="the product (batches.product) it models")
    model: Series[str]
    version: Series[int] = pa.Field(ge=1)
    status: Series[str] = pa.Field(isin=("candidate", "champion", "rejected", "retired"))
    fitted_at: Series[UtcTimestamp]
    training_batches: Series[str] = pa.Field(description="JSON list of the training batch ids")
    data_fingerprint: Series[str] = pa.Field(
        str_length={"min_value": 64, "max_value": 64},
        description="sha256 of the exact training data",
    )
    code_version: Series[str]
    solver: Series[str] = pa.Field(description="JSON: integrator method and tolerances")
    seed: Series[int]
    settings: Series[str] = pa.Field(
        description="JSON: fitted and fixed parameters, starts, folds, assay errors"
    )
    metrics: Series[str] = pa.Field(description="JSON: fit and leave-batches-out validation errors")
    validation_error: Series[float] = pa.Field(
        nullable=True,
        description="k-fold weighted RMSE on held-out batches; the promotion criterion",
    )
    reason: Series[str] = pa.Field(description="why the version got its status")
    fit_seconds: Series[float] = pa.Field(ge=0)


class ModelParameter(pa.DataFrameModel):
    """A parameter of a model version: estimate, standard error and 95 % interval (fitted), or
    the fixed value."""

    product: Series[str] = pa.Field(description="the product (batches.product) it models")
    model: Series[str]
    version: Series[int] = pa.Field(ge=1)
    name: Series[str]
    value: Series[float]
    stderr: Series[float] = pa.Field(nullable=True)
    ci_low: Series[float] = pa.Field(nullable=True)
    ci_high: Series[float] = pa.Field(nullable=True)
    fixed: Series[bool]
    uom: Series[str]
    identifiable: Series[str] = pa.Field(
        isin=(
            "yes",
            "no",
            "fixed",
            "fixed; identifiable if freed",
            "fixed; not identifiable if freed",
        ),
        description="fitted: from the fit's covariance and profile; fixed: not estimated (the "
        "probe says whether the data could pin it down if it were freed)",
    )
    sd_log: Series[float] = pa.Field(nullable=True, description="standard deviation of log(value)")
    max_abs_corr: Series[float] = pa.Field(
        nullable=True, description="largest |correlation| with a fitted parameter"
    )
    bound_low: Series[float]
    bound_high: Series[float]
    profile_rise_low: Series[float] = pa.Field(
        nullable=True,
        description="fitted, when profiled: rise of the weighted cost (units of s²) with the "
        "parameter held at ci_low and the rest refitted; about 3.84 when the interval is right",
    )
    profile_rise_high: Series[float] = pa.Field(nullable=True, description="the same at ci_high")


class ModelPrediction(pa.DataFrameModel):
    """Fit versus observation for every training sample of a model version."""

    product: Series[str] = pa.Field(description="the product (batches.product) it models")
    model: Series[str]
    version: Series[int] = pa.Field(ge=1)
    batch_id: Series[str]
    analyte: Series[str] = pa.Field(
        description="the lab analyte the catalog maps the model's observable to"
    )
    t_batch_h: Series[float]
    predicted: Series[float] = pa.Field(nullable=True)
    observed: Series[float]


class ForecastRow(pa.DataFrameModel):
    """A running batch's forecast band (10th, 50th, 90th percentile) at one time."""

    product: Series[str] = pa.Field(description="the product (batches.product) it models")
    model: Series[str]
    version: Series[int] = pa.Field(ge=1)
    batch_id: Series[str]
    as_of: Series[UtcTimestamp] = pa.Field(description="only data reported by then were used")
    analyte: Series[str]
    kind: Series[str] = pa.Field(
        isin=("trajectory", "at_harvest"),
        description="a point of the trajectory, or the value at harvest (harvest time varies)",
    )
    t_batch_h: Series[float] = pa.Field(
        description="hours since inoculation; for at_harvest rows the planned (median) harvest"
    )
    p10: Series[float] = pa.Field(nullable=True)
    p50: Series[float] = pa.Field(nullable=True)
    p90: Series[float] = pa.Field(nullable=True)
    observed: Series[bool] = pa.Field(
        description="t_batch_h is at or before the latest data (a fit), else a forecast"
    )
    created_at: Series[UtcTimestamp]


MODEL_MODELS: dict[str, type[pa.DataFrameModel]] = {
    "model_versions": ModelVersion,
    "model_parameters": ModelParameter,
    "model_predictions": ModelPrediction,
    "forecasts": ForecastRow,
}
