"""python -m fastnn: the same as the fastnn command."""

import sys

from .cli import main

sys.exit(main())
