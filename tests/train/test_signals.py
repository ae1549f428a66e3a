"""SIGTERM/SIGINT mid-epoch: the step finishes, a mid-epoch checkpoint is written, the CLI exits
143/130, and the resumed run ends with exactly the weights of an uninterrupted one. The same
for a SIGKILL after a checkpoint_every_steps checkpoint."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from ltpa.train import TrainConfig, fit, load_checkpoint

# dropout, flips and crops on: the resumed run must restore every RNG stream and the loader's
# position inside the epoch (36 train images, batches of 12: 3 steps per epoch)
CONFIG = dict(model="vgg_att3", model_options={"width": 0.0625}, num_classes=4, num_train=48,
              num_test=8, val_fraction=0.25, batch_size=12, eval_batch_size=64, lr=0.01,
              precision="fp32", device="cpu", deterministic=True, cpu_threads=1, log_every=1,
              stuck_warmup_epochs=50, tensorboard=False, epochs=3)

SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from ltpa.cli import main
    from ltpa.train import data_setup

    signum, batch = int(sys.argv[1]), int(sys.argv[2])
    iterate = data_setup.BatchLoader.__iter__

    def iterate_then_signal(self):
        for i, item in enumerate(iterate(self)):
            if self.name == "train" and self.epoch == 2 and i == batch:
                os.kill(os.getpid(), signum)  # arrives before step i of epoch 2
            yield item

    data_setup.BatchLoader.__iter__ = iterate_then_signal
    sys.exit(main(sys.argv[3:]))
""")


def _argv(run, **changes):
    config = {**CONFIG, **changes}
    sets = [f"model_options.width={config.pop('model_options')['width']}"]
    sets += [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in config.items()]
    return ["-q", "train", "--out", str(run), "--no-progress"] + [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    fit(TrainConfig(**CONFIG), run, progress=False)
    return load_checkpoint(run / "checkpoints" / "epoch_0003")


def _run(tmp_path, signum, batch, argv):
    script = tmp_path / "send_signal.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(script), str(signum), str(batch), *argv], env=env,
                          capture_output=True, text=True, timeout=600)  # a hang guard only


def _assert_same_weights(run, uninterrupted):
    resumed = load_checkpoint(run / "checkpoints" / "epoch_0003")
    assert (resumed.epoch, resumed.step) == (uninterrupted.epoch, uninterrupted.step)
    for key, value in uninterrupted.model_state.items():
        assert torch.equal(value, resumed.model_state[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_epoch_saves_a_checkpoint_and_resume_is_bit_identical(tmp_path, uninterrupted,
                                                                           signum, code):
    from ltpa.cli import main

    run = tmp_path / "run"
    done = _run(tmp_path, signum, 1, _argv(run))
    assert done.returncode == code, done.stderr[-3000:]
    name = signal.Signals(signum).name
    err = done.stderr.strip().splitlines()
    assert err[-1] == (f"ltpa train: stopped by {name}: saved {run / 'checkpoints' / 'step_00000005.json'}; "
                       f"continue with: ltpa train --resume --out {run}")
    log = (run / "train.log").read_text()
    assert f"{name} received" in log and "saved mid-epoch checkpoint step_00000005 (epoch 2, batch 2 of 3)" in log
    record = json.loads((run / "checkpoints" / "state.json").read_text())
    assert record["latest"] == "step_00000005" and record["epoch"] == 1
    assert load_checkpoint(run / "checkpoints" / "step_00000005").position["batch"] == 2

    assert main(["-q", "train", "--resume", "--out", str(run), "--no-progress"]) == 0
    _assert_same_weights(run, uninterrupted)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3] and lines[1]["step"] == 6
    assert not list((run / "checkpoints").glob("step_*"))  # superseded by epoch_0002


@pytest.mark.slow
def test_sigkill_after_a_step_checkpoint_resumes_from_it_bit_identically(tmp_path, uninterrupted):
    from ltpa.cli import main

    run = tmp_path / "run"
    done = _run(tmp_path, signal.SIGKILL, 2, _argv(run, checkpoint_every_steps=2))
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    record = json.loads((run / "checkpoints" / "state.json").read_text())
    assert record["latest"] == "step_00000004"  # epoch 2, batch 1; then killed before step 6
    assert main(["-q", "train", "--resume", "--out", str(run), "--no-progress"]) == 0
    _assert_same_weights(run, uninterrupted)
    assert "resumed from" in (run / "train.log").read_text()


def test_checkpoint_every_minutes_saves_mid_epoch_by_rank_0s_clock(tmp_path, monkeypatch):
    import ltpa.train.state as state

    class Clock:  # 61 s pass between any two readings
        now = 0.0

        def monotonic(self):
            Clock.now += 61.0
            return Clock.now

    config = TrainConfig(**{**CONFIG, "epochs": 2, "checkpoint_every_minutes": 1.0})
    monkeypatch.setattr(state, "time", Clock())
    fit(config, tmp_path / "timed", progress=False)
    log = (tmp_path / "timed" / "train.log").read_text()
    saved = [line.split("checkpoint ")[1].split(" ")[0] for line in log.splitlines() if "mid-epoch checkpoint" in line]
    # after batches 1 and 2 of each 3-batch epoch; the epoch's own save covers batch 3
    assert saved == ["step_00000001", "step_00000002", "step_00000004", "step_00000005"]
    monkeypatch.undo()
    fit(TrainConfig(**{**CONFIG, "epochs": 2, "checkpoint_every_minutes": 60.0}), tmp_path / "quiet", progress=False)
    assert "mid-epoch checkpoint" not in (tmp_path / "quiet" / "train.log").read_text()
    with pytest.raises(ValueError, match="checkpoint_every_minutes"):
        TrainConfig(checkpoint_every_minutes=-1).validate()
