import pytest
import torch
from torch import nn

from ltpa.attention import deletion_insertion
from ltpa.attention.faithfulness import blur


class _RegionModel(nn.Module):
    """Class 0's logit is the sum of channel 0 inside a region, class 1's is 0."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region.float())

    def forward(self, x):
        score = (x[:, 0] * self.region).flatten(1).sum(1)
        return torch.stack([score, torch.zeros_like(score)], 1)


def test_deleting_the_evidence_first_drops_the_score_faster():
    region = torch.zeros(8, 8, dtype=torch.bool)
    region[2:4, 2:4] = True
    model = _RegionModel(region).train()
    images = torch.ones(3, 3, 8, 8)
    before = images.clone()
    good = region.float().expand(3, 8, 8)
    result = deletion_insertion(model, images, {"good": good, "bad": 1 - good}, steps=4, batch_size=7,
                                insertion_baseline="mean")
    good_del, bad_del = result["methods"]["good"]["deletion"], result["methods"]["bad"]["deletion"]
    assert good_del["auc"] < bad_del["auc"]
    assert result["methods"]["good"]["insertion"]["auc"] > result["methods"]["bad"]["insertion"]["auc"]
    start = torch.softmax(torch.tensor([4.0, 0.0]), 0)[0].item()
    assert good_del["curve"][0] == pytest.approx(start) and good_del["curve"][-1] == pytest.approx(0.5)
    assert result["fractions"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert model.training and torch.equal(images, before)


def test_blur_keeps_constant_images_and_bad_inputs_are_refused():
    flat = torch.full((1, 3, 8, 8), 0.7)
    assert torch.allclose(blur(flat, 2.0), flat)
    model = _RegionModel(torch.ones(8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="like the images"):
        deletion_insertion(model, flat, {"m": torch.ones(1, 4, 4)})
    with pytest.raises(ValueError, match="steps"):
        deletion_insertion(model, flat, {"m": torch.ones(1, 8, 8)}, steps=0)
    with pytest.raises(ValueError, match="baseline"):
        deletion_insertion(model, flat, {"m": torch.ones(1, 8, 8)}, deletion_baseline="zero")
