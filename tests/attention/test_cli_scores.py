"""`ltpa sanity` and the new `ltpa localise` options end to end on a tiny trained run: files, the
numbers they hold, and one-line user errors that write nothing."""
import json

import pytest

from ltpa.attention import compute_maps, energy_pointing_game, grad_cam_maps, pointing_game, segmentation_scores
from ltpa.attention.ground_truth import load_validation_set
from ltpa.cli import main
from ltpa.data.synthetic import SyntheticLocalisation
from ltpa.attention._inputs import inference_layout
from ltpa.inference import load_trained

TINY = ["--set", "model_options.width=0.0625", "--set", "num_train=64", "--set", "num_test=32",
        "--set", "batch_size=16", "--set", "num_classes=4", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("scores") / "run"
    assert main(["-q", "train", "--out", str(out), *TINY]) == 0
    return out / "checkpoints" / "best.json"


def _test_split(trained, limit):
    config = trained.config
    data = SyntheticLocalisation(config.num_test, image_size=config.image_size, num_classes=config.num_classes,
                                 seed=config.data_seed, split="test")
    return data.images[:limit], data.masks[:limit], data.boxes[:limit], data.targets[:limit]


def test_sanity_writes_json_text_and_figure_with_a_verdict_per_level(checkpoint, tmp_path, capsys):
    out = tmp_path / "sanity"
    assert main(["sanity", str(checkpoint), "--limit", "4", "--out", str(out), "--modes", "cascading"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "sanity.json").read_text())
    assert result["sources"] == ["attention/conv7", "attention/conv10", "attention/conv13", "gradcam/conv13"]
    assert [s["stage"] for s in result["cascading"]][:4] == ["head", "attention", "global", "trunk.conv15"]
    assert len(result["cascading"]) == 18 and "independent" not in result
    assert result["bn_stats"] == "recompute" and result["init"] == "reset" and result["num_images"] == 4
    for source in result["sources"]:
        assert source in printed and isinstance(result["verdict"][source]["flagged"], bool)
    assert (out / "sanity.png").stat().st_size > 10_000 and (out / "sanity.txt").read_text() in printed + "\n"
    # a second run into the same folder needs --overwrite, and the folder is then replaced
    assert main(["sanity", str(checkpoint), "--limit", "4", "--out", str(out), "--modes", "independent"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["sanity", str(checkpoint), "--limit", "3", "--out", str(out), "--modes", "independent",
                 "--methods", "attention", "--bn-stats", "keep", "--overwrite"]) == 0
    again = json.loads((out / "sanity.json").read_text())
    assert "cascading" not in again and again["bn_stats"] == "keep" and not (out / "sanity.png").exists()


def test_localise_with_a_pointing_variant_calibration_and_label_targets(checkpoint, tmp_path, capsys):
    out = tmp_path / "loc"
    assert main(["localise", str(checkpoint), "--limit", "10", "--out", str(out), "--methods", "attention",
                 "gradcam", "--pointing", "quantus", "--energy", "minmax", "--calibrate", "4", "--target", "label",
                 "--faithfulness-images", "2", "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "localisation.json").read_text())
    assert result["num_images"] == 6 and result["calibration"] == {"images": 4}
    assert result["pointing"] == {"variant": "quantus", "ties": "any", "tolerance": 0.0}
    assert "calibrated on 4 held-out images" in printed
    trained = load_trained(checkpoint)
    images, masks, boxes, targets = _test_split(trained, 10)
    inputs = trained.prepare(images)
    learned = compute_maps(trained.model, inputs[4:])
    held = compute_maps(trained.model, inputs[:4])
    for level, placed, held_placed in zip(learned.levels, learned.upsampled, held.upsampled):
        row = result["rows"][f"attention/{level.name}"]
        assert row["pointing"] == pytest.approx(float(pointing_game(placed, mask=masks[4:], ties="any").float().mean()))
        seg = segmentation_scores(placed, masks[4:], calibration=(held_placed, masks[:4]))
        assert row["jaccard_calibrated"] == pytest.approx(seg["jaccard_calibrated"])
        assert row["calibrated_threshold"] == seg["calibrated_threshold"]
        assert {"maxboxacc_v2", "gt_known_calibrated", "top1_loc_oracle", "pxap", "road_combined"} <= set(row)
    # --target label: Grad-CAM explains each image's true class, not the prediction
    def scores(target_classes):
        with inference_layout(trained.model):  # localise's layout: equal up to rounding is not enough here
            heat = grad_cam_maps(trained.model, inputs[4:], methods=["gradcam"],
                                 target_classes=target_classes)["gradcam"].upsampled[0]
        return [float(pointing_game(heat, mask=masks[4:], ties="any").float().mean()),
                float(energy_pointing_game(heat, mask=masks[4:], normalise="minmax").nanmean())]

    row = result["rows"]["gradcam/conv13"]
    assert [row["pointing"], row["energy"]] == pytest.approx(scores(targets[4:]), rel=1e-6)
    assert [row["pointing"], row["energy"]] != pytest.approx(scores(None), rel=1e-6)  # not the prediction's


def test_localise_calibrates_on_the_runs_validation_images(checkpoint, tmp_path, capsys):
    out = tmp_path / "val"
    assert main(["localise", str(checkpoint), "--limit", "6", "--out", str(out), "--methods", "attention",
                 "--calibrate", "val", "--faithfulness-images", "0"]) == 0
    result = json.loads((out / "localisation.json").read_text())
    trained = load_trained(checkpoint)
    assert result["calibration"]["images"] == len(load_validation_set(trained.config).images) > 0
    assert result["num_images"] == 6 and "validation images" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--calibrate", "6"], "hold out between 1 and 5"),
    (["--calibrate", "val", "--data", "synthetic,num_classes=5"], "--calibrate 50"),
    (["--target", "9"], "not a class of this model"),
    (["--calibrate", "zero"], "expected 'val' or a number"),
    (["--pointing", "any"], "invalid choice"),
])
def test_localise_user_errors_are_one_line_and_write_nothing(checkpoint, tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    try:
        code = main(["localise", str(checkpoint), "--limit", "6", "--out", str(out), "--methods", "attention",
                     "gradcam", "--faithfulness-images", "0", *argv])
    except SystemExit as exit:  # argparse's own errors (bad choices and values) exit 2 the same way
        code = exit.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_sanity_refuses_a_single_image_with_recomputed_statistics(checkpoint, tmp_path, capsys):
    out = tmp_path / "one"
    assert main(["sanity", str(checkpoint), "--limit", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "at least 2 images" in err and len(err.strip().splitlines()) == 1 and not out.exists()



def test_calibration_errors_name_library_arguments_in_the_library(checkpoint):
    """The library speaks in its own terms (hold_out(evaluation, 50)); only the CLI says --calibrate."""
    config = load_trained(checkpoint).config
    with pytest.raises(ValueError) as caught:
        load_validation_set(config, "synthetic,num_classes=5")
    assert "hold_out(evaluation, 50)" in str(caught.value) and "--" not in str(caught.value)
