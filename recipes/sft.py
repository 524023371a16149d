"""``accelerate launch recipes/sft.py ARGS`` from a clone of the repository: the recipe is :mod:`srt_hf.recipes.sft`, in the package.

An installed package runs the same code as ``srt-hf sft ARGS``; see that module for the options and examples.
"""

import sys

from srt_hf.recipes.sft import *  # noqa: F403  (the recipe's names, for ``import recipes/sft.py`` as before)
from srt_hf.recipes.sft import main

if __name__ == "__main__":
    sys.exit(main())
