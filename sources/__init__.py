"""Readers: a landing file or a SQL pull -> a pandas table with lineage columns.

Each reader returns a `ReadResult`: the parsed rows, the rows it could not parse (with their
line and reason, for quarantine) and how many rows it read in all. Validation is not the
readers' job; `schemas.validate` does it.
"""
