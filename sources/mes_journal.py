"""MES event journals (DeltaV / FactoryTalk Batch style): state changes -> batches and phases.

The journal has one row per event. A procedural element starts at its RUNNING state change
and ends at its last terminal one (COMPLETE, STOPPED, ABORTED); its level follows the depth
of its recipe path (Procedure\\UnitProcedure\\Operation\\Phase).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sources.base import (
    CsvShape,
    ReadResult,
    finish_records,
    parse_timestamps,
    read_csv_text,
    rejects_where,
    require_columns,
    timestamp_reason,
)
from sources.profiles import FileProfile

LEVELS = {1: "procedure", 2: "unit_procedure", 3: "operation"}
TERMINAL = ("COMPLETE", "STOPPED", "ABORTED")


def _element_name(path: str) -> str:
    return path.replace("/", "\\").split("\\")[-1].split(":")[0]


def read_journal(path: Path, sha256: str, rel_path: str, profile: FileProfile) -> ReadResult:
    """Rebuild batches and their procedural elements from an MES event journal's state changes,
    and material events from its material charges; rows_read counts the records the lines call
    for plus the lines that could not be read (the note gives the journal lines read)."""
    df, lines, rejects = read_csv_text(path, CsvShape.of(profile, path), sha256, rel_path)
    col = {
        k: profile.column(k)
        for k in (
            "time",
            "batch_id",
            "recipe_path",
            "unit",
            "phase",
            "event",
            "pvalue",
            "descript",
            "eng_units",
        )
    }
    require_columns(df, [col[k] for k in ("time", "batch_id", "recipe_path", "event", "pvalue")])
    ts = parse_timestamps(df[col["time"]], profile.timestamp_format, profile.timezone)
    bad = ts.isna()
    problems = [
        rejects_where(
            bad,
            df,
            lines,
            col["time"],
            "timestamp",
            timestamp_reason(profile.timestamp_format, profile.timezone),
            sha256,
            rel_path,
        )
    ]
    ev = df[~bad].assign(ts=ts[~bad], line=lines[~bad.to_numpy()])
    batches, phases, materials = [], [], []
    for batch_id, rows in ev.groupby(col["batch_id"], sort=True):
        rows = rows.sort_values(["ts", "line"], kind="stable")
        elements: dict[str, dict] = {}
        for r in rows[rows[col["event"]].str.strip().str.lower() == "state change"].itertuples(
            index=False
        ):
            rec = r._asdict()
            rpath = rec[col["recipe_path"]].strip()
            state = rec[col["pvalue"]].strip().upper()
            el = elements.setdefault(
                rpath,
                {
                    "start_ts": pd.NaT,
                    "end_ts": pd.NaT,
                    "line": rec["line"],
                    "unit": rec.get(col["unit"], ""),
                },
            )
            if state == "RUNNING" and pd.isna(el["start_ts"]):
                el["start_ts"], el["line"] = rec["ts"], rec["line"]
            elif state in TERMINAL:
                el["end_ts"], el["final"] = rec["ts"], state
        header = rows[rows[col["event"]].str.strip().str.lower() == "recipe header"]
        product = (
            header.loc[header[col["descript"]].str.lower() == "product code", col["pvalue"]]
            if col["descript"] in header
            else pd.Series(dtype=str)
        )
        proc = [p for p in elements if p.replace("/", "\\").count("\\") == 0]
        root = (
            elements[proc[0]]
            if proc
            else {"start_ts": rows["ts"].min(), "end_ts": pd.NaT, "line": int(rows["line"].min())}
        )
        depth_seq: dict[str, int] = {}
        inoculation = pd.NaT
        unit_id = None
        for rpath, el in sorted(
            elements.items(),
            key=lambda kv: (
                kv[1]["start_ts"]
                if pd.notna(kv[1]["start_ts"])
                else pd.Timestamp.max.tz_localize("UTC")
            ),
        ):
            depth = rpath.replace("/", "\\").count("\\") + 1
            level = LEVELS.get(depth, "phase")
            depth_seq[level] = depth_seq.get(level, 0) + 1
            name = _element_name(rpath)
            if level == "unit_procedure" and el["unit"]:
                unit_id = el["unit"]
            if level == "phase" and name == profile.inoculation_phase:
                inoculation = el["start_ts"]
            phases.append(
                {
                    "batch_id": batch_id,
                    "unit_id": el["unit"] or None,
                    "level": level,
                    "path": f"{batch_id}:"
                    + ":".join(_element_name(s) for s in rpath.replace("/", "\\").split("\\")),
                    "phase": name,
                    "seq": depth_seq[level],
                    "start_ts": el["start_ts"],
                    "end_ts": el["end_ts"],
                    "record_version": 1,
                    "derived": None,
                    "line": el["line"],
                }
            )
        status = root.get("final", "RUNNING" if pd.isna(root["end_ts"]) else "COMPLETE").lower()
        batches.append(
            {
                "batch_id": batch_id,
                "product": product.iloc[0].strip() if len(product) else None,
                "site": profile.site,
                "unit_id": unit_id or (rows[col["unit"]].iloc[0] if col["unit"] in rows else None),
                "recipe_id": _element_name(proc[0]) if proc else None,
                "status": status,
                "start_ts": root["start_ts"],
                "end_ts": root["end_ts"],
                "derived": None
                if proc
                else "start_ts: its first journal event (no procedure state change)",
                "inoculation_ts": inoculation,
                "record_version": 1,
                "record_ts": rows["ts"].max(),
                "line": root["line"],
            }
        )
        charges = rows[rows[col["event"]].str.strip().str.lower() == "material charge"]
        for r in charges.itertuples(index=False):
            rec = r._asdict()
            words = str(rec.get(col["descript"], "")).split(maxsplit=1)
            qty = pd.to_numeric(rec[col["pvalue"]], errors="coerce")
            if pd.isna(qty):
                problems.append(
                    pd.DataFrame(
                        [
                            {
                                "source_sha256": sha256,
                                "source_row": rec["line"],
                                "source_path": rel_path,
                                "column": col["pvalue"],
                                "check": "number_parse",
                                "failure_value": rec[col["pvalue"]],
                                "reason": "material quantity is not a number",
                            }
                        ]
                    )
                )
                continue
            materials.append(
                {
                    "batch_id": batch_id,
                    "ts": rec["ts"],
                    "material": words[0] if words else "",
                    "lot_id": None,
                    "quantity": float(qty),
                    "uom": rec.get(col["eng_units"], "") or "",
                    "kind": words[1] if len(words) > 1 else None,
                    "record_version": 1,
                    "derived": None,
                    "line": rec["line"],
                }
            )
    tables = {
        name: finish_records(rows, sha256, rel_path)
        for name, rows in (
            ("batch_records", batches),
            ("phase_records", phases),
            ("material_event_records", materials),
        )
    }
    quarantined = pd.concat([rejects, *problems], ignore_index=True)
    # a journal's lines are events, several of which make one record (a phase's start and end):
    # its rows are the records its lines call for, counted from the lines themselves (not from
    # what was built, so a record lost on the way shows in the ingest's conservation check),
    # plus the lines that make no record because they could not be read
    event = ev[col["event"]].str.strip().str.lower()
    changes = ev[event == "state change"]
    called_for = (
        ev[col["batch_id"]].nunique()  # a batch record per batch
        + len(
            changes.assign(path=changes[col["recipe_path"]].str.strip())[
                [col["batch_id"], "path"]
            ].drop_duplicates()
        )
        + int((event == "material charge").sum())  # a material event, or its quarantined line
    )
    unread = len(rejects) + len(problems[0])  # malformed lines, unreadable times
    built = sum(len(t) for t in tables.values())
    note = f"{len(df) + len(rejects)} journal lines made {built} records"
    return ReadResult(tables, quarantined, rows_read=called_for + unread, notes=[note])
