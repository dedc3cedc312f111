"""Are the fitter's 95 % intervals honest? Refit many plants, count how often they hold the truth.

    python -m bench.calibration [--site cho|penicillin] [--seeds 12] [--batches 8] [--jobs 2]
                                                                          (make calibration)

Each demo site fits its own catalog model (cho: cho_fedbatch, penicillin: monod_fedbatch).
One plant says little: with eight correlated parameters, calibrated 95 % intervals hold all
eight at once only about 70 % of the time. So this generates `--seeds` plants (each with its
own noise), runs the pipeline's ingest and contextualization on each, fits the completed
batches as the pipeline does (fewer multistarts, no k-fold validation: neither changes the
intervals), and reports per parameter z = log(fit / true) / σ_log: its mean (bias), its
standard deviation (1 when the reported σ is right) and the share of plants whose interval
holds the truth; and per plant the joint distance D² = eᵀ C⁻¹ e of the log errors e with the
reported covariance C (χ² with 8 degrees of freedom when C is right): the share of plants
inside the joint 95 % region and the p-value of the summed D². Plants run `--jobs` at a time.
Results go to bench/calibration.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import chi2

ROOT = Path(__file__).resolve().parent.parent


def _generate(site: str, data: Path, batches: int, seed: int) -> dict[str, float]:
    """Write a demo plant of `site`; its true kinetic parameters."""
    if site == "cho":
        from demo.plant import PlantSize, generate

        truth = generate(data, PlantSize(batches=batches, seconds_per_sample=120.0, seed=seed))
        return dict(truth["parameters"])
    from demo.penicillin import PenicillinSize
    from demo.penicillin import generate as generate_penicillin

    truth = generate_penicillin(
        data, PenicillinSize(batches=batches, seconds_per_sample=600.0, seed=seed)
    )
    return {k: v["value"] for k, v in truth["true_parameters"].items()}


def one_plant(site: str, work: Path, seed: int, batches: int, workers: int) -> list[dict]:
    from lake.layout import Lake
    from models.catalog import parse
    from models.data import load_batches
    from models.fit import Fitter
    from models.registry import completed_batches
    from pipelines.runner import materialize_all
    from sources.site import load_site

    data = work / f"{site}_seed_{seed}"
    shutil.rmtree(data, ignore_errors=True)
    truth = _generate(site, data, batches, seed)
    if not materialize_all(data, models=False).success:
        raise RuntimeError(f"pipeline failed on the plant of seed {seed}")
    lake = Lake(data / "lake")
    ((product, entries),) = load_site(data / "landing").models.items()
    spec = parse(product, entries[0])
    t = time.perf_counter()
    fitter = Fitter(spec, n_starts=3, folds=1, workers=workers)
    fit = fitter.fit(load_batches(lake, spec, completed_batches(lake, product))).result_
    seconds = time.perf_counter() - t
    shutil.rmtree(data, ignore_errors=True)
    err = np.log([fit.params[n] / truth[n] for n in fit.fitted])
    d2 = float(err @ np.linalg.solve(fit.cov_log, err))
    rows = []
    for name, sd in fit.sd_log.items():
        z = float(np.log(fit.params[name] / truth[name]) / sd)
        rows.append(
            {
                "seed": seed,
                "name": name,
                "value": float(fit.params[name]),
                "true": float(truth[name]),
                "sd_log": float(sd),
                "z": z,
                "inside": abs(z) <= 1.959964,
                "fit_s": seconds,
                "n_batches": len(fit.training_batches),
                "d2": d2,
            }
        )
    return rows


def summarize(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    table = df.groupby("name", sort=False).agg(
        mean_z=("z", "mean"),
        sd_z=("z", "std"),
        coverage=("inside", "mean"),
        plants=("seed", "nunique"),
    )
    table.loc["all"] = [df["z"].mean(), df["z"].std(), df["inside"].mean(), df["seed"].nunique()]
    return table


def joint(rows: list[dict]) -> dict:
    """The joint test over plants: D² per plant is χ²(k) when the reported covariance is right."""
    per_plant = pd.DataFrame(rows).groupby("seed").agg(d2=("d2", "first"), k=("name", "size"))
    total, dof = float(per_plant["d2"].sum()), int(per_plant["k"].sum())
    return {
        "plants": len(per_plant),
        "mean_d2": float(per_plant["d2"].mean()),
        "expected_mean_d2": float(per_plant["k"].mean()),
        "inside_joint_95": float((per_plant["d2"] <= chi2.ppf(0.95, per_plant["k"])).mean()),
        "summed_d2": total,
        "summed_dof": dof,
        "summed_d2_p": float(chi2.sf(total, dof)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", choices=("cho", "penicillin"), default="cho")
    ap.add_argument("--seeds", type=int, default=int(os.environ.get("CALIBRATION_SEEDS", "12")))
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument(
        "--batches", type=int, default=8, help="batches per plant (two of them are still running)"
    )
    ap.add_argument(
        "--jobs", type=int, default=1, help="plants fitted at once (each then fits in one process)"
    )
    ap.add_argument("--work", type=Path, default=ROOT / "bench" / "work" / "calibration")
    args = ap.parse_args()
    os.environ.pop("DAGSTER_HOME", None)  # ephemeral Dagster instances, never a developer's home
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    workers = 2 if args.jobs == 1 else 1
    tasks = [(args.site, args.work, seed, args.batches, workers) for seed in seeds]
    rows: list[dict] = []
    started = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) if args.jobs > 1 else nullcontext() as pool:
        plants = (pool.map if pool else map)(one_plant, *zip(*tasks, strict=True))
        for seed, plant in zip(seeds, plants, strict=True):
            rows += plant
            zs = " ".join(f"{r['name']} {r['z']:+.2f}" for r in plant)
            elapsed = time.perf_counter() - started
            print(f"seed {seed}: {zs}  D² {plant[0]['d2']:.1f}  ({elapsed:.0f} s)", flush=True)
    table = summarize(rows)
    joint_test = joint(rows)
    print("\n" + table.to_string(float_format=lambda x: f"{x:.2f}"))
    print(
        "joint: "
        + ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in joint_test.items()
        )
    )
    name = "calibration" + ("" if args.site == "cho" else f"_{args.site}")
    name += "" if args.batches == 8 else f"_{args.batches}_batches"
    out = ROOT / "bench" / f"{name}.json"
    out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "site": args.site,
                "batches_per_plant": args.batches,
                "summary": table.reset_index(names="name").to_dict("records"),
                "joint": joint_test,
                "fits": rows,
            },
            indent=1,
        )
        + "\n"
    )
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
