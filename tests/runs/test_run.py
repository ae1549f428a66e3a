"""Run.open: one place decides "is this a run?"; the model is rebuilt one way; prepare() is
exactly the training loader's preprocessing."""
import json
import shutil

import pytest
import torch

from ltpa.inference import load_trained
from ltpa.runs.checkpoints import CheckpointError, load_checkpoint
from ltpa.runs.preprocess import Preprocessing
from ltpa.runs.run import Run
from ltpa.train import BatchLoader, TrainConfig, fit


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "run"
    fit(TrainConfig(model_options={"width": 0.0625}, num_classes=4, num_train=64, num_test=16,
                    batch_size=16, epochs=2, lr=0.01, device="cpu", precision="fp32",
                    tensorboard=False, cpu_threads=1, keep_last=1), folder, progress=False)
    return folder


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_every_way_to_name_a_run_opens_the_same_run(run):
    ckpt = run / "checkpoints"
    for path in (run, ckpt, ckpt / "best.json", ckpt / "epoch_0002.safetensors", ckpt / "epoch_0002"):
        opened = Run.open(path)
        assert opened.folder == run, path
        assert opened.config.num_classes == 4 and opened.class_names == load_trained(run).class_names
    assert Run.open(run).checkpoint == ckpt / "epoch_0002.json"  # a folder means its latest
    assert Run.open(ckpt / "best.json").checkpoint == ckpt / "best.json"


def test_load_model_picks_the_named_weights(run):
    opened = Run.open(run)
    best_epoch = json.loads((run / "checkpoints" / "state.json").read_text())["best"]["epoch"]
    best = opened.load_model("best")
    final = opened.load_model("final")
    reference = load_trained(run / "checkpoints" / f"epoch_{best_epoch:04d}").model
    assert _same_weights(best, reference)
    assert _same_weights(final, load_trained(run / "checkpoints" / "epoch_0002").model)
    assert load_checkpoint(opened.checkpoint_path("latest")).epoch == 2
    with pytest.raises(ValueError, match="weights='bset' is not one of"):
        opened.load_model("bset")


def test_prepare_is_exactly_the_training_loaders_preprocessing(run):
    opened = Run.open(run)
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    loader = BatchLoader(images, torch.zeros(5, dtype=torch.int64), batch_size=5, mean=opened.config.mean,
                         std=opened.config.std, device="cpu")
    expected, _ = next(iter(loader))
    assert torch.equal(opened.prepare(images), expected)
    assert torch.equal(load_trained(run).prepare(images), expected)


def test_the_float_path_is_differentiable_and_matches_the_uint8_path():
    prep = Preprocessing((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    pixels = (images.float() / 255).requires_grad_()
    out = prep(pixels)
    out.sum().backward()
    assert pixels.grad is not None and torch.allclose(out, prep(images), atol=1e-5)


def test_a_lone_checkpoint_opens_without_its_run(run, tmp_path):
    for ext in ("json", "safetensors"):
        shutil.copy(run / "checkpoints" / f"epoch_0002.{ext}", tmp_path / f"mine.{ext}")
    opened = Run.open(tmp_path / "mine.json")
    assert opened.folder is None and opened.config.num_classes == 4
    assert _same_weights(opened.load_model(), load_trained(run / "checkpoints" / "epoch_0002").model)


def test_unreadable_run_files_are_named(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "classes.json").write_text("[not json")
    with pytest.raises(ValueError, match=r"classes\.json is not valid JSON"):
        load_trained(copy)
    with pytest.raises(CheckpointError, match="is a directory without ltpa checkpoints: neither a run folder"):
        Run.open(tmp_path)


def test_a_run_without_a_checkpoint_opens_and_says_so(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "checkpoints")
    opened = Run.open(copy)
    assert opened.checkpoint is None and opened.config.epochs == 2
    with pytest.raises(CheckpointError, match="stopped before its first checkpoint"):
        opened.load_model("best")
