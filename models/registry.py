"""The model registry: every fit is a version, with what it needs to be reproduced.

Tables (Parquet under `lake.models(<table>)`, one file per version, atomic writes; catalog
views of the same names): `model_versions`, `model_parameters`, `model_predictions` and
`forecasts` (written by `models.forecast`).

A new fit is recorded as a candidate and decided at once by the promotion rule: it becomes
champion when its leave-batches-out validation error is no worse than the champion's by more
than `tolerance` (relative) and no fitted parameter sits at a bound; otherwise it is
rejected. The reason is stored either way; a replaced champion becomes 'retired'. Status
changes rewrite that version's file (atomically), under a lock, so two fits finishing at
once cannot both become champion.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from filelock import FileLock

from lake import audit
from lake.layout import Lake, atomic_write_parquet, safe_name
from models.base import Model
from models.data import fingerprint, load_batches, training_frame
from models.fit import FitResult, FitSettings, Fitter
from schemas.tables import MODEL_MODELS

# model name -> import path "module:Class". A site adds its own model here (or passes an import
# path wherever a model name is accepted); nothing else changes.
MODELS = {"cho_fedbatch": "models.cho_fedbatch:ChoFedBatch"}
DEFAULT_TOLERANCE = 0.05


def load_model(name: str) -> Model:
    """A fresh instance of the model registered as `name`, or imported from 'module:Class'.

    KeyError for a name that is neither registered nor an import path.
    """
    path = MODELS.get(name, name)
    if ":" not in path:
        raise KeyError(
            f"unknown model {name!r}: known are {', '.join(MODELS)}, "
            "or give an import path 'module:Class'"
        )
    module, cls = path.split(":", 1)
    return getattr(importlib.import_module(module), cls)()


@dataclass(frozen=True)
class Decision:
    version: int
    status: str
    reason: str
    retired: int | None = None


def _file(lake: Lake, table: str, model: str, version: int, suffix: str = "") -> Path:
    return lake.models(table) / f"{safe_name(model)}-v{version:04d}{suffix}.parquet"


def _write(
    lake: Lake, table: str, df: pd.DataFrame, model: str, version: int, suffix: str = ""
) -> None:
    df = MODEL_MODELS[table].validate(df)
    atomic_write_parquet(
        _file(lake, table, model, version, suffix), pa.Table.from_pandas(df, preserve_index=False)
    )


def _read(lake: Lake, table: str, model: str | None = None) -> pd.DataFrame:
    folder = lake.models(table)
    pattern = f"{safe_name(model)}-v*.parquet" if model else "*.parquet"
    files = sorted(folder.glob(pattern)) if folder.exists() else []
    if not files:
        cols = list(MODEL_MODELS[table].to_schema().columns)
        return pd.DataFrame(columns=cols)
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


class Registry:
    def __init__(self, lake: Lake, tolerance: float = DEFAULT_TOLERANCE):
        self.lake = lake
        self.tolerance = float(tolerance)

    def _lock(self) -> FileLock:
        self.lake.models("").mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.lake.models("registry.lock")), timeout=600)

    # ---------------------------------------------------------------- reads

    def versions(self, model: str | None = None) -> pd.DataFrame:
        df = _read(self.lake, "model_versions", model)
        return df.sort_values(["model", "version"]).reset_index(drop=True) if len(df) else df

    def version(self, model: str, version: int) -> dict:
        v = self.versions(model)
        row = v[v["version"] == int(version)]
        if row.empty:
            raise KeyError(f"no version {version} of model {model!r} in the registry")
        return row.iloc[0].to_dict()

    def champion(self, model: str) -> dict | None:
        v = self.versions(model)
        v = v[v["status"] == "champion"]
        return None if v.empty else v.sort_values("version").iloc[-1].to_dict()

    def parameters(self, model: str, version: int) -> pd.DataFrame:
        f = _file(self.lake, "model_parameters", model, int(version))
        return pd.read_parquet(f) if f.exists() else _read(self.lake, "model_parameters").iloc[0:0]

    def predictions(self, model: str, version: int) -> pd.DataFrame:
        f = _file(self.lake, "model_predictions", model, int(version))
        return pd.read_parquet(f) if f.exists() else _read(self.lake, "model_predictions").iloc[0:0]

    # ---------------------------------------------------------------- writes

    def register(self, result: FitResult, code_version: str | None = None) -> Decision:
        """Record `result` as a new version and decide its promotion."""
        if code_version is None:
            from lake.ingest import code_version as _cv

            code_version = _cv()
        with self._lock():
            existing = self.versions(result.model)
            version = int(existing["version"].max()) + 1 if len(existing) else 1
            self._write_parameters(result, version)
            self._write_predictions(result, version)
            val = result.metrics.get("validation_rmse_weighted")
            row = {
                "model": result.model,
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
            status, reason, retire = self._decide(result, row, existing)
            row.update(status=status, reason=reason)
            self._write_version(row)
            events = [
                {
                    "action": "model_promoted" if status == "champion" else "model_rejected",
                    "object": f"{result.model} v{version}",
                    "old_value": "candidate",
                    "new_value": status,
                    "reason": reason,
                }
            ]
            if retire is not None:
                old = self.version(result.model, retire)
                old.update(
                    status="retired", reason=f"{old['reason']}; retired: version {version} promoted"
                )
                self._write_version(old)
                events.append(
                    {
                        "action": "model_retired",
                        "object": f"{result.model} v{retire}",
                        "old_value": "champion",
                        "new_value": "retired",
                        "reason": f"version {version} promoted",
                    }
                )
            # the version row changes status; the trail keeps what it was
            audit.record_many(self.lake, events)
        return Decision(version, status, reason, retire)

    def _decide(
        self, result: FitResult, row: dict, existing: pd.DataFrame
    ) -> tuple[str, str, int | None]:
        at_bounds = result.within_bounds()
        if at_bounds:
            return "rejected", f"fitted parameter(s) at a bound: {', '.join(at_bounds)}", None
        val = row["validation_error"]
        champ = existing[existing["status"] == "champion"] if len(existing) else existing
        if champ.empty:
            return "champion", "first version with every fitted parameter inside its bounds", None
        c = champ.sort_values("version").iloc[-1]
        cval = float(c["validation_error"]) if pd.notna(c["validation_error"]) else None
        if not np.isfinite(val):
            return (
                "rejected",
                "no validation error (fewer than 2 training batches); the champion stays",
                None,
            )
        if cval is None:
            return (
                "champion",
                f"validation error {val:.4g}; champion v{int(c['version'])} had none",
                int(c["version"]),
            )
        limit = cval * (1.0 + self.tolerance)
        versus = f"champion v{int(c['version'])} {cval:.4g} x (1 + {self.tolerance:g})"
        if val <= limit:
            return (
                "champion",
                f"validation error {val:.4g} <= {versus}; parameters inside bounds",
                int(c["version"]),
            )
        return "rejected", f"validation error {val:.4g} > {versus}", None

    def _write_version(self, row: dict) -> None:
        df = pd.DataFrame([row])
        df["fitted_at"] = pd.to_datetime(df["fitted_at"], utc=True).astype("datetime64[us, UTC]")
        df["version"] = df["version"].astype("int64")
        df["seed"] = df["seed"].astype("int64")
        _write(self.lake, "model_versions", df, row["model"], int(row["version"]))

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
                ident.append("yes" if probe.loc[r.name, "identifiable"] else "no")
            else:
                sd_log.append(np.nan)
                max_corr.append(np.nan)
                ident.append("not checked")
        df = pd.DataFrame(
            {
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
        _write(self.lake, "model_parameters", df, result.model, version)

    def _write_predictions(self, result: FitResult, version: int) -> None:
        p = result.predictions
        df = pd.DataFrame(
            {
                "model": result.model,
                "version": version,
                "batch_id": p["batch_id"],
                "analyte": p["analyte"],
                "t_batch_h": p["t_batch_h"].astype(float),
                "predicted": p["predicted"].astype(float),
                "observed": p["observed"].astype(float),
            }
        )
        _write(self.lake, "model_predictions", df, result.model, version)

    def write_forecast(
        self, df: pd.DataFrame, model: str, version: int, batch_id: str, as_of: pd.Timestamp
    ) -> bool:
        """Record a forecast; False (and the record untouched) when the same version already
        forecast the same batch from the same data to the same numbers: a rerun changes nothing."""
        suffix = f"-{safe_name(batch_id)}-{pd.Timestamp(as_of):%Y%m%dT%H%M%S}"
        path = _file(self.lake, "forecasts", model, int(version), suffix)
        df = MODEL_MODELS["forecasts"].validate(df).reset_index(drop=True)
        if path.exists() and pd.read_parquet(path).drop(columns="created_at").equals(
            df.drop(columns="created_at")
        ):
            return False
        _write(self.lake, "forecasts", df, model, int(version), suffix)
        return True

    # ---------------------------------------------------------------- reproduce

    def settings_of(self, model: str, version: int) -> FitSettings:
        return FitSettings.from_json(json.loads(self.version(model, version)["settings"]))

    def refit(self, model: str, version: int, check_data: bool = True) -> FitResult:
        """Refit a recorded version: same training batches, settings and seed.

        With `check_data` the training data read now must have the recorded fingerprint
        (a batch amended since would otherwise silently change the answer).
        """
        rec = self.version(model, version)
        m = load_model(model)
        batches = load_batches(self.lake, m, json.loads(rec["training_batches"]))
        if check_data:
            fp = fingerprint(training_frame(batches))
            if fp != rec["data_fingerprint"]:
                raise ValueError(
                    f"training data of {model} v{version} changed since the fit "
                    f"(fingerprint {fp[:12]} != {rec['data_fingerprint'][:12]})"
                )
        return Fitter.from_settings(m, self.settings_of(model, version)).fit(batches)


def completed_batches(lake: Lake, product: str | None = None) -> list[str]:
    """Completed batches with samples, in batch order (the default training set)."""
    from lake.query import query

    where = " AND b.product = ?" if product else ""
    df = query(
        lake,
        f"""SELECT b.batch_id FROM batches b WHERE b.status = 'complete'{where}
              AND EXISTS (SELECT 1 FROM samples s WHERE s.batch_id = b.batch_id)
            ORDER BY b.batch_id""",
        [product] if product else [],
    )
    return df["batch_id"].tolist()


def fit_and_register(
    lake: Lake,
    model: str = "cho_fedbatch",
    batches: Sequence[str] | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    force: bool = False,
    **fitter_kwargs,
) -> tuple[FitResult | None, Decision]:
    """Fit `model` on `batches` (default: every completed batch) and record the version.

    A fit whose data and settings equal a recorded version's would reproduce it, so unless
    `force` it is not repeated: the result is None and the decision names that version
    (running the pipeline twice changes nothing).
    """
    m = load_model(model)
    ids = list(batches) if batches is not None else completed_batches(lake)
    if not ids:
        raise ValueError("no completed batches with samples to fit")
    data = load_batches(lake, m, ids)
    fitter = Fitter(m, **fitter_kwargs)
    reg = Registry(lake, tolerance)
    if not force:
        fp = fingerprint(training_frame(data))
        settings = json.dumps(fitter.settings.to_json(), sort_keys=True)
        v = reg.versions(m.name)
        same = v[(v["data_fingerprint"] == fp) & (v["settings"] == settings)] if len(v) else v
        if len(same):
            r = same.sort_values("version").iloc[-1]
            return None, Decision(
                int(r["version"]),
                str(r["status"]),
                f"unchanged: same data and settings as version {int(r['version'])}",
            )
    result = fitter.fit(data)
    return result, reg.register(result)


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
