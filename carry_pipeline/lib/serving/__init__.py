"""The inference service's logic (no Dagster, no HTTP): the served champion, request checks and
the service's Prometheus metrics. `carry_pipeline.serve` puts them behind FastAPI."""
