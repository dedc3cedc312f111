"""Ingestion: landing file or SQL pull -> raw copy, validated silver Parquet, quarantine, log.

For every source: rows read = rows accepted + rows quarantined, recorded in `ingest_log`.
A file is identified by its SHA-256: ingesting it again changes nothing but adds an
`unchanged` log row. The per-file commit marker is written last, so a crash mid-ingest
leaves no marker and the rerun rewrites the same files.
"""
from __future__ import annotations

import functools
import json
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import metadata
from pathlib import Path

import duckdb
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow

from lake import audit, historian_ingest
from lake.duck import connect
from lake.layout import Lake, atomic_write_bytes, atomic_write_parquet, copy_write_once
from schemas.tables import SILVER_MODELS
from schemas.validate import SchemaRejected, quarantine_frame, resolve_duplicates, split
from sources import historian_csv, lims, mes_journal, mes_xml, sql_historian, tags
from sources.base import ReadResult, SourceRejected, sha256_of
from sources.profiles import FileProfile, SqlProfile, profile_for

READERS = {
    "tags": tags.read_tags,
    "historian_long": historian_csv.read_long,
    "historian_wide": historian_csv.read_wide,
    "lims": lims.read_lims,
    "mes_xml": mes_xml.read_batchml,
    "mes_journal": mes_journal.read_journal,
}
# Documented duplicate rules: (key columns, preference order, ascending?, rule text)
DUPLICATE_RULES = {
    "historian_points": (
        ["tag", "ts"], ["quality_rank", "source_row"], [True, False],
        historian_ingest.WITHIN_FILE_RULE,
    ),
    "samples": (
        ["sample_id", "analyte"], ["reported_ts", "source_row"], [False, False],
        "duplicate (sample_id, analyte): the latest reported result supersedes (a lab retest)",
    ),
    "tags": (["tag"], ["source_row"], [False], "duplicate tag: the later definition in the file wins"),
}
QUALITY_RANK = {"good": 0, "substituted": 1, "uncertain": 2, "bad": 3}


@functools.cache
def code_version() -> str:
    try:
        version = metadata.version("batchtwin")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+g{commit}" if commit else version


@dataclass
class IngestOutcome:
    """What one source contributed: its ingest_log row plus per-table counts and reasons."""

    log: dict
    accepted: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return self.log["status"]


def landing_files(landing: Path, profiles: list[FileProfile], dataset: str | None = None) -> list[tuple[str, FileProfile]]:
    """Landing files (relative paths, sorted) with the profile that reads each."""
    out = []
    for path in sorted(Path(landing).rglob("*")):
        if not path.is_file() or path.name.startswith(".") or path.name == "sources.yaml":
            continue
        if not _inside_landing(landing, path):  # a symlink out of the landing zone (e.g. to /etc/passwd) is never ingested
            continue
        rel = path.relative_to(landing).as_posix()
        prof = profile_for(rel, profiles)
        if prof is not None and (dataset is None or prof.dataset == dataset):
            out.append((rel, prof))
    return out


def _inside_landing(landing: Path, path: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(landing).resolve())


def known_tags(lake: Lake) -> set[str] | None:
    """Tags in the dictionary (None when no dictionary was ingested yet: nothing to check against)."""
    folder = lake.silver("tags")
    if not any(folder.glob("*.parquet")):
        return None
    with duckdb.connect() as con:
        return {r[0] for r in con.execute("SELECT DISTINCT tag FROM read_parquet(?)", [str(folder / "*.parquet")]).fetchall()}


def ingest_file(lake: Lake, landing: Path, rel_path: str, profile: FileProfile, run_id: str | None = None, tags_known: set[str] | None = None) -> IngestOutcome:
    started = _now()
    path = Path(landing) / rel_path
    if not _inside_landing(landing, path):  # '..' or a symlink: the file would be copied into the lake and be queryable there
        raise ValueError(f"{rel_path}: resolves outside the landing zone {landing}; refusing to read it")
    sha = sha256_of(path)
    size = path.stat().st_size
    base = {"source": profile.name, "path": rel_path, "sha256": sha, "bytes": size, "dataset": profile.dataset, "run_id": run_id, "started_at": started}
    if lake.ingested_marker(profile.dataset, sha).exists():
        return _log(lake, base, "unchanged", 0, 0, 0, None)
    copy_write_once(path, lake.raw(sha, "".join(path.suffixes[-2:]) or ".bin"))
    try:
        if profile.dataset == "historian_long":  # the large files: streamed through DuckDB end to end
            rows_read, accepted, q = historian_ingest.ingest_long_csv(lake, path, sha, rel_path, profile, tags_known)
            return _finish(lake, base, rows_read, rows_read - accepted, q, {"historian_points": accepted})
        result = READERS[profile.dataset](path, sha, rel_path, profile)
    except SourceRejected as err:
        return _reject(lake, base, f"{rel_path}: {err}")
    return _store(lake, base, result, tags_known)


def ingest_sql(lake: Lake, profile: SqlProfile, run_id: str | None = None, tags_known: set[str] | None = None) -> IngestOutcome:
    """One incremental pull: look back behind the watermark, skip rows already held."""
    started = _now()
    wm_path = lake.state(f"watermarks/{profile.name}.json")
    watermark = pd.Timestamp(json.loads(wm_path.read_text())["watermark"]) if wm_path.exists() else None
    since = watermark - timedelta(seconds=profile.lookback_s) if watermark is not None else None
    raw, _ = sql_historian.pull(profile, since)
    raw = _drop_already_held(lake, profile, raw, since)
    sha = sql_historian.content_sha256(raw)
    base = {"source": profile.name, "path": f"sql:{profile.name}", "sha256": sha, "bytes": 0, "dataset": "historian_sql", "run_id": run_id, "started_at": started}
    if raw.empty:
        return _log(lake, base, "unchanged", 0, 0, 0, None)
    data = raw.to_csv(index=False, lineterminator="\n").encode()
    base["bytes"] = len(data)
    if not lake.raw(sha, ".csv").exists():
        atomic_write_bytes(lake.raw(sha, ".csv"), data)
    outcome = _store(lake, base, sql_historian.parse(raw, profile, sha), tags_known)
    _remember_quarantined(lake, profile, raw, sha)
    new_wm = pd.to_datetime(raw["ts"].astype(str), format="ISO8601", errors="coerce").max()
    if pd.notna(new_wm):
        # a local time repeated or skipped by DST: take the earlier instant (the next pull re-reads a little more)
        new_wm = new_wm.tz_localize(profile.timezone, ambiguous=True, nonexistent="shift_backward") if new_wm.tzinfo is None else new_wm
        if watermark is None or new_wm > watermark:
            atomic_write_bytes(wm_path, json.dumps({"watermark": new_wm.tz_convert("UTC").isoformat()}).encode())
    return outcome


def _remember_quarantined(lake: Lake, profile: SqlProfile, raw: pd.DataFrame, sha: str) -> None:
    """Keep the keys of rows this pull quarantined, so the next pull's look-back skips them too."""
    q_path = lake.silver("quarantine") / f"{sha}.parquet"
    if not q_path.exists():
        return
    rows = sorted(set(pd.read_parquet(q_path, columns=["source_row"])["source_row"].dropna().astype(int) - 1))
    keys = pd.DataFrame({"tag": raw["tag"].iloc[rows].astype(str).to_numpy(), "ts_text": raw["ts"].iloc[rows].astype(str).to_numpy()})
    atomic_write_parquet(lake.state(f"sql_quarantined/{profile.name}") / f"{sha}.parquet", pa_arrow.Table.from_pandas(keys, preserve_index=False))


def _drop_already_held(lake: Lake, profile: SqlProfile, raw: pd.DataFrame, since) -> pd.DataFrame:
    """Rows of a pull not yet in the lake: neither accepted into silver nor quarantined before."""
    silver = [str(p) for p in lake.silver("historian_points").glob("*.parquet")]
    quarantined = [str(p) for p in lake.state(f"sql_quarantined/{profile.name}").glob("*.parquet")]
    if raw.empty or since is None or not (silver or quarantined):
        return raw
    with duckdb.connect() as con:
        held = pd.concat([
            con.execute("SELECT tag, ts_text FROM read_parquet(?) WHERE source_path = ? AND ts > ?",
                        [silver, f"sql:{profile.name}", since.to_pydatetime()]).df() if silver else None,
            con.execute("SELECT tag, ts_text FROM read_parquet(?)", [quarantined]).df() if quarantined else None,
        ])
    if held.empty:
        return raw
    key = raw["tag"].astype(str) + "\x00" + raw["ts"].astype(str)
    return raw[~key.isin(held["tag"] + "\x00" + held["ts_text"])].reset_index(drop=True)


def _drop_points_held_elsewhere(lake: Lake, points: pd.DataFrame, sha256: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Quarantine points whose (tag, ts) an earlier file or pull already put in the lake.

    Overlapping exports are common (a week re-exported, a pull re-reading its look-back
    window); keeping the first value keeps silver immutable, and the copy is not lost.
    """
    if points.empty:
        return points, quarantine_frame([])
    with connect(lake) as con:
        con.register("incoming", points[["tag", "ts"]].reset_index())
        hit = historian_ingest.held_elsewhere(con, lake, sha256, 'SELECT "index" AS id, tag, ts FROM incoming')
    if len(hit) == 0:
        return points, quarantine_frame([])
    losers = points.loc[hit]
    rejects = pd.DataFrame({"source_sha256": losers["source_sha256"], "source_row": losers["source_row"].astype("Int64"), "source_path": losers["source_path"],
                            "column": "tag,ts", "check": "duplicate_across_sources", "failure_value": losers["tag"] + " @ " + losers["ts_text"].astype(str),
                            "reason": historian_ingest.ACROSS_SOURCES_RULE}).reset_index(drop=True)
    return points.drop(index=hit), rejects


def _store(lake: Lake, base: dict, result: ReadResult, tags_known: set[str] | None) -> IngestOutcome:
    quarantined = [result.rejects]
    accepted_counts: dict[str, int] = {}
    dropped = 0
    try:
        for table, frame in result.tables.items():
            if frame.empty:
                continue
            model = SILVER_MODELS[table]
            extra = {"tag": [pa.Check.isin(sorted(tags_known), error="tag is not in the tag dictionary")]} if table == "historian_points" and tags_known else None
            ok, bad = split(frame, model, extra)
            if table in DUPLICATE_RULES:
                keys, prefer, asc, rule = DUPLICATE_RULES[table]
                ranked = ok.assign(quality_rank=ok["quality"].map(QUALITY_RANK)) if "quality_rank" in prefer else ok
                kept, losers = resolve_duplicates(ranked, keys, prefer, asc, rule)
                ok = kept.drop(columns=["quality_rank"], errors="ignore")
                bad = pd.concat([bad, losers], ignore_index=True)
            if table == "historian_points":
                ok, held = _drop_points_held_elsewhere(lake, ok, base["sha256"])
                bad = pd.concat([bad, held], ignore_index=True)
            dropped += len(frame) - len(ok)
            quarantined.append(bad)
            accepted_counts[table] = len(ok)
            if table == "historian_points":
                ok = ok.sort_values(["tag", "ts"], kind="stable")  # row order drives Parquet row-group pruning
            atomic_write_parquet(lake.silver(table) / f"{base['sha256']}.parquet", pa_arrow.Table.from_pandas(ok.reset_index(drop=True), preserve_index=False))
            if table == "batch_records":
                _audit_supersessions(lake, ok, base)
    except SchemaRejected as err:
        return _reject(lake, base, f"{base['path']}: {err}")
    q = pd.concat([x for x in quarantined if len(x)], ignore_index=True) if any(len(x) for x in quarantined) else quarantined[0]
    return _finish(lake, base, result.rows_read, len(result.rejects) + dropped, q, accepted_counts, "; ".join(result.notes) or None)


def _finish(lake: Lake, base: dict, rows_read: int, n_quarantined: int, q: pd.DataFrame, accepted_counts: dict[str, int], notes: str | None = None) -> IngestOutcome:
    """Write the quarantine rows and the ingest_log entry of one ingested source."""
    if len(q):
        q = q.assign(dataset=base["dataset"], ingested_at=base["started_at"])
        q["source_row"] = q["source_row"].astype("Int64")
        atomic_write_parquet(lake.silver("quarantine") / f"{base['sha256']}.parquet", pa_arrow.Table.from_pandas(q, preserve_index=False))
    reasons = q["reason"].value_counts().to_dict() if len(q) else {}
    outcome = _log(lake, base, "ingested", rows_read, rows_read - n_quarantined, n_quarantined, None, notes)
    outcome.accepted, outcome.reasons = accepted_counts, {str(k): int(v) for k, v in reasons.items()}
    return outcome


def _audit_supersessions(lake: Lake, records: pd.DataFrame, base: dict) -> None:
    """Record in the audit trail which batch record versions this file supersedes (or is superseded by)."""
    others = [str(p) for p in lake.silver("batch_records").glob("*.parquet") if p.stem != base["sha256"]]
    if not others or records.empty:
        return
    with duckdb.connect() as con:
        earlier = con.execute(
            "SELECT batch_id, record_version, record_ts, source_sha256 FROM read_parquet(?) WHERE batch_id IN (SELECT unnest(?))",
            [others, records["batch_id"].tolist()],
        ).df()
    events = []
    for rec in records.itertuples(index=False):
        for old in earlier[earlier["batch_id"] == rec.batch_id].itertuples(index=False):
            newer = (rec.record_version, rec.record_ts) > (old.record_version, old.record_ts)
            loser, winner = (old, rec) if newer else (rec, old)
            events.append({"action": "record_superseded", "object": f"batch {rec.batch_id}",
                           "old_value": f"version {loser.record_version} of {loser.record_ts} ({loser.source_sha256})",
                           "new_value": f"version {winner.record_version} of {winner.record_ts} ({winner.source_sha256})",
                           "reason": f"record version {winner.record_version} changed {winner.record_ts} supersedes version "
                                     f"{loser.record_version} changed {loser.record_ts}; both are kept",
                           "run_id": base.get("run_id")})
    audit.record_many(lake, events)


def _reject(lake: Lake, base: dict, error: str) -> IngestOutcome:
    return _log(lake, base, "rejected", 0, 0, 0, error)


def _log(lake: Lake, base: dict, status: str, read: int, accepted: int, quarantined: int, error: str | None, notes: str | None = None) -> IngestOutcome:
    row = {**base, "rows_read": read, "rows_accepted": accepted, "rows_quarantined": quarantined, "status": status, "error": error, "notes": notes,
           "code_version": code_version(), "finished_at": _now()}
    stamp = row["started_at"].strftime("%Y%m%dT%H%M%S%f")
    table = pa_arrow.Table.from_pylist([row])
    atomic_write_parquet(lake.silver("ingest_log") / f"{stamp}-{base['sha256'][:16]}-{base['dataset']}.parquet", table)
    summary = error or f"{read} rows read, {accepted} accepted, {quarantined} quarantined"
    audit.record(lake, f"file_{status}", base["path"], new=base["sha256"], reason=summary, run_id=base.get("run_id"))
    if status != "unchanged" and base["dataset"] != "historian_sql":
        marker = lake.ingested_marker(base["dataset"], base["sha256"])
        atomic_write_bytes(marker, json.dumps({"path": base["path"], "status": status}).encode())
    return IngestOutcome(row)


def _now() -> datetime:
    return datetime.now(timezone.utc)
