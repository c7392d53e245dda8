"""Mutation specs: each module exports `MUTATIONS: list[Mutation]`; the runner imports all."""
