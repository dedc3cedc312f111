"""Paths built from data or configuration stay inside the lake; SQL passwords never leave the
environment.

Paths: batch ids, tag names, landing file names and sources.yaml profile names holding '../',
absolute paths, NUL or very long strings. Every file the code creates must be under the lake
root (the landing zone is only read).

Secrets: a SQL historian URL in sources.yaml names its password as ${VAR}; the password must
not appear in exceptions (their whole cause/context chain), logs, Dagster events and metadata,
ingest_log rows, quarantine rows, or any file in the lake — and ingest_log's `source`/`path`
never hold the URL.
"""

from __future__ import annotations

import importlib.util
import logging
import socket
import sqlite3
import sys
import traceback
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from demo.plant import demo_site
from lake import catalog
from lake.contextualize import contextualize
from lake.ingest import ingest_file, ingest_sql
from lake.layout import Lake, safe_name
from sources import sql_historian
from sources.profiles import FileProfile, SqlProfile
from sources.site import load_site

PROFILES = {p.name: p for p in demo_site().files}
HOSTILE = [
    "../../../../tmp/batchtwin-escape",
    "/tmp/batchtwin-abs",
    "..",
    ".",
    ".hidden",
    "a/../../b",
    "a\\..\\..\\b",
    "B1\x00.parquet",
    "x" * 90,
    "~" + "y" * 40,
    "%2e%2e%2f",
    "C:\\Windows\\x",
    "con",
    "nul:",
    " spaced ",
    "é/日本",
]


def created_outside(root: Path, lake_root: Path, before: set[Path]) -> list[Path]:
    return [
        p
        for p in root.rglob("*")
        if p not in before and not p.resolve().is_relative_to(lake_root.resolve())
    ]


# ---------------------------------------------------------------- layout


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=400) | st.sampled_from(HOSTILE))
def test_safe_name_is_one_plain_file_name(key):
    name = safe_name(key)
    assert "/" not in name and "\\" not in name and "\x00" not in name
    assert not name.startswith(".") and name not in ("", ".", "..")
    assert len(name.encode()) <= 150
    root = Path("/lake/gold/t")
    assert (root / f"{name}.parquet").parent == root


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.text(max_size=200) | st.sampled_from(HOSTILE + ["", "\x00", "%", "%00", "~"]),
        min_size=2,
        max_size=6,
        unique=True,
    )
)
def test_safe_name_never_merges_two_batches(keys):
    """Two batch ids must not share a gold file (one would overwrite the other)."""
    assert len({safe_name(k) for k in keys}) == len(keys)


def test_a_crafted_id_cannot_collide_with_a_long_ids_shortened_name():
    long_id = "B" * 300
    assert safe_name(safe_name(long_id)) != safe_name(long_id)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.sampled_from(HOSTILE))
def test_lake_paths_from_names_stay_inside_or_are_refused(name):
    lake = Lake(Path("/srv/lake"))
    for make in (
        lambda: lake.state(f"watermarks/{name}.json"),
        lambda: lake.state(f"sql_quarantined/{name}"),
        lambda: lake.ingested_marker(name, "ab" * 32),
        lambda: lake.raw("ab" * 32, name),
    ):
        try:
            path = make()
        except ValueError:
            continue
        assert "\x00" not in str(path) and ".." not in path.parts
        assert path.is_relative_to(lake.root)


def test_raw_copies_keep_only_plain_extensions():
    lake = Lake(Path("/srv/lake"))
    sha = "ab" * 32
    assert lake.raw(sha, ".csv.gz").name == f"{sha}.csv.gz"
    assert lake.raw(sha, ".xml").name == f"{sha}.xml"
    for suffix in (
        "",
        ".",
        "..",
        "/../../x",
        ".csv/../../../etc",
        "." + "x" * 300,
        ".a\x00b",
        ". csv",
        ".a.b.c",
    ):
        assert lake.raw(sha, suffix) == lake.root / "raw" / f"{sha}.bin", suffix


# ---------------------------------------------------------------- profile names from sources.yaml


@pytest.mark.parametrize(
    "name",
    ["../../evil", "/etc/cron.d/x", "a/b", ".hidden", "-x", "a\x00b", "x" * 101, "", "a b", "a\n"],
)
def test_hostile_profile_names_are_refused(tmp_path, name):
    with pytest.raises(ValueError, match="profile name"):
        SqlProfile(name, "sqlite://")
    with pytest.raises(ValueError, match="profile name"):
        FileProfile(name, "lims", "lims/*.csv")
    import yaml

    (tmp_path / "sources.yaml").write_text(yaml.safe_dump({"sql": {name: {"url": "sqlite://"}}}))
    with pytest.raises(ValueError, match="profile name"):
        load_site(tmp_path)
    (tmp_path / "sources.yaml").write_text(
        yaml.safe_dump({"files": {name: {"dataset": "lims", "glob": "x/*.csv"}}})
    )
    with pytest.raises(ValueError, match="profile name"):
        load_site(tmp_path)


def test_ordinary_profile_names_still_load(tmp_path):
    (tmp_path / "sources.yaml").write_text(
        "sql:\n  ip21-br2.site_b:\n    url: sqlite://\n"
        "files:\n  site_b_lims:\n    dataset: lims\n    glob: 'lims/b_*.csv'\n"
    )
    site = load_site(tmp_path)
    files, sqls = site.files, site.sqls
    assert "ip21-br2.site_b" in {p.name for p in sqls} and "site_b_lims" in {p.name for p in files}


@pytest.mark.parametrize(
    "field,value",
    [
        ("table", "history; DROP TABLE x"),
        ("table", 'name" OR 1=1 --'),
        ("table", "history\n"),
        ("table", "main.history"),
        ("table", "history--"),
        ("table", ""),
        ("table", "x" * 64),
        (
            "columns",
            {"tag": "name; DROP TABLE x", "ts": "ts", "value": "value", "status": "status"},
        ),
        ("columns", {"tag": 'name" OR 1=1 --', "ts": "ts", "value": "value", "status": "status"}),
        ("columns", {"tag": "name", "ts": "ts)--", "value": "value", "status": "status"}),
        ("columns", {"tag": 1, "ts": "ts", "value": "v", "status": "s"}),
    ],
)
def test_sql_injection_through_profile_identifiers_is_refused(tmp_path, field, value):
    with pytest.raises(ValueError, match="not a plain identifier"):
        SqlProfile("src", "sqlite://", **{field: value})
    import yaml

    (tmp_path / "sources.yaml").write_text(
        yaml.safe_dump({"sql": {"src": {"url": "sqlite://", field: value}}})
    )
    # a name that is not even text is refused by the site's shape check, before the profile's
    with pytest.raises(ValueError, match="not a plain identifier|a mapping of texts"):
        load_site(tmp_path)


def test_injection_attempts_never_reach_the_database(tmp_path):
    """A quoted identifier is harmless even where validation would not stop it: pull() quotes,
    never formats."""
    from sources import sql_historian

    db = tmp_path / "h.sqlite"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE history (name TEXT, ts TEXT, value REAL, status INTEGER)")
        con.execute("CREATE TABLE x (a INTEGER)")
    profile = SqlProfile("src", f"sqlite:///{db}")
    object.__setattr__(profile, "table", "history; DROP TABLE x")  # bypass validation on purpose
    with pytest.raises(ConnectionError, match="no such table"):
        sql_historian.pull(profile, None)
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'x'").fetchone()[0] == 1


# ------------------------------------------------ hostile ids through ingest and contextualization

JOURNAL_HEADER = "Time,BatchID,RecipePath,Unit,Phase,Event,PValue,Descript,EngUnits"


def _csv_field(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


def _hostile_landing(landing: Path, ids: list[str]) -> None:
    (landing / "tags").mkdir(parents=True)
    (landing / "mes").mkdir()
    (landing / "historian").mkdir()
    tags = ["tag,unit_id,parameter,uom,role,interpolation"]
    points = ["Tag,Timestamp,Value,Status"]
    for i, hostile in enumerate(ids):
        unit = f"BR{i}"
        tag = f"{hostile}.TT{i}"
        tags.append(f"{_csv_field(tag)},{unit},temperature,degC,pv,linear")
        for m in range(0, 7 * 60, 10):
            points.append(
                f"{_csv_field(tag)},2026-03-15T{6 + m // 60:02d}:{m % 60:02d}:00Z,"
                f"{36 + m / 1000:.3f},Good"
            )
        journal = [
            JOURNAL_HEADER,
            f"2026-03-15 08:00:00,{_csv_field(hostile)},PROC,{unit},,State Change,RUNNING,,",
            f"2026-03-15 08:00:00,{_csv_field(hostile)},PROC,{unit},,"
            f"Recipe Header,MAB-{_csv_field(hostile)},Product Code,",
            f"2026-03-15 08:00:00,{_csv_field(hostile)},PROC\\UP:1,{unit},,State Change,RUNNING,,",
            f"2026-03-15 08:30:00,{_csv_field(hostile)},PROC\\UP:1\\OP:1\\INOCULATION,{unit},,"
            "State Change,RUNNING,,",
            f"2026-03-15 11:00:00,{_csv_field(hostile)},PROC\\UP:1\\OP:1\\INOCULATION,{unit},,"
            "State Change,COMPLETE,,",
            f"2026-03-15 12:00:00,{_csv_field(hostile)},PROC\\UP:1,{unit},,State Change,COMPLETE,,",
            f"2026-03-15 12:00:00,{_csv_field(hostile)},PROC,{unit},,State Change,COMPLETE,,",
        ]
        # landing file names are data too: odd names (the suffix becomes the raw copy's extension)
        (landing / "mes" / f"journal_{i}..{'z' * 200}.csv").write_text(
            "\n".join(journal) + "\n", encoding="utf-8"
        )
    (landing / "tags" / "dict.csv").write_text("\n".join(tags) + "\n", encoding="utf-8")
    (landing / "historian" / "pts.csv").write_text("\n".join(points) + "\n", encoding="utf-8")


def test_hostile_batch_ids_tags_and_file_names_never_write_outside_the_lake(tmp_path):
    ids = [h for h in HOSTILE if h.strip() and "\x00" not in h] + ["B1\x00x"]
    root = tmp_path / "w"
    landing, lake = root / "landing", Lake(root / "lake")
    _hostile_landing(landing, ids)
    before = set(root.rglob("*"))
    logs = []
    profiles = demo_site().files
    for rel in (
        "tags/dict.csv",
        *sorted(p.relative_to(landing).as_posix() for p in (landing / "mes").iterdir()),
        "historian/pts.csv",
    ):
        prof = next(p for p in profiles if p.matches(rel))
        logs.append(ingest_file(lake, landing, rel, prof, tags_known=None).log)
    assert all(log["status"] == "ingested" for log in logs), [log["error"] for log in logs]
    catalog.rebuild(lake)
    batches = pd.read_parquet(lake.silver("batch_records"))
    stored = set(batches.batch_id)
    assert {i for i in ids if len(i) <= 100} <= stored  # every id arrived as data, unaltered
    contextualize(lake, sorted(stored))
    assert created_outside(root, lake.root, before) == []
    assert not Path("/tmp/batchtwin-escape").exists() and not Path("/tmp/batchtwin-abs").exists()
    gold = list(lake.gold("process_values").iterdir())
    assert len([p for p in gold if not p.name.startswith(".tmp")]) == len(
        stored
    )  # one file per batch, none merged
    assert all(p.parent == lake.gold("process_values") for p in gold)
    raws = [p.name for p in lake.root.joinpath("raw").iterdir()]
    assert all(len(n) < 100 for n in raws) and any(n.endswith(".csv") for n in raws)


def test_ingest_of_a_landing_path_with_dotdot_is_refused(tmp_path):
    """A relative path that climbs out of the landing zone is not read, and nothing is written
    anywhere."""
    root = tmp_path / "w"
    (root / "landing" / "lims").mkdir(parents=True)
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "x.csv").write_text(
        "sample_id,batch_id,analyte,value,unit,sampled_at,reported_at\nS1,B1,vcd,1,u,2026-01-01T00:00:00Z,\n"
    )
    lake = Lake(root / "lake")
    before = set(root.rglob("*"))
    with pytest.raises(ValueError, match="outside the landing zone"):
        ingest_file(lake, root / "landing", "../elsewhere/x.csv", PROFILES["lims"])
    assert set(root.rglob("*")) == before


def test_a_symlink_out_of_the_landing_zone_is_neither_listed_nor_copied_into_the_lake(tmp_path):
    """Write access to the landing zone must not turn into read access to the host's files via
    the lake."""
    from lake.ingest import landing_files

    secret = tmp_path / "host-secret.csv"
    secret.write_text(
        "sample_id,batch_id,analyte,value,unit,sampled_at,reported_at\nS1,TOPSECRET,vcd,1,u,2026-01-01T00:00:00Z,\n"
    )
    landing = tmp_path / "landing"
    (landing / "lims").mkdir(parents=True)
    (landing / "lims" / "evil.csv").symlink_to(secret)
    (landing / "lims" / "real.csv").write_text(secret.read_text().replace("TOPSECRET", "B1"))
    (landing / "lims" / "alias.csv").symlink_to(
        landing / "lims" / "real.csv"
    )  # a link inside the zone is fine
    files = [rel for rel, _ in landing_files(landing, demo_site().files)]
    assert files == ["lims/alias.csv", "lims/real.csv"]
    lake = Lake(tmp_path / "lake")
    with pytest.raises(ValueError, match="outside the landing zone"):
        ingest_file(lake, landing, "lims/evil.csv", PROFILES["lims"])
    assert not lake.root.exists() or b"TOPSECRET" not in _files_text(lake.root)


# ---------------------------------------------------------------- secrets

PASSWORD = "pw-Zq8#S3cr3t-%40-never-log"  # distinctive; '%40' tests URL-escaped forms too


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: nothing listens there


def _secret_forms() -> list[str]:
    from urllib.parse import quote

    return [PASSWORD, quote(PASSWORD, safe=""), "Zq8#S3cr3t"]


def _exception_chain_text(err: BaseException) -> str:
    parts, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        parts += [
            repr(err),
            str(err),
            *map(repr, err.args),
            "".join(traceback.format_exception(err)),
        ]
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


def _files_text(root: Path) -> bytes:
    return b"\n".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def _assert_secret_free(*texts) -> None:
    for text in texts:
        blob = text if isinstance(text, str) else text.decode("utf-8", errors="replace")
        for form in _secret_forms():
            assert form not in blob, (
                "the password leaked: "
                f"...{blob[max(0, blob.find(form) - 80) : blob.find(form) + 80]}..."
            )


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://batchtwin:${BT_TEST_PG_PASSWORD}@127.0.0.1:{port}/ip21",
        "postgresql+psycopg://batchtwin:${BT_TEST_PG_PASSWORD}@127.0.0.1:notaport/ip21",
        "postgresql+nosuchdriver://batchtwin:${BT_TEST_PG_PASSWORD}@127.0.0.1:{port}/ip21",
        "postgresql+psycopg://batchtwin:${BT_TEST_PG_PASSWORD}@127.0.0.1:{port}/ip21?sslmode=${BT_TEST_PG_PASSWORD}",
    ],
)
def test_a_failing_sql_pull_never_shows_the_password(tmp_path, monkeypatch, caplog, capfd, url):
    monkeypatch.setenv("BT_TEST_PG_PASSWORD", PASSWORD)
    profile = SqlProfile("ip21_secret", url.replace("{port}", str(_closed_port())))
    assert PASSWORD in profile.resolved_url() and PASSWORD not in profile.url
    lake = Lake(tmp_path / "lake")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ConnectionError) as info:
        sql_historian.pull(profile, None)
    outcome = ingest_sql(lake, profile)
    assert (
        outcome.status == "failed"
        and "ip21_secret" in outcome.log["error"]
        and "\n" not in outcome.log["error"]
    )
    out, errs = capfd.readouterr()
    _assert_secret_free(
        _exception_chain_text(info.value),
        outcome.log["error"],
        caplog.text,
        out,
        errs,
        repr(profile),
        _files_text(tmp_path),
    )


def _sqlite_historian(path: Path, rows=()) -> None:
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE history (name TEXT, ts TEXT, value REAL, status INTEGER)")
        con.executemany("INSERT INTO history VALUES (?, ?, ?, ?)", rows)


def test_dagster_events_and_metadata_carry_no_password_when_a_pull_fails(tmp_path, monkeypatch):
    """The whole asset through Dagster: the failure event (with its cause chain) and logs hold no
    password."""
    import dagster as dg

    from pipelines.ingest_assets import historian_points
    from pipelines.resources import LakeResource, LandingResource

    monkeypatch.setenv("BT_TEST_PG_PASSWORD", PASSWORD)
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "sources.yaml").write_text(
        "sql:\n  ip21_secret:\n"
        "    url: 'postgresql+psycopg://batchtwin:${BT_TEST_PG_PASSWORD}"
        f"@127.0.0.1:{_closed_port()}/ip21'\n"
    )
    _sqlite_historian(tmp_path / "h.sqlite")
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [historian_points],
            instance=instance,
            raise_on_error=False,
            resources={
                "lake": LakeResource(root=str(tmp_path / "lake")),
                "landing": LandingResource(root=str(landing)),
            },
        )
        assert not result.success
        retried = [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
        assert len(retried) == 3  # a refused connection is retried; the retries leak nothing either
        records = instance.all_logs(result.run_id)
        text = "\n".join(repr(r) for r in records)
    assert "ip21_secret" in text  # the failure is there, naming the source
    _assert_secret_free(
        text, _files_text(tmp_path / "lake") if (tmp_path / "lake").exists() else b""
    )


# the PostgreSQL server of the SQL historian tests (tests/sources/conftest.py), for the success path
_pg = importlib.util.spec_from_file_location(
    "_bt_pg_conftest", Path(__file__).parents[1] / "sources" / "conftest.py"
)
_pg_module = sys.modules.setdefault(
    "_bt_pg_conftest", importlib.util.module_from_spec(_pg)
)  # dataclasses need it registered
_pg.loader.exec_module(_pg_module)
postgres_server = _pg_module.postgres_server
postgres_url = _pg_module.postgres_url


def test_a_successful_pull_keeps_the_password_out_of_lake_logs_and_metadata(
    tmp_path, monkeypatch, caplog, postgres_url
):
    import psycopg

    real_password = _pg_module.PG_PASSWORD
    with psycopg.connect(
        postgres_url.replace("postgresql+psycopg", "postgresql"), autocommit=True
    ) as con:
        con.execute(
            "CREATE TABLE history (name TEXT, ts TIMESTAMP, value DOUBLE PRECISION, status INTEGER)"
        )
        con.execute(
            "INSERT INTO history VALUES ('BR201.TT01.PV', '2026-03-15 12:00:00', 36.9, 0), "
            "('BR201.TT01.PV', '2026-03-15 12:01:00', 37.0, 9)"
        )  # status 9: quarantined (unknown code)
    monkeypatch.setenv("BT_TEST_PG_PASSWORD", real_password)
    url = postgres_url.replace(f":{real_password}@", ":${BT_TEST_PG_PASSWORD}@")
    assert real_password not in url
    profile = SqlProfile("ip21_pg", url)
    lake = Lake(tmp_path / "lake")
    caplog.set_level(logging.DEBUG)
    outcome = ingest_sql(lake, profile, run_id="r1")
    assert (
        outcome.status == "ingested"
        and outcome.log["rows_read"] == 2
        and outcome.log["rows_quarantined"] == 1
    )
    log = pd.read_parquet(lake.silver("ingest_log"))
    assert log["source"].tolist() == ["ip21_pg"] and log["path"].tolist() == ["sql:ip21_pg"]
    host_part = url.split("@", 1)[1]
    for column in log.columns:
        for value in log[column].map(str):
            assert (
                "postgresql" not in value and host_part not in value and real_password not in value
            )
    quarantine = pd.read_parquet(lake.silver("quarantine"))
    assert len(quarantine) == 1 and real_password not in quarantine.to_csv()
    blob = _files_text(lake.root).decode("utf-8", errors="replace")
    assert real_password not in blob and "postgresql" not in blob and host_part not in blob
    assert real_password not in caplog.text and real_password not in repr(outcome.log) + repr(
        outcome.reasons
    )


def test_a_password_in_an_environment_variable_of_sources_yaml_is_not_stored_by_dagster(
    tmp_path, monkeypatch
):
    import dagster as dg

    from pipelines.ingest_assets import historian_points
    from pipelines.resources import resources_from_env

    _sqlite_historian(tmp_path / "h.sqlite")
    (tmp_path / "landing").mkdir()
    (tmp_path / "landing" / "sources.yaml").write_text(
        "sql:\n  ip21:\n    url: ${BT_TEST_SQL_URL}\n"
    )
    monkeypatch.setenv(
        "BT_TEST_SQL_URL",
        f"sqlite:///{tmp_path / 'h.sqlite'}?pw={PASSWORD.replace('#', '').replace('%', '')}",
    )
    resources = resources_from_env(tmp_path)
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [historian_points],
            instance=instance,
            raise_on_error=False,
            resources={k: resources[k] for k in ("lake", "landing")},
        )
        assert result.success
        assert (
            len(pd.read_parquet(tmp_path / "lake" / "silver" / "ingest_log")) == 1
        )  # the pull ran
        run = instance.get_run_by_id(result.run_id)
        stored = dg.serialize_value(instance.get_job_snapshot(run.job_snapshot_id)) + repr(
            run.run_config
        )
        stored += "".join(repr(r) for r in instance.all_logs(result.run_id))
    assert "Zq8S3cr3t" not in stored
