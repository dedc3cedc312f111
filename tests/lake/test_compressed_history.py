"""Compressed historian archives: gaps between archived values are data, not missing data.

Signals are simulated at 10 s, sent through exception reporting and swinging-door compression
(as a PI interface and archive do), and the gold tables computed from the archive are held to
the truth of the full-resolution signal: phase time-weighted averages within 0.02, coverage
≥ 0.99 wherever the source marked nothing bad.
"""

from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from demo.compression import swinging_door
from lake.contextualize import Settings, contextualize
from lake.layout import Lake, atomic_write_parquet

T0 = datetime(2026, 3, 2, tzinfo=UTC)
SCAN_S = 10.0
PHASES = (("BATCH", 0.0, 24.0), ("FED_BATCH", 24.0, 60.0), ("HARVEST", 60.0, 72.0))
COMP_MAX_S = 8 * 3600.0  # PI's CompMax default
EXC_MAX_S = 600.0  # PI's ExcMax default
SHA = "c" * 64


def exception_report(t: np.ndarray, v: np.ndarray, dev: float) -> np.ndarray:
    """Indices an interface sends: a value differing from the last sent by more than `dev`
    (with the value just before it, so a step stays a step), or ExcMax after the last one."""
    keep = [0]
    for i in range(1, len(t)):
        if abs(v[i] - v[keep[-1]]) > dev or t[i] - t[keep[-1]] >= EXC_MAX_S:
            if i - 1 > keep[-1]:
                keep.append(i - 1)
            keep.append(i)
    if keep[-1] != len(t) - 1:
        keep.append(len(t) - 1)
    return np.asarray(keep)


def archive(t: np.ndarray, v: np.ndarray, exc_dev: float, comp_dev: float) -> np.ndarray:
    """Indices of the archived points: exception reporting, then swinging-door compression."""
    sent = exception_report(t, v, exc_dev)
    return sent[swinging_door(t[sent], v[sent], comp_dev, COMP_MAX_S)]


def signals(hours: float, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Full-resolution signals: a lagged temperature following set-point steps hours apart, a
    set-point, a feed pump switched twice, a pH flat for a day within the deviation."""
    t = np.arange(0.0, hours * 3600.0 + SCAN_S / 2, SCAN_S)
    h = t / 3600.0
    sp = np.select([h < 24, h < 60], [37.0, 33.0], 20.0)
    temp = np.empty_like(t)
    temp[0] = 37.0
    alpha = 1 - np.exp(-SCAN_S / 3600.0)  # first-order lag, one hour
    for i in range(1, len(t)):
        temp[i] = temp[i - 1] + alpha * (sp[i] - temp[i - 1])
    temp += 0.02 * np.sin(2 * np.pi * h / 6.0) + rng.normal(0.0, 0.002, len(t))
    feed = np.select([h < 30, h < 50], [0.0, 1.5], 2.0)
    ph = (
        7.0
        + np.where(h < 30, 0.0, -0.05 * np.minimum(h - 30, 10) / 10)
        + rng.normal(0.0, 0.001, len(t))
    )
    return t, {"temperature": temp, "temperature_sp": sp, "feed_rate": feed, "ph": ph}


TAGS = {  # parameter: (interpolation, exception deviation, compression deviation)
    "temperature": ("linear", 0.005, 0.01),
    "temperature_sp": ("step", 0.0, 0.0),
    "feed_rate": ("step", 0.0, 0.0),
    "ph": ("linear", 0.002, 0.004),
}


def _twa(t_h: np.ndarray, v: np.ndarray, a: float, b: float, step: bool) -> float:
    inside = (t_h >= a) & (t_h <= b)
    x, y = t_h[inside], v[inside]
    if step:
        return float(np.sum(y[:-1] * np.diff(x)) / (x[-1] - x[0]))
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def _write(lake: Lake, table: str, df: pd.DataFrame) -> None:
    df = df.assign(
        source_sha256=SHA, source_row=np.arange(2, len(df) + 2), source_path="historian/x.csv"
    )
    for c in [c for c in df.columns if c == "ts" or c.endswith("_ts")]:
        df[c] = pd.to_datetime(df[c], utc=True).astype("datetime64[us, UTC]")
    atomic_write_parquet(
        lake.silver(table) / f"{SHA}.parquet", pa.Table.from_pandas(df, preserve_index=False)
    )


def _lake(tmp_path, running: bool = False, bad_window_h: tuple[float, float] | None = None):
    """A one-batch lake whose historian points are the compressed archive of `signals`."""
    rng = np.random.default_rng(7)
    hours = 72.0
    t, sig = signals(hours, rng)
    lake = Lake(tmp_path / "lake")
    rows = []
    for parameter, (_interp, exc_dev, comp_dev) in TAGS.items():
        keep = archive(t, sig[parameter], exc_dev, comp_dev)
        for i in keep:
            rows.append(
                {
                    "tag": f"U1.{parameter}",
                    "ts": T0 + timedelta(seconds=float(t[i])),
                    "value": float(sig[parameter][i]),
                    "state": None,
                    "quality": "good",
                    "ts_text": None,
                }
            )
    if (
        bad_window_h is not None
    ):  # the interface failed: PI writes a digital state, then values again
        a, b = bad_window_h
        rows = [
            r
            for r in rows
            if not (
                r["tag"] == "U1.temperature"
                and T0 + timedelta(hours=a) <= r["ts"] < T0 + timedelta(hours=b)
            )
        ]
        rows.append(
            {
                "tag": "U1.temperature",
                "ts": T0 + timedelta(hours=a),
                "value": None,
                "state": "I/O Timeout",
                "quality": "bad",
                "ts_text": None,
            }
        )
        i = int(b * 3600 / SCAN_S)
        rows.append(
            {
                "tag": "U1.temperature",
                "ts": T0 + timedelta(hours=b),
                "value": float(sig["temperature"][i]),
                "state": None,
                "quality": "good",
                "ts_text": None,
            }
        )
    _write(lake, "historian_points", pd.DataFrame(rows).sort_values(["tag", "ts"]))
    _write(
        lake,
        "tags",
        pd.DataFrame(
            [
                {
                    "tag": f"U1.{p}",
                    "unit_id": "U1",
                    "parameter": p,
                    "uom": "x",
                    "role": "pv",
                    "interpolation": interp,
                    "low": None,
                    "high": None,
                    "max_gap_s": None,
                    "description": None,
                    "canonical_uom": "x",
                    "scale": 1.0,
                    "offset": 0.0,
                }
                for p, (interp, _, _) in TAGS.items()
            ]
        ),
    )
    end = None if running else T0 + timedelta(hours=hours)
    _write(
        lake,
        "batch_records",
        pd.DataFrame(
            [
                {
                    "batch_id": "B1",
                    "product": "P",
                    "site": None,
                    "unit_id": "U1",
                    "recipe_id": "R",
                    "status": "running" if running else "complete",
                    "start_ts": T0,
                    "end_ts": end,
                    "inoculation_ts": T0,
                    "record_version": 1,
                    "record_ts": T0,
                }
            ]
        ),
    )
    _write(
        lake,
        "phase_records",
        pd.DataFrame(
            [
                {
                    "batch_id": "B1",
                    "unit_id": "U1",
                    "level": "phase",
                    "path": f"B1:{p}",
                    "phase": p,
                    "seq": k + 1,
                    "start_ts": T0 + timedelta(hours=a),
                    "end_ts": None if running and p == "HARVEST" else T0 + timedelta(hours=b),
                    "record_version": 1,
                }
                for k, (p, a, b) in enumerate(PHASES)
            ]
        ),
    )
    return lake, t / 3600.0, sig, len(rows) / (len(t) * len(TAGS))


def _summary(lake: Lake, **settings) -> pd.DataFrame:
    contextualize(lake, ["B1"], Settings(**settings), as_of=T0 + timedelta(days=30))
    with duckdb.connect() as con:
        return (
            con.execute(
                "SELECT phase, parameter, twa, coverage FROM read_parquet(?)",
                [str(lake.gold("phase_summary") / "*.parquet")],
            )
            .df()
            .set_index(["phase", "parameter"])
        )


def test_the_archive_is_really_compressed():
    t, sig = signals(72.0, np.random.default_rng(7))
    for parameter, (_, exc_dev, comp_dev) in TAGS.items():
        kept = archive(t, sig[parameter], exc_dev, comp_dev)
        longest_h = np.diff(t[kept]).max() / 3600.0
        assert len(kept) < 0.05 * len(t) and longest_h > 1.0, (parameter, len(kept), longest_h)


def test_phase_twa_and_coverage_of_compressed_data_match_the_full_resolution_truth(tmp_path):
    lake, t_h, sig, ratio = _lake(tmp_path)
    assert ratio < 0.02  # fewer than 2 % of the scans were archived
    summary = _summary(lake)
    for phase, a, b in PHASES:
        for parameter, (interp, _, _) in TAGS.items():
            twa, coverage = summary.loc[(phase, parameter)]
            truth = _twa(t_h, sig[parameter], a, b, interp == "step")
            assert twa == pytest.approx(truth, abs=0.02), (phase, parameter)
            assert coverage >= 0.99, (phase, parameter, coverage)


def test_a_gap_rule_meant_for_raw_scans_would_call_the_same_archive_missing(tmp_path):
    """The check above can fail: with a 15-minute allowed gap (the old default) the same archive
    reads as mostly missing, which is what a site saw before."""
    lake, *_ = _lake(tmp_path)
    summary = _summary(lake, max_gap_s=900.0)
    assert summary.loc[("BATCH", "ph"), "coverage"] < 0.5


def test_a_digital_state_ends_the_segment_and_only_its_span_is_missing(tmp_path):
    lake, t_h, sig, _ = _lake(tmp_path, bad_window_h=(40.0, 42.0))
    twa, coverage = _summary(lake).loc[("FED_BATCH", "temperature")]
    assert coverage == pytest.approx(1 - 2.0 / 36.0, abs=1e-9)
    outside = (t_h < 40.0) | (t_h >= 42.0)
    truth = np.average(sig["temperature"][(t_h >= 24) & (t_h < 60) & outside])
    assert twa == pytest.approx(truth, abs=0.02)


def test_a_running_batch_holds_its_last_archived_values_to_the_end_of_the_data_only(tmp_path):
    lake, t_h, sig, _ = _lake(tmp_path, running=True)
    with duckdb.connect() as con:
        last = con.execute(
            "SELECT tag, max(ts) FROM read_parquet(?) GROUP BY 1",
            [str(lake.silver("historian_points") / "*.parquet")],
        ).fetchall()
    summary = _summary(lake)
    # the feed pump last changed at 50 h: its value holds over the whole (open) HARVEST phase
    assert summary.loc[("HARVEST", "feed_rate"), "twa"] == pytest.approx(2.0)
    assert summary.loc[("HARVEST", "feed_rate"), "coverage"] == pytest.approx(1.0)
    with duckdb.connect() as con:
        duration = con.execute(
            "SELECT duration_h FROM read_parquet(?) WHERE phase = 'HARVEST' LIMIT 1",
            [str(lake.gold("phase_summary") / "*.parquet")],
        ).fetchone()[0]
    data_end = max(ts for _, ts in last)
    assert duration == pytest.approx(
        (data_end - (T0 + timedelta(hours=60))).total_seconds() / 3600.0
    )


def test_reads_agree_with_gold_and_an_old_set_point_holds_into_the_batch(tmp_path):
    """`BatchLake.read` uses the gap gold was computed with and the unit's whole data end (not
    only the parameters asked for); a set-point archived a year before the batch holds into it."""
    from lake.api import BatchLake

    lake, t_h, sig, _ = _lake(tmp_path)
    # the feed pump's last archived value is its change at 50 h:
    # it holds to the unit's data end (72 h)
    path = lake.silver("historian_points") / f"{SHA}.parquet"
    points = pd.read_parquet(path)
    late = (points["tag"] == "U1.feed_rate") & (
        points["ts"] > pd.Timestamp(T0 + timedelta(hours=50, seconds=10))
    )
    atomic_write_parquet(path, pa.Table.from_pandas(points[~late], preserve_index=False))
    old = pd.DataFrame(
        [
            {
                "tag": "U1.temperature_sp",
                "ts": T0 - timedelta(days=365),
                "value": 37.0,
                "state": None,
                "quality": "good",
                "ts_text": None,
            }
        ]
    )
    df = old.assign(source_sha256="d" * 64, source_row=2, source_path="historian/old.csv")
    df["ts"] = pd.to_datetime(df["ts"], utc=True).astype("datetime64[us, UTC]")
    atomic_write_parquet(
        lake.silver("historian_points") / f"{'d' * 64}.parquet",
        pa.Table.from_pandas(df, preserve_index=False),
    )
    contextualize(
        lake, ["B1"], Settings(grid_minutes=60, max_gap_s=900.0), as_of=T0 + timedelta(days=30)
    )
    with duckdb.connect() as con:
        traj = con.execute(
            "SELECT parameter, count(*), avg(coverage) FROM read_parquet(?) GROUP BY 1",
            [str(lake.gold("batch_trajectories") / "*.parquet")],
        ).fetchall()
    assert {p: n for p, n, _ in traj} == dict.fromkeys(
        TAGS, 72
    )  # the batch's 72 hourly windows, no more
    assert {p: c for p, _, c in traj}["temperature_sp"] == pytest.approx(1.0)
    bl = BatchLake(lake.root)
    gold_ph = {p: c for p, _, c in traj}["ph"]
    read_ph = bl.read("ph", batch="B1", interval="1h", mode="twa")["coverage"].mean()
    assert read_ph == pytest.approx(gold_ph) and read_ph < 0.5  # the site's 900 s gap, as gold used
    alone = bl.read("feed_rate", batch="B1", interval="1h", mode="twa")
    together = bl.read(["feed_rate", "temperature"], batch="B1", interval="1h", mode="twa")
    assert (
        alone["coverage"].tolist()
        == together.loc[together["parameter"] == "feed_rate", "coverage"].tolist()
    )
    assert alone["coverage"].min() == pytest.approx(1.0) and alone["value"].iloc[
        -1
    ] == pytest.approx(2.0)
