"""`import carry_env` stays light: stable-baselines3 and torch load only with the SB3 adapter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_HEAVY = ("torch", "stable_baselines3")
_ROOT = Path(__file__).resolve().parents[2]


def _loaded_after(code: str) -> list[str]:
    # A fresh interpreter, so modules other tests imported do not count.
    probe = f"{code}\nimport sys\nprint(' '.join(m for m in {_HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
        cwd=_ROOT,
    )
    return out.stdout.split()


def test_import_carry_env_does_not_load_torch_or_sb3() -> None:
    assert _loaded_after("import carry_env, carry_env.vector") == []


def test_sb3_adapter_still_importable_from_vector() -> None:
    code = "from carry_env.vector import SB3VecEnv\nassert SB3VecEnv.__module__ == 'carry_env.sb3'"
    assert _loaded_after(code) == list(_HEAVY)
