"""Data sets and transforms; the synthetic localisation set needs no files.

``load_data("cifar100:/data")`` loads any supported set (see :mod:`ltpa.data.sources` for the
spec syntax); ``materialise`` decodes file-based splits into uint8 tensors.
"""
from ltpa.data.materialise import materialise
from ltpa.data.sources import DataSource, DataSpec, Split, describe, load_data, parse_data_spec
from ltpa.data.synthetic import SyntheticLocalisation
from ltpa.data.transforms import ZCAWhitening

__all__ = [
    "SyntheticLocalisation",
    "DataSource",
    "DataSpec",
    "Split",
    "describe",
    "load_data",
    "parse_data_spec",
    "materialise",
    "ZCAWhitening",
]
