"""B2MML documents besides batch lists: performance documents, a vendor record's events, and
the kinds batchtwin does not read.

The fixtures under `tests/fixtures/b2mml/written/` were written for these tests from the B2MML
schemas (V0600 ProductionPerformance and ProductionSchedule; V0700 OperationsPerformance,
MasterRecipe, MaterialLot and MaterialDefinition, which validate against the MESA V0700 XSDs),
not copied from third-party examples. The Rockwell PharmaSuite record beside them is a real
vendor export (see that folder's README).
"""

import re
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from lxml import etree

from demo.plant import demo_site
from lake import catalog, ingest
from lake.layout import Lake
from lake.query import query
from sources import mes_xml
from sources.base import SourceRejected, sha256_of

B2MML = Path(__file__).resolve().parents[1] / "fixtures" / "b2mml"
WRITTEN = B2MML / "written"
PERFORMANCE_V0600 = WRITTEN / "production-performance-v0600.xml"
PERFORMANCE_V0700 = WRITTEN / "operations-performance-v0700.xml"
VENDOR_RECORD = B2MML / "rockwell-pharmasuite-batch-production-record-v0401.xml"
SITE = demo_site()
PROFILES = {p.name: p for p in SITE.files}

# written fixture -> (root element, namespace)
WRITTEN_DOCUMENTS = {
    "production-performance-v0600.xml": (
        "ProductionPerformance",
        "http://www.mesa.org/xml/B2MML-V0600",
    ),
    "operations-performance-v0700.xml": ("OperationsPerformance", "http://www.mesa.org/xml/B2MML"),
    "production-schedule-v0600.xml": ("ProductionSchedule", "http://www.mesa.org/xml/B2MML-V0600"),
    "master-recipe-v0700.xml": ("MasterRecipe", "http://www.mesa.org/xml/B2MML"),
    "material-lot-v0700.xml": ("MaterialLot", "http://www.mesa.org/xml/B2MML"),
    "material-definition-v0700.xml": ("MaterialDefinition", "http://www.mesa.org/xml/B2MML"),
}
UNREAD = [
    "production-schedule-v0600.xml",
    "master-recipe-v0700.xml",
    "material-lot-v0700.xml",
    "material-definition-v0700.xml",
]


def utc(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


def _read(path: Path, rel_path: str | None = None):
    rel = rel_path or f"mes/{path.name}"
    return mes_xml.read_batchml(path, sha256_of(path), rel, PROFILES["mes_batchml"])


def _by(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    assert frame[column].is_unique, f"{column} should identify a row: {frame[column].tolist()}"
    return frame.set_index(column)


# ------------------------------------------------------------------------------ the fixtures


@pytest.mark.parametrize("name", sorted(WRITTEN_DOCUMENTS))
def test_written_fixtures_are_well_formed_b2mml_of_their_kind(name):
    root = etree.parse(str(WRITTEN / name)).getroot()
    qname = etree.QName(root)
    assert (qname.localname, qname.namespace) == WRITTEN_DOCUMENTS[name]
    assert qname.namespace in PROFILES["mes_batchml"].namespaces


# ------------------------------------------------------------- V0600 ProductionPerformance


def test_a_production_response_becomes_one_batch_in_utc():
    res = _read(PERFORMANCE_V0600)
    batches = res.tables["batch_records"]
    assert batches.batch_id.tolist() == ["B31-014"]
    batch = batches.iloc[0]
    # the response's own StartTime/EndTime (+01:00), not its segments' (08:00 … 13:55)
    assert batch.start_ts == utc("2026-03-02 06:45")
    assert batch.end_ts == utc("2026-03-02 13:10")
    assert batch.status == "complete"  # ResponseState "Completed", in the lake's words
    assert batch.derived is None  # every time and the state are the response's own
    assert batch.inoculation_ts == utc("2026-03-02 12:15")  # the INOCULATION segment's start
    assert res.rows_read == sum(len(t) for t in res.tables.values()) == 1 + 2 + 3


def test_segment_responses_become_operations_with_their_unit_and_times():
    phases = _by(_read(PERFORMANCE_V0600).tables["phase_records"], "phase")
    assert sorted(phases.index) == ["INOCULATION", "MEDIA_PREP"]
    assert (phases.batch_id == "B31-014").all() and (phases.level == "operation").all()
    assert (phases.unit_id == "BR301").all()
    media, inoc = phases.loc["MEDIA_PREP"], phases.loc["INOCULATION"]
    assert media.path == "B31-014-SR-010" and inoc.path == "B31-014-SR-020"
    assert (media.start_ts, media.end_ts) == (utc("2026-03-02 07:00"), utc("2026-03-02 10:30"))
    assert (inoc.start_ts, inoc.end_ts) == (utc("2026-03-02 12:15"), utc("2026-03-02 12:55"))


def test_material_actuals_carry_material_lot_quantity_and_use():
    materials = _by(_read(PERFORMANCE_V0600).tables["material_event_records"], "material")
    assert sorted(materials.index) == ["CDM-BASE-02", "GLC-500", "SEED-N1"]
    assert (materials.batch_id == "B31-014").all()
    glucose = materials.loc["GLC-500"]
    assert glucose.lot_id == "L-2026-0117"
    assert glucose.quantity == pytest.approx(0.41) and glucose.uom == "kg"
    assert glucose.kind == "consumed"  # MaterialUse "Consumed", lower-cased
    # no time of its own: the end of its segment (MEDIA_PREP, 11:30+01:00), and marked so
    assert glucose.ts == utc("2026-03-02 10:30")
    assert glucose.derived == "ts: the end of its segment response"
    assert pd.isna(materials.loc["CDM-BASE-02"].derived)  # its time is the record's own


def test_a_sublot_is_joined_to_its_lot_and_a_material_actual_keeps_its_own_time():
    materials = _by(_read(PERFORMANCE_V0600).tables["material_event_records"], "material")
    medium = materials.loc["CDM-BASE-02"]
    assert medium.lot_id == "L-2026-0098/D03"
    assert medium.quantity == pytest.approx(12.5) and medium.uom == "kg"
    assert medium.ts == utc("2026-03-02 07:40")  # its ActualTime property, 08:40+01:00
    seed = materials.loc["SEED-N1"]
    assert seed.kind == "inoculum"  # Description wins over MaterialUse
    assert (seed.lot_id, seed.quantity, seed.uom) == ("B31-014-N1", 52.0, "L")
    assert seed.ts == utc("2026-03-02 12:55")


# -------------------------------------------------------------- V0700 OperationsPerformance


def test_an_operations_response_takes_its_times_from_its_segments():
    res = _read(PERFORMANCE_V0700)
    batch = res.tables["batch_records"].iloc[0]
    assert len(res.tables["batch_records"]) == 1 and batch.batch_id == "B32-003"
    # no StartTime/EndTime on the response: earliest segment start, latest segment end (+02:00)
    assert (batch.start_ts, batch.end_ts) == (utc("2026-04-07 07:30"), utc("2026-04-10 08:20"))
    assert batch.derived == "start_ts: its first segment's start; end_ts: its last segment's end"
    assert batch.status == "complete"
    phases = _by(res.tables["phase_records"], "phase")
    assert sorted(phases.index) == ["BOLUS_FEED", "INOCULATION"]
    assert phases.loc["BOLUS_FEED"].path == "B32-003-SR-040"
    assert (phases.unit_id == "BR302").all()
    feed = res.tables["material_event_records"]
    assert len(feed) == 1
    row = feed.iloc[0]
    assert (row.batch_id, row.material, row.lot_id) == ("B32-003", "FEED-B", "L-2026-0342")
    assert (row.quantity, row.uom, row.kind) == (1.85, "L", "consumed")
    assert row.ts == utc("2026-04-10 08:20")


def test_a_response_without_any_end_is_running(tmp_path):
    # the same response exported mid-run: no segment has ended, no state is stated
    text = PERFORMANCE_V0700.read_text(encoding="utf-8")
    for element in ("ActualEndTime", "ResponseState", "SegmentState"):
        text = re.sub(rf"\s*<{element}>[^<]*</{element}>", "", text)
    running = tmp_path / "b32-003-running.xml"
    running.write_text(text, "utf-8")
    batch = _read(running).tables["batch_records"].iloc[0]
    assert batch.status == "running"
    assert batch.start_ts == utc("2026-04-07 07:30") and pd.isna(batch.end_ts)
    assert (
        batch.derived == "start_ts: its first segment's start; status: from whether it has an end"
    )


# ---------------------------------------------------------------- documents that are not read


@pytest.mark.parametrize("name", UNREAD)
def test_b2mml_documents_of_unread_kinds_are_rejected_naming_their_root(name):
    root = WRITTEN_DOCUMENTS[name][0]
    with pytest.raises(SourceRejected) as err:
        _read(WRITTEN / name)
    message = str(err.value)
    assert f"<{root}>" in message, message
    assert "does not read" in message  # rejected for its kind, not for holding no batch
    assert "\n" not in message


# ------------------------------------------ the vendor record: exceptions, comments, signatures


@pytest.fixture(scope="module")
def vendor_events() -> pd.DataFrame:
    return _read(VENDOR_RECORD).tables["batch_event_records"]


def test_vendor_record_events_belong_to_its_batch_in_utc(vendor_events):
    assert Counter(vendor_events.kind) == {"exception": 3, "comment": 2, "signature": 7}
    assert (vendor_events.batch_id == "BX10").all()
    assert str(vendor_events.ts.dt.tz) == "UTC" and vendor_events.ts.notna().all()
    assert (vendor_events.record_version == 1).all()


def test_vendor_record_exceptions(vendor_events):
    exceptions = vendor_events[vendor_events.kind == "exception"].sort_values("ts")
    assert exceptions.event_id.tolist() == ["0124|Exception", "0125|Exception", "0126|Exception"]
    assert (exceptions.person == "mkuehne").all()
    first = exceptions.iloc[0]
    assert first.ts == utc("2010-04-27 14:02:53.187")  # 16:02:53.187+02:00
    assert first.text.startswith("Expected control limit has been violated")
    assert first.refers_to.endswith("LIB-PH-PAVStrWException-01")
    assert (first.category, first.risk, first.status) == ("Out of spec", "Low", "Open")
    assert exceptions.category.tolist() == ["Out of spec", "Manual", "Manual"]
    assert exceptions.risk.tolist() == ["Low", "None", "None"]  # the vendor's word, not a NULL
    assert exceptions.iloc[2].text == "2nd manual exception"


def test_vendor_record_comments(vendor_events):
    comments = vendor_events[vendor_events.kind == "comment"].sort_values("ts")
    assert comments.event_id.tolist() == ["0124-01|Comment", "0125-01|Comment"]
    first, second = comments.iloc[0], comments.iloc[1]
    assert first.refers_to == "0124|Exception"
    assert first.text == "This was my first automatically created exception."
    assert first.person == "mkuehne" and first.ts == utc("2010-04-27 14:04:40.247")
    assert (first.status, first.risk) == ("Open", "High")
    assert second.refers_to == "0125|Exception" and second.text == "D"
    assert second.status == "To be closed" and pd.isna(second.risk)  # xsi:nil="true"


def test_vendor_record_signatures(vendor_events):
    signatures = vendor_events[vendor_events.kind == "signature"].sort_values("ts", kind="stable")
    assert len(signatures) == 7  # every PersonnelIdentification, repeated IDs included
    assert Counter(signatures.event_id)["15632578|Signature"] == 2
    assert Counter(signatures.person) == {"mkuehne": 5, "q": 2}
    assert Counter(signatures.category) == {"Confirmation": 5, "Approval": 2}
    first = signatures.iloc[0]
    assert first.event_id == "15632563|Signature"
    assert first.ts == utc("2010-04-27 14:02:53.407")
    assert (first.person, first.text) == ("mkuehne", "Set container status to clean")
    assert (first.refers_to, first.category) == ("0124|Exception", "Confirmation")
    approvals = signatures[signatures.category == "Approval"]
    assert (approvals.person == "q").all()
    assert (approvals.text == "Accepted exception record").all()
    assert approvals.refers_to.tolist() == ["0125|Exception", "0126|Exception"]


# ------------------------------------------------------------------------ through the ingest


def _ingest(tmp_path: Path, fixture: Path, name: str):
    lake, landing = Lake(tmp_path / "lake"), tmp_path / "landing"
    (landing / "mes").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fixture, landing / "mes" / name)
    rel = f"mes/{name}"
    out = ingest.ingest_file(lake, landing, rel, PROFILES["mes_batchml"], site=SITE)
    catalog.rebuild(lake)
    return lake, out


def test_ingest_brings_a_performance_documents_lots_to_material_events(tmp_path):
    lake, out = _ingest(tmp_path, PERFORMANCE_V0600, "b31-014.xml")
    assert out.status == "ingested", out.log.get("error")
    log = query(lake, "SELECT path, status, rows_read, rows_quarantined FROM ingest_log")
    assert log.to_dict("records") == [
        {"path": "mes/b31-014.xml", "status": "ingested", "rows_read": 6, "rows_quarantined": 0}
    ]
    events = query(
        lake,
        "SELECT batch_id, lot_id, quantity, uom, kind FROM material_events"
        " WHERE material = 'GLC-500'",
    )
    assert events.to_dict("records") == [
        {
            "batch_id": "B31-014",
            "lot_id": "L-2026-0117",
            "quantity": pytest.approx(0.41),
            "uom": "kg",
            "kind": "consumed",
        }
    ]
    lots = query(lake, "SELECT lot_id FROM material_events ORDER BY lot_id").lot_id.tolist()
    assert lots == ["B31-014-N1", "L-2026-0098/D03", "L-2026-0117"]


def test_ingest_brings_the_vendor_records_events_to_batch_events(tmp_path):
    lake, out = _ingest(tmp_path, VENDOR_RECORD, "bx10.xml")
    assert out.status == "ingested", out.log.get("error")
    assert query(lake, "SELECT status FROM ingest_log").status.tolist() == ["ingested"]
    kinds = query(lake, "SELECT kind, count(*) AS n FROM batch_events GROUP BY 1")
    assert dict(zip(kinds.kind, kinds.n, strict=True)) == {
        "exception": 3,
        "comment": 2,
        "signature": 7,
    }
    first = query(
        lake,
        "SELECT batch_id, person, ts FROM batch_events"
        " WHERE kind = 'exception' ORDER BY ts LIMIT 1",
    ).iloc[0]
    assert first.batch_id == "BX10" and first.person == "mkuehne"
    assert pd.Timestamp(first.ts).tz_convert("UTC") == utc("2010-04-27 14:02:53.187")


def test_inside_a_parallel_block_no_start_is_derived_from_a_siblings_completion():
    from dataclasses import replace

    phases = _read(VENDOR_RECORD).tables["phase_records"]
    inside = phases[phases.path.str.contains(r"\|Parallel Phases\|")]
    # the record gives completion times only; inside the block the elements run side by side,
    # and the block's own start is unknown: no start is made up
    assert len(inside) == 13 and inside.start_ts.isna().all() and inside.derived.isna().all()
    # a site whose MES runs such elements one after another says so (no parallel pattern):
    # starts are derived from the element before, and marked derived
    sequential = replace(PROFILES["mes_batchml"], parallel_elements=None)
    path = VENDOR_RECORD
    phases = mes_xml.read_batchml(path, sha256_of(path), "mes/x.xml", sequential).tables[
        "phase_records"
    ]
    second = phases[phases.phase == "LIB-PH-PAVStrWException-01"].iloc[0]
    first = phases[phases.phase == "LIB-PH-PAVStr-01"].iloc[0]
    assert second.start_ts == first.end_ts
    assert second.derived == "start_ts: the completion of the element before it"
