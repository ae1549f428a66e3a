"""The ``ltpa`` command end to end on a tiny model: files written, and user errors as one line."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from ltpa.attention import (centre_prior, compute_maps, energy_pointing_game, gap_cam_maps, grad_cam_maps,
                            pointing_game, segmentation_scores)
from ltpa.cli import main
from ltpa.data.synthetic import SyntheticLocalisation
from ltpa.attention._inputs import inference_layout
from ltpa.inference import load_trained
from ltpa.runs.config import TrainConfig
from ltpa.train import load_checkpoint
from ltpa.train.precision import cpu_supports_bf16

TINY = ["--set", "model_options.width=0.0625", "--set", "num_train=64", "--set", "num_test=32",
        "--set", "batch_size=16", "--set", "num_classes=4", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["-q", "train", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture()
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (50, 50), dtype=np.uint8), mode="L").save(folder / "gray.jpg")
    Image.fromarray(rng.integers(0, 255, (36, 36, 4), dtype=np.uint8), mode="RGBA").save(folder / "rgba.png")
    return folder


def test_models_lists_every_registered_model(capsys):
    assert main(["models", "vgg_att*"]) == 0
    out = capsys.readouterr().out
    assert "vgg_att3" in out and "19.97M" in out and "vgg_gap" not in out


def test_train_writes_a_complete_run_folder(run_dir):
    for name in ["config.json", "metrics.jsonl", "curves.png", "final_metrics.json", "checkpoints/best.json",
                 "checkpoints/best.safetensors"]:
        assert (run_dir / name).is_file(), name
    config = json.loads((run_dir / "config.json").read_text())  # in sections
    assert config["model"]["model_options"]["width"] == 0.0625 and config["optimisation"]["epochs"] == 1


def test_train_refuses_a_folder_that_holds_a_run(run_dir, capsys):
    before = (run_dir / "metrics.jsonl").read_bytes()
    assert main(["-q", "train", "--out", str(run_dir), *TINY]) == 2
    err = capsys.readouterr().err
    assert "resume" in err and "overwrite" in err and "Traceback" not in err
    assert (run_dir / "metrics.jsonl").read_bytes() == before


@pytest.mark.parametrize("args, expected", [
    (["--model", "vgg_att_3"], "Did you mean 'vgg_att3'"),
    (["--set", "epochz=3"], "Did you mean 'epochs'?"),
    (["--set", "model_options.compat=cosine"], "compat must be one of"),
])
def test_train_user_errors_are_one_line(tmp_path, capsys, args, expected):
    assert main(["-q", "train", "--out", str(tmp_path / "new"), *TINY, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ltpa train: error: ") and err.count("\n") == 1 and expected in err
    assert not (tmp_path / "new").exists()


def test_attend_writes_overlays_raw_maps_and_predictions(run_dir, images, tmp_path, capsys):
    out = tmp_path / "attend"
    assert main(["attend", str(run_dir / "checkpoints" / "best.json"), str(images), "--out", str(out)]) == 0
    summary = json.loads((out / "predictions.json").read_text())
    assert [r["stem"] for r in summary["images"]] == ["gray", "rgb", "rgba"]
    for stem in ("gray", "rgb", "rgba"):
        assert (out / f"{stem}.png").is_file()
        maps = [np.load(out / f"{stem}.{level['name']}.npy") for level in summary["levels"]]
        assert [m.shape for m in maps] == [(32, 32), (16, 16), (8, 8)]
        np.testing.assert_allclose([m.sum() for m in maps], 1.0, rtol=1e-4)  # softmax maps
    printed = capsys.readouterr().out.splitlines()
    for record in summary["images"]:  # one line per image: its top class and probability
        best = record["top5"][0]
        assert f"{record['image']}: {best['class']} ({best['probability']:.1%})" in printed


def test_attend_refuses_a_non_empty_folder_and_keeps_it(run_dir, images, tmp_path, capsys):
    out = tmp_path / "attend"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["attend", str(run_dir / "checkpoints" / "best.json"), str(images), "--out", str(out)]) == 2
    err = capsys.readouterr().err  # --overwrite would not help: ltpa never empties a folder it did not write
    assert "not written by ltpa" in err and "new or empty folder" in err and "--overwrite" not in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"


def test_attend_unreadable_image_is_named_and_nothing_is_written(run_dir, images, tmp_path, capsys):
    (images / "broken.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "attend"
    assert main(["attend", str(run_dir / "checkpoints" / "best.json"), str(images), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "Traceback" not in err
    assert not out.exists()


def test_attend_too_small_size_explains_the_minimum(run_dir, images, tmp_path, capsys):
    assert main(["attend", str(run_dir / "checkpoints" / "best.json"), str(images), "--size", "8",
                 "--out", str(tmp_path / "a")]) == 2
    assert "at least 16x16" in capsys.readouterr().err


def test_attend_rejects_a_corrupt_checkpoint(run_dir, images, tmp_path, capsys):
    corrupt = tmp_path / "ckpt"
    corrupt.mkdir()
    for suffix in (".json", ".safetensors"):
        data = (run_dir / "checkpoints" / f"best{suffix}").read_bytes()
        if suffix == ".safetensors":
            data = data[:-1] + bytes([data[-1] ^ 0xFF])
        (corrupt / f"best{suffix}").write_bytes(data)
    assert main(["attend", str(corrupt / "best.json"), str(images), "--out", str(tmp_path / "a")]) == 2
    assert "sha256" in capsys.readouterr().err


def test_attend_rejects_a_file_that_is_not_a_checkpoint(images, tmp_path, capsys):
    fake = tmp_path / "weights.json"
    fake.write_text('{"hello": 1}')
    assert main(["attend", str(fake), str(images), "--out", str(tmp_path / "a")]) == 2
    assert "ltpa checkpoint" in capsys.readouterr().err


def test_demo_trains_scores_and_prints_a_summary(tmp_path):
    from ltpa.demo import run_demo

    result = run_demo(tmp_path / "demo", progress=False, epochs=1, num_train=64, num_test=32, batch_size=16,
                      model_options={"width": 0.0625, "dropout": False})
    assert set(result.localisation["levels"]) == {"conv7", "conv10", "conv13"}
    assert {"centre", "random"} <= set(result.localisation["baselines"])
    assert "pointing game" in result.summary and "(centre)" in result.summary
    # the pointing game within Zhang et al.'s tolerance, and where every peak landed
    assert result.localisation["near"] == pytest.approx(15 * 32 / 224)
    assert "within 2.1 px" in result.summary and "missed peaks" in result.summary
    for scores in [*result.localisation["levels"].values(), *result.localisation["baselines"].values()]:
        outcomes = scores["outcomes"]
        assert sum(outcomes.values()) == pytest.approx(1.0)
        assert outcomes["hit"] == pytest.approx(scores["pointing"])
        assert outcomes["hit"] + outcomes["near_object"] == pytest.approx(scores["pointing_near"])
    precision = "bf16" if cpu_supports_bf16() else "fp32"  # the demo trains with precision=auto
    assert f"trained on cpu ({torch.backends.cpu.get_cpu_capability()}, {precision})" in result.summary.splitlines()
    for name in ("attention_overlays.png", "localisation.json", "summary.txt"):
        assert (tmp_path / "demo" / name).is_file()
    assert (tmp_path / "demo" / "summary.txt").read_text() == result.summary + "\n"
    def listing():  # TensorBoard names its event files by time and host
        return sorted(p.parent.name + "/<events>" if "tfevents" in p.name else str(p.relative_to(tmp_path))
                      for p in (tmp_path / "demo").rglob("*"))

    files = listing()
    again = run_demo(tmp_path / "demo", overwrite=True, progress=False, epochs=1, num_train=64, num_test=32,
                     batch_size=16, model_options={"width": 0.0625, "dropout": False})  # `make demo` twice
    # the same seeded run again, in place of the first: same numbers, same files, nothing left over
    assert again.summary == result.summary
    assert again.localisation == result.localisation and again.run.test == result.run.test
    assert listing() == files


def test_data_describes_a_spec(capsys):
    assert main(["data", "synthetic,num_train=40,num_test=20"]) == 0
    out = capsys.readouterr().out
    assert "train: 40 images" in out and "test: 20 images" in out


def test_data_missing_files_say_where_and_how_to_get_them(tmp_path, capsys):
    assert main(["data", f"cifar10:{tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "data_batch_1" in err and "cifar-10-python.tar.gz" in err and "--download" in err


# ------------------------------------------------------------------ localise, checked by hand

SCORES = ("pointing", "energy", "jaccard_fixed", "jaccard_best", "best_threshold",
          "jaccard_per_image_best_upper_bound")


def _synthetic_test_split(trained, limit):
    """The first ``limit`` test images, masks and targets of the run's synthetic data, built
    here directly (not through the command's ground-truth loader)."""
    config = trained.config
    data = SyntheticLocalisation(config.num_test, image_size=config.image_size, num_classes=config.num_classes,
                                 seed=config.data_seed, split="test")
    return data.images[:limit], data.masks[:limit], data.targets[:limit]


def _scores_by_hand(heat, masks):
    """The report's numbers for (N, H, W) maps, from the metric functions called directly."""
    seg = segmentation_scores(heat, masks)
    return {"pointing": float(pointing_game(heat, mask=masks).float().mean()),
            "energy": float(energy_pointing_game(heat, mask=masks).nanmean()),
            **{key: seg[key] for key in SCORES[2:]}}


def _assert_report_rows(rows, heats, masks):
    """Each row equals the metrics of the same maps against the same masks; and the check can
    fail: the masks of other images (a shuffle) give other numbers."""
    for name, heat in heats.items():
        expected = _scores_by_hand(heat, masks)
        assert {key: rows[name][key] for key in SCORES} == pytest.approx(expected, rel=1e-6, abs=1e-9), name
    shuffled = {name: _scores_by_hand(heat, masks.roll(1, 0)) for name, heat in heats.items()}
    assert any({key: rows[name][key] for key in SCORES} != pytest.approx(shuffled[name], rel=1e-3)
               for name in heats if name.startswith(("attention", "cam")))


def test_localise_scores_the_maps_of_each_image_against_its_own_mask(run_dir, tmp_path, capsys):
    out = tmp_path / "loc"
    checkpoint = run_dir / "checkpoints" / "best.json"
    assert main(["localise", str(checkpoint), "--limit", "8", "--out", str(out),
                 "--faithfulness-images", "4", "--steps", "2", "--methods", "attention", "gradcam", "centre"]) == 0
    table = capsys.readouterr().out
    result = json.loads((out / "localisation.json").read_text())
    rows = result["rows"]
    assert list(rows) == ["attention/conv7", "attention/conv10", "attention/conv13", "gradcam/conv13", "centre"]
    assert result["num_images"] == 8

    trained = load_trained(checkpoint)
    images, masks, targets = _synthetic_test_split(trained, 8)
    assert len({tuple(m.nonzero()[0].tolist()) for m in masks}) == 8  # every image has its own mask
    inputs = trained.prepare(images)
    # In the layout localise runs the model in: channels_last convolutions round differently, and
    # Grad-CAM's argmax and the energy of near-zero maps are sensitive to that rounding.
    with inference_layout(trained.model):
        learned = compute_maps(trained.model, inputs)
        heats = {f"attention/{level.name}": up[:, 0] for level, up in zip(learned.levels, learned.upsampled)}
        heats["gradcam/conv13"] = grad_cam_maps(trained.model, inputs, methods=["gradcam"])["gradcam"].upsampled[0][:, 0]
    heats["centre"] = centre_prior((32, 32), batch_size=8)
    _assert_report_rows(rows, heats, masks)
    assert result["accuracy"] == pytest.approx(float((learned.predictions == targets).float().mean()))

    # the printed table and the CSV carry the same numbers, one line per row
    for name, row in rows.items():
        line = next(line for line in table.splitlines() if line.split()[:1] == [name])
        assert f"{row['pointing']:.3f}" in line and f"{row['energy']:.3f}" in line
    with open(out / "localisation.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    assert [r["method"] for r in written] == ["attention"] * 3 + ["gradcam", "centre"]
    for record, row in zip(written, rows.values()):
        assert float(record["energy"]) == pytest.approx(row["energy"], rel=1e-6)
        assert float(record["deletion_auc"]) == pytest.approx(row["deletion_auc"], rel=1e-6)
    assert (out / "parts.png").is_file()


def test_localise_without_ground_truth_says_which_specs_have_it(run_dir, tmp_path, capsys, monkeypatch):
    import ltpa.attention.ground_truth as ground_truth

    no_truth = ground_truth.EvaluationSet(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), None, None, None,
                                          None, None, (), "2 images")
    monkeypatch.setattr("ltpa.inference.load_evaluation_set", lambda *a, **k: no_truth)
    out = tmp_path / "loc"
    assert main(["localise", str(run_dir / "checkpoints" / "best.json"), "--out", str(out)]) == 2
    assert "masks:PATH" in capsys.readouterr().err
    assert not out.exists()


def test_diagnose_explains_every_level(run_dir, capsys):
    assert main(["diagnose", str(run_dir / "checkpoints" / "best.json"), "--limit", "8"]) == 0
    out = capsys.readouterr().out
    assert "class-agnostic" in out
    for level in ("conv7 (32x32, stride 1)", "conv10 (16x16, stride 2)", "conv13 (8x8, stride 4)"):
        assert level in out
    assert "Verdict" in out


def test_presets_lists_the_paper_recipes(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("cifar100-vgg-att3", "cifar100-vgg-att3-official", "cub-vgg-att2", "cifar100-vgg-noatt"):
        assert name in out


def test_train_from_a_preset_with_overrides(tmp_path):
    out = tmp_path / "run"
    assert main(["-q", "train", "--preset", "synthetic-vgg-att3", "--out", str(out), *TINY]) == 0
    config = TrainConfig.from_dict(json.loads((out / "config.json").read_text())).to_dict()
    assert config["model"] == "vgg_att3" and config["model_options"]["dropout"] is False
    assert config["model_options"]["width"] == 0.0625 and config["num_train"] == 64


def test_unknown_preset_suggests_names(tmp_path, capsys):
    assert main(["-q", "train", "--preset", "cifar100-vgg-att", "--out", str(tmp_path / "r")]) == 2
    assert "cifar100-vgg-att3" in capsys.readouterr().err


def test_eval_reports_errors_and_per_class_accuracy(run_dir, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["-q", "eval", str(run_dir / "checkpoints" / "best.json"), "--out", str(out)]) == 0
    assert "top-1 error" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["samples"] == 32 and len(report["per_class"]) == 4
    assert sum(map(sum, report["confusion_matrix"])) == 32
    # the numbers of the checkpoint's model on the run's test images, computed here in fp32 (eval's
    # default; the run itself may have tested in bf16, whose loss differs by ~1% at these logits)
    trained = load_trained(run_dir / "checkpoints" / "best.json")
    images, _, targets = _synthetic_test_split(trained, 32)
    with torch.no_grad():
        logits = trained.model.eval()(trained.prepare(images)).logits
    assert report["acc1"] == pytest.approx(100 * float((logits.argmax(1) == targets).float().mean()))
    assert report["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, targets)), rel=1e-4)


def test_init_transfers_weights_and_saves_a_report(run_dir, tmp_path):
    out = tmp_path / "finetune"
    assert main(["-q", "train", "--out", str(out), *TINY, "--init", str(run_dir / "checkpoints" / "best.json"),
                 "--transfer", "trunk+global", "--freeze", "trunk.conv1-7"]) == 0
    report = json.loads((out / "transfer_report.json").read_text())
    status = {entry["name"]: entry["status"] for entry in report["entries"]}
    transferred = {name for name in status if name.startswith(("trunk.", "global."))}
    assert transferred and all(status[name] == "loaded" for name in transferred)
    assert all(status[name] == "skipped" for name in set(status) - transferred)  # attention, head
    assert report["counts"]["loaded"] == len(transferred) and report["counts"]["skipped"] == len(status) - len(transferred)
    # frozen layers keep the source's weights through training; the others were trained
    source = load_checkpoint(run_dir / "checkpoints" / "best.json").model_state
    tuned = load_checkpoint(out / "checkpoints" / "best.json").model_state
    for layer in range(1, 14):
        key = f"trunk.conv{layer}.conv.weight"
        assert torch.equal(tuned[key], source[key]) == (layer <= 7), key


def test_attend_overwrite_never_deletes_a_folder_ltpa_did_not_write(run_dir, images, tmp_path, capsys):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    assert main(["attend", str(run_dir / "checkpoints" / "best.json"), str(images), "--out", str(out),
                 "--overwrite"]) == 2
    assert "not written by ltpa" in capsys.readouterr().err
    assert (out / "thesis.tex").read_text() == "years of work"
    # a folder written by attend itself may be replaced
    again = tmp_path / "again"
    for _ in range(2):
        assert main(["attend", str(run_dir / "checkpoints" / "best.json"), str(images), "--out", str(again),
                     "--overwrite"]) == 0


def test_unique_stems_never_collide():
    from pathlib import Path

    from ltpa.inference import _unique_stems

    stems = _unique_stems([Path("a/x.png"), Path("b/x.png"), Path("x_1.png"), Path("c/x.jpg")])
    assert len(set(stems)) == 4


def test_zca_run_is_whitened_the_same_way_at_inference(tmp_path, images):
    from ltpa.inference import load_trained, normalise

    out = tmp_path / "zca"
    assert main(["-q", "train", "--out", str(out), *TINY, "--set", "zca=true", "--set", "image_size=16"]) == 0
    trained = load_trained(out / "checkpoints" / "best.json")
    assert trained.whiten is not None
    batch = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    whitened = trained.prepare(batch)
    assert not torch.allclose(whitened, normalise(batch, trained.config.mean, trained.config.std))
    assert main(["attend", str(out / "checkpoints" / "best.json"), str(images), "--out", str(tmp_path / "a")]) == 0
    assert trained.class_names == tuple(json.loads((out / "classes.json").read_text()))


def test_missing_init_is_rejected_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["-q", "train", "--out", str(out), *TINY, "--init", str(tmp_path / "nowhere")]) == 2
    assert "no transfer source" in capsys.readouterr().err
    assert not out.exists()


def test_an_unwritable_output_is_one_line(run_dir, images, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["attend", str(run_dir / "checkpoints" / "best.json"), str(images),
                 "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_attend_a_data_set_with_truth_in_the_titles(run_dir, tmp_path):
    out = tmp_path / "ds"
    assert main(["attend", str(run_dir / "checkpoints" / "best.json"), "--data", "synthetic", "--limit", "3",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "predictions.json").read_text())
    trained = load_trained(run_dir / "checkpoints" / "best.json")
    _, _, targets = _synthetic_test_split(trained, 3)
    assert [r["truth"] for r in summary["images"]] == [trained.class_names[int(t)] for t in targets]


def test_localise_adds_cam_from_a_vgg_gap_checkpoint(run_dir, tmp_path, capsys):
    gap_run = tmp_path / "gap"
    assert main(["-q", "train", "--model", "vgg_gap", "--out", str(gap_run), *TINY]) == 0
    out = tmp_path / "loc"
    assert main(["localise", str(run_dir / "checkpoints" / "best.json"), "--limit", "8", "--out", str(out),
                 "--faithfulness-images", "0", "--methods", "attention", "--gap-checkpoint",
                 str(gap_run / "checkpoints" / "best.json")]) == 0
    # a table row of its own (a bare "cam" would match pytest's temporary folder names)
    table_rows = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert "cam/vgg_gap" in table_rows
    rows = json.loads((out / "localisation.json").read_text())["rows"]
    assert list(rows) == ["attention/conv7", "attention/conv10", "attention/conv13", "cam/vgg_gap"]
    assert rows["cam/vgg_gap"]["method"] == "cam" and rows["cam/vgg_gap"]["level"] == "conv13"
    # the numbers are those of the GAP model's own CAM, not of the attention model
    gap = load_trained(gap_run / "checkpoints" / "best.json")
    images, masks, _ = _synthetic_test_split(gap, 8)
    cam = gap_cam_maps(gap.model, gap.prepare(images)).upsampled[0][:, 0]
    _assert_report_rows(rows, {"cam/vgg_gap": cam}, masks)


def test_train_flags_map_to_config_fields(tmp_path):
    from ltpa.cli import _config_from_args, build_parser

    args = build_parser().parse_args(["train", "--out", str(tmp_path), "--model", "timm_att", "--weights",
                                      "/w/resnet18.safetensors", "--compile", "--deterministic", "--seed", "3"])
    config = _config_from_args(args)
    assert config.model_options["weights"] == "/w/resnet18.safetensors"
    assert config.compile and config.deterministic and config.seed == 3
