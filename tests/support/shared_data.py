"""The shared data sets for tests, located once the way an entry point does it.

:data:`DATA_DIR` is ``$ROOST_DATA_DIR`` if it holds the data sets, else
``../shared/data`` if that does, else None: tests that need the data skip with
:data:`MISSING` (``models.datasets`` loaders take the directory as a parameter).
"""

from __future__ import annotations

import os

from models.datasets import data_dir_from_env

DATA_DIR = data_dir_from_env(os.environ)
MISSING = "the shared data sets are not on this machine (set ROOST_DATA_DIR or ../shared/data)"
