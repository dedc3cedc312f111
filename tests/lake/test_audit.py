"""The audit trail is complete for ingestion and supersession, and append-only."""

import hashlib

import duckdb

from demo.plant import demo_site
from lake import catalog, ingest
from lake.layout import Lake

PROFILES = demo_site().files


def _ingest_all(lake, landing):
    return [
        ingest.ingest_file(lake, landing, rel, prof, run_id="run-1")
        for rel, prof in ingest.landing_files(landing, PROFILES)
    ]


def _events(lake):
    catalog.rebuild(lake)
    with duckdb.connect(str(lake.catalog), read_only=True) as con:
        return con.execute(
            "select action, object, old_value, new_value, reason, actor, run_id from audit_log"
        ).df()


def test_every_file_and_the_superseded_record_are_audited(fresh_data):
    lake, landing = Lake(fresh_data / "lake"), fresh_data / "landing"
    (landing / "lims" / "broken.csv").write_text("no,columns\n1,2\n")
    outcomes = _ingest_all(lake, landing)
    events = _events(lake)
    files = events[events.action.str.startswith("file_")]
    assert len(files) == len(outcomes)
    assert set(files.object) == {o.log["path"] for o in outcomes}
    rejected = files[files.action == "file_rejected"]
    assert (
        rejected.object.tolist() == ["lims/broken.csv"]
        and "missing column" in rejected.reason.iloc[0]
    )
    sup = events[events.action == "record_superseded"]
    assert sup.object.tolist() == ["batch B26-001"]
    assert sup.old_value.iloc[0].startswith("version 1") and sup.new_value.iloc[0].startswith(
        "version 2"
    )
    assert (events.run_id == "run-1").all() and events.actor.str.contains("@").all()


def test_the_audit_trail_is_append_only(fresh_data):
    lake, landing = Lake(fresh_data / "lake"), fresh_data / "landing"
    _ingest_all(lake, landing)
    before = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (lake.root / "audit").glob("*.parquet")
    }
    _ingest_all(lake, landing)  # everything again: every file is now 'unchanged'
    after = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (lake.root / "audit").glob("*.parquet")
    }
    assert {k: after[k] for k in before} == before, "no earlier event was changed or removed"
    new = _events(lake)
    assert (new.action == "file_unchanged").sum() == len(before) - (
        new.action == "record_superseded"
    ).sum()
