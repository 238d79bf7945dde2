"""`python -m imagegen`."""

import sys

from .cli import main

sys.exit(main())
