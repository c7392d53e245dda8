"""The project's mutation check (`make mutation`): curated small bugs, one at a time, each of which the
tests must catch."""
