#!/usr/bin/env bash
# The test command (README): the whole suite on the installed transformers (5.x), then everything that touches
# transformers again on 4.57.x (what many ComfyUI installs still run), installed side by side in .cache/tf457,
# then the lmms-eval tests in their own venv, .cache/venv-eval (the [eval] extra: lmms-eval 0.7.3 pins av<16 and
# needs filelock<4, so installed into the main environment it would change what the other phases run on), then
# their long-clip parity tests in that venv on 4.57.6, then the real-ComfyUI test with ComfyUI's Python in
# .cache/venv-comfyui.
# Every phase always runs (a failure in one must not hide the others); the command repeats the summaries and
# fails if any phase failed.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

python -m pytest -q -rs --ignore=tests/test_lmms_eval.py --ignore=tests/test_comfyui_e2e.py "$@" 2>&1 | tee "$logs/main"
main=${PIPESTATUS[0]}

TF457=.cache/tf457
if [ ! -f "$TF457/transformers/__init__.py" ]; then
  # into a temporary folder, renamed when complete: an interrupted install is never mistaken for a good one
  rm -rf "$TF457.partial" "$TF457"
  pip install -q --no-deps --target "$TF457.partial" "transformers==4.57.6" "tokenizers>=0.22,<0.23" \
    "huggingface-hub>=0.34,<1.0" && mv "$TF457.partial" "$TF457"
fi
if [ -f "$TF457/transformers/__init__.py" ]; then
  PYTHONPATH="$TF457" python -m pytest -q -rs -p no:cacheprovider tests/test_positions.py tests/test_stage2.py \
    tests/test_tiny_model.py tests/test_engine.py tests/test_backends.py tests/test_pipeline.py tests/test_nodes.py \
    tests/test_bench.py tests/test_hub_download.py tests/test_quantize.py tests/test_placement.py \
    tests/test_multi_video.py tests/test_batch.py tests/test_cli_batch.py tests/test_oracle.py \
    "$@" 2>&1 | tee "$logs/tf457"
  tf457=${PIPESTATUS[0]}
else
  echo "could not install transformers 4.57.6 into $TF457" | tee "$logs/tf457"
  tf457=1
fi

EVAL=.cache/venv-eval
# torch and torchvision come from the main environment, seen through a .pth file listing its site folders after the
# venv's own site-packages: a second copy of the CUDA build is 5.5 GB, which a CI disk may not have. What the [eval]
# extra pins differently (av<16, filelock<4) is installed into the venv and shadows the main copy, which pip leaves
# alone ("outside environment"); a constraint holds torch and torchvision at the main versions, so pip fails rather
# than download another torch. The marker, written last, records the folders: the venv is rebuilt when they change
# (a recreated main environment) or when it cannot import torch and lmms_eval.
main_sites=$(python -c "import sys; print('\n'.join(p for p in sys.path if p.endswith(('site-packages', 'dist-packages'))))")
if [ ! -f "$EVAL/.complete" ] || [ "$(cat "$EVAL/.complete")" != "$main_sites" ] \
    || ! "$EVAL/bin/python" -c "import torch, lmms_eval" 2>/dev/null; then
  rm -rf "$EVAL"
  python -m venv "$EVAL" \
    && printf '%s\n' "$main_sites" \
      > "$("$EVAL/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/zz-main-environment.pth" \
    && python -c "
from importlib.metadata import PackageNotFoundError, version
for name in ('torch', 'torchvision'):
    try:
        print(f'{name}=={version(name)}')
    except PackageNotFoundError:
        pass" > "$EVAL/constraints.txt" \
    && "$EVAL/bin/pip" install -q --upgrade pip \
    && "$EVAL/bin/pip" install -q -c "$EVAL/constraints.txt" -e ".[test,eval]" \
    && "$EVAL/bin/python" -c "
import sys, av, filelock, lmms_eval, torch, torchvision
assert any(torch.__file__.startswith(s) for s in sys.argv[1].splitlines()), 'torch is not the main one: ' + torch.__file__
assert int(av.__version__.split('.')[0]) < 16, av.__version__" "$main_sites" \
    && printf '%s\n' "$main_sites" > "$EVAL/.complete"
fi
# lmms-eval finds this project's models through the entry points of the installed metadata, written when the venv was
# built: a model name added to pyproject.toml since then (prunevid_qwen3_vl, say) stays unknown to it until the
# editable install is refreshed (no dependencies, seconds).
if [ -f "$EVAL/.complete" ] && ! "$EVAL/bin/python" -c "
import sys, tomllib
from importlib.metadata import entry_points
want = set(tomllib.load(open('pyproject.toml', 'rb'))['project']['entry-points']['lmms_eval.models'])
sys.exit(not want <= {e.name for e in entry_points(group='lmms_eval.models')})"; then
  "$EVAL/bin/pip" install -q --no-deps --no-build-isolation -e . 2>/dev/null || "$EVAL/bin/pip" install -q --no-deps -e .
fi
if [ -f "$EVAL/.complete" ]; then
  # PRUNEVID_REQUIRE_LMMS_EVAL: here a missing lmms-eval fails the tests instead of skipping them
  PRUNEVID_REQUIRE_LMMS_EVAL=1 "$EVAL/bin/python" -m pytest -q -rs -p no:cacheprovider tests/test_lmms_eval.py \
    "$@" 2>&1 | tee "$logs/eval"
  lmms=${PIPESTATUS[0]}
  [ "$lmms" = 5 ] && [ $# -gt 0 ] && lmms=0     # the arguments (-k ...) selected none of these tests
else
  echo "could not install the [eval] extra into $EVAL" | tee "$logs/eval"
  lmms=1
fi

# The long-clip parity tests again on transformers 4.57.6, where lmms-eval's own qwen2_5_vl places text after a video
# as Qwen2.5-VL was trained (docs/evaluation.md), and the Qwen3-VL baseline parity on the local task (lmms-eval's
# qwen3_vl gives its processor the video metadata on both lines, so it must hold there too; Qwen2.5-VL's local clips
# are not sampled at 2 fps, which 4.57's processor assumes without it): the eval venv with .cache/tf457 in front, and
# a datasets that accepts 4.57's huggingface-hub 0.x (the venv's datasets 5.x needs 1.x) in .cache/tf457-eval.
TF457_EVAL=.cache/tf457-eval
if [ ! -f "$TF457_EVAL/datasets/__init__.py" ]; then
  rm -rf "$TF457_EVAL.partial" "$TF457_EVAL"
  pip install -q --no-deps --target "$TF457_EVAL.partial" "datasets==4.8.5" && mv "$TF457_EVAL.partial" "$TF457_EVAL"
fi
if [ -f "$EVAL/.complete" ] && [ -f "$TF457/transformers/__init__.py" ] && [ -f "$TF457_EVAL/datasets/__init__.py" ]; then
  PYTHONPATH="$TF457:$TF457_EVAL" PRUNEVID_REQUIRE_LMMS_EVAL=1 "$EVAL/bin/python" -m pytest -q -rs -p no:cacheprovider \
    tests/test_lmms_eval.py::test_long_clip_positions_are_the_original_rule_and_5x_shifts_the_text \
    tests/test_lmms_eval.py::test_long_clip_baseline_against_lmms_eval_sample_by_sample \
    "tests/test_lmms_eval.py::test_baseline_equals_lmms_eval_sample_by_sample[qwen3_vl]" \
    "$@" 2>&1 | tee "$logs/eval457"
  lmms457=${PIPESTATUS[0]}
  [ "$lmms457" = 5 ] && [ $# -gt 0 ] && lmms457=0     # the arguments selected none of these tests
else
  echo "could not run the lmms-eval tests on transformers 4.57.6 (venv-eval, $TF457, $TF457_EVAL)" | tee "$logs/eval457"
  lmms457=1
fi

# A real ComfyUI server (tests/test_comfyui_e2e.py). The source tree is $COMFYUI_DIR or ../shared/comfyui/ComfyUI
# (kept beside the checkout for the tests: ComfyUI is not on PyPI; it may be read-only, the server writes only into a
# temporary --base-directory). ComfyUI's Python, .cache/venv-comfyui, is built by tests/comfyui_venv.py: ComfyUI's
# requirements, then the install commands of docs/comfyui.md as written, torch and torchvision borrowed from the main
# environment (held at its versions: never a second torch), and it fails unless exactly one OpenCV ends up installed.
# It is rebuilt when what it was built from changes. Without a tree the test skips and says why.
COMFY=${COMFYUI_DIR:-../shared/comfyui/ComfyUI}
CVENV=.cache/venv-comfyui
if [ -f "$COMFY/main.py" ]; then
  COMFY=$(cd "$COMFY" && pwd)
  if python tests/comfyui_venv.py "$CVENV" "$COMFY" > "$logs/comfyui-venv" 2>&1; then
    # PRUNEVID_REQUIRE_COMFYUI: here a Python that cannot run ComfyUI fails the test instead of skipping it
    PRUNEVID_REQUIRE_COMFYUI=1 COMFYUI_DIR="$COMFY" COMFYUI_PYTHON="$PWD/$CVENV/bin/python" python -m pytest -q -rs \
      -p no:cacheprovider tests/test_comfyui_e2e.py "$@" 2>&1 | tee "$logs/comfyui"
    comfyui=${PIPESTATUS[0]}
  else
    tail -n 30 "$logs/comfyui-venv"
    echo "could not build ComfyUI's Python in $CVENV (tests/comfyui_venv.py)" | tee "$logs/comfyui"
    comfyui=1
  fi
else
  python -m pytest -q -rs -p no:cacheprovider tests/test_comfyui_e2e.py "$@" 2>&1 | tee "$logs/comfyui"
  comfyui=${PIPESTATUS[0]}
fi
[ "$comfyui" = 5 ] && [ $# -gt 0 ] && comfyui=0     # the arguments selected none of these tests

echo
echo "installed transformers: $(tail -n 1 "$logs/main")"
echo "transformers 4.57.6:    $(tail -n 1 "$logs/tf457")"
echo "lmms-eval (venv-eval):  $(tail -n 1 "$logs/eval")"
echo "lmms-eval on 4.57.6:    $(tail -n 1 "$logs/eval457")"
echo "ComfyUI (venv-comfyui): $(tail -n 1 "$logs/comfyui")"
[ "$main" = 0 ] && [ "$tf457" = 0 ] && [ "$lmms" = 0 ] && [ "$lmms457" = 0 ] && [ "$comfyui" = 0 ]
