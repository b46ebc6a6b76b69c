import sys

from raylauncher.cli import main

sys.exit(main())
