"""Contextualization: silver points and records -> gold tables, all in DuckDB SQL.

Rules (DESIGN §5):
- intervals are half-open [start, end): a point exactly on a phase boundary belongs to the
  later phase; points outside every batch stay in silver;
- `t_batch_h` counts from inoculation (batch start when there is no inoculation phase);
- values are converted to canonical units (`schemas.units`, affine, applied in SQL);
- resampling is time-weighted over *segments* between consecutive archived points: linear
  interpolation for `linear` tags, previous value for `step` tags. A segment is valid only
  when its start point (and, for linear tags, its end point) has good quality and it is no
  longer than the tag's `max_gap_s`. Windows take their boundary value from the segment that
  crosses their start, so a window starting between two points is exact. A window not fully
  covered by valid segments has `value` NULL and `coverage` < 1: nothing is invented.

Gold files are written per batch (`gold/<table>/<batch>.parquet`), so a batch is recomputed
on its own and a crash leaves every other batch intact.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import duckdb
import pyarrow as pa

from lake import catalog
from lake.duck import connect, copy_per_key
from lake.layout import Lake, atomic_write_bytes, atomic_write_parquet, safe_name
from schemas.sql_checks import column_checks
from schemas.tables import GOLD_MODELS
from schemas.units import UnitError, conversion
from sources.site import DEFAULT_MAX_GAP_S, KpiInputs, Site

GOOD_QUALITIES = ("good", "substituted")
POINT_OK = f"(p.quality IN {GOOD_QUALITIES} AND p.value IS NOT NULL AND isfinite(p.value))"
GOLD_TABLES = ("process_values", "batch_trajectories", "phase_summary", "batch_kpis")


@dataclass(frozen=True)
class Settings:
    """How gold tables are computed; the site's part comes from its sources.yaml
    (`Settings.for_site`)."""

    grid_minutes: float = 15.0
    golden_k: float = 3.0  # golden band: mean ± k·σ
    max_gap_s: float = DEFAULT_MAX_GAP_S  # linear tags without a max_gap_s of their own
    # operating limits (parameter, phase, low, high) in canonical units:
    # what pct_in_limits measures
    limits: tuple[tuple[str, str, float | None, float | None], ...] = ()
    kpis: KpiInputs = KpiInputs()
    feed_to_l_per_h: tuple[tuple[str, float], ...] = ()  # each feed-rate parameter's factor to L/h
    # qP in pg/cell/day per (product unit / (cell-density unit · h));
    # None: not cells and a mass titer
    qp_factor: float | None = None

    @classmethod
    def for_site(cls, site: Site, grid_minutes: float = 15.0, golden_k: float = 3.0) -> Settings:
        limits = tuple((r["parameter"], r["phase"], r["low"], r["high"]) for r in site.limit_rows())
        feeds = tuple((p, conversion(site.parameters[p], "L/h")[0]) for p in site.kpis.feed_rates)
        return cls(
            grid_minutes, golden_k, site.max_gap_s, limits, site.kpis, feeds, _qp_factor(site)
        )


GAP_STATE = "historian_gap.json"  # the site's historian.max_gap_s that gold was computed with


def site_gap_s(lake: Lake) -> float:
    """The default gap the lake's gold tables were computed with (for reads that must agree)."""
    path = lake.state(GAP_STATE)
    return float(json.loads(path.read_text())["max_gap_s"]) if path.exists() else DEFAULT_MAX_GAP_S


def _qp_factor(site: Site) -> float | None:
    """qP = slope of product against integral cell density; 24000 turns g/L per (1e6 cells/mL·h)
    into pg/cell/day. Only for a cell count and a mass concentration (a biomass in g/L has no
    qP)."""
    density, product = (
        site.analytes.get(site.kpis.cell_density or ""),
        site.analytes.get(site.kpis.product or ""),
    )
    if density is None or product is None:
        return None
    try:
        to_cells, _ = conversion(density.unit, "1e6 cells/mL")
        to_g_l, _ = conversion(product.unit, "g/L")
    except UnitError:
        return None
    return 24000.0 * to_g_l / to_cells


def _setup(
    con: duckdb.DuckDBPyConnection,
    lake: Lake,
    batch_ids: Sequence[str],
    as_of: datetime,
    settings: Settings,
) -> None:
    """Temporary tables every gold computation shares: batches, phases, tags, points, segments."""
    catalog.attach_views(con, lake)
    con.execute(
        # a running batch ends, for now, at its unit's last archived point (never after as_of)
        """CREATE OR REPLACE TEMP TABLE b AS
           WITH chosen AS (SELECT * FROM batches
                           WHERE batch_id IN (SELECT unnest($ids)) AND start_ts IS NOT NULL),
           horizon AS (SELECT t.unit_id, max(p.ts) AS last_ts
                       FROM historian_points p JOIN tags t USING (tag)
                       WHERE t.unit_id IN (SELECT unit_id FROM chosen WHERE end_ts IS NULL)
                       GROUP BY 1)
           SELECT batch_id, unit_id, product, status, start_ts,
                  coalesce(end_ts, greatest(least($as_of, coalesce(h.last_ts, $as_of)), start_ts))
                    AS end_eff,
                  coalesce(inoculation_ts, start_ts) AS t0
           FROM chosen LEFT JOIN horizon h USING (unit_id)""",
        {"ids": list(batch_ids), "as_of": as_of},
    )
    points_and_segments(con, default_gap_s=settings.max_gap_s)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE lim"
        " (parameter VARCHAR, phase VARCHAR, low DOUBLE, high DOUBLE)"
    )
    if settings.limits:
        con.executemany("INSERT INTO lim VALUES (?, ?, ?, ?)", [list(r) for r in settings.limits])
    con.execute("CREATE OR REPLACE TEMP TABLE kfeed (parameter VARCHAR, to_l_per_h DOUBLE)")
    if settings.feed_to_l_per_h:
        con.executemany(
            "INSERT INTO kfeed VALUES (?, ?)", [list(r) for r in settings.feed_to_l_per_h]
        )


def points_and_segments(
    con: duckdb.DuckDBPyConnection,
    parameters: Sequence[str] | None = None,
    points: bool = True,
    default_gap_s: float = DEFAULT_MAX_GAP_S,
) -> None:
    """From the intervals in temp table `b` (batch_id, unit_id, start_ts, end_eff, t0): phases
    `ph`, tags `tg` and, with `points`, the unit's points `pts` (canonical units) and the valid
    segments `seg` between them.

    Historian archives are exception-reported and compressed: an archived value holds until the
    next one, and a long interval between two archived values is data within the compression
    deviation, not missing data. So a step tag holds its value however long; a linear tag
    interpolates up to its `max_gap_s` (the site's `default_gap_s` where the dictionary gives
    none; it fits PI's 8 h CompMax); what the source marks (a digital state, bad quality) ends a
    segment: a linear value before such a point holds until it (it was archived because the
    state arrived). A tag's last archived value holds to the end of its unit's data (the latest
    point of any of the unit's tags), never beyond.
    """
    con.execute(
        """CREATE OR REPLACE TEMP TABLE ph AS
           SELECT p.batch_id, p.phase, p.seq, p.start_ts,
                  coalesce(p.end_ts, b.end_eff) AS end_eff
           FROM phases p JOIN b USING (batch_id)
           WHERE p.level = 'phase' AND p.start_ts IS NOT NULL"""
    )
    con.execute(
        """CREATE OR REPLACE TEMP TABLE tg AS
           SELECT tag, unit_id, parameter, canonical_uom, scale, "offset", interpolation,
                  -- NULL: no limit (a step tag holds its value until the next archived one)
                  CASE WHEN interpolation = 'linear' THEN coalesce(max_gap_s, $gap) END
                    AS max_gap_s
           FROM tags WHERE $parameters IS NULL OR list_contains($parameters, parameter)""",
        {"parameters": list(parameters) if parameters else None, "gap": float(default_gap_s)},
    )
    if not points:
        return
    # points of each batch's unit, plus the archived value in force at its start (however old)
    # and the first one at or after its end (closing the last segment); narrow (tag properties
    # join from `tg`, lineage is read from silver where it is needed): this table holds every
    # point, and each column more is tens of millions of values more to materialize
    con.execute(
        """CREATE OR REPLACE TEMP TABLE bt AS
           SELECT b.batch_id, b.start_ts, b.end_eff, t.tag, t.parameter, t.scale, t."offset"
           FROM b JOIN tg t ON t.unit_id = b.unit_id"""
    )
    # the as-of joins see only these tags' points before the latest start and after the earliest
    # end: sorting the whole historian for them cost O(lake) on every call
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE pts AS
            SELECT bt.batch_id, bt.tag, bt.parameter, p.ts, p.value * bt.scale + bt."offset" AS v,
                   {POINT_OK} AS ok
            FROM bt JOIN historian_points p
              ON p.tag = bt.tag AND p.ts >= bt.start_ts AND p.ts < bt.end_eff
            UNION ALL
            SELECT bt.batch_id, bt.tag, bt.parameter, p.ts, p.value * bt.scale + bt."offset",
                   {POINT_OK}
            FROM bt ASOF JOIN (SELECT * FROM historian_points
                               WHERE tag IN (SELECT tag FROM bt)
                                 AND ts < (SELECT max(start_ts) FROM bt)) p
              ON p.tag = bt.tag AND bt.start_ts > p.ts
            UNION ALL
            SELECT bt.batch_id, bt.tag, bt.parameter, p.ts, p.value * bt.scale + bt."offset",
                   {POINT_OK}
            FROM bt ASOF JOIN (SELECT * FROM historian_points
                               WHERE tag IN (SELECT tag FROM bt)
                                 AND ts >= (SELECT min(end_eff) FROM bt)) p
              ON p.tag = bt.tag AND bt.end_eff <= p.ts"""
    )
    # the end of each unit's data: the latest point of any of its tags (all of them, not only the
    # parameters asked for, so the answer does not depend on the question)
    con.execute(
        """CREATE OR REPLACE TEMP TABLE data_end AS
           SELECT t.unit_id, max(p.ts) AS last_ts FROM historian_points p JOIN tags t USING (tag)
           WHERE t.unit_id IN (SELECT unit_id FROM b) GROUP BY 1"""
    )
    con.execute(
        """CREATE OR REPLACE TEMP TABLE seg AS
           SELECT w.batch_id, t.parameter, t.interpolation, w.t0, w.v0,
                  coalesce(w.t1, e.last_ts) AS t1,
                  -- a linear value holds towards a point the source marked bad,
                  -- and past the last one
                  CASE WHEN coalesce(w.ok1, false) THEN w.v1 ELSE w.v0 END AS v1
           FROM (
             -- the window's sort is most of the cost: only the columns it needs go through it
             SELECT batch_id, tag, ok, ts AS t0, v AS v0,
                    lead(ts) OVER w AS t1, lead(v) OVER w AS v1, lead(ok) OVER w AS ok1
             FROM pts WINDOW w AS (PARTITION BY batch_id, tag ORDER BY ts)) w
           JOIN tg t USING (tag) JOIN data_end e ON e.unit_id = t.unit_id
           WHERE w.ok AND coalesce(w.t1, e.last_ts) > w.t0
             AND (t.max_gap_s IS NULL
                  OR (epoch_us(coalesce(w.t1, e.last_ts)) - epoch_us(w.t0)) / 1e6 <= t.max_gap_s)"""
    )


def good_points_sql(bounds: str, join: str = "") -> str:
    """FROM … WHERE for the good silver points `p` of the batches in `b`, with their tag `t` (for
    canonical value and unit) and lineage; `bounds` limits p.ts, `join` may add e.g. the phase."""
    return f"""FROM b JOIN tg t ON t.unit_id = b.unit_id
               JOIN historian_points p ON p.tag = t.tag AND {bounds}
               {join}
               WHERE {POINT_OK}"""


def integrals_sql(intervals: str, keys: str, grid: bool = False, spread: bool = True) -> str:
    """SQL aggregating valid segments clipped to `intervals` (batch_id, keys…, ws, we).

    With `grid`, the intervals are the regular windows k of `$step` seconds from each batch's t0:
    each segment then lists the windows it touches (usually one) and joins them on k, an equi-join
    instead of a range join over millions of segments.
    """
    if grid:
        pairs = f"""
            -- windows of the segment's part inside its batch: a set-point archived months before
            -- would otherwise list every window since
            FROM (SELECT s.*,
                         unnest(range(floor((epoch_us(greatest(s.t0, b.start_ts)) - epoch_us(b.t0))
                                            / ($step * 1e6))::BIGINT,
                                      ceil((epoch_us(least(s.t1, b.end_eff)) - epoch_us(b.t0))
                                           / ($step * 1e6))::BIGINT)) AS k
                  FROM seg s JOIN b USING (batch_id)) s
            JOIN {intervals} i ON i.batch_id = s.batch_id AND i.k = s.k"""
    else:
        pairs = (
            f"FROM {intervals} i JOIN seg s"
            " ON s.batch_id = i.batch_id AND s.t0 < i.we AND s.t1 > i.ws"
        )
    spread_sql = SPREAD_SQL if spread else ""
    limits_join = (
        " LEFT JOIN lim ON lim.parameter = y.parameter AND lim.phase = y.phase" if spread else ""
    )
    return f"""
        WITH x AS (
            SELECT {keys}, i.batch_id, s.parameter, s.interpolation, s.t0, s.t1, s.v0, s.v1,
                   greatest(s.t0, i.ws) AS a, least(s.t1, i.we) AS z
            {pairs}
        ), y AS (
            SELECT *, (epoch_us(z) - epoch_us(a)) / 1e6 AS d,
                   CASE WHEN interpolation = 'step' THEN v0
                        ELSE v0 + (v1 - v0) * (epoch_us(a) - epoch_us(t0))
                                  / (epoch_us(t1) - epoch_us(t0)) END AS va,
                   CASE WHEN interpolation = 'step' THEN v0
                        ELSE v0 + (v1 - v0) * (epoch_us(z) - epoch_us(t0))
                                  / (epoch_us(t1) - epoch_us(t0)) END AS vb
            FROM x
        )
        SELECT y.batch_id, {keys.replace("i.", "y.")}, y.parameter,
               exact_sum(d) AS covered_s,
               exact_sum((va + vb) / 2 * d) AS integral,
               min(least(va, vb)) AS vmin, max(greatest(va, vb)) AS vmax{spread_sql}
        FROM y{limits_join}
        GROUP BY ALL"""


# the second moment and the time within the site's limits of the parameter in the phase (phase
# summaries, whose intervals are keyed by phase; trajectories skip them). The tag's own low/high
# is the instrument range, not an operating limit.
SPREAD_SQL = """,
               exact_sum((va * va + va * vb + vb * vb) / 3 * d) AS integral_sq,
               -- time inside [low, high]: exact for a linear segment
               -- (the fraction of its value range inside)
               exact_sum(CASE WHEN lim.low IS NULL AND lim.high IS NULL THEN NULL
                        WHEN va = vb
                          THEN d * (va BETWEEN coalesce(lim.low, -1e308)
                                           AND coalesce(lim.high, 1e308))::INT
                        ELSE d * greatest(0, least(greatest(va, vb), coalesce(lim.high, 1e308))
                                            - greatest(least(va, vb), coalesce(lim.low, -1e308)))
                               / abs(vb - va) END) AS in_limits_s"""


# Not materialized: its rows go straight from silver into the per-batch files (the widest table;
# ten million rows did not fit the memory limit). No ORDER BY: sorting ten million wide rows cost
# more than everything else here together; rows keep the silver order (a historian export's,
# usually tag by tag in time), which the files' row-group statistics prune on.
_IN_BATCH_AND_PHASE = good_points_sql(
    "p.ts >= b.start_ts AND p.ts < b.end_eff",
    "JOIN ph ON ph.batch_id = b.batch_id AND p.ts >= ph.start_ts AND p.ts < ph.end_eff",
)
PROCESS_VALUES_SQL = f"""
    SELECT b.batch_id, b.unit_id, ph.phase, t.parameter, p.ts,
           (epoch_us(p.ts) - epoch_us(b.t0)) / 3.6e9 AS t_batch_h,
           (epoch_us(p.ts) - epoch_us(ph.start_ts)) / 3.6e9 AS t_phase_h,
           p.value * t.scale + t."offset" AS value, t.canonical_uom AS uom, p.quality, p.tag,
           p.source_sha256, p.source_row
    {_IN_BATCH_AND_PHASE}"""


def batch_trajectories(con, grid_minutes: float) -> None:
    """Temp table `gold_batch_trajectories`: each parameter's time-weighted average per regular
    window of `grid_minutes` from inoculation, with points counted and coverage (NULL value
    where valid data do not cover the whole window)."""
    step = float(grid_minutes) * 60.0
    con.execute(
        """CREATE OR REPLACE TEMP TABLE win AS
           SELECT batch_id, k, b.t0 + to_microseconds((k * $step * 1e6)::BIGINT) AS ws,
                  b.t0 + to_microseconds(((k + 1) * $step * 1e6)::BIGINT) AS we
           FROM (SELECT batch_id, t0,
                        unnest(range(
                            floor((epoch_us(start_ts) - epoch_us(t0)) / 1e6 / $step)::BIGINT,
                            ceil((epoch_us(end_eff) - epoch_us(t0)) / 1e6 / $step)::BIGINT)) AS k
                 FROM b) b""",
        {"step": step},
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE gold_batch_trajectories AS
            WITH agg AS ({integrals_sql("win", "i.k", grid=True, spread=False)}),
            npts AS (SELECT p.batch_id,
                            floor((epoch_us(p.ts) - epoch_us(b.t0)) / ($step * 1e6))::BIGINT AS k,
                            p.parameter, count(*) AS n_points
                     FROM pts p JOIN b USING (batch_id) WHERE p.ok
                     GROUP BY ALL),
            -- the phase a window starts in; overlapping phases (a malformed record): the later
            wph AS (SELECT w.batch_id, w.k, arg_max(ph.phase, ph.start_ts) AS phase
                    FROM win w JOIN ph ON ph.batch_id = w.batch_id
                     AND w.ws >= ph.start_ts AND w.ws < ph.end_eff
                    GROUP BY ALL),
            grid AS (SELECT w.batch_id, w.k, wph.phase, t.parameter, t.canonical_uom
                     FROM win w JOIN b USING (batch_id) JOIN tg t ON t.unit_id = b.unit_id
                     LEFT JOIN wph USING (batch_id, k))
            SELECT g.batch_id, g.phase, g.parameter, g.k * $step / 3600.0 AS t_batch_h,
                   CASE WHEN a.covered_s >= $step * (1 - 1e-9) THEN a.integral / a.covered_s END
                     AS value,
                   coalesce(n.n_points, 0) AS n_points,
                   least(coalesce(a.covered_s, 0) / $step, 1.0) AS coverage,
                   g.canonical_uom AS uom
            FROM grid g
            LEFT JOIN agg a ON a.batch_id = g.batch_id AND a.k = g.k AND a.parameter = g.parameter
            LEFT JOIN npts n ON n.batch_id = g.batch_id AND n.k = g.k AND n.parameter = g.parameter
            ORDER BY g.batch_id, g.parameter, g.k""",
        {"step": step},
    )


def phase_summary(con) -> None:
    """Temp table `gold_phase_summary`: per batch, ISA-88 phase and parameter the duration,
    time-weighted average, min, max, standard deviation, time within the site's limits and
    coverage."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE phase_iv AS"
        " SELECT batch_id, phase, seq, start_ts AS ws, end_eff AS we FROM ph"
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE gold_phase_summary AS
            WITH agg AS ({integrals_sql("phase_iv", "i.phase")}),
            grid AS (SELECT p.batch_id, p.phase, p.seq, p.ws, p.we, t.parameter, t.canonical_uom
                     FROM phase_iv p JOIN b USING (batch_id) JOIN tg t ON t.unit_id = b.unit_id)
            SELECT g.batch_id, g.phase, g.parameter,
                   (epoch_us(g.we) - epoch_us(g.ws)) / 3.6e9 AS duration_h,
                   a.integral / nullif(a.covered_s, 0) AS twa,
                   a.vmin AS min, a.vmax AS max,
                   -- E[x²] − E[x]² cancels: a difference below the resolution of E[x²] is no
                   -- variance (a constant set-point reads 0, not 1e-7)
                   CASE WHEN a.covered_s > 0 THEN
                       CASE WHEN a.integral_sq / a.covered_s - power(a.integral / a.covered_s, 2)
                                 <= 1e-12 * abs(a.integral_sq / a.covered_s) THEN 0.0
                            ELSE sqrt(a.integral_sq / a.covered_s
                                      - power(a.integral / a.covered_s, 2)) END END AS std,
                   100.0 * a.in_limits_s / nullif(a.covered_s, 0) AS pct_in_limits,
                   lim.low AS limit_low, lim.high AS limit_high,
                   coalesce(a.covered_s, 0) / nullif((epoch_us(g.we) - epoch_us(g.ws)) / 1e6, 0)
                     AS coverage,
                   g.canonical_uom AS uom, g.seq AS phase_seq
            FROM grid g LEFT JOIN agg a
              ON a.batch_id = g.batch_id AND a.phase = g.phase AND a.parameter = g.parameter
            LEFT JOIN lim ON lim.parameter = g.parameter AND lim.phase = g.phase
            ORDER BY g.batch_id, g.seq, g.parameter"""
    )


def batch_kpis(con, settings: Settings) -> None:
    """Per batch: duration, peak cell density, its integral (trapezoid over samples, canonical
    unit · h), final titer, qP (slope of titer against the integral, in pg/cell/day), harvest
    viability, feed added — from the analytes and parameters the site names (`kpis:`)."""
    k = settings.kpis
    con.execute(
        """CREATE OR REPLACE TEMP TABLE gold_batch_kpis AS
           WITH s AS (
               SELECT s.batch_id, s.sample_id, s.analyte, s.canonical_value AS value,
                      (epoch_us(s.sampled_ts) - epoch_us(b.t0)) / 3.6e9 AS t_h
               FROM samples s JOIN b USING (batch_id)
               WHERE s.canonical_value IS NOT NULL
                 AND s.sampled_ts >= b.t0 AND s.sampled_ts < b.end_eff),
           vcd AS (
               SELECT batch_id, sample_id, t_h, value,
                      coalesce(sum((value + prev_v) / 2 * (t_h - prev_t))
                                 OVER (PARTITION BY batch_id ORDER BY t_h), 0) AS ivcd
               FROM (SELECT *, lag(value) OVER (PARTITION BY batch_id ORDER BY t_h) AS prev_v,
                               lag(t_h) OVER (PARTITION BY batch_id ORDER BY t_h) AS prev_t
                     FROM s WHERE analyte = $density)),
           titer AS (SELECT batch_id, t_h, value FROM s WHERE analyte = $product),
           qp AS (SELECT t.batch_id, regr_slope(t.value, v.ivcd ORDER BY t.t_h, v.t_h) AS slope
                  FROM titer t JOIN vcd v ON v.batch_id = t.batch_id AND abs(v.t_h - t.t_h) < 0.5
                  GROUP BY ALL),
           feed AS (SELECT s.batch_id,
                           exact_sum((s.v0 + CASE WHEN s.interpolation = 'step' THEN s.v0
                                                  ELSE s.v1 END)
                                     / 2 * f.to_l_per_h
                                     * (epoch_us(least(s.t1, b.end_eff))
                                        - epoch_us(greatest(s.t0, b.t0)))
                                     / 3.6e9) AS feed_l
                    FROM seg s JOIN b USING (batch_id) JOIN kfeed f USING (parameter)
                    WHERE s.t1 > b.t0 AND s.t0 < b.end_eff GROUP BY ALL),
           bolus AS (SELECT batch_id, exact_sum(quantity) AS bolus_l
                     FROM material_events JOIN b USING (batch_id)
                     WHERE kind = 'bolus' AND lower(uom) IN ('l', 'liter', 'litre') GROUP BY ALL)
           SELECT b.batch_id, b.product, b.unit_id, b.status,
                  (epoch_us(b.end_eff) - epoch_us(b.start_ts)) / 3.6e9 AS duration_h,
                  (epoch_us(b.end_eff) - epoch_us(b.t0)) / 3.6e9 AS culture_h,
                  (SELECT max(value) FROM vcd WHERE vcd.batch_id = b.batch_id) AS peak_vcd,
                  (SELECT max(ivcd) FROM vcd WHERE vcd.batch_id = b.batch_id) AS ivcd,
                  (SELECT arg_max(value, t_h) FROM titer WHERE titer.batch_id = b.batch_id)
                    AS final_titer,
                  (SELECT slope FROM qp WHERE qp.batch_id = b.batch_id) * $qp_factor AS qp,
                  (SELECT arg_max(value, t_h) FROM s
                   WHERE s.batch_id = b.batch_id AND s.analyte = $viability) AS harvest_viability,
                  coalesce(feed.feed_l, 0) AS feed_added_l,
                  coalesce(bolus.bolus_l, 0) AS bolus_added_l,
                  coalesce(feed.feed_l, 0) + coalesce(bolus.bolus_l, 0) AS total_feed_added_l
           FROM b LEFT JOIN feed USING (batch_id) LEFT JOIN bolus USING (batch_id)
           ORDER BY b.batch_id""",
        {
            "density": k.cell_density,
            "product": k.product,
            "viability": k.viability,
            "qp_factor": settings.qp_factor,
        },
    )


def contextualize(
    lake: Lake,
    batch_ids: Sequence[str],
    settings: Settings = Settings(),
    as_of: datetime | None = None,
) -> dict[str, int]:
    """Compute and write every gold table for `batch_ids`; return rows written per table."""
    as_of = as_of or datetime.now(UTC)
    counts = dict.fromkeys(GOLD_TABLES, 0)
    if not batch_ids:
        return counts
    if site_gap_s(lake) != settings.max_gap_s:
        atomic_write_bytes(
            lake.state(GAP_STATE), json.dumps({"max_gap_s": settings.max_gap_s}).encode()
        )
    with connect(lake) as con:
        _setup(con, lake, batch_ids, as_of, settings)
        batch_trajectories(con, settings.grid_minutes)
        phase_summary(con)
        batch_kpis(con, settings)
        for table in GOLD_TABLES:
            select = (
                PROCESS_VALUES_SQL if table == "process_values" else f"SELECT * FROM gold_{table}"
            )
            targets = {b: lake.gold(table) / f"{safe_name(b)}.parquet" for b in batch_ids}
            written = copy_per_key(
                con,
                select,
                "batch_id",
                targets,
                check=functools.partial(_assert_valid, con, model=GOLD_MODELS[table]),
            )
            counts[table] = sum(written.values())
    return counts


def _assert_valid(con, relation: str, model) -> None:
    """The pandera model's checks, in SQL and in one scan: a failure here is a bug in the SQL
    above, not bad data."""
    columns = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()}
    missing = set(model.to_schema().columns) - columns
    if missing:
        raise AssertionError(f"{relation} lacks column(s) {sorted(missing)}")
    checks = column_checks(model)
    if not checks:
        return
    counts = ", ".join(
        f"count_if(NOT coalesce({c.ok_sql}, {str(c.check != 'not_nullable').lower()}))"
        for c in checks
    )
    params = {k: v for c in checks for k, v in c.params.items()}
    failing = con.execute(f"SELECT {counts} FROM {relation}", params).fetchall()[0]
    for check, bad in zip(checks, failing, strict=True):
        if bad:
            raise AssertionError(
                f"{model.__name__}: {bad} row(s) fail {check.column} {check.check}"
            )


def golden_profiles(
    lake: Lake, settings: Settings = Settings(), batches: Sequence[str] | None = None
) -> int:
    """Mean ± k·σ per product, parameter and t_batch_h over the chosen good batches (default:
    every completed batch). Historian parameters come from `batch_trajectories`; offline
    analytes (vcd, titer, …) are interpolated linearly between a batch's samples onto the same
    grid (never extrapolated past the first or last sample). Written whole to
    gold/golden_profiles."""
    folder = lake.gold("batch_trajectories")
    if not any(folder.glob("*.parquet")):
        return 0
    step = float(settings.grid_minutes) * 60.0
    with connect(lake) as con:
        catalog.attach_views(con, lake)
        frame = con.execute(
            """WITH chosen AS (
                   SELECT batch_id, product, coalesce(inoculation_ts, start_ts) AS t0 FROM batches
                   WHERE status = 'complete'
                     AND ($chosen IS NULL OR list_contains($chosen, batch_id))),
               s AS (
                   SELECT s.batch_id, s.analyte AS parameter, s.canonical_value AS v,
                          s.canonical_uom AS uom,
                          (epoch_us(s.sampled_ts) - epoch_us(c.t0)) / 1e6 AS t_s
                   FROM samples s JOIN chosen c USING (batch_id)
                   WHERE s.canonical_value IS NOT NULL),
               pairs AS (
                   SELECT *, lead(t_s) OVER w AS t1, lead(v) OVER w AS v1 FROM s
                   WINDOW w AS (PARTITION BY batch_id, parameter ORDER BY t_s)),
               offline AS (
                   SELECT batch_id, parameter, k * $step / 3600.0 AS t_batch_h,
                          v + (v1 - v) * (k * $step - t_s) / (t1 - t_s) AS value, uom
                   FROM (SELECT *,
                                unnest(range(ceil(t_s / $step)::BIGINT,
                                             ceil(t1 / $step)::BIGINT)) AS k
                         FROM pairs WHERE t1 > t_s)),
               online AS (
                   SELECT batch_id, parameter, t_batch_h, value, uom FROM read_parquet($files)
                   WHERE batch_id IN (SELECT batch_id FROM chosen)),
               every AS (SELECT * FROM online UNION ALL BY NAME SELECT * FROM offline)
               -- ordered by batch: the same additions in the same order on every run
               -- (bit-identical)
               SELECT c.product, e.parameter, e.t_batch_h,
                      avg(e.value ORDER BY e.batch_id) AS mean,
                      stddev_samp(e.value ORDER BY e.batch_id) AS std,
                      avg(e.value ORDER BY e.batch_id)
                        - $k * stddev_samp(e.value ORDER BY e.batch_id) AS lower,
                      avg(e.value ORDER BY e.batch_id)
                        + $k * stddev_samp(e.value ORDER BY e.batch_id) AS upper,
                      count(e.value) AS n_batches, any_value(e.uom) AS uom
               FROM every e JOIN chosen c USING (batch_id)
               GROUP BY ALL HAVING count(e.value) >= 2
               ORDER BY 1, 2, 3""",
            {
                "k": settings.golden_k,
                "files": str(folder / "*.parquet"),
                "chosen": list(batches) if batches else None,
                "step": step,
            },
        ).df()
    if frame.empty:
        return 0  # fewer than two comparable batches: no reference yet
    GOLD_MODELS["golden_profiles"].validate(frame, lazy=True)
    atomic_write_parquet(
        lake.gold("golden_profiles") / "golden_profiles.parquet",
        pa.Table.from_pandas(frame, preserve_index=False),
    )
    return len(frame)
