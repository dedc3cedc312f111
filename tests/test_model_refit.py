"""Reproducibility of a recorded fit, and the model commands of the CLI, on the pipeline's lake."""

import json

import pytest
from typer.testing import CliRunner

from lake.layout import Lake
from models.registry import Registry
from pipelines.cli import app


def test_refit_from_the_registry_reproduces_the_parameters(pipeline_run):
    data, result = pipeline_run
    assert result.success
    reg = Registry(Lake(data / "lake"))
    champ = reg.champion("MAB-A")
    assert champ is not None and champ["model"] == "cho_fedbatch"
    version = int(champ["version"])
    recorded = reg.parameters("MAB-A", "cho_fedbatch", version).set_index("name")["value"]
    again = reg.refit("MAB-A", "cho_fedbatch", version)
    assert again.data_fingerprint == champ["data_fingerprint"]
    assert list(again.training_batches) == json.loads(champ["training_batches"])
    for name in again.fitted:
        assert again.params[name] == pytest.approx(recorded[name], rel=1e-6), name


def test_a_second_fit_on_the_same_data_is_not_repeated(pipeline_run):
    data, _ = pipeline_run
    before = len(Registry(Lake(data / "lake")).versions())
    out = CliRunner().invoke(app, ["fit", "--data-dir", str(data)])
    assert out.exit_code == 0 and "unchanged" in out.stdout
    assert len(Registry(Lake(data / "lake")).versions()) == before


def test_cli_status_shows_the_champion_and_forecast_prints_a_band(pipeline_run, truth):
    data, _ = pipeline_run
    runner = CliRunner()
    status = runner.invoke(app, ["status", "--data-dir", str(data)])
    assert status.exit_code == 0 and "mu_max" in status.stdout
    assert "MAB-A champion cho_fedbatch v" in " ".join(status.stdout.split())
    running = next(b["batch_id"] for b in truth["batches"] if b["status"] == "running")
    out = runner.invoke(app, ["forecast", running, "--data-dir", str(data), "--draws", "50"])
    assert out.exit_code == 0, out.output
    assert "titer at harvest" in out.stdout and "p90" in out.stdout and "g/L" in out.stdout
    bad = runner.invoke(app, ["forecast", "NOPE", "--data-dir", str(data)])
    assert (
        bad.exit_code == 1
        and "Traceback" not in bad.output
        and len(bad.output.strip().splitlines()) == 1
    )
    assert "NOPE" in bad.output
