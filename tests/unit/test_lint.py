"""The tree passes the project's ruff rules (pyproject.toml [tool.ruff]), so CI catches
unused imports, import cycles in the making and swallowed exceptions, not a reviewer."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    done = subprocess.run([str(ruff), "check", "--no-cache", str(ROOT)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-4000:]
