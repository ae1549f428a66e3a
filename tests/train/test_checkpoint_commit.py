"""The issue's scripted cases, end to end through fit: with validation top-1 10/20/15 a kill at
a save, or a full disk at epoch 6, never makes the resumed run test other weights than the
true best, and a run written before the commit record existed is repaired on resume."""
import errno
import json

import pytest

import ltpa.train.loop as loop
from ltpa.runs import checkpoints
from ltpa.train import TrainConfig, fit, load_checkpoint


def _config(**changes) -> TrainConfig:
    base = dict(model="vgg_att3", model_options={"width": 0.0625, "dropout": False},
                num_classes=4, num_train=64, num_test=16, val_fraction=0.25, epochs=3,
                batch_size=16, eval_batch_size=64, lr=0.01, precision="fp32", device="cpu",
                log_every=4, stuck_warmup_epochs=50, cpu_threads=1, tensorboard=False,
                keep_last=1)
    base.update(changes)
    return TrainConfig(**base)


@pytest.fixture
def scripted(monkeypatch):
    """Validation top-1 by epoch, whatever the model does (fill the dict in the test)."""
    vals = {}
    _rescript(monkeypatch, vals)
    return vals


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (it is no Exception, so nothing catches it)."""


def _fail_at(monkeypatch, epoch, where, error):
    """Raise ``error`` in the save of ``epoch``: before its commit or before its best links."""
    store = checkpoints.CheckpointStore
    original = getattr(store, where)

    def failing(self, arg):
        record = self.record() or {}
        pending = arg.get("epoch") if isinstance(arg, dict) and where == "_commit" else record.get("epoch")
        if pending == epoch:
            raise error
        return original(self, arg)

    monkeypatch.setattr(store, where, failing)


def _tested(run):
    return json.loads((run / "final_metrics.json").read_text())["tested_epoch"]


@pytest.mark.parametrize("where", ["_commit", "_materialise_best"])
def test_a_kill_in_the_save_of_the_best_epoch_still_tests_it(tmp_path, scripted, monkeypatch, where):
    scripted.update({1: 10.0, 2: 20.0, 3: 15.0})
    run = tmp_path / "run"
    _fail_at(monkeypatch, 2, where, Killed())
    with pytest.raises(Killed):
        fit(_config(), run, progress=False)
    monkeypatch.undo()  # a new process: no failure, the same scripted validation
    _rescript(monkeypatch, scripted)
    result = fit(_config(), run, resume=True, progress=False)
    assert result.tested_epoch == _tested(run) == 2
    assert load_checkpoint(run / "checkpoints" / "best").epoch == 2


def _rescript(monkeypatch, vals):
    current = {}
    train_one_epoch, evaluate = loop.train_one_epoch, loop.evaluate

    def train(*args, epoch, **kwargs):
        current["epoch"] = epoch
        return train_one_epoch(*args, epoch=epoch, **kwargs)

    def validate(*args, **kwargs):
        return {**evaluate(*args, **kwargs), "acc1": vals[current["epoch"]]}

    monkeypatch.setattr(loop, "train_one_epoch", train)
    monkeypatch.setattr(loop, "evaluate", validate)


@pytest.mark.parametrize("where", ["_commit", "_materialise_best"])
def test_a_full_disk_at_epoch_6_then_resume_tests_the_true_best(tmp_path, scripted, monkeypatch, where):
    scripted.update({1: 10.0, 2: 11.0, 3: 12.0, 4: 13.0, 5: 14.0, 6: 20.0})
    run = tmp_path / "run"
    _fail_at(monkeypatch, 6, where, OSError(errno.ENOSPC, "No space left on device", "state.json"))
    with pytest.raises(OSError, match="the disk is full"):
        fit(_config(epochs=6), run, progress=False)
    monkeypatch.undo()
    _rescript(monkeypatch, scripted)
    result = fit(_config(epochs=6), run, resume=True, progress=False)
    assert result.tested_epoch == _tested(run) == 6
    assert load_checkpoint(run / "checkpoints" / "best").metrics["val_acc1"] == 20.0


def test_a_run_from_before_the_record_with_a_wrong_best_is_repaired_on_resume(tmp_path, scripted):
    """What the old trainer left after a kill between the epoch_0002 save and the best save."""
    scripted.update({1: 10.0, 2: 20.0, 3: 15.0})
    run = tmp_path / "run"
    fit(_config(epochs=2, keep_last=2), run, progress=False)
    ckpt = run / "checkpoints"
    for ext in ("json", "safetensors"):
        (ckpt / f"best.{ext}").unlink()
        (ckpt / f"best.{ext}").write_bytes((ckpt / f"epoch_0001.{ext}").read_bytes())
    (ckpt / "state.json").unlink()
    (run / "final_metrics.json").unlink()
    result = fit(_config(epochs=3, keep_last=2), run, resume=True, progress=False)
    assert result.tested_epoch == 2
    log = (run / "train.log").read_text()
    assert "best checkpoint corrected from epoch_0001 to epoch_0002" in log
