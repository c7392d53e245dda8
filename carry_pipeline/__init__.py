"""carry_pipeline: the Dagster code location, from exchange data to trained carry-trade agents.

`dagster ... -m carry_pipeline` finds the code location's `Definitions` as the attribute
`code_location` (the name `defs` is taken by the `carry_pipeline.defs` folder). It is loaded lazily,
so importing `carry_pipeline.lib` does not load every stage's definitions.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "code_location":
        from carry_pipeline.definitions import defs

        return defs
    raise AttributeError(f"module 'carry_pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "code_location"])
