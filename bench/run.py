"""`make bench`: batchtwin against the bare engines, as ratios measured in the same run.

These machines are shared and noisy, so every figure is a median over repeated runs in fresh
child processes, next to a reference measured on the same file in the same run, with min and
max. Results go to bench/results.json (and are printed as a table).

    python -m bench.run [--sizes 1e6,1e7,3e7] [--repeat 3] [--work bench/work]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from bench.generate import UNIT, bench_plans, long_historian_csv, tag_dictionary
from lake.layout import Lake, atomic_write_parquet

ROOT = Path(__file__).resolve().parent.parent


def child(*args: str) -> dict:
    """Run `python -m bench.paths …` in a fresh process; its JSON plus peak RSS (MB)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.paths", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    if status != 0:
        reason = err.strip().splitlines()[-1] if err.strip() else status
        raise RuntimeError(f"bench.paths {args[0]} failed: {reason}")
    result = json.loads(out.strip().splitlines()[-1])
    # paths.py measures it itself where Linux allows
    result.setdefault("peak_rss_mb", usage.ru_maxrss / 1024.0)
    return result


def repeat(n: int, *args: str) -> dict:
    runs = [child(*args) for _ in range(n)]
    secs = [r["seconds"] for r in runs]
    rss = [r["peak_rss_mb"] for r in runs]
    return {
        "median_s": statistics.median(secs),
        "min_s": min(secs),
        "max_s": max(secs),
        "peak_rss_mb": max(rss),
        **{k: v for k, v in runs[0].items() if k not in ("seconds", "peak_rss_mb")},
    }


def write_batches(lake: Lake, rows: int) -> list[str]:
    """Silver batch and phase records for the bench unit's batches (what the MES would deliver)."""
    plans, file_end = bench_plans(rows)
    sha = "b" * 64
    batches, phases = [], []
    for p in plans:
        end = min(p.inoculation + pd.Timedelta(hours=p.phase_bounds_h["HARVEST"][1]), file_end)
        batches.append(
            {
                "batch_id": p.batch_id,
                "product": "MAB-A",
                "site": None,
                "unit_id": UNIT,
                "recipe_id": "CHO_FB_2000L",
                "status": "complete",
                "start_ts": p.start,
                "end_ts": end,
                "inoculation_ts": p.inoculation,
                "record_version": 1,
                "record_ts": end,
            }
        )
        for seq, (name, (a, b)) in enumerate(p.phase_bounds_h.items(), start=1):
            start = p.inoculation + pd.Timedelta(hours=a)
            if start < end:
                phases.append(
                    {
                        "batch_id": p.batch_id,
                        "unit_id": UNIT,
                        "level": "phase",
                        "path": f"{p.batch_id}:{name}",
                        "phase": name,
                        "seq": seq,
                        "start_ts": start,
                        "end_ts": min(p.inoculation + pd.Timedelta(hours=b), end),
                        "record_version": 1,
                    }
                )
    for table, rows_ in (("batch_records", batches), ("phase_records", phases)):
        df = pd.DataFrame(rows_)
        for c in ("start_ts", "end_ts", "inoculation_ts", "record_ts"):
            if c in df:
                df[c] = pd.to_datetime(df[c], utc=True).astype("datetime64[us, UTC]")
        df["source_sha256"], df["source_row"], df["source_path"] = (
            sha,
            np.arange(1, len(df) + 1),
            "bench",
        )
        atomic_write_parquet(
            lake.silver(table) / f"{sha}.parquet", pa.Table.from_pandas(df, preserve_index=False)
        )
    return [p.batch_id for p in plans]


def query_latency(lake: Lake, batch_ids: list[str], n: int = 30) -> dict:
    from lake import catalog
    from lake.contextualize import golden_profiles
    from lake.query import connect

    golden_profiles(lake)
    catalog.rebuild(lake)
    queries = {
        "one batch, one parameter trajectory": (
            "SELECT t_batch_h, value FROM batch_trajectories "
            "WHERE batch_id = ? AND parameter = 'dissolved_oxygen' ORDER BY 1",
            [batch_ids[0]],
        ),
        "one batch, one parameter, raw points": (
            "SELECT ts, value FROM process_values "
            "WHERE batch_id = ? AND parameter = 'ph' ORDER BY ts",
            [batch_ids[-1]],
        ),
        "phase summary of one parameter, all batches": (
            "SELECT batch_id, phase, twa FROM phase_summary "
            "WHERE parameter = 'temperature' ORDER BY 1, 2",
            [],
        ),
        "golden profile of one parameter": (
            "SELECT t_batch_h, mean, lower, upper FROM golden_profiles "
            "WHERE parameter = 'temperature' ORDER BY 1",
            [],
        ),
    }
    out = {}
    with connect(lake) as con:
        n_points = con.execute("SELECT count(*) FROM historian_points").fetchall()[0][0]
        for name, (sql, params) in queries.items():
            times = []
            for _ in range(n):
                t = time.perf_counter()
                # fetched as BatchLake.query returns them (a DataFrame): 800 k raw points as Python
                # tuples would measure tuple building (1.4 s), not the lake
                con.execute(sql, params).df()
                times.append((time.perf_counter() - t) * 1000)
            out[name] = {
                "p50_ms": float(np.percentile(times, 50)),
                "p95_ms": float(np.percentile(times, 95)),
            }
    out["historian_points"] = int(n_points)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default=os.environ.get("BENCH_SIZES", "1e6,1e7,3e7"))
    ap.add_argument("--repeat", type=int, default=int(os.environ.get("BENCH_REPEAT", "3")))
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "work")
    ap.add_argument(
        "--pandas-max",
        type=float,
        default=3e7,
        help="largest size for the pandas + pandera reference",
    )
    ap.add_argument(
        "--refit",
        default=os.environ.get("BENCH_REFIT", "6,12,24"),
        help="batch counts for the refit timing ('' to skip)",
    )
    args = ap.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    tags = tag_dictionary(work / "tagplant")
    results = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "sizes": {},
    }
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    for size in sizes:
        csv = work / "landing" / "historian" / f"BR101_bench_{size}.csv"
        if not csv.exists():
            t = time.perf_counter()
            long_historian_csv(csv, size)
            mb, secs = csv.stat().st_size / 1e6, time.perf_counter() - t
            print(f"generated {size:,} rows ({mb:.0f} MB) in {secs:.0f} s", flush=True)
        lake_dir = work / f"lake_{size}"
        entry = {"file_mb": csv.stat().st_size / 1e6}
        entry["duckdb_copy"] = repeat(
            args.repeat, "duckdb_copy", str(csv), str(work / "bare.parquet")
        )
        entry["batchtwin_ingest"] = repeat(
            args.repeat, "batchtwin_ingest", str(csv), str(lake_dir), str(tags)
        )
        if size <= args.pandas_max:
            entry["pandas_pandera"] = repeat(
                1 if size >= 1e7 else args.repeat,
                "pandas_pandera",
                str(csv),
                str(work / "pandas.parquet"),
            )
        batch_ids = write_batches(Lake(lake_dir), size)
        entry["range_join"] = repeat(
            args.repeat, "range_join", str(lake_dir), str(work / "join.parquet")
        )
        entry["contextualize"] = repeat(
            args.repeat, "contextualize", str(lake_dir), ",".join(batch_ids)
        )
        if size >= 1e7:
            entry["queries"] = query_latency(Lake(lake_dir), batch_ids)
        results["sizes"][str(size)] = entry
        _print(size, entry)
        if size != max(sizes):
            shutil.rmtree(lake_dir, ignore_errors=True)
    if args.refit:
        results["refit"] = refit_times(work, [int(n) for n in args.refit.split(",")])
    out = ROOT / "bench" / "results.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {out}")


def refit_times(work: Path, counts: list[int]) -> dict:
    """Wall time of the CHO fit on 6, 12, 24 completed batches of a demo plant (one run each:
    minutes)."""
    from demo.plant import PlantSize, generate
    from lake.query import query
    from pipelines.runner import materialize_all

    plant = work / "refit_plant"
    if not (plant / "lake" / "catalog.duckdb").exists():
        shutil.rmtree(plant, ignore_errors=True)
        generate(plant, PlantSize(batches=max(counts) + 4, seconds_per_sample=300.0))
        if not materialize_all(plant, models=False).success:
            raise RuntimeError("the refit plant's pipeline failed")
    done = query(
        Lake(plant / "lake"),
        "SELECT batch_id FROM batches WHERE status = 'complete' ORDER BY batch_id",
    )["batch_id"].tolist()
    out = {}
    for n in counts:
        r = child("refit", str(plant / "lake"), ",".join(done[:n]))
        out[str(n)] = {
            "seconds": r["seconds"],
            "peak_rss_mb": r["peak_rss_mb"],
            "batches": r["batches"],
        }
        print(
            f"refit    {r['batches']} batches: {r['seconds']:.1f} s ({r['peak_rss_mb']:.0f} MB)",
            flush=True,
        )
    return out


def _print(size: int, e: dict) -> None:
    ref, ours = e["duckdb_copy"], e["batchtwin_ingest"]
    print(f"\n== {size:,} rows ({e['file_mb']:.0f} MB)")
    print(
        f"ingest   batchtwin {_run(ours)} | "
        f"duckdb copy {ref['median_s']:.2f} s {ref['peak_rss_mb']:.0f} MB | "
        f"ratio {ours['median_s'] / ref['median_s']:.2f}x"
    )
    if "pandas_pandera" in e:
        pd_ = e["pandas_pandera"]
        print(
            f"         pandas+pandera {pd_['median_s']:.2f} s {pd_['peak_rss_mb']:.0f} MB | "
            f"batchtwin / pandas {ours['median_s'] / pd_['median_s']:.2f}x"
        )
    cj, cx = e["range_join"], e["contextualize"]
    print(
        f"context  batchtwin {_run(cx)} | "
        f"range join {cj['median_s']:.2f} s | ratio {cx['median_s'] / cj['median_s']:.2f}x"
    )
    for name, q in e.get("queries", {}).items():
        if isinstance(q, dict):
            print(f"query    {name}: p50 {q['p50_ms']:.1f} ms, p95 {q['p95_ms']:.1f} ms")


def _run(r: dict) -> str:
    """Median [min–max] seconds and peak memory of repeated runs, as the table prints them."""
    return f"{r['median_s']:.2f} s [{r['min_s']:.2f}–{r['max_s']:.2f}] {r['peak_rss_mb']:.0f} MB"


def _machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{platform.python_version()}, {platform.platform()}"
    )


if __name__ == "__main__":
    main()
