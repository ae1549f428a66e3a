import csv
import json

import pytest
import torch

import ltpa
from ltpa.attention import (compute_maps, energy_pointing_game, gap_cam_maps, localise, pointing_game,
                            pointing_outcomes, segmentation_scores, write_localisation_report, zhang_tolerance)
from ltpa.attention._inputs import prepare_images
from ltpa.data.synthetic import SyntheticLocalisation


def test_localise_scores_every_method_and_writes_the_report(tmp_path):
    torch.manual_seed(0)
    model = ltpa.create_model("vgg_att3", num_classes=2, width=0.125).train()
    gap = ltpa.create_model("vgg_gap", num_classes=2, width=0.125)
    data = SyntheticLocalisation(3, image_size=32, num_classes=2, seed=0, split="test")
    images = data.images.clone()
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    result = localise(model, data.images, mean=(0.4,) * 3, std=(0.2,) * 3, masks=data.masks, parts=data.parts,
                      part_visible=data.part_visible, part_names=data.part_names, targets=data.targets,
                      methods=("attention", "gradcam", "layercam", "cam", "centre", "random"), gap_model=gap,
                      faithfulness_images=2, steps=2, thresholds=(0.25, 0.5, 0.75))
    rows = result["rows"]
    assert list(rows) == ["attention/conv7", "attention/conv10", "attention/conv13", "gradcam/conv13",
                          "layercam/conv13", "cam/vgg_gap", "centre", "random"]
    for row in rows.values():
        assert 0 <= row["pointing"] <= 1 and 0 <= row["energy"] <= 1 and 0 <= row["jaccard_best"] <= 1
        assert "deletion_auc" in row and row["peak_on_part"] in ("head", "tail", "none")
    for name, curves in result["faithfulness"]["methods"].items():  # the curves' standard errors, two images
        assert rows[name]["deletion_auc_se"] == curves["deletion"]["auc_se"] is not None
        assert rows[name]["insertion_auc_se"] == curves["insertion"]["auc_se"] is not None
        assert rows[name]["road_combined_se"] == result["road"]["methods"][name]["road_combined_se"] is not None
    assert rows["attention/conv7"]["kind"].endswith("class-agnostic")
    # the numbers are the metric functions' on each image's own maps and mask
    inputs = prepare_images(data.images, (0.4,) * 3, (0.2,) * 3)
    learned = compute_maps(model, inputs)
    heats = {f"attention/{level.name}": up[:, 0] for level, up in zip(learned.levels, learned.upsampled)}
    heats["cam/vgg_gap"] = gap_cam_maps(gap, inputs).upsampled[0][:, 0]
    scores = ("pointing", "energy", "jaccard_fixed", "jaccard_best", "jaccard_per_image_best_upper_bound")

    def by_hand(heat, masks):
        seg = segmentation_scores(heat, masks, thresholds=(0.25, 0.5, 0.75))
        return [float(pointing_game(heat, mask=masks).float().mean()),
                float(energy_pointing_game(heat, mask=masks).nanmean()), *(seg[k] for k in scores[2:])]

    for name, heat in heats.items():
        assert [rows[name][k] for k in scores] == pytest.approx(by_hand(heat, data.masks), rel=1e-6), name
        # where the misses land: with the exact pointing game the shares cover every image
        outcomes = pointing_outcomes(heat, data.masks, near=zhang_tolerance(heat.shape[-2:]))
        assert rows[name]["miss_near_object"] == pytest.approx(float(outcomes["near_object"].float().mean()))
        assert rows[name]["miss_border"] == pytest.approx(float(outcomes["border"].float().mean()))
        assert rows[name]["pointing"] + rows[name]["miss_near_object"] + rows[name]["miss_border"] \
            + rows[name]["miss_elsewhere"] == pytest.approx(1.0), name
    assert any([rows[name][k] for k in scores] != pytest.approx(by_hand(heat, data.masks.roll(1, 0)), rel=1e-3)
               for name, heat in heats.items())  # another image's mask gives other numbers
    assert result["explanation"] and result["diagnostics"]["class_agnostic"]
    assert model.training and all(m.training for m in model.modules())
    assert torch.equal(data.images, images)
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks
    assert all(p.grad is None for p in model.parameters())

    written = write_localisation_report(result, tmp_path / "report")
    assert set(written) == {"json", "csv", "diagnostics", "parts", "faithfulness"}
    assert json.loads(written["json"].read_text())["num_images"] == 3
    with open(written["csv"]) as handle:
        table = list(csv.DictReader(handle))
    assert [r["method"] for r in table][:3] == ["attention"] * 3 and "insertion_auc" in table[0]
    assert float(table[0]["road_combined_se"]) == pytest.approx(result["rows"]["attention/conv7"]["road_combined_se"])


def test_localise_needs_ground_truth_and_known_methods():
    model = ltpa.create_model("vgg_att1", num_classes=2, width=0.125)
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="ground truth"):
        localise(model, images, mean=(0.5,) * 3, std=(0.5,) * 3)
    with pytest.raises(ValueError, match="unknown method"):
        localise(model, images, mean=(0.5,) * 3, std=(0.5,) * 3, boxes=torch.tensor([[0, 0, 8, 8]]),
                 methods=("rise",))
    with pytest.raises(ValueError, match="gap_model"):
        localise(model, images, mean=(0.5,) * 3, std=(0.5,) * 3, boxes=torch.tensor([[0, 0, 8, 8]]),
                 methods=("cam",), faithfulness_images=0)


def test_miss_columns_count_the_misses_of_the_chosen_pointing_rule():
    """Five hand-placed peaks against one 4x4 box on 16x16 images: on it, 2 px off, on the border,
    elsewhere, and a flat map (a hit for the Quantus rule, its centroid peak off the box)."""
    from ltpa.attention.localisation import box_to_mask
    from ltpa.attention.metrics import pointing_rule
    from ltpa.attention.report import _miss_shares

    heat = torch.full((5, 16, 16), 0.1)
    for index, (row, column) in enumerate([(5, 5), (5, 8), (0, 12), (12, 12)]):
        heat[index, row, column] = 1.0
    truth = box_to_mask((3, 3, 7, 7), (16, 16)).expand(5, 16, 16)  # pixels 3..6; the flat map peaks at (7, 7)
    expected = {  # (rule, tolerance): (pointing, miss_near_object, miss_border, miss_elsewhere), in fifths
        ("ltpa", None): (1, 2, 1, 1),  # (5, 8) and the flat map's (7, 7) are within 2.5 px of the box
        ("zhang2018", 2.5): (3, 0, 1, 1),  # both of those are hits
        ("zhang2018", 1.5): (2, 1, 1, 1),  # (7, 7) is 1.4 px from the box, (5, 8) 2 px: near, not a hit
        ("quantus", None): (2, 1, 1, 1),  # the flat map hits: one of its tied maxima is on the box
    }
    for (variant, tolerance), counts in expected.items():
        rule = pointing_rule(variant, (16, 16), tolerance)
        hits = pointing_game(heat, mask=truth, **rule)
        shares = _miss_shares(heat, truth, hits, near=2.5)
        got = (float(hits.float().mean()), shares["miss_near_object"], shares["miss_border"], shares["miss_elsewhere"])
        assert got == pytest.approx(tuple(c / 5 for c in counts)), (variant, tolerance)
