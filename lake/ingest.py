"""Ingestion: landing file or SQL pull -> raw copy, validated silver Parquet, quarantine, log.

For every source: rows read = rows accepted + rows quarantined, recorded in `ingest_log`.
A file is identified by its SHA-256: ingesting it again changes nothing but adds an
`unchanged` log row. The per-file commit marker is written last, so a crash mid-ingest
leaves no marker and the rerun rewrites the same files.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa_arrow

from lake import audit, historian_ingest
from lake.duck import connect, parquet_columns
from lake.historian_ingest import TagDictionary, known_tags, tag_checks  # noqa: F401 - known_tags is this module's API too
from lake.layout import Lake, atomic_write_bytes, atomic_write_parquet, copy_write_once
from schemas.keys import key_rule
from schemas.tables import SILVER_MODELS, IngestLogEntry, QuarantineRow
from schemas.units import conversion
from schemas.validate import (
    SchemaRejected,
    as_arrow,
    quarantine_frame,
    resolve_duplicates,
    split,
)
from sources import historian_csv, lims, mes_journal, mes_xml, sql_historian, tags
from sources.base import ReadResult, SourceRejected, sha256_of
from sources.profiles import FileProfile, SqlProfile, profile_for
from sources.site import Site

# readers that convert rows with the site's dictionaries (the tag dictionary's parameter units)
SITE_READERS = {"tags"}
# (path, sha256, rel_path, profile) -> ReadResult; those in SITE_READERS also take the site
READERS: dict[str, Callable[..., ReadResult]] = {
    "tags": tags.read_tags,
    "historian_long": historian_csv.read_long,
    "historian_wide": historian_csv.read_wide,
    "lims": lims.read_lims,
    "lims_wide": lims.read_lims_wide,
    "mes_xml": mes_xml.read_batchml,
    "mes_journal": mes_journal.read_journal,
}
# The lake tables each dataset writes (SQL historians: `historian_sql`). A reader returning
# another table is refused: the pipeline's asset for a table ingests every dataset listed here.
TABLES_WRITTEN: dict[str, tuple[str, ...]] = {
    "tags": ("tags",),
    "historian_long": ("historian_points",),
    "historian_wide": ("historian_points",),
    "historian_sql": ("historian_points",),
    "lims": ("samples",),
    "lims_wide": ("samples",),
    "mes_xml": (
        "batch_records",
        "phase_records",
        "material_event_records",
        "batch_event_records",
        "samples",
    ),
    "mes_journal": ("batch_records", "phase_records", "material_event_records"),
}


@functools.cache
def code_version() -> str:
    """The package version plus the git commit (`0.1.0+gabc1234`), stamped on every ingest_log
    row so each row names the code that produced it; cached for the process."""
    try:
        version = metadata.version("batchtwin")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+g{commit}" if commit else version


@dataclass
class IngestOutcome:
    """What one source contributed: its ingest_log row plus per-table counts and reasons."""

    log: dict
    accepted: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    retryable: bool = False  # a failed source that may answer on a retry (a network outage)

    @property
    def status(self) -> str:
        return self.log["status"]


def landing_files(
    landing: Path, profiles: list[FileProfile], dataset: str | None = None
) -> list[tuple[str, FileProfile]]:
    """Landing files (relative paths, sorted) with the profile that reads each."""
    out = []
    for path in sorted(Path(landing).rglob("*")):
        if not path.is_file() or path.name.startswith(".") or path.name == "sources.yaml":
            continue
        if not _inside_landing(
            landing, path
        ):  # a symlink out of the landing zone (e.g. to /etc/passwd) is never ingested
            continue
        rel = path.relative_to(landing).as_posix()
        prof = profile_for(rel, profiles)
        if prof is not None and (dataset is None or prof.dataset == dataset):
            out.append((rel, prof))
    return out


def profile_fingerprint(profile: FileProfile) -> str:
    """A digest of every setting a file was read with (the profile as sources.yaml gave it)."""
    settings = json.dumps(dataclasses.asdict(profile), sort_keys=True, default=str)
    return hashlib.sha256(settings.encode()).hexdigest()[:16]


def already_read(lake: Lake, profile: FileProfile, sha256: str) -> bool:
    """A file is read once; a rejected one again when its profile changed (the fix for the
    rejection is a profile change: raw data are never altered)."""
    marker = lake.ingested_marker(profile.dataset, sha256)
    if not marker.exists():
        return False
    held = json.loads(marker.read_text())
    return held.get("status") != "rejected" or held.get("profile") == profile_fingerprint(profile)


def _inside_landing(landing: Path, path: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(landing).resolve())


def ingest_file(
    lake: Lake,
    landing: Path,
    rel_path: str,
    profile: FileProfile,
    run_id: str | None = None,
    tags_known: TagDictionary | None = None,
    site: Site | None = None,
) -> IngestOutcome:
    """Ingest one landing file: raw copy, validated silver rows, quarantine, ingest_log row."""
    started = _now()
    path = Path(landing) / rel_path
    if not _inside_landing(
        landing, path
    ):  # '..' or a symlink: the file would be copied into the lake and be queryable there
        raise ValueError(
            f"{rel_path}: resolves outside the landing zone {landing}; refusing to read it"
        )
    sha = sha256_of(path)
    size = path.stat().st_size
    base = {
        "source": profile.name,
        "path": rel_path,
        "sha256": sha,
        "bytes": size,
        "dataset": profile.dataset,
        "run_id": run_id,
        "started_at": started,
    }
    if already_read(lake, profile, sha):
        return _log(lake, base, "unchanged", 0, 0, 0, None)
    base["profile"] = profile_fingerprint(profile)
    copy_write_once(path, lake.raw(sha, "".join(path.suffixes[-2:]) or ".bin"))
    try:
        if profile.dataset == "historian_long":  # the large files: streamed through DuckDB
            rows_read, accepted, q = historian_ingest.ingest_long_csv(
                lake, path, sha, rel_path, profile, tags_known
            )
            return _finish(lake, base, rows_read, q, {"historian_points": accepted})
        if profile.dataset in SITE_READERS:
            result = READERS[profile.dataset](path, sha, rel_path, profile, site)
        else:
            result = READERS[profile.dataset](path, sha, rel_path, profile)
    except SourceRejected as err:
        return _reject(lake, base, f"{rel_path}: {err}")
    return _store(lake, base, result, tags_known, site)


def ingest_sql(
    lake: Lake,
    profile: SqlProfile,
    run_id: str | None = None,
    tags_known: TagDictionary | None = None,
) -> IngestOutcome:
    """One incremental pull: look back behind the watermark, skip rows already held. A source
    that cannot be reached is logged as `failed` with its one-line cause (nothing else changes)."""
    started = _now()
    wm_path = lake.state(f"watermarks/{profile.name}.json")
    watermark = (
        pd.Timestamp(json.loads(wm_path.read_text())["watermark"]) if wm_path.exists() else None
    )
    since = watermark - timedelta(seconds=profile.lookback_s) if watermark is not None else None
    try:
        raw, _ = sql_historian.pull(profile, since)
    except ConnectionError as err:
        base = {
            "source": profile.name,
            "path": f"sql:{profile.name}",
            "sha256": "",
            "bytes": 0,
            "dataset": "historian_sql",
            "run_id": run_id,
            "started_at": started,
        }
        failed = _log(lake, base, "failed", 0, 0, 0, str(err))
        failed.retryable = isinstance(err, sql_historian.SourceUnreachable) and err.transient
        return failed
    raw = _drop_already_held(lake, profile, raw, since)
    sha = sql_historian.content_sha256(raw)
    base = {
        "source": profile.name,
        "path": f"sql:{profile.name}",
        "sha256": sha,
        "bytes": 0,
        "dataset": "historian_sql",
        "run_id": run_id,
        "started_at": started,
    }
    if raw.empty:
        return _log(lake, base, "unchanged", 0, 0, 0, None)
    data = raw.to_csv(index=False, lineterminator="\n").encode()
    base["bytes"] = len(data)
    if not lake.raw(sha, ".csv").exists():
        atomic_write_bytes(lake.raw(sha, ".csv"), data)
    parsed = sql_historian.parse(raw, profile, sha)
    outcome = _store(lake, base, parsed, tags_known)
    _remember_quarantined(lake, profile, raw, sha)
    # the newest instant read, by the readers' one timestamp rule (a local time DST skips or
    # repeats was quarantined, not guessed, and does not move the watermark)
    new_wm = parsed.tables["historian_points"]["ts"].max()
    if pd.notna(new_wm) and (watermark is None or new_wm > watermark):
        atomic_write_bytes(wm_path, json.dumps({"watermark": new_wm.isoformat()}).encode())
    return outcome


def _row_text(raw: pd.DataFrame) -> pd.Series:
    """A pulled row as one text (tag, time, value, status): what identifies a row the lake
    quarantined. The time text alone does not: the hour the autumn DST change repeats gives two
    rows of one tag the same naive local time."""
    text = raw["tag"].map(str)
    for column in ("ts", "value", "status"):
        text = text + "\x00" + raw[column].map(str)  # map(str): a NULL is the text 'None'/'nan'
    return text


def _remember_quarantined(lake: Lake, profile: SqlProfile, raw: pd.DataFrame, sha: str) -> None:
    """Keep the rows this pull quarantined, so the next pull's look-back skips them too."""
    q_path = lake.silver("quarantine") / f"{sha}.parquet"
    if not q_path.exists():
        return
    rows = sorted(
        set(pd.read_parquet(q_path, columns=["source_row"])["source_row"].dropna().astype(int) - 1)
    )
    keys = pd.DataFrame({"row_text": _row_text(raw.iloc[rows]).to_numpy()})
    atomic_write_parquet(
        lake.state(f"sql_quarantined/{profile.name}") / f"{sha}.parquet",
        pa_arrow.Table.from_pandas(keys, preserve_index=False),
    )


def _drop_already_held(lake: Lake, profile: SqlProfile, raw: pd.DataFrame, since) -> pd.DataFrame:
    """Rows of a pull not yet in the lake: neither accepted into silver nor quarantined before."""
    silver = [str(p) for p in lake.silver("historian_points").glob("*.parquet")]
    quarantined = [str(p) for p in lake.state(f"sql_quarantined/{profile.name}").glob("*.parquet")]
    if raw.empty or since is None or not (silver or quarantined):
        return raw
    with duckdb.connect() as con:
        accepted = (
            con.execute(
                "SELECT tag, ts_text FROM read_parquet(?) WHERE source_path = ? AND ts > ?",
                [silver, f"sql:{profile.name}", since.to_pydatetime()],
            ).df()
            if silver
            else pd.DataFrame(columns=["tag", "ts_text"])
        )
        rejected = (
            con.execute(
                "SELECT row_text FROM read_parquet(?, union_by_name = true)"
                " WHERE row_text IS NOT NULL",
                [quarantined],
            ).df()["row_text"]
            # older lakes kept (tag, ts_text) only: their rows are pulled once more and
            # quarantined again, never lost
            if quarantined and "row_text" in parquet_columns(con, quarantined)
            else pd.Series(dtype=str)
        )
    key = raw["tag"].astype(str) + "\x00" + raw["ts"].astype(str)
    held = key.isin(accepted["tag"] + "\x00" + accepted["ts_text"]) | _row_text(raw).isin(rejected)
    return raw[~held].reset_index(drop=True)


def _drop_points_held_elsewhere(
    lake: Lake, points: pd.DataFrame, sha256: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Quarantine points whose (tag, ts) an earlier file or pull already put in the lake.

    Overlapping exports are common (a week re-exported, a pull re-reading its look-back
    window); keeping the first value keeps silver immutable, and the copy is not lost.
    """
    if points.empty:
        return points, quarantine_frame([])
    with connect(lake) as con:
        con.register("incoming", points[["tag", "ts"]].reset_index())
        hit = historian_ingest.held_elsewhere(
            con, lake, sha256, 'SELECT "index" AS id, tag, ts FROM incoming'
        )
    if len(hit) == 0:
        return points, quarantine_frame([])
    losers = points.loc[hit]
    rejects = pd.DataFrame(
        {
            "source_sha256": losers["source_sha256"],
            "source_row": losers["source_row"].astype("Int64"),
            "source_path": losers["source_path"],
            "column": "tag,ts",
            "check": "duplicate_across_sources",
            "failure_value": losers["tag"] + " @ " + losers["ts_text"].astype(str),
            "reason": historian_ingest.ACROSS_SOURCES_RULE,
        }
    ).reset_index(drop=True)
    return points.drop(index=hit), rejects


def _store(
    lake: Lake,
    base: dict,
    result: ReadResult,
    tags_known: TagDictionary | None,
    site: Site | None = None,
) -> IngestOutcome:
    """Validate a reader's tables, resolve duplicates, write silver, quarantine and the log."""
    quarantined = [result.rejects]
    accepted_counts: dict[str, int] = {}
    try:
        for table, frame in result.tables.items():
            if table not in TABLES_WRITTEN[base["dataset"]]:
                raise ValueError(f"the {base['dataset']} reader returned table {table!r}")
            if frame.empty:
                continue
            model = SILVER_MODELS[table]
            if table == "samples":
                frame, off_dictionary = analyte_results(frame, site)
                quarantined.append(off_dictionary)
            extra = tag_checks(tags_known) if table == "historian_points" else None
            ok, bad = split(frame, model, extra)
            if table == "samples":
                ok, conflicts = _conflicting_results(lake, ok, base["sha256"])
                bad = pd.concat([bad, conflicts], ignore_index=True)
            rule = key_rule(model)
            if rule is not None:
                ok, losers = resolve_duplicates(ok, rule)
                bad = pd.concat([bad, losers], ignore_index=True)
            if table == "historian_points":
                ok, held = _drop_points_held_elsewhere(lake, ok, base["sha256"])
                bad = pd.concat([bad, held], ignore_index=True)
            quarantined.append(bad)
            accepted_counts[table] = len(ok)
            if table == "historian_points":
                ok = ok.sort_values(
                    ["tag", "ts"], kind="stable"
                )  # row order drives Parquet row-group pruning
            atomic_write_parquet(
                lake.silver(table) / f"{base['sha256']}.parquet",
                pa_arrow.Table.from_pandas(ok.reset_index(drop=True), preserve_index=False),
            )
            if table == "batch_records":
                _audit_supersessions(lake, ok, base)
    except SchemaRejected as err:
        return _reject(lake, base, f"{base['path']}: {err}")
    q = (
        pd.concat([x for x in quarantined if len(x)], ignore_index=True)
        if any(len(x) for x in quarantined)
        else quarantined[0]
    )
    return _finish(
        lake, base, result.rows_read, q, accepted_counts, "; ".join(result.notes) or None
    )


def analyte_results(samples: pd.DataFrame, site: Site | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Lab results checked against the site's analyte dictionary, whatever their source (LIMS,
    an MES record's samples): an analyte it does not list, a unit it does not accept and a value
    outside the analyte's plausible range are quarantined with the reason; the others get
    `canonical_value` and `canonical_uom` (the site's unit). Without a dictionary every result
    keeps its reported unit."""
    samples = samples.assign(canonical_value=samples["value"], canonical_uom=samples["uom"])
    dictionary = site.analytes if site is not None else {}
    if not dictionary or samples.empty:
        return samples, quarantine_frame([])
    reason = pd.Series(None, index=samples.index, dtype=object)
    for (name, unit), idx in samples.groupby(["analyte", "uom"]).groups.items():
        entry = dictionary.get(name)
        if entry is None:
            reason[idx] = (
                f"analyte {name[:80]!r} is not in the site's analyte dictionary"
                " (sources.yaml `analytes`)"
            )
            continue
        problem = entry.accepts(unit)
        if problem is not None:
            reason[idx] = problem
            continue
        scale, offset = conversion(unit, entry.unit)
        value = samples.loc[idx, "value"] * scale + offset
        samples.loc[idx, "canonical_value"], samples.loc[idx, "canonical_uom"] = value, entry.unit
        for bound, outside, word in (
            (entry.min, value < (entry.min or 0.0), "below the plausible minimum"),
            (entry.max, value > (entry.max or 0.0), "above the plausible maximum"),
        ):
            if bound is not None:
                reason[outside[outside].index] = [
                    f"{name} {v:g} {entry.unit} is {word} {bound:g} {entry.unit}"
                    for v in value[outside]
                ]
    bad = samples[reason.notna()]
    rejects = quarantine_frame(
        {
            "source_sha256": r.source_sha256,
            "source_row": r.source_row,
            "source_path": r.source_path,
            "column": "analyte"
            if why.startswith("analyte ")
            else "uom"
            if "unit" in why
            else "value",
            "check": "analyte_dictionary",
            "failure_value": f"{r.value_text} {r.uom}",
            "reason": why,
            "row_key": f"{r.sample_id}/{r.analyte}",
        }
        for r, why in zip(bad.itertuples(), reason[reason.notna()], strict=True)
    )
    return samples[reason.isna()], rejects


def result_identity(frame: pd.DataFrame) -> pd.Series:
    """What makes two lab results the same result: the value in the site's unit (10 significant
    digits: '4.1' and '4.10', or 4.1 g/L and 410 mg/dL, agree), or the reported text and unit of
    a censored one ('<0.5 mM')."""
    # text for every row (a NaN left in would make the whole column float when none has a value)
    number = frame["canonical_value"].map(lambda v: "" if pd.isna(v) else f"{v:.10g}")
    numeric = number.astype(str) + " " + frame["canonical_uom"].astype(str)
    return numeric.where(
        frame["canonical_value"].notna(),
        frame["value_text"].astype(str) + " " + frame["uom"].astype(str),
    )


def _conflicting_results(
    lake: Lake, samples: pd.DataFrame, sha256: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Quarantine results that contradict another result for the same sample, analyte and report
    time: within this file every copy (there is no telling which is right); against a result
    another file already brought, the incoming one (the first stays, silver is never rewritten).
    A later report time is a retest and supersedes (the `samples` view); a re-send of the same
    result (`result_identity`) is harmless and resolved by the duplicate rule."""
    key = ["sample_id", "analyte", "reported_ts"]
    if samples.empty:
        return samples, quarantine_frame([])
    samples = samples.assign(identity=result_identity(samples))
    inside = samples[samples.groupby(key, dropna=False)["identity"].transform("nunique") > 1]
    earlier = [str(p) for p in lake.silver("samples").glob("*.parquet") if p.stem != sha256]
    held = pd.DataFrame(columns=[*key, "identity", "source_path", "source_row"])
    if earlier:
        with duckdb.connect() as con:
            con.register("incoming", samples[key])
            held = con.execute(
                """SELECT h.* FROM read_parquet($files, union_by_name = true) h SEMI JOIN incoming i
                   ON i.sample_id = h.sample_id AND i.analyte = h.analyte
                  AND i.reported_ts IS NOT DISTINCT FROM h.reported_ts""",
                {"files": earlier},
            ).df()
        for column, fallback in (
            ("canonical_value", "value"),
            ("canonical_uom", "uom"),
        ):  # files ingested before the site's dictionary
            held[column] = (
                held[column].where(held[column].notna(), held[fallback])
                if column in held
                else held[fallback]
            )
        held = held.assign(identity=result_identity(held) if len(held) else pd.Series(dtype=str))[
            [*key, "identity", "source_path", "source_row"]
        ]
    rest = samples[
        ~samples.index.isin(inside.index)
    ]  # a row conflicting inside its file is quarantined once, for that
    across = rest.reset_index().merge(held, on=key, suffixes=("", "_held"), how="inner")
    across = across[across["identity"] != across["identity_held"]].drop_duplicates("index")
    rows = []
    for _, group in inside.groupby(key, dropna=False):
        values = ", ".join(
            f"{v} (line {r})" for v, r in zip(group["identity"], group["source_row"], strict=True)
        )
        rows += [
            _conflict_row(
                r,
                f"conflicting results in one file for sample {r.sample_id}, {r.analyte}, "
                f"reported {r.reported_ts}: {values}; none is used",
            )
            for r in group.itertuples()
        ]
    for r in across.itertuples():
        rows.append(
            _conflict_row(
                r,
                f"conflicting re-send for sample {r.sample_id}, {r.analyte}, "
                f"reported {r.reported_ts}: {r.identity} here, {r.identity_held} already held "
                f"from {r.source_path_held} line {r.source_row_held}; the first stays",
            )
        )
    if not rows:
        return samples.drop(columns="identity"), quarantine_frame([])
    losers = inside.index.union(pd.Index(across["index"]))
    return samples.drop(index=losers).drop(columns="identity"), quarantine_frame(rows)


def _conflict_row(r, reason: str) -> dict:
    return {
        "source_sha256": r.source_sha256,
        "source_row": r.source_row,
        "source_path": r.source_path,
        "column": "value",
        "check": "conflicting_result",
        "failure_value": str(r.value_text),
        "reason": reason,
        "row_key": f"{r.sample_id}/{r.analyte}",
    }


def _finish(
    lake: Lake,
    base: dict,
    rows_read: int,
    q: pd.DataFrame,
    accepted_counts: dict[str, int],
    notes: str | None = None,
) -> IngestOutcome:
    """Write the quarantine rows and the ingest_log entry of one ingested source.

    The log's counts are three independent ones: rows the reader read, rows written to silver
    and rows written to quarantine (one per rejected row), so `check_rows_conserved` fails
    when a row is lost between them. A source of no rows says so in its notes: `ingested` with
    nothing read and nothing said would look like a reader that lost the file.
    """
    if rows_read == 0 and not notes:
        notes = "no data: the source holds no row (or no filled cell) after its header"
    if len(q):
        q = q.assign(dataset=base["dataset"], ingested_at=base["started_at"])
        atomic_write_parquet(
            lake.silver("quarantine") / f"{base['sha256']}.parquet", as_arrow(q, QuarantineRow)
        )
    reasons = q["reason"].value_counts().to_dict() if len(q) else {}
    accepted = sum(accepted_counts.values())
    outcome = _log(lake, base, "ingested", rows_read, accepted, len(q), None, notes)
    outcome.accepted, outcome.reasons = (
        accepted_counts,
        {str(k): int(v) for k, v in reasons.items()},
    )
    return outcome


def _audit_supersessions(lake: Lake, records: pd.DataFrame, base: dict) -> None:
    """Record in the audit trail which batch record versions this file supersedes (or is
    superseded by)."""
    others = [
        str(p) for p in lake.silver("batch_records").glob("*.parquet") if p.stem != base["sha256"]
    ]
    if not others or records.empty:
        return
    with duckdb.connect() as con:
        earlier = con.execute(
            "SELECT batch_id, record_version, record_ts, source_sha256 FROM read_parquet(?)"
            " WHERE batch_id IN (SELECT unnest(?))",
            [others, records["batch_id"].tolist()],
        ).df()
    events = []
    for rec in records.itertuples(index=False):
        for old in earlier[earlier["batch_id"] == rec.batch_id].itertuples(index=False):
            newer = (rec.record_version, rec.record_ts) > (old.record_version, old.record_ts)
            loser, winner = (old, rec) if newer else (rec, old)
            events.append(
                {
                    "action": "record_superseded",
                    "object": f"batch {rec.batch_id}",
                    "old_value": (
                        f"version {loser.record_version} of {loser.record_ts}"
                        f" ({loser.source_sha256})"
                    ),
                    "new_value": (
                        f"version {winner.record_version} of {winner.record_ts}"
                        f" ({winner.source_sha256})"
                    ),
                    "reason": (
                        f"record version {winner.record_version} changed {winner.record_ts}"
                        f" supersedes version {loser.record_version} changed {loser.record_ts};"
                        " both are kept"
                    ),
                    "run_id": base.get("run_id"),
                }
            )
    audit.record_many(lake, events)


def _reject(lake: Lake, base: dict, error: str) -> IngestOutcome:
    return _log(lake, base, "rejected", 0, 0, 0, error)


def _log(
    lake: Lake,
    base: dict,
    status: str,
    read: int,
    accepted: int,
    quarantined: int,
    error: str | None,
    notes: str | None = None,
) -> IngestOutcome:
    row = {
        **{k: v for k, v in base.items() if k != "profile"},
        "rows_read": read,
        "rows_accepted": accepted,
        "rows_quarantined": quarantined,
        "status": status,
        "error": error,
        "notes": notes,
        "code_version": code_version(),
        "finished_at": _now(),
    }
    stamp = row["started_at"].strftime("%Y%m%dT%H%M%S%f")
    # conservation is reported by the asset check (check_rows_conserved), not raised here
    table = as_arrow(pd.DataFrame([row]), IngestLogEntry, frame_checks=False)
    atomic_write_parquet(
        lake.silver("ingest_log") / f"{stamp}-{base['sha256'][:16]}-{base['dataset']}.parquet",
        table,
    )
    summary = error or f"{read} rows read, {accepted} accepted, {quarantined} quarantined"
    audit.record(
        lake,
        f"file_{status}",
        base["path"],
        new=base["sha256"],
        reason=summary,
        run_id=base.get("run_id"),
    )
    if status != "unchanged" and base["dataset"] != "historian_sql":
        marker = lake.ingested_marker(base["dataset"], base["sha256"])
        held = {"path": base["path"], "status": status, "profile": base.get("profile")}
        atomic_write_bytes(marker, json.dumps(held).encode())
    return IngestOutcome(row)


def _now() -> datetime:
    return datetime.now(UTC)
