"""The project's mutation check (`make mutation`): curated small bugs, planted one at a time,
each of which the tests must catch."""
