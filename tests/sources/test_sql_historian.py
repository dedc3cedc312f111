"""Incremental pulls from an IP.21-style SQL historian table, against SQLite and a real PostgreSQL.

The source table is `history(name, ts, value, status)`: on SQLite `ts` is TEXT
'YYYY-MM-DD HH:MM:SS' in UTC (as the demo plant writes it), on PostgreSQL it is
`timestamp without time zone` holding UTC (two tests use a profile whose source stores naive
local time instead, as some plant historians do). Every test builds its own table, pulls it with
`lake.ingest.ingest_sql` into a fresh lake and checks the silver Parquet files, the
quarantine and the ingest log row. The PostgreSQL server is started by the tests
(`postgres_server` in conftest.py).
"""

from __future__ import annotations

import json
import socket
from datetime import datetime, timedelta

import duckdb
import pandas as pd
import pytest
import sqlalchemy as sa

from lake.ingest import ingest_sql
from lake.layout import Lake
from sources.profiles import SqlProfile

SOURCE = "ip21_test"
LOOKBACK_S = 600.0  # ten minutes behind the watermark are re-read on every pull
T0 = datetime(2026, 3, 15, 10, 0, 0)  # naive UTC, as the source stores it
TAGS = ("BR201.TT01.PV", "BR201.PH01.PV")
QUALITY = {0: "good", 1: "uncertain", 2: "bad"}


class History:
    """The source table in one backend. Rows are (name, ts as a naive datetime in the source's
    zone, value, status)."""

    def __init__(self, backend: str, url: str):
        self.backend, self.url = backend, url
        self.engine = sa.create_engine(url)
        ts_type, value_type = (
            ("TEXT", "REAL")
            if backend == "sqlite"
            else ("TIMESTAMP WITHOUT TIME ZONE", "DOUBLE PRECISION")
        )
        with self.engine.begin() as con:
            con.execute(
                sa.text(
                    f"CREATE TABLE history (name TEXT NOT NULL, ts {ts_type} NOT NULL,"
                    f" value {value_type}, status INTEGER NOT NULL)"
                )
            )
            con.execute(sa.text("CREATE INDEX history_ts ON history (ts)"))
        self.rows: list[tuple] = []

    def insert(self, rows) -> None:
        rows = list(rows)
        if not rows:
            return
        self.rows += rows
        params = [{"name": n, "ts": self._ts(ts), "value": v, "status": s} for n, ts, v, s in rows]
        with self.engine.begin() as con:
            con.execute(
                sa.text(
                    "INSERT INTO history (name, ts, value, status)"
                    " VALUES (:name, :ts, :value, :status)"
                ),
                params,
            )

    def _ts(self, ts: datetime):
        # SQLite: text, whole seconds as 'YYYY-MM-DD HH:MM:SS' (fractions only when there are any)
        return ts.isoformat(sep=" ") if self.backend == "sqlite" else ts

    def profile(self, **overrides) -> SqlProfile:
        return SqlProfile(name=SOURCE, url=self.url, **{"lookback_s": LOOKBACK_S, **overrides})


@pytest.fixture(params=["sqlite", "postgresql"])
def history(request, tmp_path):
    url = (
        f"sqlite:///{tmp_path / 'historian.sqlite'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    table = History(request.param, url)
    yield table
    table.engine.dispose()


@pytest.fixture()
def lake(tmp_path) -> Lake:
    return Lake(tmp_path / "lake")


def minutes(start: datetime, n: int, tags=TAGS, statuses=(0, 1, 2)) -> list[tuple]:
    """One row per tag and minute; status cycles through `statuses`; value encodes tag and
    minute."""
    return [
        (tag, start + timedelta(minutes=m), 10.0 * k + m + 0.25, statuses[(m + k) % len(statuses)])
        for m in range(n)
        for k, tag in enumerate(tags)
    ]


def pull(lake: Lake, history: History, **overrides):
    outcome = ingest_sql(lake, history.profile(**overrides))
    log = outcome.log
    assert log["rows_read"] == log["rows_accepted"] + log["rows_quarantined"], log
    assert log["source"] == SOURCE and log["dataset"] == "historian_sql"
    return outcome


def silver(lake: Lake) -> pd.DataFrame:
    """Every row of every silver historian_points file."""
    files = sorted(lake.silver("historian_points").glob("*.parquet"))
    if not files:
        return pd.DataFrame(
            columns=["tag", "ts", "value", "quality", "ts_text", "source_path", "source_row"]
        )
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def quarantine(lake: Lake) -> pd.DataFrame:
    files = sorted(lake.silver("quarantine").glob("*.parquet"))
    return (
        pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
        if files
        else pd.DataFrame()
    )


def duplicates(lake: Lake) -> int:
    """(tag, ts) pairs held more than once over all silver files."""
    folder = lake.silver("historian_points")
    if not any(folder.glob("*.parquet")):
        return 0
    with duckdb.connect() as con:
        return con.execute(
            "SELECT count(*) FROM"
            " (SELECT tag, ts FROM read_parquet(?) GROUP BY tag, ts HAVING count(*) > 1)",
            [str(folder / "*.parquet")],
        ).fetchone()[0]


def keys(rows) -> set[tuple[str, pd.Timestamp]]:
    return {(tag, pd.Timestamp(ts, tz="UTC")) for tag, ts, *_ in rows}


def held_keys(lake: Lake) -> list[tuple[str, pd.Timestamp]]:
    s = silver(lake)
    return list(zip(s["tag"], s["ts"], strict=True))


def watermark(lake: Lake) -> pd.Timestamp:
    return pd.Timestamp(
        json.loads(lake.state(f"watermarks/{SOURCE}.json").read_text())["watermark"]
    )


def test_first_pull_ingests_every_row_with_quality_from_status(history, lake):
    rows = minutes(T0, 10)
    history.insert(rows)

    outcome = pull(lake, history)

    assert outcome.status == "ingested"
    assert (
        outcome.log["rows_read"],
        outcome.log["rows_accepted"],
        outcome.log["rows_quarantined"],
    ) == (20, 20, 0)
    assert outcome.log["path"] == f"sql:{SOURCE}"
    s = silver(lake)
    assert len(s) == 20 and len(list(lake.silver("historian_points").glob("*.parquet"))) == 1
    assert str(s["ts"].dtype) == "datetime64[us, UTC]"
    got = {
        (tag, ts): (value, quality)
        for tag, ts, value, quality in zip(s["tag"], s["ts"], s["value"], s["quality"], strict=True)
    }
    expected = {
        (tag, pd.Timestamp(ts, tz="UTC")): (pytest.approx(value, rel=1e-6), QUALITY[status])
        for tag, ts, value, status in rows
    }
    assert got == expected
    assert s["quality"].value_counts().to_dict() == {"good": 7, "uncertain": 7, "bad": 6}
    assert set(s["source_path"]) == {f"sql:{SOURCE}"}
    first = s[(s["tag"] == TAGS[0]) & (s["ts"] == pd.Timestamp("2026-03-15 10:00:00", tz="UTC"))]
    assert first["ts_text"].tolist() == [
        "2026-03-15 10:00:00"
    ]  # the source's text, UTC, whole seconds
    assert watermark(lake) == pd.Timestamp("2026-03-15 10:09:00", tz="UTC")


def test_second_pull_without_new_rows_is_unchanged(history, lake):
    history.insert(minutes(T0, 10))
    pull(lake, history)
    files_before = sorted(p.name for p in lake.silver("historian_points").glob("*.parquet"))

    outcome = pull(lake, history)

    assert outcome.status == "unchanged"
    assert (
        outcome.log["rows_read"],
        outcome.log["rows_accepted"],
        outcome.log["rows_quarantined"],
    ) == (0, 0, 0)
    assert sorted(p.name for p in lake.silver("historian_points").glob("*.parquet")) == files_before
    assert len(silver(lake)) == 20
    assert watermark(lake) == pd.Timestamp("2026-03-15 10:09:00", tz="UTC")


def test_rows_after_the_watermark_are_ingested_exactly_once(history, lake):
    history.insert(minutes(T0, 10))
    pull(lake, history)
    new = minutes(T0 + timedelta(minutes=10), 3)  # 10:10 - 10:12, both tags
    history.insert(new)

    outcome = pull(lake, history)

    # the look-back re-read the last ten minutes, but only the new rows were ingested
    assert outcome.status == "ingested"
    assert (
        outcome.log["rows_read"],
        outcome.log["rows_accepted"],
        outcome.log["rows_quarantined"],
    ) == (6, 6, 0)
    assert watermark(lake) == pd.Timestamp("2026-03-15 10:12:00", tz="UTC")
    assert pull(lake, history).status == "unchanged"
    held = held_keys(lake)
    assert len(held) == 26 and set(held) == keys(history.rows)
    assert duplicates(lake) == 0


def test_late_row_inside_the_lookback_window_is_picked_up(history, lake):
    history.insert(minutes(T0, 10))  # watermark 10:09:00, so the next pull re-reads from 09:59:00
    pull(lake, history)
    late = [
        (TAGS[0], datetime(2026, 3, 15, 10, 4, 30), 99.5, 0),  # between two values already pulled
        (
            "BR201.DO01.PV",
            datetime(2026, 3, 15, 10, 9, 0),
            41.0,
            1,
        ),  # another tag, at the watermark itself
        (TAGS[1], datetime(2026, 3, 15, 9, 59, 30), 7.25, 2),  # just inside the window
    ]
    history.insert(late)

    outcome = pull(lake, history)

    assert outcome.status == "ingested"
    assert (
        outcome.log["rows_read"],
        outcome.log["rows_accepted"],
        outcome.log["rows_quarantined"],
    ) == (3, 3, 0)
    s = silver(lake)
    got = s.set_index(["tag", "ts"]).loc[
        [(tag, pd.Timestamp(ts, tz="UTC")) for tag, ts, *_ in late]
    ]
    assert got["value"].tolist() == [99.5, 41.0, 7.25]
    assert got["quality"].tolist() == ["good", "uncertain", "bad"]
    assert watermark(lake) == pd.Timestamp(
        "2026-03-15 10:09:00", tz="UTC"
    )  # late rows do not move it
    assert pull(lake, history).status == "unchanged"
    assert len(s) == 23 and duplicates(lake) == 0


def test_late_row_older_than_the_lookback_window_is_missed_known_limitation(history, lake):
    """Expected limitation: a row that reaches the source later than `lookback_s` behind the
    watermark is never pulled (the pull reads only `ts > watermark - lookback_s`). The look-back
    must cover the source's longest delivery delay."""
    history.insert(minutes(T0, 10))  # watermark 10:09:00, window starts at 09:59:00 (exclusive)
    pull(lake, history)
    history.insert(
        [
            (TAGS[0], datetime(2026, 3, 15, 9, 50, 0), 1.0, 0),
            (TAGS[1], datetime(2026, 3, 15, 9, 59, 0), 2.0, 0),
        ]
    )  # exactly at the window's start: excluded too

    outcome = pull(lake, history)

    assert outcome.status == "unchanged"
    assert len(silver(lake)) == 20
    assert (TAGS[0], pd.Timestamp("2026-03-15 09:50:00", tz="UTC")) not in set(held_keys(lake))
    # a longer look-back picks both up, once
    wider = pull(lake, history, lookback_s=3600)
    assert (wider.log["rows_read"], wider.log["rows_accepted"]) == (2, 2)
    assert len(silver(lake)) == 22 and duplicates(lake) == 0


def test_no_row_is_ingested_twice_across_pulls(history, lake):
    history.insert(minutes(T0, 5))
    steps = [
        minutes(T0 + timedelta(minutes=5), 5),  # new rows
        [(TAGS[0], T0 + timedelta(minutes=8, seconds=30), 5.0, 0)],  # late, inside the window
        [],  # nothing new
        minutes(T0 + timedelta(minutes=10), 2)
        + [(TAGS[1], T0 + timedelta(minutes=9, seconds=45), 6.0, 1)],  # new and late
        [("BR201.DO01.PV", T0 + timedelta(minutes=11), 40.0, 0)],  # a new tag at the watermark
        [
            (TAGS[1], T0 + timedelta(minutes=11, seconds=0, microseconds=500000), 6.5, 0)
        ],  # a fraction of a second later
    ]
    pulled = [pull(lake, history)]
    assert duplicates(lake) == 0
    for rows in steps:
        history.insert(rows)
        pulled.append(pull(lake, history))
        assert duplicates(lake) == 0
        assert pull(lake, history).status == "unchanged"  # an immediate re-pull never re-ingests

    assert [o.log["rows_accepted"] for o in pulled] == [10, 10, 1, 0, 5, 1, 1]
    held = held_keys(lake)
    assert len(held) == len(history.rows) == 28 and set(held) == keys(history.rows)
    assert sum(o.log["rows_accepted"] for o in pulled) == len(held)


def test_timestamp_text_does_not_depend_on_the_other_rows_of_a_pull(history, lake):
    """ts_text identifies rows already held; it must be the same whichever rows are pulled with it
    (a pull of midnight rows only, or one with fractional seconds, must not reformat the others)."""
    midnight = datetime(2026, 3, 16, 0, 0, 0)
    history.insert([(TAGS[0], midnight, 1.0, 0), (TAGS[1], midnight, 2.0, 0)])
    pull(lake, history)
    history.insert([(TAGS[0], midnight + timedelta(seconds=30, microseconds=250000), 3.0, 0)])

    outcome = pull(lake, history)

    assert (outcome.log["rows_read"], outcome.log["rows_accepted"]) == (1, 1)
    s = silver(lake).sort_values(["ts", "tag"])
    assert s["ts_text"].tolist() == [
        "2026-03-16 00:00:00",
        "2026-03-16 00:00:00",
        "2026-03-16 00:00:30.250000",
    ]
    assert s["ts"].tolist()[-1] == pd.Timestamp("2026-03-16 00:00:30.250", tz="UTC")
    assert duplicates(lake) == 0 and pull(lake, history).status == "unchanged"


def test_unknown_status_code_is_quarantined_not_dropped(history, lake):
    rows = minutes(T0, 3, statuses=(0,)) + [(TAGS[0], T0 + timedelta(minutes=3), 12.5, 7)]
    history.insert(rows)

    outcome = pull(lake, history)

    assert (
        outcome.log["rows_read"],
        outcome.log["rows_accepted"],
        outcome.log["rows_quarantined"],
    ) == (7, 6, 1)
    assert outcome.reasons == {"status is not in the profile's quality mapping": 1}
    q = quarantine(lake)
    assert len(q) == 1
    bad = q.iloc[0]
    assert (
        bad["dataset"],
        bad["source_path"],
        bad["column"],
        bad["check"],
        bad["failure_value"],
    ) == ("historian_sql", f"sql:{SOURCE}", "status", "quality_code", "7")
    # lineage leads back to the row in the raw copy of the pull
    raw = pd.read_csv(lake.raw(bad["source_sha256"], ".csv"), dtype=str)
    assert raw.iloc[int(bad["source_row"]) - 1][["tag", "status"]].tolist() == [TAGS[0], "7"]
    assert pd.Timestamp(raw.iloc[int(bad["source_row"]) - 1]["ts"], tz="UTC") == pd.Timestamp(
        "2026-03-15 10:03:00", tz="UTC"
    )
    assert (TAGS[0], pd.Timestamp("2026-03-15 10:03:00", tz="UTC")) not in set(held_keys(lake))
    assert len(silver(lake)) == 6


def test_quarantined_row_is_not_quarantined_again_by_the_next_pull(history, lake):
    history.insert(minutes(T0, 3, statuses=(0,)) + [(TAGS[0], T0 + timedelta(minutes=3), 12.5, 7)])
    pull(lake, history)

    again = pull(lake, history)

    assert again.status == "unchanged" and len(quarantine(lake)) == 1


def test_source_in_local_time_west_of_utc_is_pulled_incrementally(history, lake):
    """A source storing naive local time (timezone America/Chicago, UTC-5 in March): the pull's
    lower bound must be written in that zone too, or rows after the watermark are never read."""
    local = datetime(2026, 3, 15, 10, 0, 0)
    history.insert(minutes(local, 10))
    pull(lake, history, timezone="America/Chicago")
    assert watermark(lake) == pd.Timestamp("2026-03-15 15:09:00", tz="UTC")
    history.insert(
        minutes(local + timedelta(minutes=10), 3)
        + [(TAGS[0], local + timedelta(minutes=5, seconds=30), 3.5, 0)]
    )

    outcome = pull(lake, history, timezone="America/Chicago")

    assert (outcome.log["rows_read"], outcome.log["rows_accepted"]) == (7, 7)
    assert watermark(lake) == pd.Timestamp("2026-03-15 15:12:00", tz="UTC")
    expected = {
        (tag, pd.Timestamp(ts, tz="America/Chicago").tz_convert("UTC"))
        for tag, ts, *_ in history.rows
    }
    assert set(held_keys(lake)) == expected and len(held_keys(lake)) == 27
    assert pull(lake, history, timezone="America/Chicago").status == "unchanged"


def test_local_times_repeated_by_the_autumn_dst_change_are_quarantined_not_fatal(history, lake):
    """Naive local times in the hour repeated on 2026-10-25 (Europe/Zurich, 03:00 CEST -> 02:00 CET)
    name two instants each: they are quarantined, the rest is ingested, and the watermark is the
    newest instant read, so later pulls go on."""
    day = datetime(2026, 10, 25)
    first_hour = [
        day.replace(hour=h, minute=m) for h in (1, 2) for m in (0, 15, 30, 45)
    ]  # 01:xx CEST, 02:xx CEST
    history.insert([(TAGS[0], t, float(i), 0) for i, t in enumerate(first_hour)])

    first = pull(lake, history, timezone="Europe/Zurich")

    assert (first.log["rows_read"], first.log["rows_accepted"], first.log["rows_quarantined"]) == (
        8,
        4,
        4,
    )
    # the newest instant read: 01:45 CEST (the 02:xx rows were quarantined, not guessed)
    assert watermark(lake) == pd.Timestamp("2026-10-24 23:45:00", tz="UTC")
    q = quarantine(lake)
    assert set(q["check"]) == {"timestamp"} and sorted(q["failure_value"].str[11:16]) == [
        "02:00",
        "02:15",
        "02:30",
        "02:45",
    ]

    # the clock goes back: 02:xx again (CET), then 03:xx
    history.insert(
        [
            (TAGS[0], day.replace(hour=h, minute=m), 50.0 + m, 0)
            for h in (2, 3)
            for m in (0, 15, 30, 45)
        ]
    )
    second = pull(lake, history, timezone="Europe/Zurich")

    # re-read from 01:35 local: the four new 02:xx rows (CET: same text, other values) are
    # quarantined as ambiguous too, not taken for the CEST rows already quarantined; the 03:xx
    # CET rows are accepted; nothing is skipped unseen
    assert (
        second.log["rows_read"],
        second.log["rows_accepted"],
        second.log["rows_quarantined"],
    ) == (8, 4, 4)
    assert sorted(quarantine(lake)["failure_value"].str[11:16]) == sorted(
        [f"02:{m:02d}" for m in (0, 15, 30, 45)] * 2
    )
    utc = [pd.Timestamp(f"2026-10-24 23:{m:02d}", tz="UTC") for m in (0, 15, 30, 45)] + [
        pd.Timestamp(f"2026-10-25 02:{m:02d}", tz="UTC") for m in (0, 15, 30, 45)
    ]  # 01:xx CEST and 03:xx CET
    assert sorted(silver(lake)["ts"]) == utc
    assert watermark(lake) == pd.Timestamp("2026-10-25 02:45:00", tz="UTC")  # 03:45 CET
    assert duplicates(lake) == 0


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://batchtwin:s3cret@127.0.0.1:{port}/ip21",  # nothing listening
        "postgresql+nosuchdriver://batchtwin:s3cret@127.0.0.1:{port}/ip21",  # unknown driver
        "postgresql+psycopg://batchtwin:s3cret@127.0.0.1:notaport/ip21",  # malformed
        "sqlite:////nonexistent-dir/historian.sqlite",
    ],
    ids=["closed-port", "unknown-driver", "malformed-port", "sqlite-missing-dir"],
)
def test_an_unreachable_source_is_logged_failed_naming_it_without_the_password(url, lake):
    profile = SqlProfile(name=SOURCE, url=url.format(port=_closed_port()))

    outcome = ingest_sql(lake, profile)

    message = outcome.log["error"]
    assert (
        outcome.status == "failed"
        and message.startswith(f"SQL historian {SOURCE!r}: ")
        and "\n" not in message
    )
    assert "s3cret" not in message
    log = pd.read_parquet(lake.silver("ingest_log"))
    assert (
        log["status"].tolist() == ["failed"]
        and not log.astype(str).apply(lambda c: c.str.contains("s3cret")).any().any()
    )
    assert not lake.state(f"watermarks/{SOURCE}.json").exists()
    assert not any(lake.silver("historian_points").glob("*.parquet"))
    # only the network outage may answer on a retry; a wrong URL or a missing file never will
    assert outcome.retryable == url.startswith("postgresql+psycopg://batchtwin:s3cret@127.0.0.1:{")


def test_wrong_password_is_logged_failed_without_the_password(postgres_server, lake):
    profile = SqlProfile(name=SOURCE, url=postgres_server.url("postgres", password="s3cret"))

    outcome = ingest_sql(lake, profile)

    assert outcome.status == "failed" and "password authentication failed" in outcome.log["error"]
    assert SOURCE in outcome.log["error"] and "s3cret" not in outcome.log["error"]
