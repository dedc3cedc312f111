"""The audit trail: an append-only record of what happened to the lake, by whom, and why.

In the spirit of 21 CFR 11.10(e): every run, every file ingested or rejected, every batch
record superseded and every model promoted or rejected is an event with a time stamp, an
actor, the old and new values and a reason. Events are written as new write-once files and
never changed or removed, so a later event can never obscure an earlier one.
"""

from __future__ import annotations

import getpass
import os
import uuid
from datetime import UTC, datetime

import pandas as pd

from lake.layout import Lake, atomic_write_parquet
from schemas.tables import AuditEvent
from schemas.validate import as_arrow


def actor() -> str:
    """Who acts: `BATCHTWIN_ACTOR` (set by a service account or the UI) or the OS user, plus the
    host."""
    who = os.environ.get("BATCHTWIN_ACTOR")
    if not who:
        try:
            who = getpass.getuser()
        except (KeyError, OSError):
            who = f"uid:{os.getuid()}"
    return f"{who}@{os.uname().nodename}"


def record(
    lake: Lake,
    action: str,
    obj: str,
    *,
    old: str | None = None,
    new: str | None = None,
    reason: str | None = None,
    run_id: str | None = None,
) -> None:
    """Append one event (a new write-once file under lake/audit)."""
    record_many(
        lake,
        [
            {
                "action": action,
                "object": obj,
                "old_value": old,
                "new_value": new,
                "reason": reason,
                "run_id": run_id,
            }
        ],
    )


def record_many(lake: Lake, events: list[dict]) -> None:
    """Append events in one write-once file, validated by the `AuditEvent` model."""
    if not events:
        return
    now = datetime.now(UTC)
    who = actor()
    rows = [
        {
            "ts": now,
            "actor": who,
            "old_value": None,
            "new_value": None,
            "reason": None,
            "run_id": None,
            **e,
        }
        for e in events
    ]
    name = f"{now.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:12]}.parquet"
    atomic_write_parquet(lake.root / "audit" / name, as_arrow(pd.DataFrame(rows), AuditEvent))
