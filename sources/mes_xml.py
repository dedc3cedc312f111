"""BatchML / B2MML batch records (V0401…V0700), matched by local element name.

Namespaces change with every B2MML version and vendors extend the schema, so elements are
found by local name wherever they sit. Parsing never resolves entities, loads DTDs or touches
the network (XXE and entity-expansion attacks are refused by construction).

What is read:
- `BatchListEntry` trees: the batch (type Batch) and its procedural elements with actual times;
- `BatchProductionRecord` / `ListHeader` version and last-changed date (record versions);
- `SegmentResponse/MaterialActual`: additions and consumptions (bolus feeds, inoculum, media),
  with material lot and quantity;
- `ProductionPerformance/ProductionResponse` and `OperationsPerformance/OperationsResponse`
  (ISA-95 performance records): the response is the batch, its segment responses are its
  operations (actual start, end, equipment), their material actuals its material events;
- `Events/Event`, `Comments/Comment`, `PersonnelIdentifications/PersonnelIdentification`:
  operator exceptions, comments and electronic signatures (into `batch_event_records`);
- `Samples/Sample/SampleTest/SampleTestResult`: at-line results recorded by the MES (into `samples`,
  sampled at the Sample's time stamp, reported at the result's);
- Rockwell PharmaSuite's `ExecutedControlRecipe/RuntimeRecipeElement` extension, which gives
  completion times only: an element's end is its `CompletionTime` (or its last child's), and
  its start is derived as the end of the element before it at the same level, or, anywhere
  inside an element the profile's `parallel_elements` pattern names, as that block's start (its
  contents run side by side: the block's start is all the record tells, a lower bound). Derived
  fields are named in the file's notes and in the `derived` column.

Other B2MML documents (schedules, recipes, material and equipment masters) hold no batch that
ran: they are rejected naming their root element, never taken in as zero rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
from lxml import etree

from sources.base import ReadResult, SourceRejected, finish_records
from sources.profiles import FileProfile

# ISA-95 performance records: one response is one production run (here: a batch)
RESPONSES = ("ProductionResponse", "OperationsResponse")
# ISA-95 response states in the batch status words the lake uses (others kept, lower case)
RESPONSE_STATES = {"completed": "complete", "finished": "complete", "closed": "complete"}
# documents that describe what is planned or what exists, never a batch that ran
NOT_BATCH_RECORDS = {
    "ProductionSchedule": "a plan",
    "OperationsSchedule": "a plan",
    "OperationsRequest": "a plan",
    "MasterRecipe": "a recipe",
    "ControlRecipe": "a recipe",
    "GeneralRecipe": "a recipe",
    "SiteRecipe": "a recipe",
    "ProductDefinition": "a definition",
    "OperationsDefinition": "a definition",
    "ProcessSegment": "a definition",
    "MaterialDefinition": "a material master",
    "MaterialInformation": "a material master",
    "MaterialLot": "a material master",
    "MaterialClass": "a material master",
    "Equipment": "an equipment master",
    "EquipmentInformation": "an equipment master",
    "EquipmentClass": "an equipment master",
    "Personnel": "a personnel master",
    "PersonnelInformation": "a personnel master",
    "ProductionCapability": "a capability",
    "OperationsCapability": "a capability",
}
LEVEL_OF = {
    "batch": "procedure",
    "procedure": "procedure",
    "unitprocedure": "unit_procedure",
    "operation": "operation",
    "phase": "phase",
}


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=True,
    )


def local(el) -> str:
    """An element's name without its namespace ('' for comments and processing instructions),
    so elements match whatever B2MML version or vendor namespace they carry."""
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def child(el, name: str) -> etree._Element | None:
    """The first direct child of `el` named `name` (by local name), or None."""
    return next((c for c in el if local(c) == name), None)


def text(el, name: str) -> str | None:
    """The stripped text of `el`'s child `name`; None when the child is missing or blank."""
    c = child(el, name)
    return c.text.strip() if c is not None and c.text and c.text.strip() else None


def descendants(el, name: str) -> Iterator[etree._Element]:
    """Every element below `el` (and `el` itself) named `name`, by local name, in document order."""
    return (d for d in el.iter() if local(d) == name)


def _ts(value: str | None):
    if value is None:
        return pd.NaT
    return pd.to_datetime(value, format="ISO8601", utc=True, errors="coerce")


def read_batchml(path: Path, sha256: str, rel_path: str, profile: FileProfile) -> ReadResult:
    """Read a BatchML / B2MML batch record into batch, phase, material-event and sample rows.

    The whole file is rejected when it is not well-formed, declares a DTD or entities, is in an
    unknown namespace or holds no batch record at all.
    """
    try:
        tree = etree.parse(str(path), _parser())
    except etree.XMLSyntaxError as err:
        raise SourceRejected(f"not well-formed XML: {err}") from None
    root = tree.getroot()
    if tree.docinfo.internalDTD is not None or any(
        isinstance(n, etree._Entity) for n in root.iter()
    ):
        raise SourceRejected(
            "XML declares a DTD or entities; batch records must not (entity expansion is refused)"
        )
    namespace = etree.QName(root).namespace
    if namespace not in profile.namespaces:
        raise SourceRejected(
            f"root <{local(root)}> is in namespace {str(namespace)[:120]!r}, "
            "not a known B2MML/BatchML one "
            "(V0401…V0700; a profile's `namespaces` may add a vendor's)"
        )
    version, record_ts = _record_version(root)
    ordinal = iter(range(1, 10**9))
    batches: list[dict] = []
    phases: list[dict] = []
    materials: list[dict] = []
    samples: list[dict] = []
    notes: list[str] = []
    for entry in (
        e
        for e in descendants(root, "BatchListEntry")
        if (text(e, "BatchListEntryType") or "").lower() == "batch"
    ):
        _batch_entry(entry, version, record_ts, profile, ordinal, batches, phases)
    for ecr in descendants(root, "ExecutedControlRecipe"):
        notes.append(
            _executed_control_recipe(ecr, version, record_ts, profile, ordinal, batches, phases)
        )
    for response in (e for e in root.iter() if local(e) in RESPONSES and _standalone(e)):
        _response(response, version, record_ts, profile, ordinal, batches, phases, materials)
    default_batch = batches[0]["batch_id"] if len(batches) == 1 else None
    events: list[dict] = []
    for bpr in descendants(root, "BatchProductionRecord"):
        batch_id = text(bpr, "BatchID") or default_batch
        for ma in descendants(bpr, "MaterialActual"):
            materials.append(_material(ma, batch_id, version, next(ordinal)))
        for sample in descendants(bpr, "Sample"):
            samples.extend(_sample_results(sample, batch_id, ordinal))
        events.extend(_events(bpr, batch_id, version, ordinal))
    tables = {
        name: finish_records(rows, sha256, rel_path)
        for name, rows in (
            ("batch_records", batches),
            ("phase_records", phases),
            ("material_event_records", materials),
            ("batch_event_records", events),
            ("samples", samples),
        )
    }
    rows_read = sum(len(t) for t in tables.values())
    if rows_read == 0:
        # a B2MML message wraps its noun in a verb: ShowProductionSchedule, SyncMaterialLot, …
        kind = re.sub(
            r"^(Get|Show|Process|Sync|Change|Cancel|Acknowledge|Respond|Confirm)"
            r"(?=[A-Z])",
            "",
            local(root),
        )
        if kind in NOT_BATCH_RECORDS:
            raise SourceRejected(
                f"<{local(root)}> is a kind of B2MML document batchtwin does not read ("
                f"{NOT_BATCH_RECORDS[kind]}, no batch that ran): it reads batch records and "
                "production or operations performance"
            )
        raise SourceRejected(
            f"<{local(root)}> holds no batch record: no BatchListEntry of type Batch, "
            "ExecutedControlRecipe, production or operations response, material actual or sample"
        )
    return ReadResult(tables, rows_read=rows_read, notes=[n for n in notes if n])


# when a record was last changed, most telling first: a record re-exported after an amendment or
# after the batch completed keeps its creation date but gets a new LastChangedDate
CHANGE_DATES = ("LastChangedDate", "PublishedDate", "CreationDate", "CreateDate")


def _record_version(root) -> tuple[int, object]:
    """The record's version (first `Version` stated) and its last-changed time."""
    version = None
    dates: dict[str, object] = {}
    for el in root.iter():
        name = local(el)
        # ASCII digits only, at most 9: str.isdigit() accepts '²' or '٣' (int() then fails) and an
        # unbounded number overflows the int64 record_version column
        if (
            name == "Version"
            and version is None
            and el.text
            and re.fullmatch(r"[0-9]{1,9}", el.text.strip())
        ):
            version = int(el.text.strip())
        elif name in CHANGE_DATES and name not in dates and el.text:
            dates[name] = _ts(el.text.strip())
    changed = next((dates[n] for n in CHANGE_DATES if n in dates and pd.notna(dates[n])), pd.NaT)
    return version or 1, changed


def _batch_entry(
    entry, version, record_ts, profile, ordinal, batches: list[dict], phases: list[dict]
) -> None:
    batch_id = text(entry, "BatchID") or text(entry, "ID")
    row = next(ordinal)
    seq: dict[str, int] = {}
    inoculation = pd.NaT
    unit_id = text(entry, "ActualEquipmentID") or text(entry, "EquipmentID")
    for el in entry.iter():
        if local(el) != "BatchListEntry" or el is entry:
            continue
        level = LEVEL_OF.get((text(el, "BatchListEntryType") or "").lower().replace(" ", ""))
        if level is None:
            continue
        ident = text(el, "ID") or ""
        name = ident.replace("|", ":").split(":")[-1]
        seq[level] = seq.get(level, 0) + 1
        start = _ts(text(el, "ActualStartTime"))
        if level == "phase" and name == profile.inoculation_phase:
            inoculation = start
        phases.append(
            {
                "batch_id": batch_id,
                "unit_id": text(el, "ActualEquipmentID") or text(el, "EquipmentID") or unit_id,
                "level": level,
                "path": ident,
                "phase": name,
                "seq": seq[level],
                "start_ts": start,
                "end_ts": _ts(text(el, "ActualEndTime")),
                "record_version": version,
                "derived": None,
                "line": next(ordinal),
            }
        )
    batches.append(
        {
            "batch_id": batch_id,
            "product": text(entry, "ProductID"),
            "site": profile.site,
            "unit_id": unit_id,
            "recipe_id": text(entry, "RecipeID"),
            "status": (text(entry, "Status") or "unknown").lower(),
            "start_ts": _ts(text(entry, "ActualStartTime")),
            "end_ts": _ts(text(entry, "ActualEndTime")),
            "derived": None,
            "inoculation_ts": inoculation,
            "record_version": version,
            "record_ts": record_ts,
            "line": row,
        }
    )


def _executed_control_recipe(
    ecr, version, record_ts, profile, ordinal, batches: list[dict], phases: list[dict]
) -> str:
    batch_id = text(ecr, "BatchID") or text(ecr, "ID")
    header = child(ecr, "Header")
    product = text(header, "ProductID") if header is not None else None
    row = next(ordinal)
    seq: dict[str, int] = {}

    def end_of(el):
        own = _ts(text(el, "CompletionTime"))
        kids = [end_of(k) for k in el if local(k) == "RuntimeRecipeElement"]
        kids = [k for k in kids if pd.notna(k)]
        return own if pd.notna(own) else (max(kids) if kids else pd.NaT)

    parallel = re.compile(profile.parallel_elements) if profile.parallel_elements else None

    def walk(el, parent_start, block: str | None):
        """`block`: the parallel element `el` is inside, whose start its children share."""
        prev_end = parent_start
        for k in (c for c in el if local(c) == "RuntimeRecipeElement"):
            level = LEVEL_OF.get(
                (text(k, "RecipeElementType") or "").lower().replace(" ", ""), "phase"
            )
            seq[level] = seq.get(level, 0) + 1
            end = end_of(k)
            ident = text(k, "ID") or ""
            name = ident.split("|")[-1]
            start = parent_start if block else prev_end
            phases.append(
                {
                    "batch_id": batch_id,
                    "unit_id": None,
                    "level": level,
                    "path": ident,
                    "phase": name,
                    "seq": seq[level],
                    "start_ts": start,
                    "end_ts": end,
                    "record_version": version,
                    "derived": None
                    if pd.isna(start)
                    else f"start_ts: the start of the parallel block {block}"
                    if block
                    else "start_ts: the completion of the element before it",
                    "line": next(ordinal),
                }
            )
            inner = block or (name if parallel and parallel.search(name) else None)
            walk(k, start, inner)
            prev_end = end if pd.notna(end) else prev_end

    walk(ecr, pd.NaT, None)
    ends = [p["end_ts"] for p in phases if p["batch_id"] == batch_id and pd.notna(p["end_ts"])]
    batches.append(
        {
            "batch_id": batch_id,
            "product": product,
            "site": profile.site,
            "unit_id": None,
            "recipe_id": None,
            "status": "complete" if ends else "unknown",
            "start_ts": pd.NaT,
            "end_ts": max(ends) if ends else pd.NaT,
            "derived": "end_ts: its elements' last completion; status: complete when one completed"
            if ends
            else None,
            "inoculation_ts": pd.NaT,
            "record_version": version,
            "record_ts": record_ts,
            "line": row,
        }
    )
    return (
        f"{batch_id}: ExecutedControlRecipe gives completion times only; "
        "phase start_ts is derived as the previous element's completion, or inside a parallel "
        "block as the block's start (NULL where nothing before it completed; see `derived`); "
        "batch start_ts is unknown"
    )


def _standalone(response) -> bool:
    """A response of its own, not the segment responses of a batch production record (whose
    material actuals belong to that record's batch)."""
    return not any(local(a) == "BatchProductionRecord" for a in response.iterancestors())


def _response(
    response,
    version,
    record_ts,
    profile,
    ordinal,
    batches: list[dict],
    phases: list[dict],
    materials: list[dict],
) -> None:
    """A production or operations response: the batch, its segments, their material actuals.
    A material actual without a time of its own is dated at its segment's end (`derived`)."""
    batch_id = text(response, "ID") or ""
    row = next(ordinal)
    segments = list(descendants(response, "SegmentResponse"))
    starts, ends, units = [], [], []
    for seq, seg in enumerate(segments, start=1):
        start, end = _ts(text(seg, "ActualStartTime")), _ts(text(seg, "ActualEndTime"))
        equipment = child(seg, "EquipmentActual")
        unit = text(equipment, "EquipmentID") if equipment is not None else None
        starts.append(start)
        ends.append(end)
        units.append(unit)
        ident = text(seg, "ID") or ""
        phases.append(
            {
                "batch_id": batch_id,
                "unit_id": unit,
                "level": "operation",
                "path": ident,
                "phase": text(seg, "ProcessSegmentID")
                or text(seg, "OperationsDefinitionID")
                or ident,
                "seq": seq,
                "start_ts": start,
                "end_ts": end,
                "record_version": version,
                "derived": None,
                "line": next(ordinal),
            }
        )
        for ma in (c for c in seg if local(c) == "MaterialActual"):
            materials.append(_material(ma, batch_id, version, next(ordinal), at_end=end))
    derived = []
    start = _ts(text(response, "StartTime"))
    if not text(response, "StartTime"):
        start = _first(starts)
        derived += ["start_ts: its first segment's start"] if pd.notna(start) else []
    end = _ts(text(response, "EndTime"))
    if not text(response, "EndTime"):
        end = _last(ends)
        derived += ["end_ts: its last segment's end"] if pd.notna(end) else []
    state = text(response, "ResponseState") or text(response, "OperationsResponseState")
    if not state:
        derived.append("status: from whether it has an end")
    batches.append(
        {
            "batch_id": batch_id,
            "product": text(response, "ProductID") or text(response, "ProductProductionRuleID"),
            "site": profile.site,
            "unit_id": next((u for u in units if u), None),
            "recipe_id": text(response, "ProductionRequestID")
            or text(response, "OperationsRequestID"),
            "status": RESPONSE_STATES.get(state.lower(), state.lower())
            if state
            else "complete"
            if pd.notna(end)
            else "running",
            "start_ts": start,
            "end_ts": end,
            "derived": "; ".join(derived) or None,
            "inoculation_ts": next(
                (
                    p["start_ts"]
                    for p in phases
                    if p["batch_id"] == batch_id and p["phase"] == profile.inoculation_phase
                ),
                pd.NaT,
            ),
            "record_version": version,
            "record_ts": record_ts,
            "line": row,
        }
    )


def _first(times: list) -> object:
    known = [t for t in times if pd.notna(t)]
    return min(known) if known else pd.NaT


def _last(times: list) -> object:
    known = [t for t in times if pd.notna(t)]
    # a segment still running (no end) means the response has not ended
    return max(known) if known and len(known) == len(times) else pd.NaT


def _events(bpr, batch_id, version, ordinal) -> list[dict]:
    """Operator exceptions (and other events), comments and electronic signatures."""
    rows = []

    def add(el, kind, person, body, refers_to, category=None, status=None, risk=None):
        rows.append(
            {
                "batch_id": batch_id,
                "event_id": text(el, "ID") or text(el, "EntryID") or "",
                "kind": kind,
                "ts": _ts(text(el, "TimeStamp")),
                "person": person,
                "text": body,
                "refers_to": refers_to,
                "category": category,
                "status": status,
                "risk": risk,
                "record_version": version,
                "line": next(ordinal),
            }
        )

    for ev in descendants(bpr, "Event"):
        sub = child(ev, "EventSubType")
        subtype = (sub.text or "").strip() if sub is not None else ""
        value = child(ev, "Value")
        add(
            ev,
            "exception" if subtype.lower() == "exception" else "event",
            _people(ev, "PersonID"),
            text(ev, "MessageText")
            or text(ev, "Description")
            or (text(value, "ValueString") if value is not None else None),
            text(ev, "ProceduralElementReference"),
            text(ev, "Category")
            or ": ".join(filter(None, (text(ev, "EventType"), subtype)))
            or None,
            sub.get("Status") if sub is not None else None,
            sub.get("Risk") if sub is not None else None,
        )
    for c in descendants(bpr, "Comment"):
        add(
            c,
            "comment",
            _people(c, "PersonID"),
            text(c, "CommentText"),
            text(c, "TargetID"),
            status=text(c, "RecommendedEventStatus"),
            risk=text(c, "RecommendedEventRisk"),
        )
    for p in descendants(bpr, "PersonnelIdentification"):
        add(
            p,
            "signature",
            text(p, "PersonName") or _people(p, "PersonID"),
            text(p, "Description"),
            text(p, "ReferencedElement"),
            text(p, "Reason"),
        )
    return rows


def _people(el, name: str) -> str | None:
    """The distinct texts of `el`'s children `name`, joined (an event may name two people)."""
    found = [c.text.strip() for c in el if local(c) == name and c.text and c.text.strip()]
    return ", ".join(dict.fromkeys(found)) or None


def _material(ma, batch_id, version, row, at_end=pd.NaT) -> dict:
    qty_el = child(ma, "Quantity")
    qty = pd.to_numeric(
        text(qty_el, "QuantityString") if qty_el is not None else None, errors="coerce"
    )
    uom = text(qty_el, "UnitOfMeasure") if qty_el is not None else None
    when = pd.NaT
    for prop in (c for c in ma if local(c) == "MaterialActualProperty"):
        if (text(prop, "ID") or "").lower() in ("actualtime", "timestamp"):
            val = child(prop, "Value")
            when = _ts(text(val, "ValueString")) if val is not None else pd.NaT
    derived = None
    if pd.isna(when) and pd.notna(at_end):
        when, derived = at_end, "ts: the end of its segment response"
    lot, sublot = text(ma, "MaterialLotID"), text(ma, "MaterialSubLotID")
    return {
        "batch_id": batch_id,
        "ts": when,
        "material": text(ma, "MaterialDefinitionID") or "",
        "lot_id": f"{lot}/{sublot}" if lot and sublot else lot or sublot,
        "quantity": float(qty) if pd.notna(qty) else float("nan"),
        "uom": uom or "",
        "kind": text(ma, "Description") or (text(ma, "MaterialUse") or "").lower() or None,
        "record_version": version,
        "derived": derived,
        "line": row,
    }


def _sample_results(sample, batch_id, ordinal) -> list[dict]:
    sample_id = text(sample, "EntryID") or text(sample, "ID") or ""
    sampled = _ts(text(sample, "TimeStamp"))
    rows = []
    for test in (c for c in sample if local(c) == "SampleTest"):
        analyte = (text(test, "TestName") or text(test, "TestCode") or "").lower()
        for result in (c for c in test if local(c) == "SampleTestResult"):
            value_el = child(result, "Results")
            raw = (text(value_el, "ValueString") if value_el is not None else None) or ""
            rows.append(
                {
                    "batch_id": batch_id,
                    "sample_id": sample_id,
                    "analyte": analyte,
                    "value": float(pd.to_numeric(raw, errors="coerce")),
                    "value_text": raw,
                    "censored": raw.strip()[:1] in ("<", ">"),
                    "uom": (text(value_el, "UnitOfMeasure") if value_el is not None else None)
                    or "",
                    "sampled_ts": sampled,
                    "reported_ts": _ts(text(result, "TimeStamp")),
                    "line": next(ordinal),
                }
            )
    return rows
