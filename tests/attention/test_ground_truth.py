"""Calibration splits: the run's validation images with their ground truth, and held-out parts of
an evaluation set, never sharing an image with the scored ones."""
import pytest
import torch

from ltpa.attention.ground_truth import hold_out, load_evaluation_set, load_validation_set
from ltpa.runs.config import TrainConfig, apply_overrides
from ltpa.train.data_setup import build_data


def test_validation_set_is_exactly_the_trainers_validation_split_with_masks():
    config = apply_overrides(TrainConfig(), ["num_train=120", "num_test=20", "num_classes=3", "val_fraction=0.25",
                                             "data_seed=4"])
    splits = build_data(config)
    held = load_validation_set(config)
    assert torch.equal(held.images, splits.val_images) and torch.equal(held.targets, splits.val_targets)
    assert held.masks.shape == (len(splits.val_images), 32, 32) and held.boxes.shape == (len(splits.val_images), 4)
    assert "validation images" in held.description
    # none of them is a test image, nor a training image the run fitted
    test = load_evaluation_set("synthetic", image_size=32, split="test",
                               synthetic_defaults={"num_classes": 3, "seed": 4, "num_test": 20})
    flat = held.images.flatten(1)
    assert not any(torch.equal(a, b) for a in flat for b in test.images.flatten(1))
    assert not any(torch.equal(a, b) for a in flat for b in splits.train_images.flatten(1))


def test_validation_set_refuses_other_data_and_runs_without_validation():
    config = apply_overrides(TrainConfig(), ["num_train=40", "num_test=10", "num_classes=2"])
    with pytest.raises(ValueError, match=r"hold_out\(evaluation, 50\)"):
        load_validation_set(config, "synthetic,num_classes=5")
    with pytest.raises(ValueError, match="val_fraction=0"):
        load_validation_set(apply_overrides(config, ["val_fraction=0", "test_weights=last"]))


def test_hold_out_splits_without_overlap():
    evaluation = load_evaluation_set("synthetic", image_size=32, limit=10,
                                     synthetic_defaults={"num_classes": 2, "seed": 0, "num_test": 10})
    held, scored = hold_out(evaluation, 4)
    assert len(held.images) == 4 and len(scored.images) == 6
    assert torch.equal(torch.cat([held.images, scored.images]), evaluation.images)
    assert torch.equal(torch.cat([held.masks, scored.masks]), evaluation.masks)
    assert torch.equal(torch.cat([held.targets, scored.targets]), evaluation.targets)
    for bad in (0, 10, 11):
        with pytest.raises(ValueError, match="hold out between 1 and 9"):
            hold_out(evaluation, bad)
