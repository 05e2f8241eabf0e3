#!/usr/bin/env bash
# The test command (README): the whole suite on the installed transformers (5.x), then everything that touches
# transformers again on 4.57.x (what many ComfyUI installs still run), installed side by side in .cache/tf457.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q -rs "$@"
TF457=.cache/tf457
if [ ! -f "$TF457/transformers/__init__.py" ]; then
  # into a temporary folder, renamed when complete: an interrupted install is never mistaken for a good one
  rm -rf "$TF457.partial" "$TF457"
  pip install -q --no-deps --target "$TF457.partial" "transformers==4.57.6" "tokenizers>=0.22,<0.23" "huggingface-hub>=0.34,<1.0"
  mv "$TF457.partial" "$TF457"
fi
PYTHONPATH="$TF457" python -m pytest -q -rs -p no:cacheprovider tests/test_positions.py tests/test_stage2.py \
  tests/test_tiny_model.py tests/test_engine.py tests/test_pipeline.py tests/test_nodes.py tests/test_bench.py \
  tests/test_quantize.py tests/test_placement.py "$@"
