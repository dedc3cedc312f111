"""pandera models of every raw and curated table: the project's data dictionary.

`schemas.tables` declares the tables, `schemas.validate` splits a frame into accepted rows
and quarantined rows with their reasons.
"""
