"""Large historian inputs for the benchmarks, made from the demo plant's own signals.

The demo plant's archive compression keeps only a few percent of scans; a benchmark needs
tens of millions of rows, so this writes one unit's raw scans (every `seconds_per_sample`)
in the PI-style long format of the demo's BR-101 exports, including its quality words and
a sprinkle of digital states. Same arguments, same bytes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from demo import process
from demo.plant import PlantSize, generate

UNIT = "BR-101"


def _runs(rows: int, seed: int):
    rng = np.random.default_rng(seed)
    n_batches = max(2, int(np.ceil(rows / len(process.TAG_SPECS) / (16 * 86400))) * 3)
    plans = process.plan_batches(n_batches, rng)
    return [
        process.run_batch(p, rng, lambda _: float(rng.normal(1.0, 0.03)))
        for p in plans
        if p.unit == UNIT
    ], rng


def bench_plans(rows: int, seed: int = 7) -> tuple[list[process.BatchPlan], datetime]:
    """The unit's batches that start inside the file written by `long_historian_csv(…, rows, seed)`,
    and the time the file ends (a batch still running then is cut there)."""
    runs, _ = _runs(rows, seed)
    end = (
        process.FIRST_START
        - timedelta(hours=12)
        + timedelta(seconds=int(np.ceil(rows / len(process.TAG_SPECS))))
    )
    return [r.plan for r in runs if r.plan.inoculation < end], end


def long_historian_csv(path: Path, rows: int, seed: int = 7) -> Path:
    """Write a long historian CSV of about `rows` rows (12 tags of one unit, 1 s scans)."""
    runs, rng = _runs(rows, seed)
    n_scans = int(np.ceil(rows / len(process.TAG_SPECS)))
    epoch = process.FIRST_START - timedelta(hours=12)
    t_s = np.arange(n_scans, dtype=float)
    signals = process.sensor_signals(runs, t_s, epoch, (seed,))
    stamps = pa.array(
        (t_s + epoch.timestamp()).astype("datetime64[s]"), pa.timestamp("s", tz="UTC")
    )
    text = pc.strftime(
        stamps.cast(pa.timestamp("s", tz=process.SITE_TZ)), format="%Y-%m-%dT%H:%M:%S%z"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with pacsv.CSVWriter(
        path,
        pa.schema(
            [
                ("Tag", pa.string()),
                ("Timestamp", pa.string()),
                ("Value", pa.string()),
                ("Status", pa.string()),
            ]
        ),
        write_options=pacsv.WriteOptions(quoting_style="none"),
    ) as writer:
        for spec in process.TAG_SPECS:
            values = np.round(signals[spec.suffix], spec.resolution)
            value_text = pc.cast(pa.array(values), pa.string())
            status = np.where(rng.random(n_scans) < 0.001, "Questionable", "Good")
            bad = rng.random(n_scans) < 0.0005
            value_text = pc.if_else(pa.array(bad), pa.scalar("I/O Timeout"), value_text)
            status = np.where(bad, "Bad", status)
            tag = pa.array(np.full(n_scans, process.tag_name(UNIT, spec)))
            writer.write_table(
                pa.table(
                    {"Tag": tag, "Timestamp": text, "Value": value_text, "Status": pa.array(status)}
                )
            )
    return path


def tag_dictionary(folder: Path) -> Path:
    """The demo plant's tag dictionary (a tiny plant is generated to get it)."""
    generate(folder, PlantSize(batches=4, seconds_per_sample=600.0))
    return folder / "landing" / "tags" / "tag_dictionary.csv"
