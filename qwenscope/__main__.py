import sys

from qwenscope.cli import main

sys.exit(main())
