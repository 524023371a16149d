"""``python recipes/diverse_evol.py ARGS`` from a clone of the repository: the recipe is :mod:`srt_hf.recipes.diverse_evol`, in the package.

An installed package runs the same code as ``srt-hf diverse-evol ARGS``; see that module for the options and examples.
"""

import sys

from srt_hf.recipes.diverse_evol import *  # noqa: F403  (the recipe's names, for ``import recipes/diverse_evol.py`` as before)
from srt_hf.recipes.diverse_evol import main

if __name__ == "__main__":
    sys.exit(main())
