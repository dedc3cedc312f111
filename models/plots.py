"""Pictures of a fit and of forecasts (PNG, matplotlib's Agg backend: no display needed).

Written under `lake.models("plots")`, named by model, version and batch, and returned as
paths so that Dagster can attach them to the asset's metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: Dagster steps and CI have no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lake.layout import Lake, safe_name  # noqa: E402
from models.base import simulate_many  # noqa: E402
from models.data import BatchData  # noqa: E402
from models.fit import FitResult  # noqa: E402
from models.forecast import Forecast  # noqa: E402


def _axes(n: int):
    cols = 4
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.5 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}")
    fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


def fit_plots(
    lake: Lake, result: FitResult, version: int, batches: Sequence[BatchData]
) -> list[Path]:
    """One PNG per training batch: observations and the fitted model for every observable,
    titled by its lab analyte and unit."""
    spec = result.settings.spec()
    model = spec.model
    out = []
    for b in batches:
        y0 = np.array(
            [
                result.initial.get(b.batch_id, {}).get(n, v)
                for n, v in zip(model.state_names(), b.y0, strict=True)
            ]
        )
        t_end = b.last_data_h
        grid = np.linspace(0.0, t_end - b.t0_h, 200)
        y = simulate_many(model, result.params, y0, b.model_inputs(), grid, result.settings.solver)
        obs = model.observe(y)
        observables = [o for o in model.observables if o.name in obs]
        fig, axes = _axes(len(observables))
        for ax, o in zip(axes, observables, strict=True):
            s = b.samples[b.samples["analyte"] == o.name]
            ax.plot(s["t_batch_h"], s["value"], "o", ms=3, color="black", label="observed")
            ax.plot(grid + b.t0_h, np.asarray(obs[o.name])[0], "-", color="tab:blue", label="fit")
            ax.set_title(f"{spec.analyte(o.name)} [{o.uom}]", fontsize=9)
            ax.set_xlabel("h", fontsize=7)
            ax.tick_params(labelsize=7)
        axes[0].legend(fontsize=7)
        fig.suptitle(
            f"{result.product} {result.model} v{version}: {b.batch_id} "
            f"(h since {spec.clock or 'inoculation'})",
            fontsize=10,
        )
        fig.tight_layout()
        name = (
            f"{safe_name(result.product)}-{safe_name(result.model)}-v{version:04d}"
            f"-fit-{safe_name(b.batch_id)}.png"
        )
        out.append(_save(fig, lake.models("plots") / name))
    return out


def forecast_plot(lake: Lake, fc: Forecast) -> Path:
    """The forecast fan (p10–p90 band and median) of one running batch, with its observations;
    every panel titled with its analyte and unit."""
    analytes = list(dict.fromkeys(fc.bands["analyte"]))
    fig, axes = _axes(len(analytes))
    for ax, a in zip(axes, analytes, strict=True):
        b = fc.bands[(fc.bands["analyte"] == a) & (fc.bands["kind"] == "trajectory")]
        b = b.sort_values("t_batch_h")
        ax.fill_between(
            b["t_batch_h"], b["p10"], b["p90"], color="tab:orange", alpha=0.3, label="p10–p90"
        )
        ax.plot(b["t_batch_h"], b["p50"], "-", color="tab:orange", label="p50")
        s = fc.samples[fc.samples["analyte"] == a]
        ax.plot(s["t_batch_h"], s["value"], "o", ms=3, color="black", label="observed")
        ax.axvline(fc.now_h, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{a} [{fc.units.get(a, '')}]", fontsize=9)
        ax.set_xlabel("h", fontsize=7)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle(
        f"{fc.batch_id}: forecast by {fc.model} v{fc.version} as of {fc.as_of:%Y-%m-%d %H:%M} UTC",
        fontsize=10,
    )
    fig.tight_layout()
    name = (
        f"{safe_name(fc.product)}-{safe_name(fc.model)}-v{fc.version:04d}"
        f"-forecast-{safe_name(fc.batch_id)}.png"
    )
    return _save(fig, lake.models("plots") / name)
