"""A policy's state between bars as bytes, for `paper.policy_state`: `pack_state` / `unpack_state`.

What a paper session carries from one bar to the next for its policy is SB3's recurrent `state`
(a RecurrentPPO model returns its LSTM's `(h, c)` arrays) and whatever a trained-model adapter
keeps inside (`get_state()`: the experts' LSTM states, the meta-controller's running statistics).
Both are nests of dicts, lists, tuples, None, numbers, strings and numpy arrays. `pack_state`
writes such a nest as one `.npz` archive: every array under its own key, bit for bit with its
dtype and shape, and the nest's shape as JSON under `__skeleton__`. Nothing is pickled, so
unpacking a row of the ledger never runs code.
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np

_SKELETON = "__skeleton__"


def pack_state(state: Any) -> bytes:
    """`state` (a nest of dict / list / tuple / None / bool / int / float / str / ndarray) as bytes.

    Raises:
        TypeError: a value of another type (its path in the nest is named), or an object array.
    """
    arrays: dict[str, np.ndarray] = {}
    skeleton = _encode(state, arrays, "state")
    buffer = io.BytesIO()
    arrays[_SKELETON] = np.frombuffer(json.dumps(skeleton).encode(), np.uint8)
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def unpack_state(data: bytes) -> Any:
    """The nest `pack_state` wrote (tuples stay tuples, arrays keep dtype and shape).

    Raises:
        ValueError: `data` is not an archive `pack_state` wrote.
    """
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"policy state of {len(data)} bytes is not a packed state: {exc}") from exc
    if _SKELETON not in arrays:
        raise ValueError(f"policy state archive has no {_SKELETON} entry: {sorted(arrays)}")
    skeleton = json.loads(arrays.pop(_SKELETON).tobytes().decode())
    return _decode(skeleton, arrays)


def _encode(value: Any, arrays: dict[str, np.ndarray], path: str) -> Any:
    # The JSON node of `value`; arrays go to `arrays` under a fresh key.
    if value is None:
        return {"t": "none"}
    if isinstance(value, bool | int | float | str) and not isinstance(value, np.generic):
        return {"t": "py", "v": value}
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError(f"{path}: object arrays cannot be stored without pickling")
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"t": "nd", "k": key}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{path}: dict keys must be strings, got {list(value)}")
        return {"t": "dict", "v": {k: _encode(v, arrays, f"{path}.{k}") for k, v in value.items()}}
    if isinstance(value, list | tuple):
        kind = "tuple" if isinstance(value, tuple) else "list"
        return {"t": kind, "v": [_encode(v, arrays, f"{path}[{i}]") for i, v in enumerate(value)]}
    raise TypeError(f"{path}: cannot store a {type(value).__name__} in a policy state")


def _decode(node: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    kind = node["t"]
    if kind == "none":
        return None
    if kind == "py":
        return node["v"]
    if kind == "nd":
        return arrays[node["k"]]
    if kind == "dict":
        return {k: _decode(v, arrays) for k, v in node["v"].items()}
    items = [_decode(v, arrays) for v in node["v"]]
    return tuple(items) if kind == "tuple" else items
