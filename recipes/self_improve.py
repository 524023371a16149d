"""``python recipes/self_improve.py ARGS`` from a clone of the repository: the recipe is :mod:`srt_hf.recipes.self_improve`, in the package.

An installed package runs the same code as ``srt-hf self-improve ARGS``; see that module for the options and examples.
"""

import sys

from srt_hf.recipes.self_improve import *  # noqa: F403  (the recipe's names, for ``import recipes/self_improve.py`` as before)
from srt_hf.recipes.self_improve import main

if __name__ == "__main__":
    sys.exit(main())
