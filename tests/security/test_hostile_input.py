"""Hostile and malformed landing files: readers either parse or refuse with one line, never crash.

Property (every CSV reader and the BatchML reader): a generated file either parses, or the
reader raises `SourceRejected` whose message is one line. Any other exception fails the test.
Where a reader produces one table, rows are conserved: rows_read = produced rows + rejects
(for the wide historian a "row" is a non-empty cell). The full ingest path (`ingest_file`
into a throwaway lake) keeps ingest_log's invariant rows_read = accepted + quarantined, ends
'ingested' or 'rejected' (with a one-line error), and writes nothing outside the lake.

Example counts are kept moderate so this file runs in well under a minute; the counts
actually run are printed at the end of the session (-s) via `EXAMPLES`.
"""

from __future__ import annotations

import gzip
import http.server
import shutil
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from demo.plant import demo_site
from lake.ingest import ingest_file
from lake.layout import Lake
from sources import historian_csv, lims, mes_journal, mes_xml, tags
from sources.base import SourceRejected, sha256_of

# pyarrow decodes a malformed line's text before calling the invalid-row handler; on invalid
# UTF-8 that raises inside pyarrow, is reported as "unraisable" and the read fails
# (-> SourceRejected). Expected here.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

PROFILES = {p.name: p for p in demo_site().files}
EXAMPLES: Counter = (
    Counter()
)  # generated inputs actually run, per test (reported by the summary test)

# reader, profile, landing path, single table produced (None: several tables, no 1:1 conservation)
CSV_READERS = {
    "historian_long": (
        historian_csv.read_long,
        PROFILES["historian_long_pi"],
        "historian/x.csv",
        "historian_points",
    ),
    "historian_wide": (
        historian_csv.read_wide,
        PROFILES["historian_wide_br102"],
        "historian/x_wide.csv",
        "historian_points",
    ),
    "lims": (lims.read_lims, PROFILES["lims"], "lims/x.csv", "samples"),
    "tags": (tags.read_tags, PROFILES["tag_dictionary"], "tags/x.csv", "tags"),
    "mes_journal": (mes_journal.read_journal, PROFILES["mes_journal"], "mes/x.csv", None),
}
HEADERS = {
    "historian_long": ["Tag", "Timestamp", "Value", "Status"],
    "historian_wide": ["Timestamp", "BR102.TT01.PV", "BR102.PH01.PV"],
    "lims": ["sample_id", "batch_id", "analyte", "value", "unit", "sampled_at", "reported_at"],
    "tags": [
        "tag",
        "unit_id",
        "parameter",
        "uom",
        "role",
        "interpolation",
        "low",
        "high",
        "max_gap_s",
        "description",
    ],
    "mes_journal": [
        "Time",
        "BatchID",
        "RecipePath",
        "Unit",
        "Phase",
        "Event",
        "PValue",
        "Descript",
        "EngUnits",
    ],
}

NASTY = [
    "",
    " ",
    "  \t ",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "1e309",
    "-0",
    "0x1F",
    "1,5",
    "1.5",
    "١٢٣",
    "²",
    "1_000",
    "+",
    "-",
    ".",
    "2026-03-15T12:00:00Z",
    "2026-03-15 12:00:00",
    "2026-03-29 02:30:00",
    "2026-10-25 02:30:00",
    "15.03.2026 12:00:00",
    "29.03.2026 02:30:00",
    "9999-12-31T23:59:59Z",
    "0001-01-01",
    "1677-09-21T00:12:43Z",
    "2262-04-11T23:47:17Z",
    "2026-02-30T00:00:00Z",
    "2026-03-15T25:00:00+14:00",
    "T",
    "Z",
    "+99:99",
    "1e18",
    "-9223372036854775809",
    "Good",
    "Bad",
    "192",
    "64",
    "0",
    "Substituted",
    "I/O Timeout",
    "Scan Off",
    "Pt Created",
    "RUNNING",
    "COMPLETE",
    "State Change",
    "Recipe Header",
    "Material Charge",
    "Product Code",
    "PROC\\UP:1\\OP:1\\PH:1",
    "PROC",
    "/",
    "\\",
    "\\\\",
    "::",
    "|",
    "../../etc/passwd",
    "/etc/passwd",
    "C:\\x",
    "degF",
    "degC",
    "mg/mL",
    "1e6 cells/mL",
    "%",
    "furlong",
    "**",
    "1/0",
    "()",
    "(",
    "[",
    "{}",
    "__import__('os')",
    "kg**99999",
    "10**10**10",
    "mol/",
    "temperature",
    "ph",
    "feed_rate",
    "vcd",
    "pv",
    "sp",
    "linear",
    "step",
    "<0.5",
    "> 1",
    "<",
    "'",
    '"',
    '""',
    'a"b',
    "=cmd|' /C calc'!A0",
    "\x00",
    "a\x00b",
    "\ufeff",
    "\u202e",
    "\ud7ff",
    "é",
    "日本",
    "🧪",
    "\r",
    "line\nbreak",
    ";",
    ",",
    "x" * 5000,
]
cells = st.one_of(
    st.sampled_from(NASTY),
    st.text(max_size=30),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.datetimes().map(lambda d: d.isoformat(sep=st_sep_choice(d))),
)


def st_sep_choice(d) -> str:
    return " " if d.microsecond % 2 else "T"


def _quote(cell: str, delimiter: str) -> str:
    if any(ch in cell for ch in (delimiter, '"', "\n", "\r")):
        return '"' + cell.replace('"', '""') + '"'
    return cell


@st.composite
def csv_files(draw, dataset: str) -> tuple[bytes, bool]:
    """(file bytes, gzip it?) around the dataset's header, with odd rows, fields and encodings."""
    delimiter = CSV_READERS[dataset][1].delimiter
    kind = draw(
        st.sampled_from(
            ["rows", "rows", "rows", "rows", "bytes", "empty", "header_only", "bad_header"]
        )
    )
    if kind == "bytes":
        return draw(st.binary(max_size=400)), draw(st.booleans())
    if kind == "empty":
        return draw(
            st.sampled_from([b"", b"\n", b"\r\n", b"\xef\xbb\xbf", b" \n\n", b"\x00"])
        ), False
    header = list(HEADERS[dataset])
    if kind == "bad_header":
        header = draw(
            st.lists(
                st.one_of(
                    st.sampled_from(header + ["", "line", "ts", "Tag", "0"]), st.text(max_size=8)
                ),
                min_size=1,
                max_size=6,
            )
        )
    elif draw(st.booleans()):
        header = draw(st.permutations(header))
    lines = [delimiter.join(_quote(h, delimiter) if draw(st.booleans()) else h for h in header)]
    if kind != "header_only":
        n_rows = draw(st.integers(min_value=1, max_value=12))
        for _ in range(n_rows):
            width = len(header) + draw(st.sampled_from([0, 0, 0, 0, -1, 1, -len(header) + 1, 3]))
            row = [draw(cells) for _ in range(max(width, 1))]
            quote = draw(st.booleans())
            lines.append(
                delimiter.join(
                    _quote(c, delimiter) if quote else c.replace("\n", " ").replace("\r", " ")
                    for c in row
                )
            )
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines) + draw(st.sampled_from(["", "\n"]))
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "latin-1", "utf-16", "utf-8-sig"]))
    data = (
        text.encode(encoding, errors="replace")
        if encoding != "utf-8"
        else text.encode("utf-8", errors="surrogatepass")
    )
    if draw(st.integers(0, 9)) == 0:  # a stray invalid byte somewhere
        at = draw(st.integers(0, len(data)))
        data = (
            data[:at]
            + draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\xed\xa0\x80"]))
            + data[at:]
        )
    return data, draw(st.integers(0, 7)) == 0


def _write(folder: Path, rel: str, data: bytes, gz: bool) -> Path:
    path = folder / (rel + ".gz" if gz else rel)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def _one_line(message: str) -> bool:
    return "\n" not in message and "\r" not in message and message.strip() != ""


def check_reader(reader, path: Path, rel: str, profile, table: str | None):
    """The property: parse or refuse in one line; conservation for single-table readers."""
    try:
        res = reader(path, sha256_of(path), rel, profile)
    except SourceRejected as err:
        assert _one_line(str(err)), f"multi-line SourceRejected: {str(err)!r}"
        return None
    produced = sum(len(t) for t in res.tables.values())
    if table is not None:
        assert set(res.tables) == {table}
        assert res.rows_read == produced + len(res.rejects), (
            res.rows_read,
            produced,
            len(res.rejects),
        )
    assert res.rows_read >= produced  # every produced row was read (several readers aggregate)
    assert res.rejects["source_row"].notna().all()
    for frame in res.tables.values():
        if len(frame):
            assert (frame["source_row"] >= 1).all()
    return res


def _csv_property(dataset: str):
    reader, profile, rel, table = CSV_READERS[dataset]

    @settings(
        max_examples=120,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(csv_files(dataset))
    def prop(generated):
        data, gz = generated
        EXAMPLES[f"reader:{dataset}"] += 1
        with tempfile.TemporaryDirectory() as tmp:
            path = _write(Path(tmp), rel, data, gz)
            check_reader(reader, path, path.relative_to(tmp).as_posix(), profile, table)

    return prop


test_historian_long_reader_parses_or_refuses = _csv_property("historian_long")
test_historian_wide_reader_parses_or_refuses = _csv_property("historian_wide")
test_lims_reader_parses_or_refuses = _csv_property("lims")
test_tag_dictionary_reader_parses_or_refuses = _csv_property("tags")
test_mes_journal_reader_parses_or_refuses = _csv_property("mes_journal")


# ---------------------------------------------------------------- BatchML XML

xml_text = st.one_of(
    st.sampled_from(NASTY), st.text(max_size=20), st.integers(-(10**30), 10**30).map(str)
)
XML_NAMES = [
    "BatchList",
    "BatchListEntry",
    "ID",
    "BatchListEntryType",
    "Status",
    "RecipeID",
    "BatchID",
    "ProductID",
    "ActualStartTime",
    "ActualEndTime",
    "EquipmentID",
    "ActualEquipmentID",
    "BatchProductionRecord",
    "Version",
    "LastChangedDate",
    "MaterialActual",
    "Quantity",
    "QuantityString",
    "UnitOfMeasure",
    "MaterialActualProperty",
    "Value",
    "ValueString",
    "MaterialDefinitionID",
    "Description",
    "MaterialUse",
    "Sample",
    "EntryID",
    "TimeStamp",
    "SampleTest",
    "TestName",
    "SampleTestResult",
    "Results",
    "ExecutedControlRecipe",
    "RuntimeRecipeElement",
    "RecipeElementType",
    "CompletionTime",
    "Header",
]
ENTRY_TYPES = [
    "Batch",
    "Procedure",
    "Unit Procedure",
    "UnitProcedure",
    "Operation",
    "Phase",
    "batch",
    "",
]


def _escape(s: str) -> str:
    # XML 1.0 cannot carry most control characters even escaped: drop them (the raw-bytes case
    # covers them)
    s = "".join(
        ch
        for ch in s
        if ch in "\t\n\r"
        or (" " <= ch <= "\ud7ff")
        or ("\ue000" <= ch <= "\ufffd")
        or ch > "\uffff"
    )
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@st.composite
def xml_elements(draw, depth: int = 0) -> str:
    name = draw(st.sampled_from(XML_NAMES))
    ns = draw(st.sampled_from(["", "", "b2:", "x:"]))
    if name == "BatchListEntryType":
        body = _escape(draw(st.sampled_from(ENTRY_TYPES)))
    elif depth >= 4 or draw(st.integers(0, 2)) == 0:
        body = _escape(draw(xml_text))
    else:
        body = "".join(draw(st.lists(xml_elements(depth + 1), max_size=4)))
    return f"<{ns}{name}>{body}</{ns}{name}>"


@st.composite
def xml_files(draw) -> bytes:
    kind = draw(st.sampled_from(["tree", "tree", "tree", "bytes", "truncated", "empty"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "empty":
        return draw(
            st.sampled_from(
                [
                    b"",
                    b" ",
                    b"<?xml version='1.0'?>",
                    b"<a/>",
                    b"<?xml version='1.0' encoding='klingon'?><a/>",
                ]
            )
        )
    body = "".join(draw(st.lists(xml_elements(), min_size=1, max_size=4)))
    doc = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<BatchInformation xmlns="http://www.mesa.org/xml/B2MML-V0600" '
        'xmlns:b2="http://www.mesa.org/xml/B2MML-V0600" xmlns:x="urn:vendor">'
        f"{body}</BatchInformation>"
    )
    data = doc.encode("utf-8", errors="surrogatepass")
    if kind == "truncated":
        data = data[: draw(st.integers(0, len(data)))]
    return data


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(xml_files())
def test_batchml_reader_parses_or_refuses(data):
    EXAMPLES["reader:mes_xml"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), "mes/x.xml", data, False)
        res = check_reader(mes_xml.read_batchml, path, "mes/x.xml", PROFILES["mes_batchml"], None)
        if res is not None:
            # XML readers have no line-level rejects: every record produced is a row read
            assert res.rows_read == sum(len(t) for t in res.tables.values()) and res.rejects.empty


# ---------------------------------------------------------------- the full ingest path

ALL_FILES = st.sampled_from([*CSV_READERS, "mes_xml"]).flatmap(  # each dataset about equally often
    lambda ds: (
        xml_files().map(lambda d: ("mes_xml", d, False))
        if ds == "mes_xml"
        else csv_files(ds).map(lambda g: (ds, *g))
    )
)
REL = {**{ds: v[2] for ds, v in CSV_READERS.items()}, "mes_xml": "mes/x.xml"}
PROFILE_OF = {**{ds: v[1] for ds, v in CSV_READERS.items()}, "mes_xml": PROFILES["mes_batchml"]}


def files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*")]


def assert_only_inside(outside: Path, lake_root: Path, before: set[Path]) -> None:
    """Nothing new appeared in `outside` except under the lake root."""
    for p in outside.rglob("*"):
        if p not in before:
            assert p.resolve().is_relative_to(lake_root.resolve()), (
                f"{p} was written outside the lake {lake_root}"
            )


def check_ingest(lake: Lake, landing: Path, rel: str, profile) -> dict:
    outcome = ingest_file(lake, landing, rel, profile, run_id="hypothesis")
    log = outcome.log
    assert log["status"] in ("ingested", "rejected"), log
    assert log["rows_read"] == log["rows_accepted"] + log["rows_quarantined"], log
    if log["status"] == "rejected":
        assert log["error"] and _one_line(log["error"]), log["error"]
    else:
        assert log["error"] is None
    # what the lake holds agrees with the outcome
    logs = pd.concat(pd.read_parquet(p) for p in lake.silver("ingest_log").glob("*.parquet"))
    row = logs[logs.sha256 == log["sha256"]].iloc[-1]
    assert (row.rows_read, row.rows_accepted, row.rows_quarantined, row.status) == (
        log["rows_read"],
        log["rows_accepted"],
        log["rows_quarantined"],
        log["status"],
    )
    q = lake.silver("quarantine") / f"{log['sha256']}.parquet"
    # quarantine has one row per rejected row *and reason*: at least one per quarantined row,
    # none without
    q_rows = pq.read_metadata(q).num_rows if q.exists() else 0
    assert q_rows >= log["rows_quarantined"] and (q_rows == 0) == (log["rows_quarantined"] == 0), (
        q_rows,
        log,
    )
    if log["status"] == "ingested" and log["dataset"] != "mes_journal":
        # accepted rows are all in silver: one file per table, named by the source hash
        stored = sum(
            pq.read_metadata(p).num_rows
            for p in lake.root.joinpath("silver").glob(f"*/{log['sha256']}.parquet")
            if p.parent.name not in ("quarantine", "ingest_log")
        )
        assert stored == log["rows_accepted"], (stored, log)
    return log


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ALL_FILES)
def test_ingest_file_keeps_the_log_invariant_on_any_input(generated):
    dataset, data, gz = generated
    EXAMPLES[f"ingest:{dataset}"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        path = _write(root / "landing", REL[dataset], data, gz)
        lake = Lake(root / "lake")
        before = set(root.rglob("*"))
        log = check_ingest(
            lake,
            root / "landing",
            path.relative_to(root / "landing").as_posix(),
            PROFILE_OF[dataset],
        )
        assert_only_inside(root, lake.root, before)
        EXAMPLES[f"ingest-status:{log['status']}"] += 1


# ----------------------------------------------------------- targeted cases the generators may miss


def test_a_gz_file_that_is_not_gzip_is_refused_in_one_line(tmp_path):
    path = tmp_path / "historian" / "x.csv.gz"
    path.parent.mkdir()
    path.write_bytes(b"Tag,Timestamp,Value,Status\nA,2026-01-01T00:00:00Z,1,Good\n")
    check_reader(
        historian_csv.read_long,
        path,
        "historian/x.csv.gz",
        PROFILES["historian_long_pi"],
        "historian_points",
    )
    with pytest.raises(SourceRejected):
        historian_csv.read_long(
            path, sha256_of(path), "historian/x.csv.gz", PROFILES["historian_long_pi"]
        )


@pytest.mark.parametrize("dataset", sorted(CSV_READERS))
def test_duplicate_and_unbalanced_header_columns(tmp_path, dataset):
    reader, profile, rel, table = CSV_READERS[dataset]
    d = profile.delimiter
    header = HEADERS[dataset]
    cases = [
        d.join(header + [header[0]])
        + "\n"
        + d.join(["1"] * (len(header) + 1))
        + "\n",  # a duplicated column name
        d.join(['"' + header[0] + d + 'x"', *header[1:]])
        + "\n"
        + d.join(["1"] * len(header))
        + "\n",  # delimiter inside a quoted name
        d.join(header)
        + "\n"
        + ("\n" * 3)
        + d.join(["2026-03-15 12:00:00"] * len(header))
        + "\n",  # blank lines
        d.join(header) + "\n" + d.join(["x" * 1_000_000] * len(header)) + "\n",  # a huge field
    ]
    for i, text in enumerate(cases):
        path = tmp_path / f"{i}" / rel
        path.parent.mkdir(parents=True)
        path.write_text(text)
        check_reader(reader, path, rel, profile, table)


def test_many_columns_and_a_long_file_stay_conserved(tmp_path):
    reader, profile, rel, table = CSV_READERS["historian_wide"]
    tags_ = [f"T{i}" for i in range(300)]
    rows = [
        ";".join(
            [f"15.03.2026 12:{m:02d}:00"] + [("1,5" if (m + i) % 3 else "") for i in range(300)]
        )
        for m in range(60)
    ]
    path = tmp_path / rel
    path.parent.mkdir()
    path.write_text(";".join(["Timestamp", *tags_]) + "\n" + "\n".join(rows) + "\n")
    res = check_reader(reader, path, rel, profile, table)
    assert res is not None and res.rows_read == sum(
        1 for m in range(60) for i in range(300) if (m + i) % 3
    )


def test_journal_with_300_columns_and_python_keywords_as_names(tmp_path):
    reader, profile, rel, _ = CSV_READERS["mes_journal"]
    header = (
        HEADERS["mes_journal"]
        + ["class", "def", "_x", "1abc", "line", "ts"]
        + [f"c{i}" for i in range(300)]
    )
    row = ["2026-03-15 12:00:00", "B1", "PROC", "BR1", "", "State Change", "RUNNING", "", ""] + [
        "x"
    ] * (6 + 300)
    path = tmp_path / rel
    path.parent.mkdir()
    path.write_text(",".join(header) + "\n" + ",".join(row) + "\n")
    res = check_reader(reader, path, rel, profile, None)
    assert res is not None and res.tables["batch_records"].batch_id.tolist() == ["B1"]


def test_batchml_version_in_unicode_digits_or_huge_is_not_a_crash(tmp_path):
    for version in ("²", "٣", "99999999999999999999999", "0"):
        path = tmp_path / "x.xml"
        path.write_text(
            f"<BatchList><Version>{version}</Version><BatchListEntry><BatchListEntryType>Batch</BatchListEntryType>"
            "<BatchID>B1</BatchID></BatchListEntry></BatchList>",
            encoding="utf-8",
        )
        check_reader(mes_xml.read_batchml, path, "mes/x.xml", PROFILES["mes_batchml"], None)
        lake_root = tmp_path / f"lake-{len(version)}"
        landing = tmp_path
        (landing / "mes").mkdir(exist_ok=True)
        shutil.copy(path, landing / "mes" / f"v{len(version)}.xml")
        check_ingest(Lake(lake_root), landing, f"mes/v{len(version)}.xml", PROFILES["mes_batchml"])


# ------------------------------------ XML attacks (XXE, parameter entities, billion laughs, depth)


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's API
        _Recorder.hits.append(self.path)
        body = b'<!ENTITY exfil "LEAKED">'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def http_recorder():
    """A local HTTP server that records every request: a parser that fetches anything is caught."""
    _Recorder.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.hits
    server.shutdown()
    server.server_close()


def _attacks(url: str, secret_file: Path, secret_dtd: Path) -> dict[str, str]:
    entry = (
        "<BatchList><BatchListEntry><BatchListEntryType>Batch</BatchListEntryType>"
        "<BatchID>{}</BatchID></BatchListEntry></BatchList>"
    )
    laughs = '<!ENTITY lol "lol">' + "".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'
        for i in range(1, 10)
    )
    return {
        "xxe_file": f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file://{secret_file}">]>'
        + entry.format("&x;"),
        "xxe_passwd": '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        + entry.format("&x;"),
        "xxe_http": f'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "{url}/xxe">]>'
        + entry.format("&x;"),
        "parameter_entity_http": '<?xml version="1.0"?>'
        f'<!DOCTYPE r [<!ENTITY % p SYSTEM "{url}/pe"> %p;]>' + entry.format("&exfil;"),
        "parameter_entity_file": '<?xml version="1.0"?>'
        f'<!DOCTYPE r [<!ENTITY % p SYSTEM "file://{secret_dtd}"> %p;]>' + entry.format("&exfil;"),
        "external_dtd_http": f'<?xml version="1.0"?><!DOCTYPE BatchList SYSTEM "{url}/ext.dtd">'
        + entry.format("B1"),
        "external_dtd_public": '<?xml version="1.0"?>'
        f'<!DOCTYPE BatchList PUBLIC "-//X//DTD X//EN" "{url}/pub.dtd">' + entry.format("B1"),
        "billion_laughs": f'<?xml version="1.0"?><!DOCTYPE r [{laughs}]>' + entry.format("&lol9;"),
        "quadratic_blowup": '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "'
        + "a" * 50_000
        + '">]>'
        + entry.format("&a;" * 5000),
        "internal_entity": '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY b "B26-001">]>'
        + entry.format("&b;"),
        "xinclude": '<BatchList xmlns="http://www.wbf.org/xml/B2MML-V0401" '
        'xmlns:xi="http://www.w3.org/2001/XInclude">'
        "<BatchListEntry><BatchListEntryType>Batch</BatchListEntryType>"
        f'<BatchID><xi:include href="file://{secret_file}" parse="text"/></BatchID>'
        "</BatchListEntry></BatchList>",
    }


@pytest.mark.parametrize("attack", sorted(_attacks("http://x", Path("/x"), Path("/y"))))
def test_xml_attacks_are_refused_without_expanding_or_fetching(tmp_path, http_recorder, attack):
    url, hits = http_recorder
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-42")
    (tmp_path / "secret.dtd").write_text('<!ENTITY exfil "TOPSECRET-42">')
    doc = _attacks(url, secret, tmp_path / "secret.dtd")[attack]
    path = tmp_path / "mes" / "evil.xml"
    path.parent.mkdir()
    path.write_text(doc)
    started = time.perf_counter()
    try:
        res = mes_xml.read_batchml(path, sha256_of(path), "mes/evil.xml", PROFILES["mes_batchml"])
    except SourceRejected as err:
        assert _one_line(str(err))
        res = None
    assert time.perf_counter() - started < 5, "entity expansion must not be attempted"
    assert hits == [], f"the parser fetched {hits}"
    if attack == "xinclude":  # no DTD: it parses, but the include is not processed
        text = " ".join(map(str, res.tables["batch_records"].astype(str).to_numpy().ravel()))
        assert "TOPSECRET" not in text
    else:
        assert res is None, f"{attack} was not refused"
    # and the whole ingest path refuses it too, leaving the secret out of every file it writes
    lake = Lake(tmp_path / "lake")
    log = check_ingest(lake, tmp_path, "mes/evil.xml", PROFILES["mes_batchml"])
    assert log["status"] == ("ingested" if attack == "xinclude" else "rejected")
    for p in lake.root.rglob("*.parquet"):
        assert b"TOPSECRET" not in p.read_bytes() and b"root:" not in p.read_bytes()
    assert hits == []


@pytest.mark.parametrize("depth", [255, 300, 10_000, 200_000])
def test_deeply_nested_xml_is_refused_not_a_crash(tmp_path, depth):
    path = tmp_path / "deep.xml"
    path.write_text("<BatchList>" + "<a>" * depth + "x" + "</a>" * depth + "</BatchList>")
    check_reader(mes_xml.read_batchml, path, "mes/deep.xml", PROFILES["mes_batchml"], None)


def test_report_generated_example_counts():
    """Runs last in this file (pytest keeps file order): prints how many inputs were generated."""
    total = sum(v for k, v in EXAMPLES.items() if not k.startswith("ingest-status"))
    print(
        f"\nhypothesis inputs run: {total} "
        + ", ".join(f"{k}={v}" for k, v in sorted(EXAMPLES.items()))
    )
    if EXAMPLES:  # only meaningful when the property tests ran in this session
        assert total >= 500


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "uom", ["10**10**10", "(10**9)**9999", "2^3^4^5", "\x1b", "(" * 40, "kg" * 30]
)
def test_unit_text_that_would_hang_or_crash_pint_is_quarantined_fast(tmp_path, uom):
    """pint evaluates arithmetic in unit strings: '10**10**10' would compute a 10-billion-digit
    integer."""
    path = tmp_path / "tags" / "x.csv"
    path.parent.mkdir()
    path.write_text(
        "tag,unit_id,parameter,uom,role,interpolation\n"
        f"T1,BR1,temperature,{_quote(uom, ',')},pv,linear\n"
        "T2,BR1,temperature,degF,pv,linear\n"
    )
    started = time.perf_counter()
    res = check_reader(tags.read_tags, path, "tags/x.csv", PROFILES["tag_dictionary"], "tags")
    assert res.tables["tags"].tag.tolist() == ["T2"] and res.rejects.source_row.tolist() == [2]
    path = tmp_path / "lims" / "x.csv"
    path.parent.mkdir()
    path.write_text(
        "sample_id,batch_id,analyte,value,unit,sampled_at,reported_at\n"
        f"S1,B1,vcd,1.5,{_quote(uom, ',')},2026-01-01T00:00:00Z,\n"
        "S2,B1,vcd,1.5,1e6 cells/mL,2026-01-01T00:00:00Z,\n"
    )
    res = check_reader(lims.read_lims, path, "lims/x.csv", PROFILES["lims"], "samples")
    assert res.tables["samples"].sample_id.tolist() == ["S2"] and res.rejects.check.tolist() == [
        "uom_syntax"
    ]
    assert time.perf_counter() - started < 10


def test_a_lab_file_where_no_result_has_a_value_is_ingested_not_crashed(tmp_path):
    """Found by the generator above: every result censored or blank, read without a site
    dictionary, so no row has a canonical value."""
    from lake.ingest import result_identity

    frame = pd.DataFrame(
        {
            "canonical_value": [float("nan"), float("nan")],
            "canonical_uom": ["mM", "g/L"],
            "value_text": ["<0.5", "<1"],
            "uom": ["mM", "g/L"],
        }
    )
    assert result_identity(frame).tolist() == ["<0.5 mM", "<1 g/L"]
    frame.loc[1, "canonical_value"] = 4.1
    assert result_identity(frame).tolist() == ["<0.5 mM", "4.1 g/L"]
    text = (
        b"sample_id,value,analyte,sampled_at,batch_id,unit,reported_at\n,<0.5,,00000101T00,NaN,,\n"
    )
    landing = tmp_path / "landing"
    _write(landing, REL["lims"], text, gz=True)
    log = check_ingest(Lake(tmp_path / "lake"), landing, REL["lims"] + ".gz", PROFILE_OF["lims"])
    assert log["status"] == "ingested" and log["rows_read"] == 1
