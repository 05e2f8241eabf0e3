import sys
from prunevid.bench import main
sys.exit(main())
