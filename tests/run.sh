#!/usr/bin/env bash
# The test command (README): the whole suite on the installed transformers (5.x), then the engine and position
# tests again on transformers 4.57.x, installed side by side in .cache/tf457 (no second venv needed).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q -rs "$@"
TF457=.cache/tf457
if [ ! -f "$TF457/transformers/__init__.py" ]; then
  pip install -q --no-deps --target "$TF457" "transformers==4.57.6" "tokenizers>=0.22,<0.23" "huggingface-hub>=0.34,<1.0"
fi
PYTHONPATH="$TF457" python -m pytest -q -rs -p no:cacheprovider tests/test_positions.py tests/test_stage2.py \
  tests/test_tiny_model.py tests/test_engine.py "$@"
