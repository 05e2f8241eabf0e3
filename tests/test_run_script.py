"""tests/run.sh, the test command, with a stand-in for `python -m pytest`: every phase runs, whatever the others did."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

RUN_SH = Path(__file__).resolve().parent / "run.sh"

# records its arguments; the lmms-eval phases run with PRUNEVID_REQUIRE_LMMS_EVAL=1 (the second on 4.57: .cache/tf457
# on PYTHONPATH), the ComfyUI phase on tests/test_comfyui_e2e.py, the 4.57 phase is the other one with
# -p no:cacheprovider; exit codes come from the environment. `python -c` (run.sh asking the main environment for its
# site folders, or the eval venv whether it imports) prints one folder and succeeds; `python -m venv` (a rebuild of the
# eval venv) is recorded and fails, and so does the ComfyUI venv's builder when RC_CVENV says so, so no test installs
# anything.
FAKE_PYTHON = """#!/bin/sh
case "$1" in
  -c) echo "/main/site-packages"; exit 0 ;;
  -m) if [ "$2" = venv ]; then echo "venv: $*" >> "$CALLS"; exit 1; fi ;;
  tests/comfyui_venv.py) echo "comfyui-venv: $*" >> "$CALLS"; echo "builder output"; exit "$RC_CVENV" ;;
esac
case "$*" in
  *" tests/test_comfyui_e2e.py"*)
    echo "comfyui: require=$PRUNEVID_REQUIRE_COMFYUI dir=$COMFYUI_DIR python=$COMFYUI_PYTHON $*" >> "$CALLS"
    echo "comfyui phase output"; echo "SUMMARY-COMFYUI"; exit "$RC_COMFYUI" ;;
esac
if [ "$PRUNEVID_REQUIRE_LMMS_EVAL" = 1 ]; then
  case "$PYTHONPATH" in
    *tf457*) echo "eval457: $*" >> "$CALLS"; echo "SUMMARY-EVAL457"; exit "$RC_EVAL457" ;;
  esac
  echo "eval: $*" >> "$CALLS"; echo "eval phase output"; echo "SUMMARY-EVAL"; exit "$RC_EVAL"
fi
echo "$*" >> "$CALLS"
case "$*" in
  *no:cacheprovider*) echo "4.57 phase output"; echo "SUMMARY-4.57"; exit "$RC_457" ;;
  *) echo "main phase output"; echo "SUMMARY-MAIN"; exit "$RC_MAIN" ;;
esac
"""


@pytest.fixture
def checkout(tmp_path):
    """A copy of run.sh in an empty checkout whose .cache/tf457 already holds transformers, .cache/tf457-eval datasets,
    and whose .cache/venv-eval is complete (no install) for the main environment's current site folders."""
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    (tmp_path / "tests").mkdir()
    shutil.copy(RUN_SH, tmp_path / "tests" / "run.sh")
    (tmp_path / ".cache" / "tf457" / "transformers").mkdir(parents=True)
    (tmp_path / ".cache" / "tf457" / "transformers" / "__init__.py").write_text("")
    (tmp_path / ".cache" / "tf457-eval" / "datasets").mkdir(parents=True)
    (tmp_path / ".cache" / "tf457-eval" / "datasets" / "__init__.py").write_text("")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "python").write_text(FAKE_PYTHON)
    (tmp_path / "bin" / "python").chmod(0o755)
    venv = tmp_path / ".cache" / "venv-eval"
    (venv / "bin").mkdir(parents=True)
    shutil.copy(tmp_path / "bin" / "python", venv / "bin" / "python")
    (venv / ".complete").write_text("/main/site-packages\n")       # built against the main environment's folders
    (tmp_path / "comfy").mkdir()                                       # a ComfyUI tree, as COMFYUI_DIR names it
    (tmp_path / "comfy" / "main.py").write_text("")
    return tmp_path


def run_script(checkout, rc_main, rc_457, rc_eval=0, rc_eval457=0, rc_comfyui=0, rc_cvenv=0, comfy_tree=True):
    env = {**os.environ, "PATH": f"{checkout / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "CALLS": str(checkout / "calls"), "RC_MAIN": str(rc_main), "RC_457": str(rc_457), "RC_EVAL": str(rc_eval),
           "RC_EVAL457": str(rc_eval457), "RC_COMFYUI": str(rc_comfyui), "RC_CVENV": str(rc_cvenv),
           "COMFYUI_DIR": str(checkout / ("comfy" if comfy_tree else "no-such-tree"))}
    for name in ("PRUNEVID_REQUIRE_LMMS_EVAL", "PRUNEVID_REQUIRE_COMFYUI", "COMFYUI_PYTHON", "PYTHONPATH"):
        env.pop(name, None)
    out = subprocess.run(["bash", str(checkout / "tests" / "run.sh"), "-k", "x"], env=env, capture_output=True,
                         text=True, timeout=60)
    calls = (checkout / "calls").read_text().splitlines()
    return out.returncode, out.stdout, calls


@pytest.mark.parametrize("rc_main, rc_457, rc_eval, rc_eval457, rc_comfyui",
                         [(1, 0, 0, 0, 0), (0, 1, 0, 0, 0), (0, 0, 1, 0, 0), (0, 0, 0, 1, 0), (0, 0, 0, 0, 1),
                          (0, 0, 0, 0, 0)])
def test_every_phase_runs_and_any_failure_fails_the_command(checkout, rc_main, rc_457, rc_eval, rc_eval457,
                                                            rc_comfyui):
    rc, out, calls = run_script(checkout, rc_main, rc_457, rc_eval, rc_eval457, rc_comfyui)
    assert len(calls) == 6 and "no:cacheprovider" in calls[1], calls      # the 4.57 rerun ran after the main one
    assert calls[2].startswith("eval: ") and "tests/test_lmms_eval.py" in calls[2]   # then lmms-eval, in its venv
    assert calls[3].startswith("eval457: ") and "tests/test_lmms_eval.py::test_long_clip" in calls[3]  # then on 4.57
    # then ComfyUI's Python is built (or found ready) and the real-ComfyUI test runs with it, required to run
    assert calls[4] == f"comfyui-venv: tests/comfyui_venv.py .cache/venv-comfyui {checkout / 'comfy'}"
    assert calls[5].startswith(f"comfyui: require=1 dir={checkout / 'comfy'} python={checkout}/.cache/venv-comfyui/bin/python ")
    assert "--ignore=tests/test_lmms_eval.py" in calls[0]                  # not in the main environment
    assert "--ignore=tests/test_comfyui_e2e.py" in calls[0]
    assert all(c.endswith("-k x") for c in calls if not c.startswith("comfyui-venv: "))  # the arguments reach every phase
    assert (rc == 0) == (rc_main == 0 and rc_457 == 0 and rc_eval == 0 and rc_eval457 == 0 and rc_comfyui == 0)
    # the summaries again at the end, where a reader of the log looks
    assert out.splitlines()[-5:] == ["installed transformers: SUMMARY-MAIN", "transformers 4.57.6:    SUMMARY-4.57",
                                     "lmms-eval (venv-eval):  SUMMARY-EVAL", "lmms-eval on 4.57.6:    SUMMARY-EVAL457",
                                     "ComfyUI (venv-comfyui): SUMMARY-COMFYUI"]


def test_arguments_that_select_no_lmms_eval_test_do_not_fail_the_command(checkout):
    rc, out, calls = run_script(checkout, 0, 0, rc_eval=5, rc_eval457=5)      # pytest's "no tests collected"
    assert rc == 0 and len(calls) == 6
    rc, out, calls = run_script(checkout, 0, 0, rc_comfyui=5)
    assert rc == 0


def test_a_comfyui_python_that_cannot_be_built_fails_the_command(checkout):
    rc, out, calls = run_script(checkout, 0, 0, rc_cvenv=1)
    assert rc == 1 and calls[4].startswith("comfyui-venv: ") and len(calls) == 5, calls   # no e2e run
    assert "builder output" in out                                     # the builder's log, where it failed
    assert out.splitlines()[-1] == "ComfyUI (venv-comfyui): could not build ComfyUI's Python in .cache/venv-comfyui " \
                                   "(tests/comfyui_venv.py)"


def test_without_a_comfyui_tree_the_test_runs_to_say_why_it_skips(checkout):
    rc, out, calls = run_script(checkout, 0, 0, comfy_tree=False)
    assert rc == 0 and not any(c.startswith("comfyui-venv: ") for c in calls), calls      # nothing built
    assert calls[-1].startswith(f"comfyui: require= dir={checkout / 'no-such-tree'} python= "), calls


def test_the_eval_venv_is_rebuilt_when_the_main_environment_moved(checkout):
    """A marker naming other site folders (the main venv recreated elsewhere or on another Python) would leave the
    eval venv without torch for good: run.sh rebuilds it, and a failed rebuild fails the command."""
    (checkout / ".cache" / "venv-eval" / ".complete").write_text("/old/python3.11/site-packages\n")
    rc, out, calls = run_script(checkout, 0, 0)
    assert rc == 1 and calls[2].startswith("venv: -m venv .cache/venv-eval"), calls
    assert not any(c.startswith("eval: ") for c in calls)
    assert "lmms-eval (venv-eval):  could not install the [eval] extra into .cache/venv-eval" in out
    assert "lmms-eval on 4.57.6:    could not run the lmms-eval tests on transformers 4.57.6" in out
