"""`python -m srt_hf` (also under `accelerate launch -m srt_hf ...`)."""

import sys

from .cli import main

sys.exit(main())
