"""The Python face of the curated lake: SQL, and historian-style reads over curated data.

    from lake.api import BatchLake
    bl = BatchLake("data/lake")
    bl.query("select * from batch_kpis")                      # pandas (or arrow=True)
    bl.read(["temperature", "dissolved_oxygen"], batch="B26-003", interval="1h", mode="twa")

`read` speaks the vocabulary of historian clients (PI, IP.21, tagreader): `raw` archived
values, `interpolated` values at each interval start, `twa` time-weighted average, `min`,
`max` per interval, and `snapshot` (last good value at or before each interval start).
Values are in canonical units, only good quality counts, and the rules of contextualization
hold: no interpolation across bad data or over-long gaps (such intervals give NULL, and
`coverage` says how much of the interval had valid data).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pandas as pd

from lake import catalog
from lake.contextualize import good_points_sql, integrals_sql, points_and_segments, site_gap_s
from lake.duck import EXACT_SUM
from lake.layout import Lake
from lake.query import check_read_only, connect

MODES = ("raw", "interpolated", "twa", "min", "max", "snapshot")


class BatchLake:
    def __init__(self, root: str | Path = "data/lake") -> None:
        self.lake = Lake(Path(root))

    def query(self, sql: str, params: list | dict | None = None, *, arrow: bool = False):
        """Run read-only SQL over the catalog; pandas by default, a pyarrow Table with
        arrow=True."""
        with connect(self.lake) as con:
            check_read_only(con, sql)
            result = con.execute(sql, params or [])
            return result.to_arrow_table() if arrow else result.df()

    def read(
        self,
        parameters: str | Sequence[str],
        batch: str | None = None,
        *,
        unit: str | None = None,
        start: datetime | str | None = None,
        end: datetime | str | None = None,
        interval: str = "15min",
        mode: str = "twa",
    ) -> pd.DataFrame:
        """Read parameters of one batch (or of one unit between start and end)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        params = [parameters] if isinstance(parameters, str) else list(parameters)
        step = pd.Timedelta(interval).total_seconds()
        if step <= 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        with duckdb.connect() as con:
            con.execute("SET TimeZone = 'UTC'")
            con.execute(EXACT_SUM)
            catalog.attach_views(con, self.lake)
            self._interval(con, batch, unit, start, end)
            # raw points come from silver, no segments needed;
            # segments by the same gap rule gold used
            points_and_segments(
                con, params, points=mode != "raw", default_gap_s=site_gap_s(self.lake)
            )
            if mode == "raw":
                return con.execute(
                    f"""SELECT p.ts, (epoch_us(p.ts) - epoch_us(b.t0)) / 3.6e9 AS t_batch_h,
                               t.parameter, p.value * t.scale + t."offset" AS value,
                               t.canonical_uom AS uom, p.quality, p.tag
                        {good_points_sql("p.ts >= b.start_ts AND p.ts < b.end_eff")}
                        ORDER BY t.parameter, p.ts"""
                ).df()
            con.execute(
                """CREATE OR REPLACE TEMP TABLE win AS
                   SELECT batch_id, k, t0,
                          start_ts + to_microseconds((k * $step * 1e6)::BIGINT) AS ws,
                          start_ts + to_microseconds(((k + 1) * $step * 1e6)::BIGINT) AS we
                   FROM (SELECT *,
                                unnest(range(0, ceil((epoch_us(end_eff) - epoch_us(start_ts))
                                                     / 1e6 / $step)::BIGINT)) AS k
                         FROM b)""",
                {"step": step},
            )
            grid = """SELECT w.batch_id, w.k, w.ws, w.t0, t.parameter, t.canonical_uom AS uom
                      FROM win w JOIN b USING (batch_id) JOIN tg t ON t.unit_id = b.unit_id"""
            if mode in ("twa", "min", "max"):
                value = {
                    "twa": (
                        "CASE WHEN a.covered_s >= $step * (1 - 1e-9)"
                        " THEN a.integral / a.covered_s END"
                    ),
                    "min": "a.vmin",
                    "max": "a.vmax",
                }[mode]
                agg = integrals_sql("win", "i.k", spread=False)
                sql = f"""WITH agg AS ({agg}), grid AS ({grid})
                          SELECT g.ws AS ts, (epoch_us(g.ws) - epoch_us(g.t0)) / 3.6e9 AS t_batch_h,
                                 g.parameter, {value} AS value,
                                 least(coalesce(a.covered_s, 0) / $step, 1.0) AS coverage, g.uom
                          FROM grid g LEFT JOIN agg a
                            ON a.batch_id = g.batch_id AND a.k = g.k AND a.parameter = g.parameter
                          ORDER BY g.parameter, g.ws"""
                return con.execute(sql, {"step": step}).df()
            if mode == "interpolated":
                sql = f"""WITH grid AS ({grid})
                          SELECT g.ws AS ts, (epoch_us(g.ws) - epoch_us(g.t0)) / 3.6e9 AS t_batch_h,
                                 g.parameter,
                                 CASE WHEN s.interpolation = 'step' THEN s.v0
                                      ELSE s.v0 + (s.v1 - s.v0) * (epoch_us(g.ws) - epoch_us(s.t0))
                                                  / (epoch_us(s.t1) - epoch_us(s.t0)) END AS value,
                                 g.uom
                          FROM grid g LEFT JOIN seg s
                            ON s.batch_id = g.batch_id AND s.parameter = g.parameter
                           AND s.t0 <= g.ws AND s.t1 > g.ws
                          ORDER BY g.parameter, g.ws"""
                return con.execute(sql).df()
            sql = f"""WITH grid AS ({grid})
                      SELECT g.ws AS ts, (epoch_us(g.ws) - epoch_us(g.t0)) / 3.6e9 AS t_batch_h,
                             g.parameter, p.v AS value, p.ts AS recorded_ts, g.uom
                      FROM grid g ASOF LEFT JOIN (SELECT * FROM pts WHERE ok) p
                        ON p.batch_id = g.batch_id AND p.parameter = g.parameter AND p.ts <= g.ws
                      ORDER BY g.parameter, g.ws"""
            return con.execute(sql).df()

    @staticmethod
    def _interval(con, batch, unit, start, end) -> None:
        """Temp table `b`: the batch (its unit, bounds, inoculation) or a unit between start and
        end."""
        if batch is not None:
            con.execute(
                """CREATE OR REPLACE TEMP TABLE b AS
                   SELECT batch_id, unit_id,
                          coalesce(CAST($start AS TIMESTAMPTZ), start_ts) AS start_ts,
                          coalesce(CAST($end AS TIMESTAMPTZ), end_ts, $now) AS end_eff,
                          coalesce(inoculation_ts, start_ts) AS t0
                   FROM batches WHERE batch_id = $batch""",
                {
                    "batch": batch,
                    "start": _ts(start),
                    "end": _ts(end),
                    "now": datetime.now(UTC),
                },
            )
            if con.execute("SELECT count(*) FROM b").fetchall()[0][0] == 0:
                raise KeyError(f"no batch {batch!r} in the lake")
            return
        if unit is None or start is None or end is None:
            raise ValueError("read needs a batch, or a unit with start and end")
        con.execute(
            "CREATE OR REPLACE TEMP TABLE b AS SELECT $unit AS batch_id, $unit AS unit_id,"
            " $start AS start_ts, $end AS end_eff, $start AS t0",
            {"unit": unit, "start": _ts(start), "end": _ts(end)},
        )


def _ts(value) -> datetime | None:
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return (ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")).to_pydatetime()
