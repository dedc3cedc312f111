"""CSV layouts of files nobody here wrote: a preamble before the header (an instrument's
file-header record, annotation lines), and files without a header (columns by position).

Both CSV paths are covered: pyarrow (lab, wide historian, tags, journal) and the streamed
DuckDB path (long historian exports); each row keeps the line an editor shows.
"""

from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml

from sources import historian_csv, lims
from sources.base import SourceRejected, sha256_of
from sources.profiles import FileProfile
from sources.site import SiteConfigError, load_site

LIMS = FileProfile(name="lab", dataset="lims", glob="lims/*.csv")
LONG = FileProfile(name="pi", dataset="historian_long", glob="historian/*.csv")

# an analyzer's file-header record: three lines of metadata, one of them empty, then the header
CEDEX_LIKE = (
    "Instrument;Cedex Bio HT;SN 4711\n"
    "\n"
    "Export;2026-11-07 09:00\n"
    "sample_id;batch_id;analyte;value;unit;sampled_at;reported_at\n"
    "D07;B31-007;glucose;4.71;g/L;2026-11-07T08:00:00Z;2026-11-07T08:41:00Z\n"
    "\n"
    "D07;B31-007;lactate;n/a;g/L;2026-11-07T08:00:00Z;2026-11-07T08:43:00Z\n"
    "D07;B31-007;ammonia;3.2;mM;2026-11-07T08:00:00Z;2026-11-07T08:45:00Z\n"
)
# annotation lines before the header, as time-series databases export them
ANNOTATED = (
    "#datatype,string,dateTime:RFC3339,double\n"
    "#group,true,false,false\n"
    "#default,,,\n"
    "tag,ts,value\n"
    "BR1.TI01.PV,2026-11-07T08:00:00Z,36.9\n"
    "BR1.TI01.PV,2026-11-07T08:00:10Z,37.0,extra\n"
    "\n"
    "BR1.TI01.PV,2026-11-07T08:00:20Z,37.1\n"
)


def _file(tmp_path: Path, rel: str, text: str) -> Path:
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _lines(path: Path) -> list[str]:
    return path.read_text().split("\n")


def test_a_preamble_before_the_header_is_skipped_and_lines_keep_their_numbers(tmp_path):
    path = _file(tmp_path, "lims/cedex.csv", CEDEX_LIKE)
    profile = replace(LIMS, delimiter=";", header_line=4)
    res = lims.read_lims(path, sha256_of(path), "lims/cedex.csv", profile)
    samples = res.tables["samples"]
    assert samples.analyte.tolist() == ["glucose", "ammonia"]
    assert samples.source_row.tolist() == [5, 8]  # the lines an editor shows
    text = _lines(path)
    for line, analyte in zip([5, 8], samples.analyte, strict=True):
        assert text[line - 1].startswith(f"D07;B31-007;{analyte}")
    assert res.rejects[["source_row", "column", "failure_value"]].values.tolist() == [
        [7, "value", "n/a"]
    ]
    # read as if the first line were the header, the file is not a lab export at all
    with pytest.raises(SourceRejected, match="missing column"):
        lims.read_lims(path, sha256_of(path), "lims/cedex.csv", replace(profile, header_line=1))


def test_the_streamed_historian_path_skips_a_preamble_with_the_same_line_numbers(tmp_path):
    path = _file(tmp_path, "historian/annotated.csv", ANNOTATED)
    res = historian_csv.read_long(
        path, sha256_of(path), "historian/annotated.csv", replace(LONG, header_line=4)
    )
    points = res.tables["historian_points"]
    assert points.value.tolist() == [36.9, 37.1]
    assert points.source_row.tolist() == [5, 8]
    assert points.ts.tolist() == [
        pd.Timestamp("2026-11-07 08:00:00", tz="UTC"),
        pd.Timestamp("2026-11-07 08:00:20", tz="UTC"),
    ]
    assert res.rejects["source_row"].tolist() == [6]  # the line with a field too many
    assert res.rows_read == 3


def test_a_file_without_a_header_is_read_by_position(tmp_path):
    body = "BR1.TI01.PV,2026-11-07T08:00:00Z,36.9\n\nBR1.TI01.PV,2026-11-07T08:00:10Z,x\n"
    path = _file(tmp_path, "historian/bare.csv", body)
    profile = replace(LONG, header_line=0, column_names=("Tag", "Time", "Value"))
    profile = replace(profile, columns={"tag": "Tag", "ts": "Time", "value": "Value"})
    res = historian_csv.read_long(path, sha256_of(path), "historian/bare.csv", profile)
    points = res.tables["historian_points"]
    assert points.value.tolist() == [36.9] and points.source_row.tolist() == [1]
    assert res.rejects[["source_row", "check"]].values.tolist() == [[3, "value_parse"]]
    # the pyarrow path too: a lab export without a header
    lab = _file(
        tmp_path,
        "lims/bare.csv",
        "D07,B31-007,glucose,4.71,g/L,2026-11-07T08:00:00Z,2026-11-07T08:41:00Z\n",
    )
    names = ("sample_id", "batch_id", "analyte", "value", "unit", "sampled_at", "reported_at")
    res = lims.read_lims(
        lab, sha256_of(lab), "lims/bare.csv", replace(LIMS, header_line=0, column_names=names)
    )
    assert res.tables["samples"][["analyte", "value", "source_row"]].values.tolist() == [
        ["glucose", 4.71, 1]
    ]


def test_a_header_line_past_the_end_of_the_file_names_the_key(tmp_path):
    path = _file(tmp_path, "lims/short.csv", "a;b\n1;2\n")
    with pytest.raises(SourceRejected, match="fewer than 9 lines.*`header_line`"):
        lims.read_lims(path, sha256_of(path), "lims/short.csv", replace(LIMS, header_line=9))
    with pytest.raises(SourceRejected, match="fewer than 9 lines.*`header_line`"):
        historian_csv.read_long(
            path, sha256_of(path), "lims/short.csv", replace(LONG, header_line=9)
        )


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"header_line": 0}, "needs `column_names`"),
        ({"column_names": ["a", "b"]}, "only for a file without a header"),
        ({"header_line": "4"}, "the line of the column names"),
        ({"header_line": -1}, "the line of the column names"),
        ({"header_line": 0, "column_names": ["a", "a"]}, "a name is given twice"),
    ],
)
def test_a_wrong_header_key_is_one_line_naming_it(tmp_path, keys, message):
    doc = {"files": {"lab": {"dataset": "lims", "glob": "lims/*.csv", **keys}}}
    (tmp_path / "sources.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(SiteConfigError) as err:
        load_site(tmp_path)
    assert message in str(err.value) and "files.lab" in str(err.value)


def test_a_tag_is_built_from_several_columns_by_the_profiles_template(tmp_path):
    text = (
        "StreamId,Field,Time,Value\n"
        "1207, TI01 ,2026-11-07T08:00:00Z,36.9\n"
        "1207,PH01,2026-11-07T08:00:00Z,7.02\n"
    )
    path = _file(tmp_path, "historian/streams.csv", text)
    profile = replace(
        LONG, tag_template="BR{StreamId}.{Field}.PV", columns={"ts": "Time", "value": "Value"}
    )
    res = historian_csv.read_long(path, sha256_of(path), "historian/streams.csv", profile)
    points = res.tables["historian_points"]
    assert points.tag.tolist() == ["BR1207.TI01.PV", "BR1207.PH01.PV"]
    assert points.value.tolist() == [36.9, 7.02]
    # a template naming a column the file lacks rejects it, naming the column
    wrong = replace(profile, tag_template="{Stream}.{Field}")
    with pytest.raises(SourceRejected, match="missing column.*'Stream'"):
        historian_csv.read_long(path, sha256_of(path), "historian/streams.csv", wrong)


def test_columns_of_a_wide_export_that_are_not_values_can_be_excluded(tmp_path):
    text = (
        "Timestamp,StreamId,Status,BR1.TI01.PV\n"
        "2026-11-07T08:00:00Z,1207,OK,36.9\n"
        "2026-11-07T08:01:00Z,1207,OK,37.0\n"
    )
    path = _file(tmp_path, "historian/wide.csv", text)
    wide = FileProfile(
        name="w", dataset="historian_wide", glob="historian/*.csv", columns={"ts": "Timestamp"}
    )
    read = historian_csv.read_wide(path, sha256_of(path), "historian/wide.csv", wide)
    # unsaid, a stream id is a tag of value 1207 and a status column a tag of bad text
    assert set(read.tables["historian_points"].tag) == {"StreamId", "BR1.TI01.PV"}
    assert set(read.rejects.column) == {"Status"}
    wide = replace(wide, exclude_columns=("StreamId", "Status"))
    read = historian_csv.read_wide(path, sha256_of(path), "historian/wide.csv", wide)
    assert read.tables["historian_points"].tag.unique().tolist() == ["BR1.TI01.PV"]
    assert read.rejects.empty and read.rows_read == 2


@pytest.mark.parametrize("template", ["{Stream", "plain", "{0:>5}", "{}.x"])
def test_a_wrong_tag_template_is_one_line_naming_it(tmp_path, template):
    doc = {"files": {"pi": {"dataset": "historian_long", "glob": "h/*", "tag_template": template}}}
    (tmp_path / "sources.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(SiteConfigError, match="files.pi.tag_template"):
        load_site(tmp_path)
