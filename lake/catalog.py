"""The DuckDB catalog: one view per table over the Parquet files, nothing else.

The catalog is rebuilt whole into a temporary file and renamed over the old one, under a
file lock: DuckDB allows one writing process per database file, readers keep reading the
previous catalog until the rename, and a crash never leaves a half-built catalog behind.
Views use absolute paths, so `duckdb data/lake/catalog.duckdb` works from any folder.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
from filelock import FileLock

from lake.layout import Lake, atomic_write_parquet, sweep_stale_temporaries
from schemas.keys import KeyRule, key_rule
from schemas.sql_checks import key_sql
from schemas.tables import (
    GOLD_MODELS,
    MODEL_MODELS,
    SILVER_MODELS,
    AuditEvent,
    IngestLogEntry,
    QuarantineRow,
    Sample,
    Tag,
)
from schemas.types import arrow_schema

# Silver tables whose rows carry record versions: the user-facing view keeps the latest
# version of each batch record; older versions stay visible in the *_records views.
VERSIONED_VIEWS = {
    "batches": "batch_records",
    "phases": "phase_records",
    "material_events": "material_event_records",
    "batch_events": "batch_event_records",
}
STORAGE_VERSION = "v1.2.0"
log = logging.getLogger(__name__)
# silver tables whose files are wrapped by a curated view of the contract's name
RAW_VIEW_NAME = {
    "tags": "tag_files",
    "batch_records": "batch_record_files",
    "samples": "sample_records",
}


# Beside each table's folder, `<table>~schema/empty.parquet`: no rows, the model's columns and
# types. A view reads `<table>*/*.parquet`, which matches that file and the table's own files, so
# it is valid before the first file is written and sees every later file without a rebuild:
# the catalog is written once per layout (by the `lake_catalog` asset), not after every write.
SCHEMA_SUFFIX = "~schema"


def _source(lake: Lake, folder: Path, model, order_by: str = "") -> str:
    seed = folder.with_name(folder.name + SCHEMA_SUFFIX) / "empty.parquet"
    schema = arrow_schema(model)
    # rewritten when the model gained a column: the view then has it before any file does
    if not seed.exists() or not pq.read_schema(seed).equals(schema):
        atomic_write_parquet(seed, schema.empty_table())
    return f"SELECT * FROM read_parquet('{folder.as_posix()}*/*.parquet', union_by_name = true)" + (
        f" ORDER BY {order_by}" if order_by else ""
    )


def _rule(model) -> KeyRule:
    rule = key_rule(model)
    assert rule is not None, f"{model.__name__} declares no key"
    return rule


def view_definitions(lake: Lake) -> dict[str, str]:
    """View name -> SQL. Paths come from the lake root, never from user input."""
    views: dict[str, str] = {}
    views["ingest_log"] = _source(lake, lake.silver("ingest_log"), IngestLogEntry)
    views["audit_log"] = _source(lake, lake.root / "audit", AuditEvent, order_by="ts")
    views["quarantine"] = _source(lake, lake.silver("quarantine"), QuarantineRow)
    for table, model in SILVER_MODELS.items():
        views[RAW_VIEW_NAME.get(table, table)] = _source(lake, lake.silver(table), model)
    # the newest dictionary export defines a tag; inside one export, the model's duplicate rule
    key, order = key_sql(_rule(Tag), {"source_row": "t.source_row"})
    views["tags"] = f"""
        SELECT t.* FROM tag_files t
        LEFT JOIN ingest_log l ON l.sha256 = t.source_sha256 AND l.status = 'ingested'
        QUALIFY row_number() OVER (
            PARTITION BY {key} ORDER BY l.started_at DESC NULLS LAST, {order}) = 1"""
    views["batch_records"] = """
        SELECT r.* EXCLUDE (superseded_by), r.superseded_by FROM (
            SELECT *, CASE WHEN latest <> source_sha256 THEN latest END AS superseded_by FROM (
                SELECT *, first_value(source_sha256) OVER (
                    PARTITION BY batch_id
                    ORDER BY record_version DESC, record_ts DESC NULLS LAST, source_sha256)
                  AS latest
                FROM batch_record_files)) r"""
    # a retest reported in a later file supersedes the earlier result (both stay in sample_records)
    key, order = key_sql(_rule(Sample))
    views["samples"] = f"""
        SELECT * FROM sample_records
        QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {order}, source_sha256) = 1"""
    for table, model in GOLD_MODELS.items():
        views[table] = _source(lake, lake.gold(table), model)
    # each batch against the golden profile of its product (completed and running batches alike)
    views["batch_deviation"] = """
        SELECT t.batch_id, b.product, t.parameter, t.t_batch_h, t.value,
               g.mean, g.std, g.lower, g.upper,
               t.value - g.mean AS deviation, (t.value - g.mean) / nullif(g.std, 0) AS z,
               t.value NOT BETWEEN g.lower AND g.upper AS outside
        FROM batch_trajectories t JOIN batches b USING (batch_id)
        JOIN golden_profiles g
          ON g.product = b.product AND g.parameter = t.parameter AND g.t_batch_h = t.t_batch_h
        WHERE t.value IS NOT NULL"""
    views["batches"] = (
        "SELECT * EXCLUDE (superseded_by) FROM batch_records WHERE superseded_by IS NULL"
    )
    for table, model in MODEL_MODELS.items():
        views[table] = _source(lake, lake.models(table), model)
    for name in ("phases", "material_events", "batch_events"):
        views[name] = f"""
            SELECT x.* FROM {VERSIONED_VIEWS[name]} x
            JOIN batches b ON b.batch_id = x.batch_id AND b.source_sha256 = x.source_sha256"""
    return views


VIEW_ORDER = (
    "audit_log",
    "ingest_log",
    "quarantine",
    "tag_files",
    "tags",
    "historian_points",
    "sample_records",
    "samples",
    "batch_record_files",
    "batch_records",
    "batches",
    "phase_records",
    "phases",
    "material_event_records",
    "material_events",
    "batch_event_records",
    "batch_events",
    "process_values",
    "batch_trajectories",
    "phase_summary",
    "batch_kpis",
    "golden_profiles",
    "batch_deviation",
    "model_versions",
    "model_parameters",
    "model_predictions",
    "forecasts",
)


def ordered_views(lake: Lake) -> list[tuple[str, str]]:
    """(name, SQL) in dependency order."""
    views = view_definitions(lake)
    order = [v for v in VIEW_ORDER if v in views] + sorted(set(views) - set(VIEW_ORDER))
    return [(name, views[name]) for name in order]


def attach_views(con: duckdb.DuckDBPyConnection, lake: Lake) -> None:
    """Create the catalog's views as temporary views in `con` (for computations that must not
    depend on a catalog file being present or current)."""
    for name, sql in ordered_views(lake):
        con.execute(f'CREATE OR REPLACE TEMP VIEW "{name}" AS {sql}')


def rebuild(lake: Lake) -> list[str]:
    """Rebuild every view; return the view names."""
    lake.root.mkdir(parents=True, exist_ok=True)
    views = ordered_views(lake)
    with FileLock(str(lake.catalog) + ".lock", timeout=600):
        for path in sweep_stale_temporaries(lake.root):
            log.warning("removed %s: a temporary a killed writer left behind", path)
        tmp = lake.catalog.with_name(f".{lake.catalog.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        with duckdb.connect() as con:
            # an older storage format keeps the catalog readable by the DuckDB CLI on PyPI (1.5.x)
            con.execute(
                f"ATTACH '{tmp.as_posix()}' AS catalog_build (STORAGE_VERSION '{STORAGE_VERSION}')"
            )
            con.execute("USE catalog_build")
            for name, sql in views:
                con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {sql}')
            con.execute("USE memory")
            con.execute("DETACH catalog_build")
        os.replace(tmp, lake.catalog)
    return [name for name, _ in views]
