"""Resources carry every location: lake root, landing root, SQL historian URL.

Local defaults suit the demo plant; `BATCHTWIN_LAKE`, `BATCHTWIN_LANDING` and
`BATCHTWIN_SQL_URL` override them, so the same assets run elsewhere without code changes.
"""
from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from lake.contextualize import Settings
from lake.layout import Lake
from sources.profiles import FileProfile, SqlProfile, load_profiles

DEFAULT_DATA = Path("data")


def default_sql_url(data_dir: Path = DEFAULT_DATA) -> str:
    return f"sqlite:///{(data_dir / 'sql' / 'historian.sqlite').resolve()}"


class LakeResource(dg.ConfigurableResource):
    """Root of the Parquet lake and its DuckDB catalog."""

    root: str

    def lake(self) -> Lake:
        return Lake(Path(self.root))


class LandingResource(dg.ConfigurableResource):
    """Landing zone folder plus the SQL historian URL that its source profiles default to."""

    root: str
    sql_url: str

    def profiles(self) -> tuple[list[FileProfile], list[SqlProfile]]:
        return load_profiles(Path(self.root), self.sql_url)


class ContextSettings(dg.ConfigurableResource):
    """Contextualization settings: trajectory grid and the width of the golden band."""

    grid_minutes: float = 15.0
    golden_k: float = 3.0

    def settings(self) -> Settings:
        return Settings(grid_minutes=self.grid_minutes, golden_k=self.golden_k)


def resources_from_env(data_dir: Path = DEFAULT_DATA) -> dict[str, dg.ConfigurableResource]:
    """Resources for `data_dir` (landing/, lake/, sql/), each overridable by its environment variable."""
    data = Path(data_dir)
    return {
        "lake": LakeResource(root=os.environ.get("BATCHTWIN_LAKE", str(data / "lake"))),
        "landing": LandingResource(
            root=os.environ.get("BATCHTWIN_LANDING", str(data / "landing")),
            # an EnvVar, not its value: Dagster then stores and shows the variable's name, never a password in it
            sql_url=dg.EnvVar("BATCHTWIN_SQL_URL") if os.environ.get("BATCHTWIN_SQL_URL") else default_sql_url(data),
        ),
        "settings": ContextSettings(grid_minutes=float(os.environ.get("BATCHTWIN_GRID_MINUTES", "15"))),
    }
