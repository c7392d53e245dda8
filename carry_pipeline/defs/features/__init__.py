"""Features stage: raw tables into aligned bars and point-in-time features (DuckDB schema
`features`)."""
