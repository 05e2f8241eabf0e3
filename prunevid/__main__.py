"""`python -m prunevid ...` is the `prunevid` command (handy in a checkout, or where scripts are not on PATH)."""
import sys

from .cli import main

sys.exit(main())
