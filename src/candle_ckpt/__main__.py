"""``python -m candle_ckpt``: the candle-ckpt command line."""

import sys

from .cli import main

sys.exit(main())
