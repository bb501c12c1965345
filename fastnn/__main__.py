"""python -m fastnn: the same as the fastnn command."""

import sys

from .cli import main

if __name__ == "__main__":  # a spawned worker (fastnn.many) imports this module as __mp_main__: it must not run
    sys.exit(main())
