"""The pandas path and the streamed SQL path apply the same rules to the same rows.

The same historian rows go through a long CSV (parsed, checked and de-duplicated inside
DuckDB: `lake.historian_ingest`) and through an SQL historian pull (parsed in pandas, checked
by pandera: `lake.ingest.ingest_sql`). Every row must end the same way on both: accepted with
the same instant, value, state and quality, or quarantined for the same check.
"""

import sqlite3
from collections import Counter
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lake import ingest
from lake.historian_ingest import TagDictionary
from lake.layout import Lake
from sources.profiles import FileProfile, SqlProfile

ZONE = "Europe/Zurich"  # 2026-10-25: 03:00 CEST -> 02:00 CET; 2026-03-29: 02:00 CET -> 03:00 CEST
QUALITY = {"0": "good", "1": "substituted", "2": "uncertain", "3": "bad"}
STATES = ("I/O Timeout", "Bad Input")
TAGS = TagDictionary(frozenset({"T1", "T2"}), {"T3": "cannot convert 'furlongs' to 'degC'"})

times = st.one_of(
    st.builds(
        lambda day, h, m: f"2026-{day} {h:02d}:{m:02d}:00",
        st.sampled_from(["10-25", "03-29", "06-01"]),
        st.integers(0, 4),
        st.sampled_from([0, 30]),
    ),
    st.sampled_from(
        [
            "",
            "not a time",
            "2026-06-01T05:00:00",
            "2026-13-01 00:00:00",
            "2026-10-26",
            "2026-10-25 02:30:00+01:00",
            "2026-10-25 02:30:00+02:00",
            "2026-06-01T09:00:00Z",
        ]
    ),
)
values = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: repr(round(v, 3))),
    st.sampled_from(
        ["", "abc", "inf", "-inf", "NaN", "1e309", "1e3", " 7.5 ", "+5", ".5", "5.", "-0"]
    ),
    st.sampled_from([*STATES, "i/o timeout"]),
)
rows = st.lists(
    st.tuples(
        st.sampled_from(["T1", "T2", "T3", "T9"]),
        times,
        values,
        st.sampled_from(["0", "1", "2", "3", "7", ""]),
    ),
    min_size=1,
    max_size=25,
    unique_by=lambda r: (r[0], r[1], _quality(r)),
)


def _quality(row: tuple) -> str:
    """What a row's quality will be. Rows of one tag, instant and quality are resolved by "the
    later row", which is file order in a CSV and the pull's order (by time text) in SQL: the
    generator never makes such a tie, so every row has one right outcome. (Each instant has one
    spelling here, for the same reason.)"""
    if row[2].strip().lower() in {s.lower() for s in STATES}:
        return "bad"
    return {"": "0"}.get(row[3], row[3])


def _through_csv(root: Path, data: list[tuple]) -> Counter:
    landing = root / "csv"
    (landing / "historian").mkdir(parents=True)
    lines = ["tag,ts,value,status"] + [",".join(f'"{x}"' for x in r) for r in data]
    (landing / "historian" / "h.csv").write_text("\n".join(lines) + "\n")
    profile = FileProfile(
        "h",
        "historian_long",
        "historian/*.csv",
        timezone=ZONE,
        quality=QUALITY,
        digital_states=STATES,
    )
    lake = Lake(root / "csv_lake")
    out = ingest.ingest_file(lake, landing, "historian/h.csv", profile, tags_known=TAGS)
    # a CSV row's line is its index + 2 (the header is line 1)
    return _outcomes(lake, out.log["sha256"], data, lambda line: data[line - 2])


def _through_sql(root: Path, data: list[tuple]) -> Counter:
    db = root / "h.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE history (name TEXT, ts TEXT, value TEXT, status TEXT)")
        con.executemany("INSERT INTO history VALUES (?, ?, ?, ?)", data)
    profile = SqlProfile(
        "h", f"sqlite:///{db}", timezone=ZONE, quality=QUALITY, digital_states=STATES
    )
    lake = Lake(root / "sql_lake")
    out = ingest.ingest_sql(lake, profile, tags_known=TAGS)
    # a pulled row's source_row is its place in the pull, as the raw copy keeps it
    pulled = pd.read_csv(
        lake.raw(out.log["sha256"], ".csv"), dtype=str, keep_default_na=False
    ).itertuples(index=False)
    order = [tuple(r) for r in pulled]
    return _outcomes(lake, out.log["sha256"], data, lambda row: order[row - 1])


def _outcomes(lake: Lake, sha: str, data: list[tuple], row_of) -> Counter:
    """(input row, outcome) for every row: outcome is the accepted point or the failed check."""
    got: Counter = Counter()
    silver = lake.silver("historian_points") / f"{sha}.parquet"
    if silver.exists():
        for p in pd.read_parquet(silver).itertuples():
            value = None if pd.isna(p.value) else p.value
            got[(row_of(p.source_row), ("accepted", p.ts, value, p.state, p.quality))] += 1
    quarantine = lake.silver("quarantine") / f"{sha}.parquet"
    if quarantine.exists():
        for q in pd.read_parquet(quarantine).itertuples():
            got[(row_of(q.source_row), ("quarantined", q.check, q.reason))] += 1
    assert sum(got.values()) == len(data)  # every row ends somewhere, once
    return got


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=rows)
def test_the_pandas_and_the_sql_path_end_every_row_alike(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("paths")
    via_csv, via_sql = _through_csv(root, data), _through_sql(root, data)
    assert via_csv == via_sql
