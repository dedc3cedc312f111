"""Run the whole asset graph in process (what `batchtwin run` and `batchtwin demo` do).

Five runs, as the daemon would do them: ingest; the catalog; the gold tables of every batch
(registered as partitions, computed in one run); the golden profiles; then the model refit (a
new registry version when the completed batches changed) and the forecasts. A failing
source fails its own ingest asset only: the catalog is built from what the others ingested
and curation goes on; the run as a whole then reports the failure (and `batchtwin run` exits 1).
"""

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from lake import audit
from pipelines.contextualize_assets import (
    BATCH_PARTITIONS,
    batch_gold,
    batches_sensor,
    golden_profiles,
)
from pipelines.curate_assets import lake_catalog
from pipelines.ingest_assets import INGEST_ASSETS
from pipelines.model_assets import MODEL_ASSETS, MODEL_CHECKS
from pipelines.resources import resources_from_env


@dataclass
class PipelineRun:
    results: list

    @property
    def success(self) -> bool:
        return all(r.success for r in self.results)

    @property
    def run_id(self) -> str:
        return self.results[0].run_id

    @property
    def all_events(self) -> list:
        return [e for r in self.results for e in r.all_events]

    def failures(self) -> list[str]:
        """One line per failed step: the asset and its cause."""
        out = []
        for r in self.results:
            for event in r.get_step_failure_events():
                data = event.step_failure_data
                cause = (
                    data.user_failure_data.description
                    if data.user_failure_data and data.user_failure_data.description
                    else None
                )
                if cause is None and data.error is not None:
                    cause = next(
                        (ln for ln in data.error.message.splitlines() if ln.strip()), "failed"
                    )
                out.append(f"{event.step_key}: {' '.join(str(cause).split())}")
        return out


def materialize_all(
    data_dir: Path,
    instance: dg.DagsterInstance | None = None,
    log_level: str = "WARNING",
    models: bool = True,
) -> PipelineRun:
    """Materialize every asset (without the model stage when `models` is false); runs are
    recorded in $DAGSTER_HOME when it is set, and each run in the lake's audit trail."""
    if instance is None:
        if os.environ.get("DAGSTER_HOME"):
            Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
            instance = dg.DagsterInstance.get()
        else:
            instance = dg.DagsterInstance.ephemeral()
    resources = resources_from_env(data_dir)
    run_config = {"loggers": {"console": {"config": {"log_level": log_level}}}}

    def materialize(
        assets: Sequence[dg.AssetsDefinition],
        selection: Sequence[dg.AssetsDefinition] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> dg.ExecuteInProcessResult:
        """One in-process run with the settings every run of this call shares."""
        return dg.materialize(
            assets,
            instance=instance,
            resources=resources,
            raise_on_error=False,
            run_config=run_config,
            selection=selection,
            tags=tags,
        )

    results = [materialize(INGEST_ASSETS)]
    # the catalog in a run of its own: in the ingest run a failed source would skip it
    results.append(materialize([lake_catalog]))
    if not results[-1].success:
        return _audited(resources["lake"].lake(), PipelineRun(results))
    # the batches are the sensor's partitions (added as the daemon adds them); the CLI then
    # recomputes every one, so historian data that arrived late for a batch is taken in
    sensed = batches_sensor(
        dg.build_sensor_context(instance=instance, resources={"lake": resources["lake"]})
    )
    if isinstance(sensed, dg.SensorResult):  # else a SkipReason: nothing completed yet
        for request in sensed.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(BATCH_PARTITIONS, list(request.partition_keys))
    keys = instance.get_dynamic_partitions(BATCH_PARTITIONS)
    if keys:
        # one run over the partition range, as a single-run backfill of the UI does (these are
        # the tags Dagster reads a range from; materialize() takes one key only)
        results.append(
            materialize(
                [batch_gold],
                selection=[batch_gold],
                tags={
                    "dagster/asset_partition_range_start": keys[0],
                    "dagster/asset_partition_range_end": keys[-1],
                },
            )
        )
    results.append(materialize([golden_profiles]))
    if models:
        results.append(materialize([*MODEL_ASSETS, *MODEL_CHECKS]))
    return _audited(resources["lake"].lake(), PipelineRun(results))


def _audited(lake, run: PipelineRun) -> PipelineRun:
    audit.record_many(
        lake,
        [
            {
                "action": "run_succeeded" if r.success else "run_failed",
                "object": "batchtwin run",
                "new_value": ", ".join(
                    sorted(
                        k.to_user_string()
                        for k in r.job_def.asset_layer.asset_graph.executable_asset_keys
                    )
                ),
                "reason": "materialized in process by the CLI",
                "run_id": r.run_id,
            }
            for r in run.results
        ],
    )
    return run
