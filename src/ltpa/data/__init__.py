"""Data sets and transforms; the synthetic localisation set needs no files."""
from ltpa.data.synthetic import SyntheticLocalisation

__all__ = ["SyntheticLocalisation"]
