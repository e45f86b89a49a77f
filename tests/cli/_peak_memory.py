"""The peak resident memory of an fspd process run as typed: a ``sitecustomize`` hook on its
PYTHONPATH writes the process's own high-water mark (VmHWM) to a file at exit."""

from __future__ import annotations

from pathlib import Path

_HOOK = '''
import atexit, os
def _hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                with open(os.environ["FSPD_TEST_HWM_FILE"], "w") as out:
                    out.write(line.split()[1])
if os.environ.get("FSPD_TEST_HWM_FILE"):
    atexit.register(_hwm)
'''


def peak_env(tmp_path: Path, tag: str) -> tuple[dict[str, str], Path]:
    """Extra environment for the run, and the file its peak lands in (see :func:`peak_mib`)."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(_HOOK)
    out = tmp_path / f"{tag}.hwm"
    return {"PYTHONPATH": str(hook), "FSPD_TEST_HWM_FILE": str(out)}, out


def peak_mib(out: Path) -> float:
    return int(out.read_text()) / 1024
