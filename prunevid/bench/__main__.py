"""python -m prunevid.bench: the benchmark command (the worker process is started this way too)."""
import sys

from .command import main

sys.exit(main())
