"""Resources carry every location: lake root and landing root (whose sources.yaml describes
the site).

Defaults are folders under a data directory; `BATCHTWIN_LAKE` and `BATCHTWIN_LANDING` override
them, so the same assets run elsewhere without code changes. SQL historian URLs live in the
site's sources.yaml (`${VAR}` there reads the environment, e.g. for a password).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypedDict

import dagster as dg

from lake.layout import Lake
from sources.site import Site, load_site

DEFAULT_DATA = Path("data")


class LakeResource(dg.ConfigurableResource):
    """Root of the Parquet lake and its DuckDB catalog."""

    root: str

    def lake(self) -> Lake:
        return Lake(Path(self.root))


class LandingResource(dg.ConfigurableResource):
    """Landing zone folder; its `sources.yaml` describes the site (profiles, units, limits,
    models)."""

    root: str

    def site(self) -> Site:
        return load_site(Path(self.root))


class ContextSettings(dg.ConfigurableResource):
    """Contextualization settings: trajectory grid and the width of the golden band."""

    grid_minutes: float = 15.0
    golden_k: float = 3.0


class PipelineResources(TypedDict):
    """The resources every asset of the project is bound to, by resource key."""

    lake: LakeResource
    landing: LandingResource
    settings: ContextSettings


def deployed_resources() -> PipelineResources:
    """The resources of the deployed `Definitions` (webserver and daemon): the lake and landing
    roots are `dg.EnvVar`s, read when a run starts and shown as such in the UI, never frozen at
    import (`make ui` sets both; an unset one fails the run naming the variable)."""
    return {
        "lake": LakeResource(root=dg.EnvVar("BATCHTWIN_LAKE")),
        "landing": LandingResource(root=dg.EnvVar("BATCHTWIN_LANDING")),
        # dg.EnvVar carries text and integers only: this float is read when the code loads
        "settings": ContextSettings(grid_minutes=_grid_minutes()),
    }


def _grid_minutes() -> float:
    return float(os.environ.get("BATCHTWIN_GRID_MINUTES", "15"))


def resources_from_env(data_dir: Path = DEFAULT_DATA) -> PipelineResources:
    """Resources for `data_dir` (landing/, lake/, sql/), each overridable by its environment
    variable."""
    data = Path(data_dir)
    return {
        "lake": LakeResource(root=os.environ.get("BATCHTWIN_LAKE", str(data / "lake"))),
        "landing": LandingResource(root=os.environ.get("BATCHTWIN_LANDING", str(data / "landing"))),
        "settings": ContextSettings(grid_minutes=_grid_minutes()),
    }
