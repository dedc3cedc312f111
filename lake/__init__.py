"""The lake: Parquet layout, atomic writes, ingestion bookkeeping, the DuckDB catalog, queries."""
