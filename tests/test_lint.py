"""The code base stays ruff-clean: part of the test command, so CI enforces it."""

import shutil
import subprocess
import sys

from tests.conftest import ROOT


def test_ruff_reports_no_problems() -> None:
    ruff = shutil.which("ruff", path=str(ROOT / ".venv" / "bin")) or shutil.which("ruff")
    cmd = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    result = subprocess.run([*cmd, "check", "fspd", "tests"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
