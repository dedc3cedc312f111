"""A larger demo plant for parameter recovery: 8 batches (6 completed, 2 running), run once
per session.

The session's small plant has only 3 completed batches; recovering eight kinetic parameters to
10 % needs more. The pipeline run includes the model step, so the fit under test is the one
the pipeline recorded.
"""

import json
import os

import pytest

os.environ.pop("DAGSTER_HOME", None)

from demo.plant import PlantSize, generate  # noqa: E402

MEDIUM = PlantSize(batches=8, seconds_per_sample=120.0)


@pytest.fixture(scope="session")
def medium_run(tmp_path_factory):
    """(data dir, truth, pipeline result) for the 8-batch plant."""
    from pipelines.runner import materialize_all

    data = tmp_path_factory.mktemp("medium")
    generate(data, MEDIUM)
    result = materialize_all(data)
    return data, json.loads((data / "truth.json").read_text()), result
