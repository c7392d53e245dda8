"""Ingestion stage: raw exchange data into the DuckDB schema `raw`."""
