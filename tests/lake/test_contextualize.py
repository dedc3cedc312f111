"""Contextualization on small constructed cases with hand-computed answers, then on the demo
plant."""

from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from lake import catalog
from lake.contextualize import Settings, contextualize, golden_profiles
from lake.layout import Lake, atomic_write_parquet
from sources.base import parse_timestamps

T0 = datetime(2026, 1, 5, tzinfo=UTC)
SHA = "0" * 64


def h(hours: float) -> pd.Timestamp:
    return pd.Timestamp(T0 + timedelta(hours=hours))


def _write(lake: Lake, table: str, rows: list[dict]) -> None:
    df = pd.DataFrame(rows)
    df["source_sha256"], df["source_row"], df["source_path"] = (
        SHA,
        np.arange(1, len(df) + 1),
        "test",
    )
    for c in df.columns:
        if c.endswith("_ts") or c == "ts":
            df[c] = pd.to_datetime(df[c], utc=True).astype("datetime64[us, UTC]")
    atomic_write_parquet(
        lake.silver(table) / f"{SHA}.parquet", pa.Table.from_pandas(df, preserve_index=False)
    )


def _tag(
    tag,
    parameter,
    interpolation,
    max_gap_s=3 * 3600.0,
    uom="degC",
    scale=1.0,
    offset=0.0,
    low=None,
    high=None,
):
    return {
        "tag": tag,
        "unit_id": "U1",
        "parameter": parameter,
        "uom": uom,
        "role": "pv",
        "interpolation": interpolation,
        "low": low,
        "high": high,
        "max_gap_s": max_gap_s,
        "description": None,
        "canonical_uom": "degC",
        "scale": scale,
        "offset": offset,
    }


def _point(tag, hours, value, quality="good"):
    return {
        "tag": tag,
        "ts": h(hours),
        "value": value,
        "state": None,
        "quality": quality,
        "ts_text": str(hours),
    }


def _batch(
    lake: Lake, end_h=4.0, phases=(("P1", 0.0, 2.0), ("P2", 2.0, 4.0)), start_h=0.0, inoc_h=0.0
):
    _write(
        lake,
        "batch_records",
        [
            {
                "batch_id": "B1",
                "product": "X",
                "site": None,
                "unit_id": "U1",
                "recipe_id": "R",
                "status": "complete",
                "start_ts": h(start_h),
                "end_ts": h(end_h),
                "inoculation_ts": h(inoc_h),
                "record_version": 1,
                "record_ts": h(end_h),
            }
        ],
    )
    _write(
        lake,
        "phase_records",
        [
            {
                "batch_id": "B1",
                "unit_id": "U1",
                "level": "phase",
                "path": f"B1:{p}",
                "phase": p,
                "seq": i + 1,
                "start_ts": h(a),
                "end_ts": h(b),
                "record_version": 1,
            }
            for i, (p, a, b) in enumerate(phases)
        ],
    )


@pytest.fixture()
def small_lake(tmp_path) -> Lake:
    """Tags L (linear) and S (step) with the same points; G with a short allowed gap; Q with one
    bad point."""
    lake = Lake(tmp_path / "lake")
    _batch(lake)
    _write(
        lake,
        "tags",
        [
            _tag("L", "lin", "linear"),
            _tag("S", "stp", "step"),
            _tag("G", "gappy", "linear", max_gap_s=1800.0),
            _tag("Q", "qual", "linear", low=0.5, high=1.5),
            _tag("W", "between", "linear"),
        ],
    )
    pts = [
        _point(t, x, v) for t in ("L", "S") for x, v in ((0, 0.0), (1, 10.0), (2, 10.0), (4, 30.0))
    ]
    pts += [_point("G", x, 2.0) for x in (0, 0.25, 0.5, 2, 2.25, 2.5, 2.75, 3, 3.25, 3.5, 3.75, 4)]
    pts += [_point("Q", x / 4, 1.0) for x in range(17) if x != 10] + [
        _point("Q", 2.5, 1000.0, "bad")
    ]
    pts += [
        _point("W", x, v)
        for x, v in ((-0.5, 0.0), (0.5, 0.0), (1.5, 10.0), (2.5, 10.0), (4.5, 10.0))
    ]
    _write(lake, "historian_points", pts)
    contextualize(
        lake,
        ["B1"],
        Settings(grid_minutes=60, limits=(("qual", "P2", 0.5, 1.5), ("lin", "P1", None, 5.0))),
    )
    catalog.rebuild(lake)
    return lake


@pytest.fixture()
def small(small_lake):
    con = duckdb.connect(str(small_lake.catalog), read_only=True)
    yield con
    con.close()


def _traj(con, parameter):
    return con.execute(
        "select t_batch_h, value, coverage, n_points from batch_trajectories"
        " where parameter = ? order by 1",
        [parameter],
    ).fetchall()


def test_time_weighted_mean_is_linear_for_linear_tags_and_previous_value_for_step_tags(small):
    lin = [r[1] for r in _traj(small, "lin")]
    stp = [r[1] for r in _traj(small, "stp")]
    assert lin == pytest.approx([5.0, 10.0, 15.0, 25.0])
    assert stp == pytest.approx([0.0, 10.0, 10.0, 10.0])
    twa = dict(
        small.execute(
            "select parameter || ':' || phase, twa from phase_summary"
            " where parameter in ('lin', 'stp')"
        ).fetchall()
    )
    assert twa == pytest.approx({"lin:P1": 7.5, "lin:P2": 20.0, "stp:P1": 5.0, "stp:P2": 10.0})


def test_each_trajectory_window_names_the_phase_it_starts_in(small):
    rows = small.execute(
        "select t_batch_h, phase from batch_trajectories where parameter = 'lin' order by 1"
    ).fetchall()
    assert rows == [(0.0, "P1"), (1.0, "P1"), (2.0, "P2"), (3.0, "P2")]


def test_a_window_starting_between_two_points_takes_its_boundary_value_from_before(small):
    rows = {r[0]: r[1] for r in _traj(small, "between")}
    # [1 h, 2 h): 5 → 10 linearly until 1.5 h (mean 7.5), then 10 until 2 h
    assert rows[1.0] == pytest.approx(8.75)
    # [0 h, 1 h): 0 until 0.5 h (from the point at -0.5 h), then 0 → 5 (mean 2.5) until 1 h
    assert rows[0.0] == pytest.approx(1.25) and rows[3.0] == pytest.approx(10.0)


def test_a_gap_longer_than_allowed_is_not_interpolated(small):
    rows = _traj(small, "gappy")
    assert [r[1] for r in rows[:2]] == [None, None]
    assert [r[2] for r in rows[:2]] == pytest.approx([0.5, 0.0])
    assert [r[1] for r in rows[2:]] == pytest.approx([2.0, 2.0]) and [
        r[2] for r in rows[2:]
    ] == pytest.approx([1.0, 1.0])


def test_bad_quality_points_are_excluded_and_end_a_segment(small):
    """Q: a good point every 15 min, the one at 2.5 h bad. The value before it holds until it (the
    archive stored it because the bad value arrived); nothing is known from 2.5 to 2.75 h."""
    rows = _traj(small, "qual")
    assert rows[2][1] is None and rows[2][2] == pytest.approx(0.75)
    twa, mx, cov, pct = small.execute(
        "select twa, max, coverage, pct_in_limits from phase_summary"
        " where parameter = 'qual' and phase = 'P2'"
    ).fetchone()
    assert (twa, mx, cov, pct) == pytest.approx((1.0, 1.0, 0.875, 100.0))
    assert (
        small.execute(
            "select count(*) from process_values where parameter = 'qual' and value > 2"
        ).fetchone()[0]
        == 0
    )


def test_pct_in_limits_uses_the_sites_phase_limits_never_the_instrument_range(small):
    """Q's tag range is [0.5, 1.5] but only P2 has site limits; L has an upper limit of 5 in P1
    only."""
    rows = dict(
        small.execute(
            "select parameter || ':' || phase, pct_in_limits from phase_summary "
            "where parameter in ('qual', 'lin')"
        ).fetchall()
    )
    assert (
        rows["qual:P1"] is None
        and rows["qual:P2"] == pytest.approx(100.0)
        and rows["lin:P2"] is None
    )
    # L rises linearly 0 -> 10 over the first hour, then holds 10:
    # inside [-inf, 5] for half an hour of two
    assert rows["lin:P1"] == pytest.approx(25.0)
    low, high = small.execute(
        "select limit_low, limit_high from phase_summary where parameter = 'lin' and phase = 'P1'"
    ).fetchone()
    assert (low, high) == (None, 5.0)


def test_a_point_exactly_on_a_phase_boundary_goes_to_the_later_phase(small):
    phase, t_phase = small.execute(
        "select phase, t_phase_h from process_values where parameter = 'lin' and ts = ?",
        [h(2).to_pydatetime()],
    ).fetchone()
    assert (phase, t_phase) == ("P2", 0.0)
    # the batch end is exclusive too: the point at 4 h belongs to no phase
    assert (
        small.execute("select count(*) from process_values where parameter = 'lin'").fetchone()[0]
        == 3
    )


def test_pct_in_limits_is_exact_for_a_linear_segment(tmp_path):
    lake = Lake(tmp_path / "lake")
    _batch(lake, end_h=1.0, phases=(("P1", 0.0, 1.0),))
    _write(lake, "tags", [_tag("L", "lin", "linear")])
    _write(lake, "historian_points", [_point("L", 0, 0.0), _point("L", 1, 10.0)])
    contextualize(lake, ["B1"], Settings(grid_minutes=60, limits=(("lin", "P1", None, 7.5),)))
    with duckdb.connect() as con:
        pct = con.execute(
            "select pct_in_limits from read_parquet(?)",
            [str(lake.gold("phase_summary") / "*.parquet")],
        ).fetchone()[0]
    assert pct == pytest.approx(75.0)


def test_phase_std_is_exactly_zero_for_a_set_point_and_exact_for_a_ramp(tmp_path):
    lake = Lake(tmp_path / "lake")
    _batch(lake, end_h=2.0, phases=(("P1", 0.0, 1.0), ("P2", 1.0, 2.0)))
    _write(lake, "tags", [_tag("C", "const", "linear"), _tag("R", "ramp", "linear")])
    minutes = range(0, 121)
    _write(
        lake,
        "historian_points",
        [_point("C", m / 60, 36.97) for m in minutes]
        + [_point("R", m / 60, 10.0 * (m % 60) / 60 if m < 60 else 10.0) for m in minutes],
    )
    contextualize(lake, ["B1"], Settings(grid_minutes=60))
    with duckdb.connect() as con:
        rows = dict(
            ((p, ph), (twa, std))
            for p, ph, twa, std in con.execute(
                "select parameter, phase, twa, std from read_parquet(?)",
                [str(lake.gold("phase_summary") / "*.parquet")],
            ).fetchall()
        )
    assert rows[("const", "P1")] == (
        pytest.approx(36.97, abs=1e-12),
        0.0,
    )  # not 1e-7 from E[x²] - E[x]²
    # a linear ramp 0 → 10 over the first hour: twa = half the end value, std = range / √12
    end = 10.0
    assert rows[("ramp", "P1")][0] == pytest.approx(end / 2, rel=1e-9)
    assert rows[("ramp", "P1")][1] == pytest.approx(end / np.sqrt(12), rel=1e-9)
    assert rows[("ramp", "P2")][1] == 0.0


def test_sums_do_not_depend_on_the_order_rows_arrive_in(tmp_path):
    """Parallel float sums differ between runs in the last bits; exact_sum (fixed point) does
    not."""
    import math

    from lake.duck import connect

    con = connect(Lake(tmp_path / "lake"))
    con.execute("SET threads = 2")
    con.execute(
        "CREATE TABLE t AS SELECT i % 7 AS g, (random() - 0.3) * pow(10, (random() * 8 - 4)) AS x"
        " FROM range(600000) r(i)"
    )
    q = "SELECT g, exact_sum(x) FROM (SELECT * FROM t ORDER BY {}) GROUP BY g ORDER BY g"
    results = {
        tuple(con.execute(q.format(order)).fetchall())
        for order in ("random()", "x", "x DESC", "g, x", "random()")
    }
    assert len(results) == 1
    values = con.execute("SELECT g, list(x) FROM t GROUP BY g ORDER BY g").fetchall()
    for (_g, s), (_, xs) in zip(next(iter(results)), values, strict=True):
        assert s == pytest.approx(math.fsum(xs), rel=1e-12, abs=len(xs) * 1e-12)
    # a term beyond the fixed-point range falls back to a float sum; an empty group stays NULL
    edge = (
        con.execute("SELECT exact_sum(x) FROM (VALUES (1e30), (1.5)) v(x)").fetchone()[0],
        con.execute("SELECT exact_sum(x) FROM (VALUES (NULL::DOUBLE)) v(x)").fetchone()[0],
    )
    assert edge == (1e30, None)
    con.close()


def test_a_batch_across_the_dst_change_counts_real_hours(tmp_path):
    lake = Lake(tmp_path / "lake")
    local = pd.Series(
        [
            "2026-03-29 00:00:00",
            "2026-03-29 01:00:00",
            "2026-03-29 03:00:00",
            "2026-03-29 04:00:00",
            "2026-03-29 05:00:00",
        ]
    )
    utc = parse_timestamps(local, "%Y-%m-%d %H:%M:%S", "Europe/Zurich")
    start, end = utc.iloc[0], utc.iloc[-1]
    _write(
        lake,
        "batch_records",
        [
            {
                "batch_id": "B1",
                "product": "X",
                "site": None,
                "unit_id": "U1",
                "recipe_id": "R",
                "status": "complete",
                "start_ts": start,
                "end_ts": end,
                "inoculation_ts": start,
                "record_version": 1,
                "record_ts": end,
            }
        ],
    )
    _write(
        lake,
        "phase_records",
        [
            {
                "batch_id": "B1",
                "unit_id": "U1",
                "level": "phase",
                "path": "B1:P",
                "phase": "P",
                "seq": 1,
                "start_ts": start,
                "end_ts": end,
                "record_version": 1,
            }
        ],
    )
    _write(lake, "tags", [_tag("L", "lin", "linear")])
    _write(
        lake,
        "historian_points",
        [
            {"tag": "L", "ts": t, "value": float(i), "state": None, "quality": "good", "ts_text": s}
            for i, (t, s) in enumerate(zip(utc, local, strict=True))
        ],
    )
    contextualize(lake, ["B1"], Settings(grid_minutes=60))
    with duckdb.connect() as con:
        hours = [
            r[0]
            for r in con.execute(
                "select t_batch_h from read_parquet(?) order by ts",
                [str(lake.gold("process_values") / "*.parquet")],
            ).fetchall()
        ]
        windows = con.execute(
            "select count(*) from read_parquet(?)",
            [str(lake.gold("batch_trajectories") / "*.parquet")],
        ).fetchone()[0]
    assert hours == pytest.approx([0.0, 1.0, 2.0, 3.0])  # 01:00 → 03:00 local is one real hour
    assert windows == 4


# ------------------------------------------------------------------ historian-style reads


def test_read_speaks_the_historian_client_modes(small_lake):
    from lake.api import BatchLake

    bl = BatchLake(small_lake.root)
    values = {
        m: bl.read("lin", batch="B1", interval="1h", mode=m)["value"].tolist()
        for m in ("twa", "min", "max", "interpolated", "snapshot")
    }
    assert values["twa"] == pytest.approx([5.0, 10.0, 15.0, 25.0])
    assert values["min"] == pytest.approx([0.0, 10.0, 10.0, 20.0])
    assert values["max"] == pytest.approx([10.0, 10.0, 20.0, 30.0])
    assert values["interpolated"] == pytest.approx([0.0, 10.0, 10.0, 20.0])
    assert values["snapshot"] == pytest.approx([0.0, 10.0, 10.0, 10.0])
    raw = bl.read(["lin", "stp"], batch="B1", mode="raw")
    assert len(raw) == 6 and set(raw.parameter) == {"lin", "stp"}
    gap = bl.read("gappy", batch="B1", interval="1h", mode="interpolated")["value"].tolist()
    assert np.isnan(gap[1]) and gap[2] == pytest.approx(
        2.0
    )  # never across a gap longer than allowed
    by_unit = bl.read(
        "lin", unit="U1", start=h(2).to_pydatetime(), end=h(4).to_pydatetime(), interval="30min"
    )
    assert by_unit["value"].tolist() == pytest.approx([12.5, 17.5, 22.5, 27.5])
    assert bl.query("select count(*) as n from batches")["n"].iloc[0] == 1
    assert bl.query("select * from batches", arrow=True).num_rows == 1


def test_read_refuses_unknown_modes_and_batches(small_lake):
    from lake.api import BatchLake

    bl = BatchLake(small_lake.root)
    with pytest.raises(ValueError, match="mode must be one of"):
        bl.read("lin", batch="B1", mode="average")
    with pytest.raises(KeyError, match="no batch 'B9'"):
        bl.read("lin", batch="B9")
    with pytest.raises(ValueError, match="a unit with start and end"):
        bl.read("lin", unit="U1")


# ------------------------------------------------------------------ on the demo plant


def test_phase_temperature_matches_the_simulator_set_points(pipeline_run, truth):
    data, _ = pipeline_run
    with duckdb.connect(str(data / "lake" / "catalog.duckdb"), read_only=True) as con:
        ps = con.execute(
            "select batch_id, phase, twa, coverage from phase_summary"
            " where parameter = 'temperature'"
        ).df()
    complete = [b for b in truth["batches"] if b["status"] == "complete"]
    for b in complete:
        mine = ps[ps.batch_id == b["batch_id"]].set_index("phase")
        assert set(mine.index) == set(b["phases"]), "every completed batch has every phase"
        for phase in ("GROWTH", "FED_BATCH", "PRODUCTION"):
            # noise 0.03 °C; °F (BR-102) converted back;
            # allow the first-order lag after a set-point step
            assert mine.loc[phase, "twa"] == pytest.approx(
                b["phases"][phase]["setpoints"]["temperature"], abs=0.1
            )


def test_kpis_agree_with_the_simulated_batches(pipeline_run, truth):
    data, _ = pipeline_run
    with duckdb.connect(str(data / "lake" / "catalog.duckdb"), read_only=True) as con:
        kpis = con.execute("select * from batch_kpis").df().set_index("batch_id")
        feed = dict(
            con.execute(
                "select batch_id, sum(quantity) from material_events"
                " where kind = 'feed_total' group by 1"
            ).fetchall()
        )
    for b in (b for b in truth["batches"] if b["status"] == "complete"):
        k = kpis.loc[b["batch_id"]]
        # IVCD from daily samples (trapezoid) vs the integral of the simulated VCD:
        # within sampling + assay noise
        assert k["ivcd"] == pytest.approx(b["ivcd_1e6_cells_h_per_ml"], rel=0.08)
        assert k["peak_vcd"] == pytest.approx(b["peak_vcd"], rel=0.2)
        assert k["final_titer"] == pytest.approx(b["final"]["titer"], rel=0.15)
        assert k["feed_added_l"] == pytest.approx(feed[b["batch_id"]], rel=0.01)
        assert k["bolus_added_l"] == pytest.approx(
            sum(x["volume_l"] for x in b["boluses"]), abs=0.2
        )
        assert 20.0 < k["qp"] < 80.0  # pg/cell/day, typical CHO


def test_golden_profile_and_deviation(pipeline_run):
    data, _ = pipeline_run
    with duckdb.connect(str(data / "lake" / "catalog.duckdb"), read_only=True) as con:
        g = con.execute(
            "select * from golden_profiles where parameter = 'temperature' and t_batch_h = 100"
        ).df()
        dev = con.execute(
            "select count(*), count(distinct batch_id) from batch_deviation"
            " where parameter = 'temperature'"
        ).fetchone()
    assert len(g) == 1 and g["n_batches"].iloc[0] >= 2
    assert (
        g["mean"].iloc[0] == pytest.approx(36.8, abs=0.1)
        and g["lower"].iloc[0] < 36.8 < g["upper"].iloc[0]
    )
    assert dev[0] > 0 and dev[1] >= 3
    with duckdb.connect(str(data / "lake" / "catalog.duckdb"), read_only=True) as con:
        vcd = con.execute(
            "select t_batch_h, mean, n_batches, uom from golden_profiles"
            " where parameter = 'vcd' order by 1"
        ).df()
    assert vcd["uom"].iloc[0] == "1e6 cells/mL" and vcd["n_batches"].min() >= 2
    assert vcd["mean"].iloc[0] == pytest.approx(0.45, abs=0.2) and vcd["mean"].max() > 10.0


def test_golden_profiles_need_two_batches(tmp_path):
    assert golden_profiles(Lake(tmp_path / "lake")) == 0


def test_gold_files_are_written_per_batch_in_one_pass_and_appear_only_whole(tmp_path):
    from lake.duck import connect, copy_per_key

    lake = Lake(tmp_path / "lake")
    folder = lake.gold("t")
    folder.mkdir(parents=True)
    (folder / "C.parquet").write_bytes(b"stale rows of a batch that now has none")
    con = connect(lake)
    con.execute(
        "CREATE TEMP TABLE x AS"
        " SELECT CASE WHEN i % 3 = 0 THEN 'A/1' ELSE 'B' END AS batch_id, i FROM range(1000) r(i)"
    )
    targets = {b: folder / f"{b.replace('/', '_')}.parquet" for b in ("A/1", "B", "C", "D")}
    assert copy_per_key(con, "SELECT * FROM x", "batch_id", targets) == {
        "A/1": 334,
        "B": 666,
        "C": 0,
        "D": 0,
    }
    got = con.execute(
        f"SELECT batch_id, count(*), sum(i) FROM read_parquet('{folder}/*.parquet')"
        " GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert got == [
        ("A/1", 334, sum(range(0, 1000, 3))),
        ("B", 666, sum(range(1000)) - sum(range(0, 1000, 3))),
    ]
    assert sorted(p.name for p in folder.iterdir()) == [
        "A_1.parquet",
        "B.parquet",
        "C.parquet",
        "D.parquet",
    ]  # no temporary folder left
    assert (
        con.execute(f"SELECT count(*) FROM read_parquet('{folder}/[CD].parquet')").fetchone()[0]
        == 0
    )

    def refuse(relation):
        raise AssertionError("a bug in the SQL")

    con.execute("DELETE FROM x WHERE batch_id = 'B'")
    with pytest.raises(AssertionError):
        copy_per_key(con, "SELECT * FROM x", "batch_id", targets, check=refuse)
    # nothing replaced: the files on record are the ones from before
    assert (
        con.execute(f"SELECT count(*) FROM read_parquet('{folder}/*.parquet')").fetchone()[0]
        == 1000
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        "A_1.parquet",
        "B.parquet",
        "C.parquet",
        "D.parquet",
    ]
    con.close()
