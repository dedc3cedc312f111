"""`batchtwin sql` is read-only: no writes, no files outside the lake, no configuration changes.

Every forbidden statement fails with exit code 1 and a one-line error (stderr), and leaves no
file behind, inside the lake or out; ordinary SELECTs over every catalog view still work.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from lake.layout import Lake
from lake.query import QueryRefused, connect, query
from pipelines.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def lake_dir(pipeline_run) -> Path:
    data, result = pipeline_run
    assert result.success
    return data


def sql(data: Path, statement: str, *extra: str):
    return runner.invoke(app, ["sql", statement, "--data-dir", str(data), *extra])


def snapshot(root: Path) -> dict[str, int]:
    return {
        str(p): p.stat().st_size for p in root.rglob("*") if p.is_file() and ".tmp" not in p.name
    }


def assert_refused(result) -> str:
    assert result.exit_code == 1, (result.exit_code, result.output, result.stderr)
    message = result.stderr.strip()
    assert message.startswith("error:") and "\n" not in message, repr(message)
    assert "Traceback" not in result.output + result.stderr
    assert result.stdout == ""
    return message


def forbidden(lake: Path, outside: Path) -> dict[str, str]:
    evil = outside / "evil"
    return {
        "copy_out": f"COPY (SELECT 1 AS a) TO '{evil}.csv'",
        "copy_view_out": f"COPY batches TO '{evil}_batches.csv'",
        "copy_into_lake": f"COPY (SELECT 1 AS a) TO '{lake}/silver/historian_points/evil.parquet' "
        "(FORMAT parquet)",
        "copy_from": f"COPY batches FROM '{outside}/in.csv'",
        "export": f"EXPORT DATABASE '{evil}_export'",
        "attach_file": f"ATTACH '{evil}.duckdb' AS x",
        "attach_in_lake": f"ATTACH '{lake}/evil.duckdb' AS x",
        "attach_memory": "ATTACH ':memory:' AS m",
        "detach": "DETACH catalog",
        "install": "INSTALL httpfs",
        "force_install": "FORCE INSTALL httpfs",
        "load": "LOAD httpfs",
        "load_path": f"LOAD '{outside}/x.duckdb_extension'",
        "set_external": "SET enable_external_access = true",
        "set_dirs": "SET allowed_directories = ['/']",
        "set_unlock": "SET lock_configuration = false",
        "reset": "RESET enable_external_access",
        "pragma": "PRAGMA enable_profiling",
        "pragma_setting": "PRAGMA threads = 1",
        "create_temp": "CREATE TEMP TABLE t AS SELECT 1",
        "create_view": "CREATE VIEW v AS SELECT 1",
        "create_secret": "CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')",
        "drop": "DROP VIEW batches",
        "insert": "INSERT INTO batches SELECT * FROM batches",
        "delete": "DELETE FROM batches",
        "update": "UPDATE batches SET status = 'x'",
        "checkpoint": "CHECKPOINT",
        "call": "CALL pragma_version()",
        "two_statements": f"SELECT 1; COPY (SELECT 1) TO '{evil}_2.csv'",
        "explain_analyze_copy": f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{evil}_3.csv'",
        "query_fn_copy": f"SELECT * FROM query('COPY (SELECT 1) TO ''{evil}_4.csv''')",
        "read_csv_passwd": "SELECT * FROM read_csv('/etc/passwd')",
        "read_text_passwd": "SELECT * FROM read_text('/etc/passwd')",
        "read_blob": "SELECT * FROM read_blob('/etc/hostname')",
        "replacement_scan_path": "SELECT * FROM '/etc/passwd'",
        "glob_etc": "SELECT * FROM glob('/etc/*')",
        "sniff_csv": "SELECT * FROM sniff_csv('/etc/passwd')",
        "read_outside_csv": f"SELECT * FROM read_csv('{outside}/in.csv')",
        "dotdot_escape": f"SELECT * FROM read_csv('{lake}/silver/../../in.csv')",
        "sibling_prefix": f"SELECT * FROM read_csv('{lake}X/in.csv')",
        "file_url": f"SELECT * FROM read_csv('file://{outside}/in.csv')",
        "http": "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')",
        "s3": "SELECT * FROM read_parquet('s3://bucket/x.parquet')",
        "join_with_passwd": "SELECT * FROM batches, read_csv('/etc/passwd')",
        "empty": "   ",
        "comment_only": "/* nothing */",
    }


FORBIDDEN = sorted(forbidden(Path("/l"), Path("/o")))


@pytest.mark.parametrize("name", FORBIDDEN)
def test_forbidden_statements_fail_in_one_line_and_change_nothing(lake_dir, tmp_path, name):
    lake = Lake(lake_dir / "lake")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "in.csv").write_text("a\n1\n")
    (Path(str(lake.root) + "X")).mkdir(exist_ok=True)
    (Path(str(lake.root) + "X") / "in.csv").write_text("a\n1\n")
    before_lake, before_out = snapshot(lake.root), snapshot(outside)
    message = assert_refused(sql(lake_dir, forbidden(lake.root, outside)[name]))
    assert snapshot(lake.root) == before_lake, f"{name} changed the lake"
    assert snapshot(outside) == before_out, f"{name} wrote outside the lake"
    assert "root:" not in message  # nothing read from /etc/passwd leaks through the error either


def test_every_catalog_view_is_queryable(lake_dir):
    with duckdb.connect(str(Lake(lake_dir / "lake").catalog), read_only=True) as con:
        views = [
            r[0]
            for r in con.execute(
                "SELECT view_name FROM duckdb_views() WHERE NOT internal AND NOT temporary"
            ).fetchall()
        ]
    assert {
        "batches",
        "historian_points",
        "ingest_log",
        "quarantine",
        "tags",
        "samples",
        "phases",
        "process_values",
    } <= set(views)
    catalog = str(Lake(lake_dir / "lake").catalog)
    for view in views:
        res = sql(lake_dir, f'SELECT count(*) AS n FROM "{view}"', "--format", "json")
        assert res.exit_code == 0, (view, res.stderr)
        with duckdb.connect(catalog, read_only=True) as con:  # the sandbox hides no rows
            direct = con.execute(f'SELECT count(*) FROM "{view}"').fetchone()[0]
        assert json.loads(res.stdout)[0]["n"] == direct
        res = sql(lake_dir, f'SELECT * FROM "{view}" LIMIT 3', "--format", "csv")
        assert res.exit_code == 0, (view, res.stderr)


@pytest.mark.parametrize(
    "statement",
    [
        "select count(*) from batches",
        "WITH b AS (SELECT * FROM batches) SELECT batch_id, status FROM b ORDER BY 1",
        "FROM batches SELECT batch_id LIMIT 2",
        "DESCRIBE batches",
        "SHOW TABLES",
        "SUMMARIZE tags",
        "EXPLAIN SELECT * FROM historian_points WHERE tag = 'x'",
        "EXPLAIN ANALYZE SELECT count(*) FROM historian_points",
        "VALUES (1, 'a')",
        "SELECT current_setting('TimeZone') AS tz",
        "select '[/]' as \"[red]x\"",  # rich markup in data or names is printed, not interpreted
    ],
)
def test_ordinary_reads_work(lake_dir, statement):
    res = sql(lake_dir, statement)
    assert res.exit_code == 0, res.stderr
    assert res.stdout.strip()


def test_timestamps_are_still_shown_in_utc(lake_dir):
    res = sql(lake_dir, "SELECT current_setting('TimeZone') AS tz", "--format", "json")
    assert json.loads(res.stdout)[0]["tz"] in ("UTC", "Etc/UTC")


def test_allow_files_reads_local_files_but_nothing_else(lake_dir, tmp_path):
    (tmp_path / "in.csv").write_text("a\n41\n")
    statement = f"SELECT a + 1 AS b FROM read_csv('{tmp_path}/in.csv')"
    assert_refused(sql(lake_dir, statement))
    res = sql(lake_dir, statement, "--allow-files", "--format", "json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout) == [{"b": 42}]
    # still no writes, network or extensions
    assert_refused(sql(lake_dir, f"COPY (SELECT 1) TO '{tmp_path}/out.csv'", "--allow-files"))
    assert not (tmp_path / "out.csv").exists()
    assert_refused(
        sql(lake_dir, "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')", "--allow-files")
    )
    assert_refused(sql(lake_dir, "LOAD httpfs", "--allow-files"))


def test_bad_sql_and_missing_catalog_are_one_line(lake_dir, tmp_path):
    assert_refused(sql(lake_dir, "SELEC 1"))
    assert_refused(sql(lake_dir, "SELECT * FROM no_such_view"))
    assert_refused(sql(lake_dir, "SELECT error('line one\nline two')"))
    assert_refused(sql(tmp_path, "SELECT 1"))  # no catalog there


def test_python_query_api_is_sandboxed_too(lake_dir, tmp_path):
    lake = Lake(lake_dir / "lake")
    with pytest.raises(QueryRefused):
        query(lake, f"COPY (SELECT 1) TO '{lake.root}/silver/tags/evil.parquet'")
    assert not (lake.root / "silver" / "tags" / "evil.parquet").exists()
    # a raw connection (BatchLake.query uses one) cannot leave the lake either
    with connect(lake) as con, pytest.raises(duckdb.PermissionException):
        con.execute("SELECT * FROM read_text('/etc/passwd')")
    assert len(query(lake, "SELECT * FROM batches")) > 0
