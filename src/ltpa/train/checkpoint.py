"""Moved to :mod:`ltpa.runs.checkpoints`; this name stays for old imports and warns."""
import warnings

from ltpa.runs.checkpoints import *  # noqa: F401,F403
from ltpa.runs.checkpoints import __all__  # noqa: F401

warnings.warn("ltpa.train.checkpoint moved to ltpa.runs.checkpoints; import it from there",
              DeprecationWarning, stacklevel=2)
