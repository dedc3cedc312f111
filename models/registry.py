"""The model registry: every fit is a version, with what it needs to be reproduced.

Tables (Parquet under `lake.models(<table>)`, one file per version, atomic writes; catalog
views of the same names): `model_versions`, `model_parameters`, `model_predictions` and
`forecasts` (written by `models.forecast`). Versions are numbered per product and model.

A new fit is recorded as a candidate and decided at once by the promotion rule, against the
product's champion (of any model; one champion per product): it becomes champion when its
leave-batches-out validation error is no worse than the champion's by more than `tolerance`
(relative) and no fitted parameter sits at a bound. Between two models whose validation
errors tie within the tolerance, the lower AIC of the training fit decides. The reason is
stored either way; a replaced champion becomes 'retired'. Status changes rewrite that
version's file (atomically), under a lock, so two fits finishing at once cannot both become
champion.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from filelock import FileLock

from lake import audit
from lake.layout import Lake, atomic_write_parquet, safe_name
from models.catalog import ModelSpec
from models.data import fingerprint, load_batches, load_usable, training_frame
from models.fit import FitResult, FitSettings, Fitter
from schemas.tables import MODEL_MODELS

DEFAULT_TOLERANCE = 0.05


@dataclass(frozen=True)
class Decision:
    version: int
    status: str
    reason: str
    retired: tuple[str, int] | None = None  # (model, version) of the replaced champion


def _file(lake: Lake, table: str, product: str, model: str, version: int, suffix: str = "") -> Path:
    name = f"{safe_name(product)}__{safe_name(model)}-v{version:04d}{suffix}.parquet"
    return lake.models(table) / name


def _write(
    lake: Lake,
    table: str,
    df: pd.DataFrame,
    product: str,
    model: str,
    version: int,
    suffix: str = "",
) -> None:
    df = MODEL_MODELS[table].validate(df)
    atomic_write_parquet(
        _file(lake, table, product, model, version, suffix),
        pa.Table.from_pandas(df, preserve_index=False),
    )


def _read(lake: Lake, table: str) -> pd.DataFrame:
    folder = lake.models(table)
    files = sorted(folder.glob("*__*-v*.parquet")) if folder.exists() else []
    if not files:
        cols = list(MODEL_MODELS[table].to_schema().columns)
        return pd.DataFrame(columns=cols)
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def aic(metrics: dict) -> float:
    """Akaike's criterion of a weighted least-squares fit: n ln(RSS / n) + 2 k."""
    n, k = int(metrics.get("n_obs", 0)), int(metrics.get("n_parameters", 0))
    rss = 2.0 * float(metrics.get("cost", np.nan))
    return n * np.log(rss / n) + 2 * k if n > 0 and rss > 0 else np.nan


class Registry:
    def __init__(self, lake: Lake, tolerance: float = DEFAULT_TOLERANCE):
        self.lake = lake
        self.tolerance = float(tolerance)

    def _lock(self) -> FileLock:
        self.lake.models("").mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.lake.models("registry.lock")), timeout=600)

    # ---------------------------------------------------------------- reads

    def versions(self, product: str | None = None, model: str | None = None) -> pd.DataFrame:
        df = _read(self.lake, "model_versions")
        if product is not None:
            df = df[df["product"] == product]
        if model is not None:
            df = df[df["model"] == model]
        return (
            df.sort_values(["product", "model", "version"]).reset_index(drop=True)
            if len(df)
            else df
        )

    def version(self, product: str, model: str, version: int) -> dict:
        v = self.versions(product, model)
        row = v[v["version"] == int(version)]
        if row.empty:
            raise KeyError(f"no version {version} of {model!r} for {product!r} in the registry")
        return row.iloc[0].to_dict()

    def champion(self, product: str) -> dict | None:
        """The product's champion (of whichever model), None before the first promotion."""
        v = self.versions(product)
        v = v[v["status"] == "champion"]
        return None if v.empty else v.sort_values("fitted_at").iloc[-1].to_dict()

    def parameters(self, product: str, model: str, version: int) -> pd.DataFrame:
        f = _file(self.lake, "model_parameters", product, model, int(version))
        return pd.read_parquet(f) if f.exists() else _read(self.lake, "model_parameters").iloc[0:0]

    def predictions(self, product: str, model: str, version: int) -> pd.DataFrame:
        f = _file(self.lake, "model_predictions", product, model, int(version))
        return pd.read_parquet(f) if f.exists() else _read(self.lake, "model_predictions").iloc[0:0]

    # ---------------------------------------------------------------- writes

    def register(self, result: FitResult, code_version: str | None = None) -> Decision:
        """Record `result` as a new version and decide its promotion against the product's
        champion."""
        if code_version is None:
            from lake.ingest import code_version as _cv

            code_version = _cv()
        product, model = result.product, result.model
        with self._lock():
            existing = self.versions(product, model)
            version = int(existing["version"].max()) + 1 if len(existing) else 1
            self._write_parameters(result, version)
            self._write_predictions(result, version)
            val = result.metrics.get("validation_rmse_weighted")
            row = {
                "product": product,
                "model": model,
                "version": version,
                "status": "candidate",
                "fitted_at": pd.Timestamp.now(tz="UTC"),
                "training_batches": json.dumps(list(result.training_batches)),
                "data_fingerprint": result.data_fingerprint,
                "code_version": code_version,
                "solver": json.dumps(result.settings.to_json()["solver"]),
                "seed": result.settings.seed,
                "settings": json.dumps(result.settings.to_json(), sort_keys=True),
                "metrics": json.dumps(_jsonable(result.metrics), sort_keys=True),
                "validation_error": float(val) if val is not None else np.nan,
                "reason": "recorded",
                "fit_seconds": float(result.seconds),
            }
            status, reason, retire = self._decide(result, row, self.champion(product))
            row.update(status=status, reason=reason)
            self._write_version(row)
            events = [
                {
                    "action": "model_promoted" if status == "champion" else "model_rejected",
                    "object": f"{product} {model} v{version}",
                    "old_value": "candidate",
                    "new_value": status,
                    "reason": reason,
                }
            ]
            if retire is not None:
                old = self.version(product, *retire)
                promoted = f"{model} v{version} promoted"
                old.update(status="retired", reason=f"{old['reason']}; retired: {promoted}")
                self._write_version(old)
                events.append(
                    {
                        "action": "model_retired",
                        "object": f"{product} {retire[0]} v{retire[1]}",
                        "old_value": "champion",
                        "new_value": "retired",
                        "reason": promoted,
                    }
                )
            # the version row changes status; the trail keeps what it was
            audit.record_many(self.lake, events)
        return Decision(version, status, reason, retire)

    def _decide(
        self, result: FitResult, row: dict, champ: dict | None
    ) -> tuple[str, str, tuple[str, int] | None]:
        at_bounds = result.within_bounds()
        if at_bounds:
            return "rejected", f"fitted parameter(s) at a bound: {', '.join(at_bounds)}", None
        if champ is None:
            return "champion", "first version with every fitted parameter inside its bounds", None
        val = row["validation_error"]
        old = (str(champ["model"]), int(champ["version"]))
        name = f"{old[0]} v{old[1]}"
        cval = float(champ["validation_error"]) if pd.notna(champ["validation_error"]) else None
        if not np.isfinite(val):
            return (
                "rejected",
                f"no validation error (fewer than 2 training batches); champion {name} stays",
                None,
            )
        if cval is None:
            return "champion", f"validation error {val:.4g}; champion {name} had none", old
        limit = cval * (1.0 + self.tolerance)
        versus = f"champion {name} {cval:.4g} x (1 + {self.tolerance:g})"
        if val > limit:
            return "rejected", f"validation error {val:.4g} > {versus}", None
        if old[0] != result.model and val >= cval * (1.0 - self.tolerance):
            # two models tie on held-out batches: the information criterion decides
            new_aic, old_aic = aic(result.metrics), aic(json.loads(champ["metrics"]))
            tie = f"validation error {val:.4g} ties with {name} {cval:.4g} (± {self.tolerance:g})"
            if not new_aic < old_aic:
                return "rejected", f"{tie}; AIC {new_aic:.1f} >= {old_aic:.1f}", None
            return "champion", f"{tie}; AIC {new_aic:.1f} < {old_aic:.1f}", old
        return "champion", f"validation error {val:.4g} <= {versus}; parameters inside bounds", old

    def _write_version(self, row: dict) -> None:
        df = pd.DataFrame([row])
        df["fitted_at"] = pd.to_datetime(df["fitted_at"], utc=True).astype("datetime64[us, UTC]")
        df["version"] = df["version"].astype("int64")
        df["seed"] = df["seed"].astype("int64")
        _write(self.lake, "model_versions", df, row["product"], row["model"], int(row["version"]))

    def _write_parameters(self, result: FitResult, version: int) -> None:
        t = result.table()
        probe = result.probe.set_index("name") if len(result.probe) else None
        sd_log, max_corr, ident = [], [], []
        for r in t.itertuples():
            if not r.fixed:
                others = result.corr.loc[r.name].drop(r.name).abs()
                sd_log.append(result.sd_log[r.name])
                max_corr.append(float(others.max()) if len(others) else 0.0)
                ident.append("yes" if result.identifiable[r.name] else "no")
            elif probe is not None and r.name in probe.index:
                sd_log.append(float(probe.loc[r.name, "sd_log"]))
                max_corr.append(float(probe.loc[r.name, "max_abs_corr"]))
                freed = "identifiable" if probe.loc[r.name, "identifiable"] else "not identifiable"
                ident.append(f"fixed; {freed} if freed")
            else:
                sd_log.append(np.nan)
                max_corr.append(np.nan)
                ident.append("fixed")
        df = pd.DataFrame(
            {
                "product": result.product,
                "model": result.model,
                "version": version,
                "name": t["name"],
                "value": t["value"].astype(float),
                "stderr": t["stderr"].astype(float),
                "ci_low": t["ci_low"].astype(float),
                "ci_high": t["ci_high"].astype(float),
                "fixed": t["fixed"].astype(bool),
                "uom": t["uom"],
                "identifiable": ident,
                "sd_log": sd_log,
                "max_abs_corr": max_corr,
                "bound_low": [float(result.bounds[n][0]) for n in t["name"]],
                "bound_high": [float(result.bounds[n][1]) for n in t["name"]],
            }
        )
        rises = result.profile.set_index("name")
        for col, rise in (("profile_rise_low", "rise_low"), ("profile_rise_high", "rise_high")):
            df[col] = df["name"].map(rises[rise]).astype(float)
        _write(self.lake, "model_parameters", df, result.product, result.model, version)

    def _write_predictions(self, result: FitResult, version: int) -> None:
        p = result.predictions
        analyte_of = {o: m.analyte for o, m in result.settings.spec().observables.items()}
        df = pd.DataFrame(
            {
                "product": result.product,
                "model": result.model,
                "version": version,
                "batch_id": p["batch_id"],
                "analyte": p["analyte"].map(analyte_of),
                "t_batch_h": p["t_batch_h"].astype(float),
                "predicted": p["predicted"].astype(float),
                "observed": p["observed"].astype(float),
            }
        )
        _write(self.lake, "model_predictions", df, result.product, result.model, version)

    def write_forecast(
        self,
        df: pd.DataFrame,
        product: str,
        model: str,
        version: int,
        batch_id: str,
        as_of: pd.Timestamp,
    ) -> bool:
        """Record a forecast; False (and the record untouched) when the same version already
        forecast the same batch from the same data to the same numbers: a rerun changes nothing."""
        suffix = f"-{safe_name(batch_id)}-{pd.Timestamp(as_of):%Y%m%dT%H%M%S}"
        path = _file(self.lake, "forecasts", product, model, int(version), suffix)
        df = MODEL_MODELS["forecasts"].validate(df).reset_index(drop=True)
        if path.exists() and pd.read_parquet(path).drop(columns="created_at").equals(
            df.drop(columns="created_at")
        ):
            return False
        _write(self.lake, "forecasts", df, product, model, int(version), suffix)
        return True

    # ---------------------------------------------------------------- reproduce

    def settings_of(self, product: str, model: str, version: int) -> FitSettings:
        return FitSettings.from_json(json.loads(self.version(product, model, version)["settings"]))

    def refit(self, product: str, model: str, version: int, check_data: bool = True) -> FitResult:
        """Refit a recorded version: same catalog entry, training batches, settings and seed.

        With `check_data` the training data read now must have the recorded fingerprint
        (a batch amended since would otherwise silently change the answer).
        """
        rec = self.version(product, model, version)
        settings = self.settings_of(product, model, version)
        batches = load_batches(self.lake, settings.spec(), json.loads(rec["training_batches"]))
        if check_data:
            fp = fingerprint(training_frame(batches))
            if fp != rec["data_fingerprint"]:
                raise ValueError(
                    f"training data of {product} {model} v{version} changed since the fit "
                    f"(fingerprint {fp[:12]} != {rec['data_fingerprint'][:12]})"
                )
        return Fitter.from_settings(settings).fit(batches).result_


def completed_batches(lake: Lake, product: str) -> list[str]:
    """Completed batches of `product` with samples, in batch order (the default training set)."""
    from lake.query import query

    df = query(
        lake,
        """SELECT b.batch_id FROM batches b WHERE b.status = 'complete' AND b.product = ?
              AND EXISTS (SELECT 1 FROM samples s WHERE s.batch_id = b.batch_id)
            ORDER BY b.batch_id""",
        [product],
    )
    return df["batch_id"].tolist()


def fit_and_register(
    lake: Lake,
    spec: ModelSpec,
    batches: Sequence[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
    **fitter_kwargs,
) -> tuple[FitResult | None, Decision]:
    """Fit the catalog entry `spec` on `batches` (default: every completed batch of its
    product) and record the version.

    A fit whose data and settings equal a recorded version's would reproduce it, so unless
    `force` it is not repeated: the result is None and the decision names that version
    (running the pipeline twice changes nothing).
    """
    ids = list(batches) if batches is not None else completed_batches(lake, spec.product)
    if not ids:
        raise ValueError(f"no completed batches of {spec.product} with samples to fit")
    data, skipped = load_usable(lake, spec, ids)
    if not data:
        raise ValueError("; ".join(f"{b}: {why}" for b, why in skipped.items()))
    fitter = Fitter(spec, **fitter_kwargs)
    reg = Registry(lake, tolerance)
    if not force:
        fp = fingerprint(training_frame(data))
        settings = json.dumps(fitter.settings.to_json(), sort_keys=True)
        v = reg.versions(spec.product, spec.name)
        same = v[(v["data_fingerprint"] == fp) & (v["settings"] == settings)] if len(v) else v
        if len(same):
            r = same.sort_values("version").iloc[-1]
            return None, Decision(
                int(r["version"]),
                str(r["status"]),
                f"unchanged: same data and settings as version {int(r['version'])}",
            )
    result = fitter.fit(data).result_
    result.metrics["skipped_batches"] = skipped  # recorded with the version
    decision = reg.register(result)
    if skipped:
        why = "; ".join(f"{b}: {w}" for b, w in skipped.items())
        decision = replace(decision, reason=f"{decision.reason} (not fitted: {why})")
    return result, decision


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
