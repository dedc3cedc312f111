"""Nothing is lost under crashes and concurrency.

- Crash safety: the pipeline process is SIGKILLed at random moments (ingest, contextualization,
  catalog rebuild); afterwards every Parquet file in the lake is complete, the catalog (when
  present) opens with every view readable, and a rerun ends with the same rows as an
  uninterrupted run.
- Concurrency: two pipeline runs at once (two CLI processes, and two Dagster jobs on the
  multiprocess executor) never hit a DuckDB lock error and leave the same lake.
"""

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from demo.plant import PlantSize, generate
from lake.layout import PARTIAL

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TRIALS = int(os.environ.get("BATCHTWIN_CRASH_TRIALS", "6"))  # more: BATCHTWIN_CRASH_TRIALS=20
# logs record interrupted attempts too, and every fit is a new model version: by design these grow
GROWING = (
    "ingest_log",
    "audit_log",
    "model_versions",
    "model_parameters",
    "model_predictions",
    "forecasts",
)
# the data stages (ingest, catalog, gold); model fits are new versions by design and add
# minutes here
RUN = (
    "import sys; from pipelines.runner import materialize_all; "
    "sys.exit(0 if materialize_all(sys.argv[1], models=False).success else 1)"
)


@pytest.fixture(scope="module")
def tiny_plant(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    generate(root, PlantSize(batches=4, seconds_per_sample=300.0))
    return root


def _fresh(plant: Path, dest: Path) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(plant / "landing", dest / "landing")
    shutil.copytree(plant / "sql", dest / "sql")
    return dest


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHTWIN_", "DAGSTER_HOME"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def _start(data: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", RUN, str(data)],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]


def _counts(data: Path) -> dict[str, int]:
    with duckdb.connect(str(data / "lake" / "catalog.duckdb"), read_only=True) as con:
        views = [
            r[0]
            for r in con.execute(
                "select view_name from duckdb_views() where not internal"
            ).fetchall()
        ]
        return {
            v: con.execute(f'select count(*) from "{v}"').fetchall()[0][0]
            for v in views
            if v not in GROWING
        }


def _assert_consistent(lake: Path) -> None:
    for f in lake.rglob("*.parquet"):
        if any(part.endswith(PARTIAL) for part in f.relative_to(lake).parts):
            continue  # a killed writer's temporary folder: no view reads inside it
        pq.read_metadata(f)  # a half-written file would fail here (and would be visible to a view)
    catalog = lake / "catalog.duckdb"
    if catalog.exists():
        with duckdb.connect(str(catalog), read_only=True) as con:
            for (view,) in con.execute(
                "select view_name from duckdb_views() where not internal"
            ).fetchall():
                con.execute(f'select count(*) from "{view}"').fetchall()


def test_sigkill_at_random_moments_loses_nothing(tiny_plant, tmp_path):
    base = _fresh(tiny_plant, tmp_path / "baseline")
    t = time.perf_counter()
    _finish(_start(base))
    duration = time.perf_counter() - t
    expected = _counts(base)
    assert expected["batches"] == 4 and expected["process_values"] > 0

    rng = random.Random(20261127)
    delays = []
    for trial in range(TRIALS):
        data = _fresh(tiny_plant, tmp_path / "trial")
        proc = _start(data)
        delay = rng.uniform(0.2, duration)
        delays.append(round(delay, 2))
        time.sleep(delay)
        proc.kill()
        proc.wait()
        _assert_consistent(data / "lake")
        _finish(_start(data))
        assert _counts(data) == expected, f"trial {trial}: killed after {delay:.2f} s"
    print(
        f"{TRIALS} SIGKILL trials, delays (s) {sorted(delays)} "
        f"of an uninterrupted {duration:.1f} s run"
    )


def test_two_cli_runs_at_once_leave_the_same_lake(tiny_plant, tmp_path):
    base = _fresh(tiny_plant, tmp_path / "baseline")
    _finish(_start(base))
    data = _fresh(tiny_plant, tmp_path / "both")
    cli = [str(Path(sys.executable).parent / "batchtwin"), "run", "--data-dir", str(data)]
    a = subprocess.Popen(cli, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    b = subprocess.Popen(cli, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for p in (a, b):
        out, err = p.communicate(timeout=600)
        text = (out + err).decode()
        assert p.returncode == 0, text[-2000:]
        assert "lock" not in text.lower(), text[-2000:]
    _assert_consistent(data / "lake")
    assert _counts(data) == _counts(base)


def test_two_dagster_jobs_on_the_multiprocess_executor(tiny_plant, tmp_path):
    data = _fresh(tiny_plant, tmp_path / "mp")
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {
        **_env(),
        "DAGSTER_HOME": str(home),
        "BATCHTWIN_LAKE": str(data / "lake"),
        "BATCHTWIN_LANDING": str(data / "landing"),
    }
    # the instance's own SQLite storage is created once, as `make ui` does; two processes
    # creating it at the same moment race inside Dagster's schema migration (not in batchtwin)
    subprocess.run(
        [sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get()"],
        env=env,
        check=True,
    )
    cmd = [
        str(Path(sys.executable).parent / "dagster"),
        "job",
        "execute",
        "-m",
        "pipelines.definitions",
        "-j",
        "ingest_everything",
    ]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for p in procs:
        out, err = p.communicate(timeout=600)
        text = (out + err).decode()
        assert p.returncode == 0, text[-3000:]
        assert "Could not set lock" not in text and "RUN_FAILURE" not in text, text[-3000:]
        assert "multiprocess" in text.lower()
    _assert_consistent(data / "lake")
    with duckdb.connect(str(data / "lake" / "catalog.duckdb"), read_only=True) as con:
        assert con.execute("select count(*) from batches").fetchall()[0][0] == 4
        assert (
            con.execute(
                "select count(*) from "
                "(select tag, ts from historian_points group by all having count(*) > 1)"
            ).fetchall()[0][0]
            == 0
        )
