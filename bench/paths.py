"""The measured code paths, each run in a fresh child process by `bench.run`.

    python -m bench.paths <path> <args…>   prints {"seconds": …} as its last line

Timing covers the operation only (imports excluded); the parent reads the child's peak RSS.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path


def duckdb_copy(csv: str, out: str) -> None:
    """Reference (a): DuckDB's bare CSV -> Parquet copy of the same file."""
    import duckdb

    con = duckdb.connect()
    t = time.perf_counter()
    con.execute(f"COPY (SELECT * FROM read_csv('{csv}')) TO '{out}' (FORMAT parquet)")
    _done(t)


def pandas_pandera(csv: str, out: str) -> None:
    """Reference (b): what a user would write by hand, pandas + pandera (pandas backend) +
    to_parquet."""
    import pandas as pd
    import pandera.pandas as pa

    schema = pa.DataFrameSchema(
        {
            "Tag": pa.Column(str, pa.Check.str_length(1, 200)),
            "Timestamp": pa.Column("datetime64[us, UTC]"),
            "Value": pa.Column(float, nullable=True),
            "Status": pa.Column(str, pa.Check.isin(["Good", "Questionable", "Bad", "Substituted"])),
        },
        unique=["Tag", "Timestamp"],
    )
    t = time.perf_counter()
    df = pd.read_csv(csv)
    df["Timestamp"] = pd.to_datetime(df["Timestamp"], format="%Y-%m-%dT%H:%M:%S%z", utc=True)
    df["Value"] = pd.to_numeric(df["Value"], errors="coerce")
    try:
        schema.validate(df, lazy=True)
    except pa.errors.SchemaErrors:
        pass  # the hand-written path would now have to sort out the failures itself
    df.to_parquet(out)
    _done(t)


def batchtwin_ingest(csv: str, lake_dir: str, tags_csv: str) -> None:
    """batchtwin: reader, validation, duplicate rules, quarantine and silver write of one file."""
    from demo.plant import demo_site
    from lake import ingest
    from lake.layout import Lake
    from sources.profiles import profile_for

    site = demo_site()
    profiles = site.files
    lake = Lake(Path(lake_dir))
    shutil.rmtree(lake.root, ignore_errors=True)
    tags = Path(tags_csv)
    ingest.ingest_file(
        lake,
        tags.parent.parent,
        "tags/" + tags.name,
        profile_for("tags/x.csv", profiles),
        site=site,
    )
    known = ingest.known_tags(lake)
    csv_path = Path(csv)
    t = time.perf_counter()
    out = ingest.ingest_file(
        lake,
        csv_path.parent.parent,
        f"historian/{csv_path.name}",
        profile_for("historian/x.csv", profiles),
        tags_known=known,
    )
    _done(t, rows_read=out.log["rows_read"], rows_accepted=out.log["rows_accepted"])


def range_join(lake_dir: str, out: str) -> None:
    """Reference for contextualization: the bare DuckDB range join of the same points on the
    same phases."""
    import duckdb

    lake = Path(lake_dir)
    con = duckdb.connect()
    t = time.perf_counter()
    con.execute(
        f"""COPY (SELECT ph.batch_id, ph.phase, p.tag, p.ts, p.value
                  FROM read_parquet('{lake}/silver/historian_points/*.parquet') p
                  JOIN read_parquet('{lake}/silver/tags/*.parquet') t USING (tag)
                  JOIN read_parquet('{lake}/silver/phase_records/*.parquet') ph
                    ON ph.unit_id = t.unit_id AND p.ts >= ph.start_ts AND p.ts < ph.end_ts
                  WHERE ph.level = 'phase')
            TO '{out}' (FORMAT parquet)"""
    )
    _done(t)


def contextualize(lake_dir: str, batch_ids: str) -> None:
    """batchtwin: process_values, batch_trajectories, phase_summary and batch_kpis of the
    batches."""
    from lake import contextualize as cx
    from lake.layout import Lake

    ids = batch_ids.split(",")
    t = time.perf_counter()
    counts = cx.contextualize(Lake(Path(lake_dir)), ids)
    _done(t, **{f"rows_{k}": v for k, v in counts.items()})


def refit(lake_dir: str, batch_ids: str) -> None:
    """batchtwin: the CHO fit on the given completed batches (data loading, multistart,
    intervals, validation)."""
    from demo.plant import MODEL_CATALOG_ENTRY
    from lake.layout import Lake
    from models.catalog import parse
    from models.data import load_batches
    from models.fit import Fitter

    spec = parse("MAB-A", MODEL_CATALOG_ENTRY)
    t = time.perf_counter()
    data = load_batches(Lake(Path(lake_dir)), spec, batch_ids.split(","))
    result = Fitter(spec).fit(data).result_
    _done(t, batches=len(result.training_batches))


def _done(t0: float, **extra) -> None:
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss_mb": _peak_rss_mb(), **extra}))


def _peak_rss_mb() -> float:
    """This process's own high-water RSS, and its children's (the fitter's workers).

    Measured here, not from the parent's wait4: Linux starts a child's ru_maxrss at the RSS
    of the parent it was forked from, so after the parent had generated a 30 M-row file every
    child would report at least the parent's size."""
    import resource

    own = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, workers) / 1024.0


# the fitter's process pool re-imports this module: keep work under the guard
if __name__ == "__main__":
    globals()[sys.argv[1]](*sys.argv[2:])
