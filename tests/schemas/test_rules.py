"""The models hold every rule of a table; the SQL path is generated from them or refuses."""

import pandas as pd
import pandera.pandas as pa
import pytest
from pandera.typing import Series

from schemas.keys import Duplicates, Prefer, key_rule
from schemas.sql_checks import UntranslatableCheck, column_checks, key_sql, require_types
from schemas.tables import SILVER_MODELS, HistorianPoint, IngestLogEntry, Sample
from schemas.validate import resolve_duplicates


def test_the_sql_path_refuses_what_it_cannot_translate():
    # a dataframe-level check (Sample: reported after sampled) has no SQL form here
    with pytest.raises(UntranslatableCheck, match="dataframe check"):
        column_checks(Sample, key_resolved=True)
    # a key the caller does not resolve would let duplicates through
    with pytest.raises(UntranslatableCheck, match="key"):
        column_checks(HistorianPoint)

    class Odd(pa.DataFrameModel):
        code: Series[str] = pa.Field(str_matches=r"^[A-Z]+$")

    with pytest.raises(UntranslatableCheck, match="str_matches"):
        column_checks(Odd)


def test_the_sql_path_checks_the_model_types():
    good = [("tag", "VARCHAR"), ("ts", "TIMESTAMP WITH TIME ZONE"), ("value", "DOUBLE")]
    rest = [("state", "VARCHAR"), ("quality", "VARCHAR"), ("ts_text", "VARCHAR")]
    lineage = [("source_sha256", "VARCHAR"), ("source_row", "BIGINT"), ("source_path", "VARCHAR")]
    require_types(good + rest + lineage, HistorianPoint, "points")
    naive = [("ts", "TIMESTAMP")] + good[::2] + rest + lineage
    with pytest.raises(TypeError, match="ts: TIMESTAMP"):
        require_types(naive, HistorianPoint, "points")


def test_every_key_has_its_resolution():
    keyed = {name for name, model in SILVER_MODELS.items() if key_rule(model)}
    assert keyed == {"tags", "historian_points", "samples"}

    class Keyed(pa.DataFrameModel):
        a: Series[int]

        class Config:
            unique = ["a"]

    with pytest.raises(TypeError, match="no Duplicates rule"):
        key_rule(Keyed)


def test_the_quality_order_resolves_duplicates_alike_in_pandas_and_sql():
    import duckdb

    rows = pd.DataFrame(
        {
            "tag": ["T", "T", "T", "T", "U", "U"],
            "ts": pd.to_datetime(["2026-01-01"] * 6, utc=True),
            "quality": ["bad", "uncertain", "substituted", "uncertain", "good", "good"],
            "source_row": [2, 3, 4, 5, 6, 7],
            "source_sha256": "0" * 64,
            "source_path": "historian/x.csv",
        }
    )
    rule = key_rule(HistorianPoint)
    kept, _ = resolve_duplicates(rows, rule)
    key, order = key_sql(rule)
    with duckdb.connect() as con:
        con.register("points", rows)
        sql = con.execute(
            f"""SELECT source_row FROM points
                QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {order}) = 1 ORDER BY 1"""
        ).fetchall()
    assert sorted(kept["source_row"]) == [r[0] for r in sql] == [4, 7]


def test_a_declared_preference_orders_text_by_its_ranking():
    class Reading(pa.DataFrameModel):
        k: Series[str]
        grade: Series[str]

        class Config:
            unique = ["k"]
            metadata = {"duplicates": Duplicates((Prefer("grade", ranking=("A", "B")),), "rule")}

    frame = pd.DataFrame({"k": ["x", "x", "x"], "grade": ["Z", "B", "A"], "source_row": [2, 3, 4]})
    frame = frame.assign(source_sha256="0" * 64, source_path="readings.csv")
    kept, losers = resolve_duplicates(frame, key_rule(Reading))
    assert kept["grade"].tolist() == ["A"] and set(losers["reason"]) == {"rule"}


def test_the_ingest_log_model_catches_a_lost_row():
    row = {
        "source": "s",
        "path": "p",
        "sha256": "x",
        "bytes": 1,
        "dataset": "lims",
        "rows_read": 10,
        "rows_accepted": 8,
        "rows_quarantined": 1,
        "status": "ingested",
        "error": None,
        "notes": None,
        "run_id": None,
        "code_version": "0",
        "started_at": pd.Timestamp.now(tz="UTC"),
        "finished_at": pd.Timestamp.now(tz="UTC"),
    }
    with pytest.raises(pa.errors.SchemaError, match="rows_read != rows_accepted"):
        IngestLogEntry.validate(pd.DataFrame([row]))
