"""Run the whole asset graph in process (what `batchtwin run` and `batchtwin demo` do)."""
import os
from pathlib import Path

import dagster as dg

from pipelines.definitions import ALL_ASSETS
from pipelines.resources import resources_from_env


def materialize_all(data_dir: Path, instance: dg.DagsterInstance | None = None, log_level: str = "WARNING"):
    """Materialize every asset; runs are recorded in $DAGSTER_HOME when it is set."""
    if instance is None and os.environ.get("DAGSTER_HOME"):
        Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
        instance = dg.DagsterInstance.get()
    return dg.materialize(ALL_ASSETS, resources=resources_from_env(data_dir), instance=instance, raise_on_error=False,
                          run_config={"loggers": {"console": {"config": {"log_level": log_level}}}})
