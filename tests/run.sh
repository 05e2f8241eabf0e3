#!/usr/bin/env bash
# The test command (README): the whole suite on the installed transformers (5.x), then everything that touches
# transformers again on 4.57.x (what many ComfyUI installs still run), installed side by side in .cache/tf457.
# Both phases always run (a failure in the first must not hide the second); the command repeats both summaries
# and fails if either phase failed.
set -uo pipefail
cd "$(dirname "$0")/.."
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

python -m pytest -q -rs "$@" 2>&1 | tee "$logs/main"
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
    tests/test_bench.py tests/test_hub_download.py tests/test_multi_video.py tests/test_batch.py \
    tests/test_cli_batch.py \
    "$@" 2>&1 | tee "$logs/tf457"
  tf457=${PIPESTATUS[0]}
else
  echo "could not install transformers 4.57.6 into $TF457" | tee "$logs/tf457"
  tf457=1
fi

echo
echo "installed transformers: $(tail -n 1 "$logs/main")"
echo "transformers 4.57.6:    $(tail -n 1 "$logs/tf457")"
[ "$main" = 0 ] && [ "$tf457" = 0 ]
