"""Helpers of the robustness tests: tiny ltpa checkpoints with random weights, and an analytic
linear model behind a chosen mean/std."""
from types import SimpleNamespace

import torch
from torch import nn

from ltpa import create_model
from ltpa.inference import TrainedModel, load_trained
from ltpa.runs.checkpoints import save_checkpoint
from ltpa.runs.config import TrainConfig
from ltpa.data.transforms import ZCAWhitening
from ltpa.runs.preprocess import save_whitening

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def save_tiny(directory, *, model="vgg_att3", seed=0, zca=False, num_classes=4, data="synthetic"):
    """Save a random-weight width-1/16 model as an ltpa checkpoint and load it back."""
    torch.manual_seed(seed)
    config = TrainConfig(model=model, model_options={"width": 0.0625}, num_classes=num_classes, data=data,
                         mean=MEAN, std=STD, zca=zca)
    net = create_model(model, num_classes=num_classes, width=0.0625, input_size=32)
    if zca:  # a symmetric whitening-like matrix, built directly (fitting a 3072-d ZCA takes ~30 s)
        generator = torch.Generator().manual_seed(seed)
        noise = torch.randn(3072, 3072, generator=generator) * 0.01
        matrix = 3.0 * torch.eye(3072) + (noise + noise.T) / 2
        mean = 0.3 + 0.4 * torch.rand(3072, generator=generator)
        save_whitening(ZCAWhitening(mean, matrix, 0.1, (3, 32, 32)), directory / "zca.safetensors")
    path = save_checkpoint(directory, "tiny", model=net, config=config.to_dict(), epoch=0, step=0, rng=False)
    return load_trained(path)


class Linear2(nn.Module):
    """Two-class linear model on normalised images: logits ``(s, -s)`` with ``s = <w, z> + b``."""

    def __init__(self, weight: torch.Tensor, bias: float = 0.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(torch.tensor(float(bias)))

    def forward(self, images):
        score = (images.flatten(1) * self.weight.flatten()).sum(1) + self.bias
        return torch.stack([score, -score], dim=1)


def linear_trained(weight, *, mean, std, bias=0.0, name="linear"):
    """A TrainedModel around :class:`Linear2` with the given mean/std preprocessing."""
    config = SimpleNamespace(mean=tuple(mean), std=tuple(std), num_classes=2, model=name)
    return TrainedModel(Linear2(weight, bias), config, ("a", "b"), f"/nowhere/{name}.json", None)
