"""``python -m ltpa`` (e.g. under ``torchrun -m ltpa train ...``)."""
import sys

from .cli import main

sys.exit(main())
