"""Temporaries a killed writer left behind are swept once stale; a running writer's are not."""

from __future__ import annotations

import os
import time

from lake import catalog
from lake.layout import (
    PARTIAL,
    STALE_TEMPORARY_S,
    Lake,
    atomic_write_bytes,
    sweep_stale_temporaries,
)


def _age(path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_rebuild_sweeps_stale_temporaries_and_keeps_fresh_ones_and_data(tmp_path):
    lake = Lake(tmp_path / "lake")
    table = lake.gold("phase_summary")
    table.mkdir(parents=True)
    kept = lake.raw("0" * 64, ".csv")
    atomic_write_bytes(kept, b"a raw copy")
    stale_file = table / f".tmp-abc{PARTIAL}"
    stale_file.write_bytes(b"half a file")
    stale_dir = table / f".tmp-def{PARTIAL}"
    (stale_dir / "batch_id=B2").mkdir(parents=True)
    (stale_dir / "batch_id=B2" / "data_0.parquet").write_bytes(b"half a partition")
    stale_catalog = lake.root / ".catalog.duckdb.4242.tmp"
    stale_catalog.write_bytes(b"half a catalog")
    fresh = table / f".tmp-ghi{PARTIAL}"
    fresh.write_bytes(b"a writer is still at it")
    busy_dir = table / f".tmp-jkl{PARTIAL}"
    busy_dir.mkdir()
    (busy_dir / "data_0.parquet").write_bytes(b"still growing")
    for p in (
        stale_file,
        stale_dir / "batch_id=B2" / "data_0.parquet",
        stale_dir / "batch_id=B2",
        stale_dir,
        stale_catalog,
        busy_dir,
    ):
        _age(p, STALE_TEMPORARY_S + 60)

    catalog.rebuild(lake)

    assert not stale_file.exists() and not stale_dir.exists() and not stale_catalog.exists()
    assert fresh.read_bytes() == b"a writer is still at it"
    assert busy_dir.exists(), (
        "a folder whose contents were touched recently belongs to a running writer"
    )
    assert kept.read_bytes() == b"a raw copy"
    assert lake.catalog.exists()


def test_sweep_reports_what_it_removed_and_ignores_lookalikes(tmp_path):
    (tmp_path / "silver").mkdir()
    old = tmp_path / "silver" / f".tmp-1{PARTIAL}"
    old.write_bytes(b"x")
    lookalike = tmp_path / "silver" / "tmp-1.partial.parquet"  # not a temporary's name
    lookalike.write_bytes(b"data")
    for p in (old, lookalike):
        _age(p, 10 * STALE_TEMPORARY_S)
    assert sweep_stale_temporaries(tmp_path) == [old]
    assert lookalike.exists()
    assert sweep_stale_temporaries(tmp_path) == []
