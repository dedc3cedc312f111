"""SQL historians (IP.21 SQLplus, AVEVA Historian, a PostgreSQL table, …) through SQLAlchemy.

Pulls are incremental: rows with a timestamp after `since` are read. The caller keeps the
watermark and re-reads a look-back window behind it, so rows that arrive late in the source
are still picked up; it drops rows it already holds, so none is ingested twice.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import datetime
from urllib.parse import quote, unquote

import numpy as np
import pandas as pd
import sqlalchemy as sa

from sources.base import (
    QUALITY_REASON,
    VALUE_PARSE_REASON,
    ReadResult,
    add_lineage,
    historian_values,
    parse_timestamps,
    qualities,
    rejects_where,
    timestamp_reason,
)
from sources.profiles import SqlProfile


class SourceUnreachable(ConnectionError):
    """The SQL historian could not be read (the message names the source, never the URL).

    `transient`: a retry may succeed — a database over the network refused, timed out or
    dropped the connection. A wrong URL, a missing driver or a local file never is.
    """

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


def pull(profile: SqlProfile, since: datetime | None) -> tuple[pd.DataFrame, ReadResult]:
    """Read rows newer than `since` (UTC); return (raw rows as read, parsed result)."""
    c = profile.columns
    table = sa.table(profile.table, *(sa.column(c[k]) for k in ("tag", "ts", "value", "status")))
    query = sa.select(*(table.c[c[k]].label(k) for k in ("tag", "ts", "value", "status")))
    if since is not None:
        # untyped (NullType): the database converts the text to the column's type. A typed string
        # would be sent as VARCHAR
        # (PostgreSQL: "operator does not exist: timestamp > character varying").
        query = query.where(
            table.c[c["ts"]]
            > sa.bindparam("since", _sql_text(since, profile.timezone), type_=sa.types.NullType())
        )
    query = query.order_by(table.c[c["ts"]], table.c[c["tag"]])
    # Errors name the source, never the URL, and are raised outside the `except` blocks so that
    # no exception chain (__context__) carries the driver's original message; anything a driver
    # echoes back from the URL (a password in a query parameter, say) is redacted as well.
    failure = None
    try:
        engine = sa.create_engine(profile.resolved_url())
    except (sa.exc.ArgumentError, ValueError) as err:
        # a parser's message may quote part of the URL (and so the password): only a missing
        # driver is named
        failure = (
            f"invalid URL: {_first_line(err)}"
            if isinstance(err, sa.exc.NoSuchModuleError)
            else "invalid URL: the URL cannot be parsed"
        )
    if failure is not None:
        raise SourceUnreachable(f"SQL historian {profile.name!r}: {_redact(failure, profile)}")
    transient = False
    try:
        with engine.connect() as conn:
            raw = pd.read_sql(query, conn)
    except (sa.exc.SQLAlchemyError, pd.errors.DatabaseError) as err:
        # pandas wraps a failing query in its own DatabaseError (quoting the SQL): report the
        # driver's error
        err = (
            err.__cause__
            if isinstance(err, pd.errors.DatabaseError) and err.__cause__ is not None
            else err
        )
        orig = getattr(err, "orig", None) or err
        failure = f"{type(orig).__name__}: {_first_line(orig)}"
        network = bool(engine.url.host)
        transient = network and isinstance(err, (sa.exc.OperationalError, sa.exc.InterfaceError))
    finally:
        engine.dispose()
    if failure is not None:
        message = f"SQL historian {profile.name!r}: {_redact(failure, profile)}"
        raise SourceUnreachable(message, transient)
    if pd.api.types.is_datetime64_any_dtype(raw["ts"]):
        # a timestamp column: each value as its own ISO text. Series.astype(str) formats all rows
        # alike ('2026-03-16' when every row is at midnight, '.500' on all when one has a
        # fraction), and the text identifies rows already held, so it must not depend on which
        # other rows came with it.
        raw["ts"] = raw["ts"].map(lambda t: t.isoformat(sep=" "), na_action="ignore")
    return raw, parse(raw, profile)


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[0] if lines else type(err).__name__


def _redact(message: str, profile: SqlProfile) -> str:
    """`message` with every value the URL took from the environment, and the URL's password,
    replaced by ***."""
    secrets = {
        os.environ.get(a or b, "") for a, b in re.findall(r"\$\{(\w+)\}|\$(\w+)", profile.url)
    }
    try:
        secrets.add(sa.engine.make_url(profile.resolved_url()).password or "")
    except (sa.exc.ArgumentError, ValueError):
        pass
    forms = {f for s in secrets if s for f in (s, quote(s, safe=""), unquote(s))}
    for form in sorted(forms, key=len, reverse=True):
        message = message.replace(form, "***")
    return message


def _sql_text(ts: datetime, timezone: str = "UTC") -> str:
    """`ts` as naive text in the zone the source stores its timestamps in (the profile's
    timezone)."""
    return pd.Timestamp(ts).tz_convert(timezone).strftime("%Y-%m-%d %H:%M:%S")


def content_sha256(raw: pd.DataFrame) -> str:
    """Fingerprint of a pull: the same rows give the same hash, so a re-pull is recognized."""
    h = hashlib.sha256()
    h.update(raw.to_csv(index=False, lineterminator="\n").encode())
    return h.hexdigest()


def parse(raw: pd.DataFrame, profile: SqlProfile, sha256: str | None = None) -> ReadResult:
    """Pulled rows -> historian points, by the same timestamp, quality and value rules as the CSV
    readers; lineage is `sql:<name>` and the row's ordinal in the pull, failures are quarantined."""
    sha = sha256 or content_sha256(raw)
    rel = f"sql:{profile.name}"
    lines = np.arange(1, len(raw) + 1, dtype=np.int64)
    # the readers' one rule (sources.base.parse_timestamps): a local time DST skips or repeats is
    # quarantined (raising instead failed every later pull, the row staying in the look-back window)
    ts = parse_timestamps(raw["ts"].astype(str), None, profile.timezone)
    # a number column arrives as floats: status 0 reads '0.0'
    status = raw["status"].astype("str").str.replace(r"\.0$", "", regex=True)
    quality = qualities(status, profile.quality)
    # a number column arrives as floats, a text column as text: the same rule as the CSV readers
    text = raw["value"].map(
        lambda v: (
            ""
            if v is None or (isinstance(v, float) and v != v)
            else repr(v)
            if isinstance(v, float)
            else str(v)
        )
    )
    value, state, unparseable = historian_values(text, ".", profile.digital_states)
    problems = [
        rejects_where(
            ts.isna(),
            raw,
            lines,
            "ts",
            "timestamp",
            timestamp_reason(None, profile.timezone),
            sha,
            rel,
        ),
        # a row failing several ways is quarantined for the first, in the streamed path's order
        rejects_where(
            unparseable & ts.notna(),
            raw,
            lines,
            "value",
            "value_parse",
            VALUE_PARSE_REASON,
            sha,
            rel,
        ),
        rejects_where(
            quality.isna() & ~unparseable & ts.notna(),
            raw,
            lines,
            "status",
            "quality_code",
            QUALITY_REASON,
            sha,
            rel,
        ),
    ]
    ok = (ts.notna() & quality.notna() & ~unparseable).to_numpy()
    quality = quality.where(state.isna(), "bad")  # a digital state is never a good value
    out = pd.DataFrame(
        {
            "tag": raw["tag"].astype(str).str.strip(),
            "ts": ts,
            "value": value,
            "state": state,
            "quality": quality,
            "ts_text": raw["ts"].astype(str),
        }
    )[ok]
    out = add_lineage(out.reset_index(drop=True), sha, lines[ok], rel)
    return ReadResult(
        {"historian_points": out}, pd.concat(problems, ignore_index=True), rows_read=len(raw)
    )
