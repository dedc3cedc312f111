"""Lineage columns carried by every silver row, so each curated number traces to its file and
row."""

SOURCE_SHA256 = "source_sha256"
# 1-based line number in the source file (header = line 1), or row ordinal for SQL/XML
SOURCE_ROW = "source_row"
SOURCE_PATH = "source_path"

COLUMNS = (SOURCE_SHA256, SOURCE_ROW, SOURCE_PATH)
