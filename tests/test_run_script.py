"""tests/run.sh, the test command, with a stand-in for `python -m pytest`: both phases run, whatever the first did."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

RUN_SH = Path(__file__).resolve().parent / "run.sh"

# records its arguments; the 4.57 phase is the one with -p no:cacheprovider; exit codes come from the environment
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$CALLS"
case "$*" in
  *no:cacheprovider*) echo "4.57 phase output"; echo "SUMMARY-4.57"; exit "$RC_457" ;;
  *) echo "main phase output"; echo "SUMMARY-MAIN"; exit "$RC_MAIN" ;;
esac
"""


@pytest.fixture
def checkout(tmp_path):
    """A copy of run.sh in an empty checkout whose .cache/tf457 already holds transformers (no install)."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    (tmp_path / "tests").mkdir()
    shutil.copy(RUN_SH, tmp_path / "tests" / "run.sh")
    (tmp_path / ".cache" / "tf457" / "transformers").mkdir(parents=True)
    (tmp_path / ".cache" / "tf457" / "transformers" / "__init__.py").write_text("")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text(FAKE_PYTHON)
    (tmp_path / "bin" / "python").chmod(0o755)
    return tmp_path


def run_script(checkout, rc_main, rc_457):
    env = {**os.environ, "PATH": f"{checkout / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "CALLS": str(checkout / "calls"), "RC_MAIN": str(rc_main), "RC_457": str(rc_457)}
    out = subprocess.run(["bash", str(checkout / "tests" / "run.sh"), "-k", "x"], env=env, capture_output=True,
                         text=True, timeout=60)
    calls = (checkout / "calls").read_text().splitlines()
    return out.returncode, out.stdout, calls


@pytest.mark.parametrize("rc_main, rc_457", [(1, 0), (0, 1), (0, 0)])
def test_both_phases_run_and_either_failure_fails_the_command(checkout, rc_main, rc_457):
    rc, out, calls = run_script(checkout, rc_main, rc_457)
    assert len(calls) == 2 and "no:cacheprovider" in calls[1], calls      # the 4.57 rerun ran after the main one
    assert all(c.endswith("-k x") for c in calls)                           # the arguments reach both phases
    assert (rc == 0) == (rc_main == 0 and rc_457 == 0)
    # both summaries again at the end, where a reader of the log looks
    assert out.splitlines()[-2:] == ["installed transformers: SUMMARY-MAIN", "transformers 4.57.6:    SUMMARY-4.57"]
