"""Dagster orchestration (the only package that imports Dagster) and the command line."""
