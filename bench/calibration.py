"""Are the fitter's 95 % intervals honest? Refit many demo plants and count how often they hold the truth.

    python -m bench.calibration [--seeds 12] [--batches 8]      (make calibration)

One plant says little: with eight correlated parameters, calibrated 95 % intervals hold all
eight at once only about 70 % of the time. So this generates `--seeds` plants (each with its
own noise), runs the pipeline's ingest and contextualization on each, fits the completed
batches as the pipeline does (fewer multistarts, no k-fold validation: neither changes the
intervals), and reports per parameter z = log(fit / true) / σ_log: its mean (bias), its
standard deviation (1 when the reported σ is right) and the share of plants whose interval
holds the truth. Results go to bench/calibration.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def one_plant(work: Path, seed: int, batches: int) -> list[dict]:
    from demo.plant import PlantSize, generate
    from lake.layout import Lake
    from models.cho_fedbatch import ChoFedBatch
    from models.data import load_batches
    from models.fit import Fitter
    from models.registry import completed_batches
    from pipelines.runner import materialize_all

    data = work / f"seed_{seed}"
    shutil.rmtree(data, ignore_errors=True)
    generate(data, PlantSize(batches=batches, seconds_per_sample=120.0, seed=seed))
    if not materialize_all(data, models=False).success:
        raise RuntimeError(f"pipeline failed on the plant of seed {seed}")
    lake = Lake(data / "lake")
    truth = json.loads((data / "truth.json").read_text())["parameters"]
    model = ChoFedBatch()
    t = time.perf_counter()
    fit = Fitter(model, n_starts=3, folds=1).fit(load_batches(lake, model, completed_batches(lake)))
    seconds = time.perf_counter() - t
    shutil.rmtree(data, ignore_errors=True)
    rows = []
    for name, sd in fit.sd_log.items():
        z = float(np.log(fit.params[name] / truth[name]) / sd)
        rows.append({"seed": seed, "name": name, "value": float(fit.params[name]), "true": float(truth[name]), "sd_log": float(sd),
                     "z": z, "inside": abs(z) <= 1.959964, "fit_s": seconds, "n_batches": len(fit.training_batches)})
    return rows


def summarize(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    table = df.groupby("name", sort=False).agg(mean_z=("z", "mean"), sd_z=("z", "std"), coverage=("inside", "mean"), plants=("seed", "nunique"))
    table.loc["all"] = [df["z"].mean(), df["z"].std(), df["inside"].mean(), df["seed"].nunique()]
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=int(os.environ.get("CALIBRATION_SEEDS", "12")))
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--seed-step", type=int, default=1, help="a plant of seed s draws from random streams s…s+3; a step ≥ 4 keeps plants' streams apart")
    ap.add_argument("--batches", type=int, default=8, help="batches per plant (two of them are still running)")
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "calibration")
    args = ap.parse_args()
    os.environ.pop("DAGSTER_HOME", None)  # ephemeral Dagster instances, never a developer's home
    rows: list[dict] = []
    for seed in range(args.first_seed, args.first_seed + args.seeds * args.seed_step, args.seed_step):
        t = time.perf_counter()
        plant = one_plant(args.work, seed, args.batches)
        rows += plant
        zs = " ".join(f"{r['name']} {r['z']:+.2f}" for r in plant)
        print(f"seed {seed}: {zs}  ({time.perf_counter() - t:.0f} s)", flush=True)
    table = summarize(rows)
    print("\n" + table.to_string(float_format=lambda x: f"{x:.2f}"))
    out = ROOT / "bench" / ("calibration.json" if args.batches == 8 else f"calibration_{args.batches}_batches.json")
    out.write_text(json.dumps({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "batches_per_plant": args.batches,
                               "summary": table.reset_index(names="name").to_dict("records"), "fits": rows}, indent=1) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
