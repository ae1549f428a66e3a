"""Fixtures of the robustness tests (tiny checkpoints, a small image batch)."""
import pytest
import torch

from robustness_helpers import save_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny_zca(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("tiny_zca"), seed=1, zca=True)


@pytest.fixture()
def batch():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 4, (12,), generator=generator)
