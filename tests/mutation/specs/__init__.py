"""Curated mutations, one module per area; each defines `MUTATIONS: list[Mutation]`."""
