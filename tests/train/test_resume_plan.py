"""Resuming continues the saved plan: no flag needs repeating, the saved epochs stay, other
settings are refused by name, and a run stopped before its first checkpoint starts again."""
import json

import pytest
import torch

import ltpa.train.loop as loop
from ltpa.cli import main
from ltpa.train import TrainConfig, fit, load_checkpoint

TINY = ["--set", "model_options.width=0.0625", "--set", "num_train=64", "--set", "num_test=16",
        "--set", "batch_size=16", "--set", "num_classes=4", "--set", "lr=0.01",
        "--set", "tensorboard=false", "--set", "cpu_threads=1", "--set", "device=cpu",
        "--set", "precision=fp32", "--no-progress"]


def _final(run):
    return json.loads((run / "final_metrics.json").read_text())


def test_resume_needs_no_flags_and_keeps_the_saved_epochs(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["-q", "train", "--out", str(run), *TINY, "--epochs", "1", "--seed", "3"]) == 0
    # the README's form: no --set, no --epochs; a finished 1-epoch run stays 1 epoch (not 30)
    assert main(["-q", "train", "--resume", "--out", str(run), "--no-progress"]) == 0
    assert _final(run)["epochs_completed"] == 1
    assert json.loads((run / "config.json").read_text())["optimisation"]["epochs"] == 1
    # more epochs: the only flag needed
    assert main(["-q", "train", "--resume", "--out", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert _final(run)["epochs_completed"] == 2
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    capsys.readouterr()
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["-q", "train", "--resume", "--out", str(run), "--set", "lr=0.5", "--seed", "4"]) == 2
    err = capsys.readouterr().err
    assert "lr: run has 0.01, given 0.5" in err and "seed: run has 3, given 4" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_the_library_resumes_with_config_none(tmp_path):
    run = tmp_path / "run"
    config = TrainConfig(model_options={"width": 0.0625}, num_classes=4, num_train=64, num_test=16,
                         batch_size=16, epochs=1, lr=0.01, device="cpu", precision="fp32",
                         tensorboard=False, cpu_threads=1)
    fit(config, run, progress=False)
    result = fit(None, run, resume=True, progress=False)
    assert result.epochs_completed == 1 and result.config.lr == 0.01
    with pytest.raises(TypeError, match="config=None is only for resume=True"):
        fit(None, tmp_path / "other", progress=False)


class Killed(BaseException):
    """Stands for SIGKILL: nothing catches it."""


def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start(tmp_path, monkeypatch):
    config = TrainConfig(model_options={"width": 0.0625}, num_classes=4, num_train=64, num_test=16,
                         batch_size=16, epochs=1, lr=0.01, device="cpu", precision="fp32",
                         tensorboard=False, cpu_threads=1, deterministic=True)
    straight = tmp_path / "straight"
    fit(config, straight, progress=False)

    run = tmp_path / "run"
    train_one_epoch = loop.train_one_epoch

    def die(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(loop, "train_one_epoch", die)
    with pytest.raises(Killed):
        fit(config, run, progress=False)
    monkeypatch.setattr(loop, "train_one_epoch", train_one_epoch)
    assert (run / "config.json").exists() and not list((run / "checkpoints").glob("epoch_*"))

    result = fit(None, run, resume=True, progress=False)
    assert result.epochs_completed == 1
    expected = load_checkpoint(straight / "checkpoints" / "epoch_0001").model_state
    got = load_checkpoint(run / "checkpoints" / "epoch_0001").model_state
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert "no checkpoint yet" in (run / "train.log").read_text()
