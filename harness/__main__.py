import sys

from harness.engine.cli import main

sys.exit(main())
