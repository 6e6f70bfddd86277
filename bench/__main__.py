"""``python -m bench NAME``: the same as ``churnwatch bench NAME``."""

from __future__ import annotations

import sys

from bench.registry import main

sys.exit(main())
