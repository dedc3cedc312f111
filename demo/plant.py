"""Write the demo plant's landing zone, SQL historian and truth file.

Three 2000 L bioreactors make one CHO product. What each system exports, and in which
format, mimics a real site where systems were bought at different times:

- BR-101: BatchML V0401 records; PI-style long historian CSV (ISO timestamps with offset,
  quality as words), weekly files, every other one gzipped.
- BR-102: BatchML V0600 records; wide historian CSV sampled every minute (semicolon, decimal
  comma, naive local time), temperature in °F.
- BR-201: DeltaV-style event-journal CSV (naive local time); its tags live in an IP.21-style
  SQL historian (SQLite here), quality as status numbers.
- LIMS: weekly CSV of daily in-process samples; tag dictionary CSV.

Every fault of DESIGN §9 is injected at a recorded place; `truth.json` lists them together
with the true kinetic parameters, each batch's initial state, inputs and phases, so tests
can check the pipeline against what really happened. Same seed, same bytes.
"""

from __future__ import annotations

import gzip
import io
import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from demo import process
from demo.compression import swinging_door
from demo.landing import DemoFiles, DemoSize
from demo.process import MODEL, PHASES, TAG_SPECS, BatchPlan, BatchRun, tag_name
from sources.site import Site, parse_site

DEFAULT_SEED = 20260316
# Each purpose draws from its own stream keyed by (plant seed, purpose), so plants of different
# seeds share no draws: calibration studies need independent plants, and with streams at
# seed, seed+1, … a plant's plan stream was its neighbour's assay stream, and the at-line
# inoculation counts and historian faults were the same on every plant.
STREAMS = {
    "plan": 0,
    "assay": 1,
    "lims": 2,
    "sensors": 3,
    "wide_sensors": 4,
    "inoculation_count": 5,
    "historian_faults": 6,
}
ASSAY_CV = {
    "vcd": 0.07,
    "glucose": 0.03,
    "lactate": 0.04,
    "glutamine": 0.06,
    "ammonia": 0.06,
    "titer": 0.05,
}
VIABILITY_SD = 1.0  # percentage points
LIMS_UNITS = {
    "vcd": "1e6 cells/mL",
    "viability": "%",
    "glucose": "g/L",
    "lactate": "g/L",
    "glutamine": "mmol/L",
    "ammonia": "mmol/L",
    "titer": "g/L",
    "osmolality": "mOsm/kg",
}
COMPRESSION_MAX_S = {"pv": 600.0, "sp": 8 * 3600.0}
HISTORIAN_SOURCE = {"BR-101": "long_csv", "BR-102": "wide_csv", "BR-201": "sql"}
XML_NAMESPACE = {
    "BR-101": "http://www.wbf.org/xml/B2MML-V0401",
    "BR-102": "http://www.wbf.org/xml/B2MML-V0600",
}
AMENDMENT_NAMESPACE = (
    "http://www.mesa.org/xml/B2MML"  # the amended record came from the upgraded MES
)
EXPORT_DAYS = 7
SITE_HEADER = "# demo plant (batchtwin demo): CHO fed-batch site BASEL"


@dataclass(frozen=True)
class PlantSize(DemoSize):
    """The CHO plant's defaults: 15 batches scanned every 5 s."""

    batches: int = 15
    seconds_per_sample: float = 5.0
    seed: int = DEFAULT_SEED


def site_config() -> dict:
    """The plant's sources.yaml: how each of its systems exports, its units, lab dictionary,
    operating limits per phase and which model fits its product. Nothing of it is in the code."""
    limits = {
        # none while the medium warms up (PREPARATION) or the broth is chilled (HARVEST)
        "temperature": {
            ph: [sp[0] - 0.5, sp[0] + 0.5]
            for ph, sp in process.SETPOINTS.items()
            if ph not in ("PREPARATION", "HARVEST")
        },
        "ph": {
            ph: [round(sp[1] - 0.1, 2), round(sp[1] + 0.1, 2)]
            for ph, sp in process.SETPOINTS.items()
            if ph not in ("PREPARATION", "HARVEST")
        },
        "dissolved_oxygen": {
            ph: [30.0, 60.0] for ph in process.PHASES if ph not in ("PREPARATION", "HARVEST")
        },
    }
    return {
        "site": process.SITE,
        "files": {
            "tag_dictionary": {"dataset": "tags", "glob": "tags/*.csv"},
            "mes_batchml": {"dataset": "mes_xml", "glob": "mes/*.xml"},
            "mes_journal": {
                "dataset": "mes_journal",
                "glob": "mes/*.csv",
                "timestamp_format": "%Y-%m-%d %H:%M:%S",
                "timezone": process.SITE_TZ,
                "columns": {
                    "time": "Time",
                    "batch_id": "BatchID",
                    "recipe_path": "RecipePath",
                    "unit": "Unit",
                    "phase": "Phase",
                    "event": "Event",
                    "pvalue": "PValue",
                    "descript": "Descript",
                    "eng_units": "EngUnits",
                },
            },
            "historian_wide_br102": {
                "dataset": "historian_wide",
                "glob": "historian/*_wide.csv*",
                "delimiter": ";",
                "decimal": ",",
                "timestamp_format": "%d.%m.%Y %H:%M:%S",
                "timezone": process.SITE_TZ,
                "columns": {"ts": "Timestamp"},
            },
            "historian_long_pi": {
                "dataset": "historian_long",
                "glob": "historian/*.csv*",
                "columns": {"tag": "Tag", "ts": "Timestamp", "value": "Value", "status": "Status"},
            },
            "lims": {"dataset": "lims", "glob": "lims/*.csv"},
        },
        # relative to the landing zone: the SQLite file stands in for the plant's IP.21 server
        "sql": {"ip21_br201": {"url": "sqlite:///../sql/historian.sqlite"}},
        "parameters": {
            spec.parameter: spec.uom if spec.uom != "mL/min" else "L/h" for spec in TAG_SPECS
        },
        "analytes": {
            "vcd": {"unit": "1e6 cells/mL", "min": 0, "max": 100},
            "viability": {"unit": "%", "min": 0, "max": 100},
            "glucose": {"unit": "g/L", "units": ["g/L", "mg/dL"], "min": 0, "max": 50},
            "lactate": {"unit": "g/L", "units": ["g/L", "mg/dL"], "min": 0, "max": 20},
            "glutamine": {"unit": "mM", "units": ["mmol/L", "mM"], "min": 0, "max": 50},
            "ammonia": {"unit": "mM", "units": ["mmol/L", "mM"], "min": 0, "max": 50},
            "titer": {"unit": "g/L", "min": 0, "max": 20, "spec_low": 4.0},
            "osmolality": {
                "unit": "mOsm/kg",
                "min": 150,
                "max": 600,
                "spec_low": 270,
                "spec_high": 450,
            },
        },
        "limits": limits,
        "kpis": {
            "cell_density": "vcd",
            "product": "titer",
            "viability": "viability",
            "feed_rates": ["feed_rate"],
        },
        "models": {process.PRODUCT: [MODEL_CATALOG_ENTRY]},
    }


# The plant's model catalog entry (models.catalog): the lab's analytes and assay errors, the
# FEED-A medium, the 450 g/L glucose bolus, the MES charge and inoculum volumes, the bolus rule.
MODEL_CATALOG_ENTRY = {
    "model": "cho_fedbatch",
    "observables": {
        "vcd": {"analyte": "vcd", "cv": 0.07, "floor": 0.01},
        "viability": {"analyte": "viability", "cv": 0.0, "floor": 1.0},
        "glucose": {"analyte": "glucose", "cv": 0.03, "floor": 0.01},
        "lactate": {"analyte": "lactate", "cv": 0.04, "floor": 0.01},
        "glutamine": {"analyte": "glutamine", "cv": 0.06, "floor": 0.01},
        "ammonia": {"analyte": "ammonia", "cv": 0.06, "floor": 0.01},
        "titer": {"analyte": "titer", "cv": 0.05, "floor": 0.005},
    },
    "feeds": {"feed_rate": {k: f"{v:g} mM" for k, v in process.FEED_COMPOSITION.items()}},
    "boluses": {process.GLUCOSE_BOLUS_MATERIAL: {"G": "450 g/L"}},
    "volume": [
        {"materials": ["charge", "inoculum"]},
        {"parameter": "weight", "density": "1.02 kg/L"},
    ],
    "bolus_rule": {
        "material": process.GLUCOSE_BOLUS_MATERIAL,
        "observable": "glucose",
        "below": process.GLUCOSE_TRIGGER_G_L,
        "to": process.GLUCOSE_TARGET_G_L,
        "every_h": 24.0,
        "delay_h": 1.0,
    },
}


def demo_site(landing: Path = Path("landing")) -> Site:
    """The plant's site configuration as the pipeline reads it (for tests and notebooks)."""
    return parse_site(site_config(), landing)


def write_site_config(landing: Path, config: dict) -> None:
    """Write the plant's sources.yaml under its header line (`DemoFiles` checks it is ours)."""
    text = f"{SITE_HEADER}\n" + yaml.safe_dump(
        config, sort_keys=False, allow_unicode=True, width=100, default_flow_style=None
    )
    (Path(landing) / "sources.yaml").write_text(text, encoding="utf-8")


def generate(
    root: Path, size: DemoSize = PlantSize(), progress: Callable[[str], None] = lambda _: None
) -> dict:
    """Write `root/landing` (with its sources.yaml), `root/sql/historian.sqlite` and
    `root/truth.json`; return the truth."""
    if size.batches < 4:
        raise ValueError("the demo plant needs at least 4 batches to place every fault")
    root = Path(root)
    with DemoFiles(root, SITE_HEADER):
        return _generate(root, size, progress)


def _generate(root: Path, size: DemoSize, progress: Callable[[str], None]) -> dict:
    landing = root / "landing"
    for sub in ("tags", "mes", "historian", "lims"):
        (landing / sub).mkdir(parents=True, exist_ok=True)
    (root / "sql").mkdir(parents=True, exist_ok=True)
    write_site_config(landing, site_config())

    plans = process.plan_batches(size.batches, _stream(size.seed, "plan"))
    assay_rng = _stream(size.seed, "assay")
    runs = [
        process.run_batch(
            p, assay_rng, lambda a: float(assay_rng.normal(1.0, ASSAY_CV.get(a, 0.0)))
        )
        for p in plans
    ]
    as_of = (plans[-1].inoculation + timedelta(hours=156)).replace(minute=0, second=0)
    for p in plans:
        p.status = "complete" if p.end <= as_of else "running"
    progress(f"simulated {len(runs)} batches")

    faults: list[dict] = []
    _write_tags(landing / "tags" / "tag_dictionary.csv")
    for run in runs:
        _write_batch_record(landing / "mes", run.plan, as_of, faults, size.seed)
    progress("wrote MES batch records")
    _write_lims(landing / "lims", runs, as_of, _stream(size.seed, "lims"), faults)
    progress("wrote LIMS results")

    epoch = process.FIRST_START - timedelta(hours=12)
    t_s = np.arange(0.0, (as_of - epoch).total_seconds() + 1e-9, size.seconds_per_sample)
    for unit in process.UNITS:
        unit_runs = [r for r in runs if r.plan.unit == unit]
        points = _archive(unit, unit_runs, t_s, epoch, (size.seed, STREAMS["sensors"]))
        progress(f"{unit}: {len(points):,} archived historian points")
        if HISTORIAN_SOURCE[unit] == "long_csv":
            _write_long_csv(
                landing / "historian", unit, points, unit_runs, epoch, faults, size.seed
            )
        elif HISTORIAN_SOURCE[unit] == "wide_csv":
            _write_wide_csv(
                landing / "historian",
                unit,
                unit_runs,
                t_s,
                epoch,
                (size.seed, STREAMS["wide_sensors"]),
                faults,
            )
        else:
            _write_sql_historian(
                root / "sql" / "historian.sqlite", unit, points, unit_runs, epoch, faults
            )

    truth = _truth(runs, as_of, size, faults)
    (root / "truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True) + "\n")
    return truth


# ------------------------------------------------------------------ helpers


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _stream(seed: int, purpose: str, *sub: int) -> np.random.Generator:
    return np.random.default_rng([seed, STREAMS[purpose], *sub])


def _local(ts: datetime, fmt: str) -> str:
    return pd.Timestamp(ts).tz_convert(process.SITE_TZ).strftime(fmt)


def _minute(ts: datetime) -> datetime:
    return ts.replace(second=0, microsecond=0)


def _hours(plan: BatchPlan, h: float) -> datetime:
    return plan.inoculation + timedelta(hours=h)


def _format_ts(ts_utc_s: np.ndarray, fmt: str, tz: str) -> pa.Array:
    arr = pa.array(ts_utc_s.astype("datetime64[s]"), pa.timestamp("s", tz="UTC"))
    return pc.strftime(arr.cast(pa.timestamp("s", tz=tz)), format=fmt)


def _write_text(path: Path, text: str, gz: bool = False) -> None:
    data = text.encode("utf-8")
    if gz:
        buf = io.BytesIO()
        # mtime=0 and no file name in the header keep gzip output byte-identical across runs
        with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as f:
            f.write(data)
        data = buf.getvalue()
    path.write_bytes(data)


# ------------------------------------------------------------------ tag dictionary


def _write_tags(path: Path) -> None:
    rows = []
    for unit in process.UNITS:
        for spec in TAG_SPECS:
            uom, low, high = spec.uom, spec.low, spec.high
            if unit == "BR-102" and spec.parameter in ("temperature", "temperature_sp"):
                # BR-102's transmitter was configured in Fahrenheit by its skid vendor
                uom = "degF"
                low, high = (None if x is None else round(x * 9 / 5 + 32, 2) for x in (low, high))
            rows.append(
                {
                    "tag": tag_name(unit, spec),
                    "unit_id": unit,
                    "parameter": spec.parameter,
                    "uom": uom,
                    "role": spec.role,
                    "interpolation": spec.interpolation,
                    "low": "" if low is None else low,
                    "high": "" if high is None else high,
                    "max_gap_s": spec.max_gap_s,
                    "description": f"{unit} {spec.description}",
                }
            )
    pd.DataFrame(rows).to_csv(path, index=False, lineterminator="\n")


# ------------------------------------------------------------------ MES records


def _phase_events(plan: BatchPlan, as_of: datetime) -> list[tuple[datetime, str, str]]:
    """(time, phase, state) for every procedural-element state change seen by `as_of`."""
    events = []
    for name in PHASES:
        a, b = plan.phase_bounds_h[name]
        if _hours(plan, a) <= as_of:
            events.append((_hours(plan, a), name, "RUNNING"))
        if _hours(plan, b) <= as_of:
            events.append((_hours(plan, b), name, "COMPLETE"))
    return sorted(events, key=lambda e: (e[0], e[2] == "RUNNING"))


def _material_actuals(plan: BatchPlan, as_of: datetime) -> list[dict]:
    """Material additions recorded by the MES up to `as_of` (bolus, seed, medium, feed total)."""
    out = [
        {
            "ts": plan.start + timedelta(hours=0.5),
            "material": process.BASE_MEDIUM,
            "quantity": round(plan.y0[7] - 40.0, 1),
            "uom": "L",
            "kind": "charge",
        },
        {
            "ts": plan.inoculation,
            "material": process.SEED_MATERIAL,
            "quantity": 40.0,
            "uom": "L",
            "kind": "inoculum",
        },
    ]
    for b in plan.boluses:
        if _hours(plan, b.t_h) <= as_of:
            out.append(
                {
                    "ts": _hours(plan, b.t_h),
                    "material": b.material,
                    "quantity": b.volume_l,
                    "uom": "L",
                    "kind": "bolus",
                }
            )
    if plan.end <= as_of:
        total = sum(
            r * (min(nxt, plan.harvest_h) - t)
            for t, r, nxt in zip(
                plan.feed_times_h,
                plan.feed_rates_l_h,
                [*plan.feed_times_h[1:], plan.harvest_h],
                strict=True,
            )
        )
        out.append(
            {
                "ts": _hours(plan, plan.harvest_h),
                "material": process.FEED_MATERIAL,
                "quantity": round(total, 1),
                "uom": "L",
                "kind": "feed_total",
            }
        )
    return out


def _write_batch_record(
    mes: Path, plan: BatchPlan, as_of: datetime, faults: list[dict], seed: int
) -> None:
    if plan.record_format == "csv":
        _write_event_journal(mes / f"{plan.batch_id}_journal.csv", plan, as_of, faults)
        return
    first_xml_complete = plan.status == "complete" and plan.unit == "BR-101" and plan.seq == 0
    if first_xml_complete:
        # version 1 went out with a mistyped bolus volume and a harvest end entered too early;
        # QA's amendment (version 2) corrects both, and both files reach the landing zone
        true_bounds = dict(plan.phase_bounds_h)
        true_boluses = list(plan.boluses)
        a, b = plan.phase_bounds_h["HARVEST"]
        plan.phase_bounds_h["HARVEST"] = (a, b - 1.5)
        if plan.boluses:
            bol = plan.boluses[0]
            plan.boluses[0] = type(bol)(
                bol.t_h, round(bol.volume_l * 10, 1), bol.material, bol.concentrations
            )
        _write_xml(
            mes / f"{plan.batch_id}_v1.xml",
            plan,
            as_of,
            seed,
            version=1,
            changed=plan.end + timedelta(hours=2),
        )
        plan.phase_bounds_h = true_bounds
        plan.boluses = true_boluses
        _write_xml(
            mes / f"{plan.batch_id}_v2.xml",
            plan,
            as_of,
            seed,
            version=2,
            changed=plan.end + timedelta(days=3),
            namespace=AMENDMENT_NAMESPACE,
        )
        faults.append(
            {
                "fault": "amended_batch_record",
                "file": f"mes/{plan.batch_id}_v2.xml",
                "batch_id": plan.batch_id,
                "detail": "v2 supersedes v1: HARVEST end +1.5 h, first glucose bolus volume /10",
            }
        )
        return
    changed = min(plan.end, as_of) + timedelta(hours=2 if plan.status == "complete" else 0)
    _write_xml(mes / f"{plan.batch_id}.xml", plan, as_of, seed, version=1, changed=changed)


def _write_xml(
    path: Path,
    plan: BatchPlan,
    as_of: datetime,
    seed: int,
    version: int,
    changed: datetime,
    namespace: str | None = None,
) -> None:
    from lxml import etree

    ns = namespace or XML_NAMESPACE[plan.unit]
    E = lambda tag, text=None, parent=None: _el(etree, ns, tag, text, parent)  # noqa: E731
    root = E("BatchInformation")
    header = E("ListHeader", parent=root)
    E("ID", f"{plan.batch_id}-REC", header)
    E("CreateDate", _local_iso(plan.start), header)
    E("Version", str(version), header)
    E("LastChangedDate", _local_iso(changed), header)
    blist = E("BatchList", parent=root)
    running = plan.end > as_of
    batch = E("BatchListEntry", parent=blist)
    _entry(
        E,
        batch,
        plan.batch_id,
        "Batch",
        "Running" if running else "Complete",
        _hours(plan, plan.phase_bounds_h["PREPARATION"][0]),
        None if running else plan.end,
        plan.unit,
        extra={
            "RecipeID": process.RECIPE,
            "RecipeVersion": process.RECIPE_VERSION,
            "BatchID": plan.batch_id,
            "ProductID": process.PRODUCT,
        },
    )
    up = E("BatchListEntry", parent=batch)
    _entry(
        E,
        up,
        f"{plan.batch_id}:PRODUCTION",
        "UnitProcedure",
        "Running" if running else "Complete",
        plan.start,
        None if running else plan.end,
        plan.unit,
    )
    op = E("BatchListEntry", parent=up)
    _entry(
        E,
        op,
        f"{plan.batch_id}:PRODUCTION:CULTURE",
        "Operation",
        "Running" if running else "Complete",
        plan.start,
        None if running else plan.end,
        plan.unit,
    )
    for name in PHASES:
        a, b = (_hours(plan, h) for h in plan.phase_bounds_h[name])
        if a > as_of:
            break
        ph = E("BatchListEntry", parent=op)
        _entry(
            E,
            ph,
            f"{plan.batch_id}:PRODUCTION:CULTURE:{name}",
            "Phase",
            "Complete" if b <= as_of else "Running",
            a,
            b if b <= as_of else None,
            plan.unit,
        )
    bpr = E("BatchProductionRecord", parent=root)
    E("ID", f"{plan.batch_id}-BPR", bpr)
    E("Version", str(version), bpr)
    E("LastChangedDate", _local_iso(changed), bpr)
    E("BatchID", plan.batch_id, bpr)
    events = E("Events", parent=bpr)
    for i, (ts, name, state) in enumerate(_phase_events(plan, as_of)):
        ev = E("Event", parent=events)
        E("EntryID", f"EV{i + 1:04d}", ev)
        E("ObjectType", "Event", ev)
        E("TimeStamp", _local_iso(ts), ev)
        E("EventType", "Control Recipe", ev)
        E("EventSubType", "State Change", ev)
        E("EquipmentID", plan.unit, ev)
        val = E("Value", parent=ev)
        E("ValueString", state, val)
        E("DataType", "string", val)
        E("ProceduralElementReference", f"{plan.batch_id}:PRODUCTION:CULTURE:{name}", ev)
    perf = E("OperationsPerformance", parent=E("OperationsPerformances", parent=bpr))
    resp = E("OperationsResponse", parent=perf)
    seg = E("SegmentResponse", parent=resp)
    E("ID", f"{plan.batch_id}:PRODUCTION", seg)
    for m in _material_actuals(plan, as_of):
        ma = E("MaterialActual", parent=seg)
        E("MaterialDefinitionID", m["material"], ma)
        E("MaterialLotID", f"{m['material']}-{plan.batch_id}", ma)
        E("MaterialUse", "Consumed", ma)
        E("Description", m["kind"], ma)
        qty = E("Quantity", parent=ma)
        E("QuantityString", f"{m['quantity']:.1f}", qty)
        E("DataType", "double", qty)
        E("UnitOfMeasure", m["uom"], qty)
        prop = E("MaterialActualProperty", parent=ma)
        E("ID", "ActualTime", prop)
        pval = E("Value", parent=prop)
        E("ValueString", _local_iso(m["ts"]), pval)
        E("DataType", "dateTime", pval)
    # the operator's at-line cell count right after inoculation, recorded in the MES itself
    rng = _stream(seed, "inoculation_count", plan.seq)
    samples = E("Samples", parent=bpr)
    sample = E("Sample", parent=samples)
    E("EntryID", f"{plan.batch_id}-INOC", sample)
    E("ObjectType", "Sample", sample)
    E("TimeStamp", _local_iso(_minute(plan.inoculation + timedelta(minutes=10))), sample)
    xv, xd = plan.y0[0], plan.y0[1]
    for analyte, value, uom in (
        ("VCD", xv * rng.normal(1.0, ASSAY_CV["vcd"]), "1e6 cells/mL"),
        ("Viability", 100 * xv / (xv + xd) + rng.normal(0, VIABILITY_SD), "%"),
    ):
        test = E("SampleTest", parent=sample)
        E("EntryID", f"{plan.batch_id}-INOC-{analyte}", test)
        E("ObjectType", "Sample Test", test)
        E("TestName", analyte, test)
        result = E("SampleTestResult", parent=test)
        E("EntryID", f"{plan.batch_id}-INOC-{analyte}-R", result)
        E("ObjectType", "Sample Test Result", result)
        E("TimeStamp", _local_iso(_minute(plan.inoculation + timedelta(minutes=25))), result)
        res = E("Results", parent=result)
        E("ValueString", f"{min(value, 100.0):.2f}", res)
        E("DataType", "double", res)
        E("UnitOfMeasure", uom, res)
    path.write_bytes(
        etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    )


def _el(etree, ns, tag, text, parent):
    el = (
        etree.Element(f"{{{ns}}}{tag}", nsmap={None: ns})
        if parent is None
        else etree.SubElement(parent, f"{{{ns}}}{tag}")
    )
    if text is not None:
        el.text = text
    return el


def _local_iso(ts: datetime) -> str:
    return pd.Timestamp(ts).tz_convert(process.SITE_TZ).isoformat()


def _entry(E, el, ident, kind, status, start, end, unit, extra=None) -> None:
    E("ID", ident, el)
    E("BatchListEntryType", kind, el)
    E("Status", status, el)
    for k, v in (extra or {}).items():
        E(k, v, el)
    E("ActualStartTime", _local_iso(start), el)
    if end is not None:
        E("ActualEndTime", _local_iso(end), el)
    E("EquipmentID", unit, el)


def _write_event_journal(path: Path, plan: BatchPlan, as_of: datetime, faults: list[dict]) -> None:
    """DeltaV-style journal: naive local wall-clock times, one row per state change or event."""
    rows = []
    cell = "CELL_CULTURE"
    proc = f"{process.RECIPE}:1"

    def row(ts, recipe_path, phase, event, pvalue, descript="", eng=""):
        rows.append(
            (
                ts,
                _local(ts, "%Y-%m-%d %H:%M:%S"),
                plan.batch_id,
                recipe_path,
                plan.unit,
                phase,
                event,
                pvalue,
                descript,
                eng,
                "USP",
                cell,
                "OPER1",
            )
        )

    row(plan.start - timedelta(minutes=5), proc, "", "Batch", "CREATED", "Batch created")
    row(
        plan.start - timedelta(minutes=5),
        proc,
        "",
        "Recipe Header",
        process.PRODUCT,
        "Product Code",
    )
    row(
        plan.start - timedelta(minutes=5),
        proc,
        "",
        "Recipe Header",
        process.RECIPE_VERSION,
        "Recipe Version",
    )
    row(plan.start, proc, "", "State Change", "RUNNING", "Procedure")
    row(plan.start, f"{proc}\\PRODUCTION:1", "", "State Change", "RUNNING", "Unit Procedure")
    row(plan.start, f"{proc}\\PRODUCTION:1", "", "Arbitration", "ACQUIRED", "Unit acquired")
    row(plan.start, f"{proc}\\PRODUCTION:1\\CULTURE:1", "", "State Change", "RUNNING", "Operation")
    for ts, name, state in _phase_events(plan, as_of):
        row(ts, f"{proc}\\PRODUCTION:1\\CULTURE:1\\{name}:1", name, "State Change", state, "Phase")
    for m in _material_actuals(plan, as_of):
        row(
            m["ts"],
            f"{proc}\\PRODUCTION:1\\CULTURE:1",
            "",
            "Material Charge",
            f"{m['quantity']:.1f}",
            f"{m['material']} {m['kind']}",
            m["uom"],
        )
    if plan.end <= as_of:
        row(
            plan.end,
            f"{proc}\\PRODUCTION:1\\CULTURE:1",
            "",
            "State Change",
            "COMPLETE",
            "Operation",
        )
        row(plan.end, f"{proc}\\PRODUCTION:1", "", "Arbitration", "RELEASED", "Unit released")
        row(plan.end, f"{proc}\\PRODUCTION:1", "", "State Change", "COMPLETE", "Unit Procedure")
        row(plan.end, proc, "", "State Change", "COMPLETE", "Procedure")
        row(plan.end + timedelta(minutes=30), proc, "", "Batch", "REMOVED", "Batch removed")
    rows.sort(key=lambda r: r[0])
    df = pd.DataFrame(
        [r[1:] for r in rows],
        columns=[
            "Time",
            "BatchID",
            "RecipePath",
            "Unit",
            "Phase",
            "Event",
            "PValue",
            "Descript",
            "EngUnits",
            "Area",
            "ProcessCell",
            "UserID",
        ],
    )
    df.to_csv(path, index=False, lineterminator="\n")
    if _crosses_dst(plan.start, min(plan.end, as_of)):
        faults.append(
            {
                "fault": "dst_change",
                "file": f"mes/{path.name}",
                "batch_id": plan.batch_id,
                "detail": "naive local times skip 02:00-03:00 on 2026-03-29",
            }
        )


def _crosses_dst(a: datetime, b: datetime) -> bool:
    return (
        pd.Timestamp(a).tz_convert(process.SITE_TZ).utcoffset()
        != pd.Timestamp(b).tz_convert(process.SITE_TZ).utcoffset()
    )


# ------------------------------------------------------------------ LIMS


def _write_lims(
    lims: Path, runs: list[BatchRun], as_of: datetime, rng: np.random.Generator, faults: list[dict]
) -> None:
    rows = []
    for run in runs:
        plan = run.plan
        st = process.simulate(
            MODEL, process.TRUE_PARAMETERS, plan.y0, plan.inputs(), run.sample_times_h
        )
        obs = MODEL.observe(st)
        for k, t_h in enumerate(run.sample_times_h):
            sampled = _minute(_hours(plan, t_h))
            sample_id = f"{plan.batch_id}-D{k:02d}"
            for analyte, uom in LIMS_UNITS.items():
                if analyte == "titer" and t_h < 48:
                    continue
                if analyte == "osmolality":
                    g, q, lac, amm = st[2, k], st[3, k], st[4, k], st[5, k]
                    true = 250.0 + 1.9 * (g + q + lac + amm) + 0.012 * (st[7, k] - plan.y0[7])
                    value = true + rng.normal(0.0, 3.0)
                elif analyte == "viability":
                    value = min(obs[analyte][k] + rng.normal(0.0, VIABILITY_SD), 100.0)
                else:
                    value = obs[analyte][k] * rng.normal(1.0, ASSAY_CV[analyte])
                delay_h = 26.0 if analyte == "titer" else 2.5
                reported = _minute(
                    sampled + timedelta(hours=delay_h + float(rng.uniform(0.0, 1.5)))
                )
                if reported > as_of:
                    continue
                digits = {"vcd": 2, "viability": 1, "osmolality": 0, "titer": 3}.get(analyte, 2)
                rows.append(
                    [
                        sample_id,
                        plan.batch_id,
                        analyte,
                        f"{value:.{digits}f}",
                        uom,
                        sampled,
                        reported,
                    ]
                )
    df = pd.DataFrame(
        rows,
        columns=["sample_id", "batch_id", "analyte", "value", "unit", "sampled_at", "reported_at"],
    )
    # the lab's LOQ for ammonia is 0.5 mM; results below it are reported as text
    loq = df.index[(df.analyte == "ammonia") & (df.value.astype(float) < 0.5)]
    df.loc[loq, "value"] = "<0.5"
    first_batch = runs[0].plan.batch_id
    retest = df[(df.batch_id == first_batch) & (df.analyte == "glucose")].iloc[[3]].copy()
    retest["value"] = f"{float(retest.value.iloc[0]) * 1.04:.2f}"
    retest["reported_at"] = retest["reported_at"] + timedelta(hours=20)
    df = pd.concat([df, retest]).sort_values(
        ["sampled_at", "batch_id", "analyte", "reported_at"], kind="stable"
    )
    faults.append(
        {
            "fault": "lims_retest",
            "file": "lims",
            "batch_id": first_batch,
            "detail": (
                f"sample {retest.sample_id.iloc[0]} glucose reported twice; the later result wins"
            ),
        }
    )
    if len(loq):
        faults.append(
            {
                "fault": "lims_below_loq",
                "file": "lims",
                "detail": f"{len(loq)} ammonia results '<0.5'",
            }
        )
    df["week"] = df["sampled_at"].map(lambda t: (t - process.FIRST_START).days // EXPORT_DAYS)
    for week, part in df.groupby("week", sort=True):
        name = f"lims_{(process.FIRST_START + timedelta(days=EXPORT_DAYS * int(week))).date()}.csv"
        out = part.drop(columns="week").copy()
        for col in ("sampled_at", "reported_at"):
            out[col] = out[col].map(_local_iso)
        text = out.to_csv(index=False, lineterminator="\n")
        if int(week) == 1:
            # a hand-edited line: a European decimal comma splits the value field in two
            lines = text.splitlines(keepends=True)
            victim = next(i for i, line in enumerate(lines) if ",lactate," in line)
            parts = lines[victim].split(",")
            parts[3] = parts[3].replace(".", ",")
            lines[victim] = ",".join(parts)
            text = "".join(lines)
            faults.append(
                {
                    "fault": "malformed_line",
                    "file": f"lims/{name}",
                    "line": victim + 1,
                    "detail": "decimal comma in a comma-separated file",
                }
            )
        _write_text(lims / name, text)


# ------------------------------------------------------------------ historian


def _archive(
    unit: str,
    unit_runs: list[BatchRun],
    t_s: np.ndarray,
    epoch: datetime,
    noise_key: tuple[int, ...],
) -> pd.DataFrame:
    """Compressed archive of one unit: columns tag, t_s (seconds since epoch), value."""
    signals = process.sensor_signals(unit_runs, t_s, epoch, noise_key)
    frames = []
    for spec in TAG_SPECS:
        v = np.round(signals[spec.suffix], spec.resolution)
        if unit == "BR-102" and spec.parameter in ("temperature", "temperature_sp"):
            v = np.round(v * 9 / 5 + 32, spec.resolution)
        if spec.role == "sp" or spec.interpolation == "step":
            # step tags change rarely: the archive keeps changes plus a periodic heartbeat
            changed = np.flatnonzero(np.diff(v) != 0)
            idx = np.union1d(np.union1d(changed, changed + 1), [0, len(v) - 1])
            beat = np.arange(0, len(v), max(1, int(COMPRESSION_MAX_S["sp"] / (t_s[1] - t_s[0]))))
            idx = np.union1d(idx, beat)
        else:
            idx = swinging_door(t_s, v, spec.dev, COMPRESSION_MAX_S["pv"])
        frames.append(pd.DataFrame({"tag": tag_name(unit, spec), "t_s": t_s[idx], "value": v[idx]}))
    return pd.concat(frames, ignore_index=True)


def _window_of(run: BatchRun, epoch: datetime, h0: float, h1: float) -> tuple[float, float]:
    base = (run.plan.inoculation - epoch).total_seconds()
    return base + h0 * 3600.0, base + h1 * 3600.0


def _write_long_csv(
    folder: Path,
    unit: str,
    pts: pd.DataFrame,
    unit_runs: list[BatchRun],
    epoch: datetime,
    faults: list[dict],
    seed: int,
) -> None:
    pts = pts.copy()
    pts["status"] = "Good"
    pts["text"] = pts["value"].map(repr)
    u = unit.replace("-", "")
    first = unit_runs[0]
    tag = lambda s: f"{u}.{s}"  # noqa: E731

    # gap: the temperature transmitter lost its interface for three hours
    a, b = _window_of(first, epoch, 90.0, 93.0)
    pts = pts[~((pts.tag == tag("TT01.PV")) & (pts.t_s > a) & (pts.t_s < b))]
    faults.append(
        {
            "fault": "gap",
            "file": "historian",
            "tag": tag("TT01.PV"),
            "batch_id": first.plan.batch_id,
            "detail": "no data for t_batch_h 90-93",
        }
    )
    # digital states in the value column
    for state, suffix, h0, h1 in (
        ("I/O Timeout", "DO01.PV", 50.0, 50.5),
        ("Scan Off", "AG01.PV", 120.0, 120.4),
    ):
        a, b = _window_of(first, epoch, h0, h1)
        m = (pts.tag == tag(suffix)) & (pts.t_s >= a) & (pts.t_s < b)
        t0 = a if not m.any() else pts.loc[m, "t_s"].min()
        extra = pd.DataFrame(
            {
                "tag": [tag(suffix)],
                "t_s": [t0 - 1.0],
                "value": [np.nan],
                "status": ["Bad"],
                "text": [state],
            }
        )
        pts.loc[m, ["text", "status"]] = [state, "Bad"]
        pts = pd.concat([pts, extra], ignore_index=True)
        faults.append(
            {
                "fault": "digital_state",
                "file": "historian",
                "tag": tag(suffix),
                "batch_id": first.plan.batch_id,
                "detail": f"{state} for t_batch_h {h0}-{h1}",
            }
        )
    first_rows = pts.sort_values("t_s", kind="stable").groupby("tag").head(1).index
    pts.loc[first_rows, ["text", "status"]] = ["Pt Created", "Bad"]
    # bad quality: a fouled pH probe reads high and the historian flags it
    a, b = _window_of(first, epoch, 200.0, 200.75)
    m = (pts.tag == tag("PH01.PV")) & (pts.t_s >= a) & (pts.t_s < b)
    pts.loc[m, "status"] = "Questionable"
    pts.loc[m, "text"] = (pts.loc[m, "value"] + 0.3).round(3).map(repr)
    a, b = _window_of(first, epoch, 200.75, 201.0)
    m2 = (pts.tag == tag("PH01.PV")) & (pts.t_s >= a) & (pts.t_s < b)
    pts.loc[m2, "status"] = "Bad"
    faults.append(
        {
            "fault": "bad_quality",
            "file": "historian",
            "tag": tag("PH01.PV"),
            "batch_id": first.plan.batch_id,
            "detail": (
                f"{int(m.sum())} Questionable + {int(m2.sum())} Bad points at t_batch_h 200-201"
            ),
        }
    )
    # an unknown tag: a temporary probe nobody added to the dictionary
    a, b = _window_of(first, epoch, 30.0, 36.0)
    probe = pts[(pts.tag == tag("TT01.PV")) & (pts.t_s >= a) & (pts.t_s < b)].copy()
    probe["tag"] = tag("TT99.PV")
    pts = pd.concat([pts, probe], ignore_index=True)
    faults.append(
        {
            "fault": "unknown_tag",
            "file": "historian",
            "tag": tag("TT99.PV"),
            "detail": f"{len(probe)} rows",
        }
    )
    pts = pts.sort_values(["t_s", "tag"], kind="stable").reset_index(drop=True)
    pts["ts_text"] = _format_ts(
        pts["t_s"].to_numpy() + epoch.timestamp(), "%Y-%m-%dT%H:%M:%S%z", process.SITE_TZ
    ).to_pylist()

    pts["week"] = (pts["t_s"] // (EXPORT_DAYS * 86400)).astype(int)
    for week, part in pts.groupby("week", sort=True):
        lines = [f"{r.tag},{r.ts_text},{r.text},{r.status}\n" for r in part.itertuples(index=False)]
        start = (epoch + timedelta(days=EXPORT_DAYS * int(week))).date()
        name = f"{u}_{start}.csv" + (".gz" if int(week) % 2 else "")
        if int(week) == 1:
            rng = _stream(seed, "historian_faults")
            # interface re-sent part of a buffer: exact duplicates, plus two conflicting values
            dup = sorted(rng.choice(len(lines), 40, replace=False).tolist())
            for k in reversed(dup):
                lines.insert(k + 1, lines[k])
            for k in rng.choice(len(lines), 2, replace=False).tolist():
                t, ts, v, s = lines[k].rstrip("\n").split(",")
                if v.replace(".", "").replace("-", "").isdigit():
                    lines.insert(k + 1, f"{t},{ts},{float(v) * 1.01:.3f},{s}\n")
            # a store-and-forward buffer flushed late: a block of rows arrives out of order
            lines[1000:1300] = lines[1000:1300][::-1]
            # a partial write: the line is cut mid-timestamp
            lines.insert(2000, lines[2000][:24] + "\n")
            faults.append(
                {
                    "fault": "duplicate_rows",
                    "file": f"historian/{name}",
                    "detail": "40 exact duplicates + up to 2 conflicting values",
                }
            )
            faults.append(
                {
                    "fault": "out_of_order_rows",
                    "file": f"historian/{name}",
                    "detail": "rows 1000-1300 reversed",
                }
            )
            faults.append(
                {
                    "fault": "malformed_line",
                    "file": f"historian/{name}",
                    "line": 2002,
                    "detail": "truncated line",
                }
            )
        _write_text(
            folder / name, "Tag,Timestamp,Value,Status\n" + "".join(lines), gz=name.endswith(".gz")
        )


def _write_wide_csv(
    folder: Path,
    unit: str,
    unit_runs: list[BatchRun],
    t_s: np.ndarray,
    epoch: datetime,
    noise_key: tuple[int, ...],
    faults: list[dict],
) -> None:
    """The historian's 'sampled' export: one row per minute, one column per tag (interpolated)."""
    step = 60.0
    grid = np.arange(0.0, t_s[-1] + 1e-9, step)
    signals = process.sensor_signals(unit_runs, grid, epoch, noise_key)
    u = unit.replace("-", "")
    df = pd.DataFrame(
        {
            "Timestamp": _format_ts(
                grid + epoch.timestamp(), "%d.%m.%Y %H:%M:%S", process.SITE_TZ
            ).to_pylist()
        }
    )
    for spec in TAG_SPECS:
        v = signals[spec.suffix]
        if spec.parameter in ("temperature", "temperature_sp"):
            v = v * 9 / 5 + 32
        df[tag_name(unit, spec)] = [f"{x:.{spec.resolution}f}".replace(".", ",") for x in v]
    first = unit_runs[0]
    a, b = _window_of(first, epoch, 40.0, 40.1)
    m = (grid >= a) & (grid < b)
    df.loc[m, f"{u}.TT01.PV"] = "Bad Input"
    faults.append(
        {
            "fault": "digital_state",
            "file": "historian",
            "tag": f"{u}.TT01.PV",
            "batch_id": first.plan.batch_id,
            "detail": f"Bad Input in {int(m.sum())} wide rows",
        }
    )
    faults.append(
        {
            "fault": "fahrenheit_unit",
            "file": "tags/tag_dictionary.csv",
            "tag": f"{u}.TT01.PV",
            "detail": "BR-102 temperature in degF",
        }
    )
    week = (grid // (EXPORT_DAYS * 86400)).astype(int)
    for w in np.unique(week):
        part = df[week == w]
        start = (epoch + timedelta(days=EXPORT_DAYS * int(w))).date()
        name = f"{u}_{start}_wide.csv"
        _write_text(folder / name, part.to_csv(index=False, sep=";", lineterminator="\n"))
        stamps = (
            epoch + timedelta(seconds=float(grid[week == w][0])),
            epoch + timedelta(seconds=float(grid[week == w][-1])),
        )
        if _crosses_dst(*stamps):
            faults.append(
                {
                    "fault": "dst_change",
                    "file": f"historian/{name}",
                    "detail": "naive local times skip 02:00-03:00 on 2026-03-29",
                }
            )


SQL_STATUS_GOOD, SQL_STATUS_SUSPECT, SQL_STATUS_BAD = 0, 1, 2


def _write_sql_historian(
    path: Path,
    unit: str,
    pts: pd.DataFrame,
    unit_runs: list[BatchRun],
    epoch: datetime,
    faults: list[dict],
) -> None:
    """IP.21-style `history(name, ts, value, status)`; ts is UTC text, status 0/1/2."""
    pts = pts.copy()
    pts["status"] = SQL_STATUS_GOOD
    u = unit.replace("-", "")
    first = unit_runs[0]
    # stuck sensor: the pH transmitter froze for eight hours while reporting good quality
    a, b = _window_of(first, epoch, 150.0, 158.0)
    m = (pts.tag == f"{u}.PH01.PV") & (pts.t_s >= a) & (pts.t_s < b)
    frozen = pts.loc[m, "value"].iloc[0] if m.any() else 7.0
    keep = m & (((pts.t_s - a) % 600.0) < 1e-6)
    pts = pts[~m | keep]
    beats = pd.DataFrame(
        {
            "tag": f"{u}.PH01.PV",
            "t_s": np.arange(a, b, 600.0),
            "value": frozen,
            "status": SQL_STATUS_GOOD,
        }
    )
    pts = pd.concat(
        [pts[~((pts.tag == f"{u}.PH01.PV") & (pts.t_s >= a) & (pts.t_s < b))], beats],
        ignore_index=True,
    )
    faults.append(
        {
            "fault": "stuck_sensor",
            "file": "sql/historian.sqlite",
            "tag": f"{u}.PH01.PV",
            "batch_id": first.plan.batch_id,
            "detail": f"constant {frozen} for t_batch_h 150-158",
        }
    )
    a, b = _window_of(first, epoch, 60.0, 60.4)
    m = (pts.tag == f"{u}.DO01.PV") & (pts.t_s >= a) & (pts.t_s < b)
    pts.loc[m, "status"] = SQL_STATUS_BAD
    faults.append(
        {
            "fault": "bad_quality",
            "file": "sql/historian.sqlite",
            "tag": f"{u}.DO01.PV",
            "batch_id": first.plan.batch_id,
            "detail": f"{int(m.sum())} points with status 2",
        }
    )
    pts = pts.sort_values(["t_s", "tag"], kind="stable")
    ts_text = _format_ts(
        pts["t_s"].to_numpy() + epoch.timestamp(), "%Y-%m-%d %H:%M:%S", "UTC"
    ).to_pylist()
    path.unlink(missing_ok=True)
    con = sqlite3.connect(path)
    with con:
        con.execute(
            "CREATE TABLE history "
            "(name TEXT NOT NULL, ts TEXT NOT NULL, value REAL, status INTEGER NOT NULL)"
        )
        con.executemany(
            "INSERT INTO history VALUES (?, ?, ?, ?)",
            zip(
                pts["tag"].tolist(),
                ts_text,
                pts["value"].tolist(),
                pts["status"].astype(int).tolist(),
                strict=True,
            ),
        )
        con.execute("CREATE INDEX history_ts ON history (ts)")
    con.close()


# ------------------------------------------------------------------ truth


def _truth(runs: list[BatchRun], as_of: datetime, size: DemoSize, faults: list[dict]) -> dict:
    batches = []
    for run in runs:
        plan = run.plan
        final = MODEL.observe(run.states[:, -1:])
        batches.append(
            {
                "batch_id": plan.batch_id,
                "unit_id": plan.unit,
                "product": process.PRODUCT,
                "status": plan.status,
                "record_format": plan.record_format,
                "start_ts": _iso(plan.start),
                "inoculation_ts": _iso(plan.inoculation),
                "end_ts": _iso(plan.end),
                "phases": {
                    k: {
                        "start_ts": _iso(_hours(plan, a)),
                        "end_ts": _iso(_hours(plan, b)),
                        "start_h": a,
                        "end_h": b,
                        "setpoints": dict(
                            zip(
                                ("temperature", "ph", "dissolved_oxygen", "agitation"),
                                process.SETPOINTS[k],
                                strict=True,
                            )
                        ),
                    }
                    for k, (a, b) in plan.phase_bounds_h.items()
                },
                "initial_state": dict(zip(MODEL.state_names(), plan.y0, strict=True)),
                "feed_times_h": plan.feed_times_h,
                "feed_rates_l_h": plan.feed_rates_l_h,
                "boluses": [
                    {"t_h": b.t_h, "volume_l": b.volume_l, "material": b.material}
                    for b in plan.boluses
                ],
                "harvest_h": plan.harvest_h,
                "final": {k: float(v[0]) for k, v in final.items()},
                "ivcd_1e6_cells_h_per_ml": float(np.trapezoid(run.states[0], run.grid_h)),
                "peak_vcd": float(run.states[0].max()),
            }
        )
    return {
        "model": MODEL.name,
        "parameters": process.TRUE_PARAMETERS,
        "fitted_in_truth": [p.name for p in MODEL.parameters if not p.fixed],
        "as_of": _iso(as_of),
        "site_tz": process.SITE_TZ,
        "size": {
            "batches": size.batches,
            "seconds_per_sample": size.seconds_per_sample,
            "seed": size.seed,
        },
        "batches": batches,
        "faults": faults,
    }
