"""The Dagster UI in a real browser: the asset graph with its four groups, the sensors and the
schedule listed as running, and a materialization launched from the UI that runs to success.

The test serves the UI itself (dagster-webserver on 127.0.0.1) with runs launched at once
(DefaultRunCoordinator), so that no sensor run queues ahead of the one it launches.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from demo.plant import PlantSize, generate

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SCREENSHOTS = ROOT / "tests" / "ui" / "screenshots"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
GROUPS = ("ingest", "curate", "contextualize", "models")


def _need(condition: bool, what: str) -> None:
    if not condition:
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{what} is required on CI (.ci/run installs it)")
        pytest.skip(f"{what} is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    _need(Path(CHROMIUM).exists(), "Chromium")
    pytest.importorskip("playwright.sync_api")
    data = tmp_path_factory.mktemp("ui")
    generate(data, PlantSize(batches=4, seconds_per_sample=600.0))
    home = data / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        (ROOT / "pipelines" / "dagster.yaml").read_text()
        + (
            "run_coordinator:\n"
            "  module: dagster.core.run_coordinator\n"
            "  class: DefaultRunCoordinator\n"
        )
    )
    port = _free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "BATCHTWIN_LAKE": str(data / "lake"),
        "BATCHTWIN_LANDING": str(data / "landing"),
    }
    log = open(data / "webserver.log", "wb")
    # its own session, so that the whole process group (webserver, code server) can be stopped
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/server_info", timeout=2)
                break
            except OSError as err:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(
                        "dagster-webserver did not start:\n"
                        + (data / "webserver.log").read_text()[-3000:]
                    ) from err
                time.sleep(1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def _dismiss_newsletter(page) -> None:
    """Dagster greets a first visit with a newsletter dialog (after a moment); close it if it
    comes."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=5_000)
    except Exception:  # noqa: BLE001 - playwright's TimeoutError: no dialog this time
        return
    skip.click()
    skip.wait_for(state="detached", timeout=5_000)


def _graphql(page, url: str, query: str) -> dict:
    return page.request.post(
        url + "/graphql",
        data=json.dumps({"query": query}),
        headers={"Content-Type": "application/json"},
    ).json()["data"]


def _runs(page, url: str) -> list[dict]:
    return _graphql(
        page,
        url,
        "{ runsOrError(limit: 50) { ... on Runs { results { runId status "
        "assetSelection { path } } } } }",
    )["runsOrError"]["results"]


def test_asset_graph_and_a_materialization_launched_from_the_ui(dagster_dev):
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(dagster_dev + "/asset-groups")
        page.get_by_text("Global asset lineage").wait_for(timeout=60_000)
        for group in GROUPS:
            page.get_by_text(group, exact=True).first.wait_for(timeout=30_000)
        _dismiss_newsletter(page)
        page.screenshot(path=str(SCREENSHOTS / "asset_graph.png"))

        automation = _graphql(
            page,
            dagster_dev,
            """{ workspaceOrError { ... on Workspace { locationEntries { locationOrLoadError {
            ... on RepositoryLocation { repositories {
                sensors { name sensorState { status } }
                schedules { name scheduleState { status } }
            } } } } } } }""",
        )
        repo = automation["workspaceOrError"]["locationEntries"][0]["locationOrLoadError"][
            "repositories"
        ][0]
        sensors = {x["name"]: x["sensorState"]["status"] for x in repo["sensors"]}
        schedules = {x["name"]: x["scheduleState"]["status"] for x in repo["schedules"]}
        assert (
            sensors["landing_zone_sensor"]
            == sensors["batches_sensor"]
            == sensors["automation"]
            == "RUNNING"
        )
        assert schedules["sql_historian_pull"] == "RUNNING"

        before = {r["runId"] for r in _runs(page, dagster_dev)}
        page.goto(dagster_dev + "/assets/tags")
        page.get_by_role("button", name="Materialize").first.click()
        deadline = time.time() + 240
        while True:
            mine = [
                r
                for r in _runs(page, dagster_dev)
                if r["runId"] not in before
                and ["tags"] in [a["path"] for a in (r["assetSelection"] or [])]
            ]
            if mine and mine[0]["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            assert time.time() < deadline, f"run did not finish: {mine}"
            time.sleep(2)
        assert mine[0]["status"] == "SUCCESS"
        page.goto(f"{dagster_dev}/runs/{mine[0]['runId']}")
        page.get_by_text("Success").first.wait_for(timeout=60_000)
        page.screenshot(path=str(SCREENSHOTS / "run_success.png"))
        browser.close()
    assert (SCREENSHOTS / "asset_graph.png").stat().st_size > 10_000
