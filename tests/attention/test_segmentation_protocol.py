"""The paper's weak-segmentation protocol (Object Discovery): Jaccard of binarised maps per class,
threshold calibrated on a held-out part taken from every class, gradient saliency and the centre
prior beside attention; known answers computed by hand, and ``ltpa localise --data masks:`` end
to end on generated folders in both published layouts."""
import csv
import json
import math

import pytest
import torch
from mask_folders import make_object_discovery, make_weizmann
from torch import nn

import ltpa
from ltpa.attention.ground_truth import EvaluationSet, hold_out
from ltpa.attention.localisation import centre_prior
from ltpa.attention.report import localise
from ltpa.attention.saliency import gradient_saliency
from ltpa.attention.segmentation import segmentation_scores
from ltpa.cli import main
from ltpa.data.masks import load_mask_folder

TINY = ["--set", "model_options.width=0.0625", "--set", "num_train=64", "--set", "num_test=32",
        "--set", "batch_size=16", "--set", "num_classes=4", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("protocol") / "run"
    assert main(["-q", "train", "--out", str(out), *TINY]) == 0
    return out / "checkpoints" / "best.json"


def test_a_map_equal_to_the_mask_scores_jaccard_one_at_every_threshold_choice():
    masks = torch.zeros(3, 16, 16, dtype=torch.bool)
    masks[0, 2:9, 3:12] = True
    masks[1, 5:16, 0:4] = True
    masks[2, 0:1, 0:1] = True
    scores = segmentation_scores(masks.float(), masks, calibration=(masks.float(), masks))
    assert scores["jaccard_fixed"] == scores["jaccard_calibrated"] == scores["jaccard_oracle"] == 1.0
    assert segmentation_scores(masks.roll(1, 0).float(), masks)["jaccard_oracle"] < 0.5  # and it can fail


def _disc_at_half_of_the_peak(size):
    """Pixels where the centre prior (sigma = size / 4, centre at size / 2) is at least half its
    maximum, by hand: exp(-(d^2 - d0^2) / (2 sigma^2)) >= 1/2 with d0^2 = 0.5, the central pixels'."""
    sigma2 = (size / 4) ** 2
    limit = 0.5 + 2 * sigma2 * math.log(2)
    return {(y, x) for y in range(size) for x in range(size)
            if (x + 0.5 - size / 2) ** 2 + (y + 0.5 - size / 2) ** 2 <= limit}


def test_centre_prior_jaccard_per_class_on_a_centred_square_and_a_full_mask_as_computed_by_hand():
    size = 32
    disc = _disc_at_half_of_the_peak(size)
    square = {(y, x) for y in range(8, 24) for x in range(8, 24)}
    by_hand = {"square": len(disc & square) / len(disc | square), "full": len(disc) / size ** 2}
    # radius sqrt(0.5 + 128 ln 2) = 9.45 px: 8 pixels poke out of each side of the 16-px square (row 7: |dx| <= 4.1),
    # and 3 corner pixels of the square fall outside ((7.5, 7.5), (7.5, 6.5), (6.5, 7.5) from the centre)
    assert len(disc & square) == 256 - 4 * 3 and len(disc) == 244 + 4 * 8
    assert by_hand == {"square": 244 / 288, "full": 276 / 1024}
    masks = torch.zeros(5, size, size, dtype=torch.bool)
    masks[:3, 8:24, 8:24] = True
    masks[3:] = True
    groups = torch.tensor([0, 1, 0, 1, 0])  # interleaved: the per-class split must follow groups
    masks = masks[[0, 3, 1, 4, 2]]
    model = ltpa.create_model("vgg_att3", num_classes=4, width=0.0625)
    result = localise(model, torch.zeros(5, 3, size, size, dtype=torch.uint8), mean=(0.5,) * 3, std=(0.25,) * 3,
                      masks=masks, methods=("centre",), groups=groups, group_names=("square", "full"),
                      faithfulness_images=0, road_percentiles=None)
    per_class = result["per_class"]
    assert list(per_class) == ["square", "full"] and [per_class[c]["images"] for c in per_class] == [3, 2]
    for name, value in by_hand.items():
        assert per_class[name]["rows"]["centre"]["jaccard_fixed"] == pytest.approx(value, abs=1e-12)
    assert result["rows"]["centre"]["jaccard_fixed"] == pytest.approx((3 * by_hand["square"] + 2 * by_hand["full"]) / 5)


class _Linear(nn.Module):
    """logits = W x + b, behind a dropout that eval mode switches off."""

    def __init__(self, size, classes):
        super().__init__()
        self.drop = nn.Dropout(0.9)
        self.fc = nn.Linear(3 * size * size, classes)

    def forward(self, x):
        return self.fc(self.drop(x).flatten(1))


def test_gradient_saliency_of_a_linear_model_is_its_weights_max_over_channels():
    torch.manual_seed(0)
    model = _Linear(6, 4)
    model.train()
    images = torch.randn(5, 3, 6, 6)
    before = images.clone()
    weights = model.fc.weight.detach().view(4, 3, 6, 6)
    classes = torch.tensor([0, 3, 1, 2, 3])
    expected = weights[classes].abs().amax(1)
    expected = expected / expected.flatten(1).sum(1)[:, None, None]
    assert torch.allclose(gradient_saliency(model, images, target_classes=classes), expected, atol=1e-7)
    predicted = model.eval()(images).argmax(1)
    model.train()
    by_prediction = weights[predicted].abs().amax(1)
    assert torch.allclose(gradient_saliency(model, images), by_prediction / by_prediction.flatten(1).sum(1)[:, None, None],
                          atol=1e-7)
    assert model.training and model.drop.training and model.fc.weight.grad is None and torch.equal(images, before)
    with pytest.raises(ValueError, match="target_classes must lie in"):
        gradient_saliency(model, images, target_classes=4)


def _evaluation(groups):
    count = len(groups)
    return EvaluationSet(torch.arange(count).view(count, 1, 1, 1).expand(count, 3, 2, 2).to(torch.uint8), None,
                         torch.zeros(count, 2, 2, dtype=torch.bool), None, None, None, (), "test",
                         torch.tensor(groups), ("a", "b", "c"))


def test_hold_out_takes_the_calibration_images_from_every_class_in_turn():
    held, scored = hold_out(_evaluation([0, 0, 0, 1, 1, 1, 2, 2]), 4)
    assert held.images[:, 0, 0, 0].tolist() == [0, 1, 3, 6] and held.groups.tolist() == [0, 0, 1, 2]
    assert scored.images[:, 0, 0, 0].tolist() == [2, 4, 5, 7] and scored.groups.tolist() == [0, 1, 1, 2]
    assert held.group_names == scored.group_names == ("a", "b", "c")


def test_localise_on_an_object_discovery_folder_reports_per_class_with_saliency_and_calibration(
        checkpoint, tmp_path, capsys):
    make_object_discovery(tmp_path / "od")
    out = tmp_path / "report"
    with pytest.warns(UserWarning):
        code = main(["localise", str(checkpoint), "--data", f"masks:{tmp_path / 'od'}", "--out", str(out),
                     "--methods", "attention", "saliency", "centre", "--calibrate", "3",
                     "--faithfulness-images", "0", "--no-road"])
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "localisation.json").read_text())
    per_class = result["per_class"]
    assert list(per_class) == ["Airplane100", "Car100", "Horse100"]
    assert [per_class[c]["images"] for c in per_class] == [3, 3, 2]  # 4, 4, 3 images less one each held out
    assert result["calibration"] == {"images": 3} and result["num_images"] == 8
    assert any("Horse100/h3" in note for note in result["notes"]) and "Horse100/h3" in printed
    assert {"attention/conv13", "saliency", "centre"} <= set(result["rows"])
    assert "per class:" in printed and all(name in printed for name in per_class)
    with open(out / "localisation_per_class.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert len(written) == 3 * len(result["rows"])
    # the centre row of each class is the prior scored against that class's scored masks
    with pytest.warns(UserWarning):
        data = load_mask_folder(tmp_path / "od", 32)
    scored = torch.tensor([i not in (0, 4, 8) for i in range(len(data.labels))])  # first of each class held out
    for label, name in enumerate(data.class_names):
        masks = data.masks[scored & (data.labels == label)]
        expected = segmentation_scores(centre_prior((32, 32), batch_size=len(masks)), masks)
        row = per_class[name]["rows"]["centre"]
        assert row["jaccard_fixed"] == pytest.approx(expected["jaccard_fixed"])
        assert row["jaccard_oracle"] == pytest.approx(expected["jaccard_oracle"])
        assert next(r for r in written if r["class"] == name and r["method"] == "centre")["images"] == str(len(masks))


def test_localise_on_the_weizmann_layout_is_one_class_without_a_per_class_table(checkpoint, tmp_path, capsys):
    db, _ = make_weizmann(tmp_path)
    out = tmp_path / "report"
    assert main(["localise", str(checkpoint), "--data", f"masks:{db}", "--out", str(out), "--methods", "attention",
                 "saliency", "centre", "--faithfulness-images", "0", "--no-road"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "localisation.json").read_text())
    assert result["num_images"] == 3 and result["per_class"] is None and "per class:" not in printed
    assert not (out / "localisation_per_class.csv").exists()
    assert 0 <= result["rows"]["saliency"]["jaccard_oracle"] <= 1
